//! A histogram of durations that takes no lock to observe.
//!
//! `prometheus_client::metrics::histogram::Histogram` takes a mutex on every observation; the
//! store's `load` and every proxied request observe one, from every worker thread at once, so
//! that mutex would be a point of contention on the hot path. Here an observation is two
//! relaxed atomic adds (its bucket and the sum); a scrape reads the counts without stopping
//! writers, so a scrape racing an observation may see it in the sum and not yet in its bucket
//! (or the other way round), which Prometheus tolerates as it does any scrape skew.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric, exemplar::Exemplar},
};

/// Upper bounds (seconds) for calls that normally take milliseconds: store operations, OP
/// calls, upstream responses, requests.
pub const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Upper bounds (seconds) for waits on a refresh: a token call plus a store write at best,
/// `refresh.max_wait` (15 s by default) at worst.
pub const WAIT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0];

/// A histogram of durations with fixed bucket bounds. Cheap to clone (one `Arc`); clones
/// observe into the same counts.
#[derive(Clone, Debug)]
pub struct DurationHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    bounds: &'static [f64],
    /// `bounds` in nanoseconds, compared against each observation without float arithmetic.
    bounds_nanos: Box<[u64]>,
    /// One count per bound, then the `+Inf` bucket; not cumulative (the encoder sums them).
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// An empty histogram with these upper bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(Inner {
            bounds,
            bounds_nanos: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    /// A histogram with [`LATENCY_BUCKETS`].
    pub fn latency() -> Self {
        Self::new(LATENCY_BUCKETS)
    }

    /// A histogram with [`WAIT_BUCKETS`].
    pub fn wait() -> Self {
        Self::new(WAIT_BUCKETS)
    }

    /// Records one duration.
    pub fn observe(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let inner = &*self.0;
        let bucket = inner.bounds_nanos.iter().position(|b| nanos <= *b).unwrap_or(inner.bounds_nanos.len());
        inner.counts[bucket].fetch_add(1, Relaxed);
        inner.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Sum of the observations.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.0.sum_nanos.load(Relaxed))
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &*self.0;
        let buckets: Vec<(f64, u64)> =
            inner.bounds.iter().copied().chain(std::iter::once(f64::INFINITY)).zip(inner.counts.iter().map(|c| c.load(Relaxed))).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum_nanos.load(Relaxed) as f64 / 1e9;
        encoder.encode_histogram(sum, count, &buckets, None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_encode_cumulatively() {
        let h = DurationHistogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(10)); // on the bound: `le` is inclusive
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(3));
        let mut registry = Registry::default();
        registry.register_with_unit("t", "test", prometheus_client::registry::Unit::Seconds, h.clone());
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains("t_seconds_bucket{le=\"0.01\"} 2\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{le=\"0.1\"} 3\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("t_seconds_count 4\n"), "{text}");
        assert!(text.contains("t_seconds_sum 3.065\n"), "{text}");
        assert_eq!(h.count(), 4);
    }
}
