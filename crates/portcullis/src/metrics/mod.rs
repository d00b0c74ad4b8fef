//! Prometheus metrics of the library, on `prometheus-client` with an explicit registry.
//!
//! [`Metrics`] holds every family the library records into; the caller makes one, hands it to
//! what it instruments ([`crate::auth::Authenticator::with_metrics`],
//! [`crate::auth::ProviderHandle::spawn_discovery_with_metrics`],
//! [`crate::session::InstrumentedStore`]) and adds it to its registry with
//! [`Metrics::register`]. Nothing is global: two gateways in one process keep separate counts.
//!
//! Names follow the Prometheus conventions: the `portcullis_` prefix, `_total` on counters,
//! `_seconds` on durations; labels come from fixed sets (operation, endpoint, outcome), never
//! from a session, a user or a token.
//!
//! - `portcullis_refresh_*`: the refresh coordinator (see `auth::stats`).
//! - `portcullis_store_operation_duration_seconds{operation}`,
//!   `portcullis_store_errors_total{operation,kind}`: the session store, through
//!   [`crate::session::InstrumentedStore`].
//! - `portcullis_op_request_duration_seconds{endpoint}`, `portcullis_op_request_errors_total{endpoint}`:
//!   calls to the OpenID Provider.
//! - `portcullis_sessions_active` (memory store) and
//!   `portcullis_store_notification_restarts_total`, `portcullis_store_replica_ack_missing_total`
//!   (Redis store): read at scrape time by the
//!   collectors [`register_memory_store`] and [`register_redis_store`] add.

mod histogram;

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, counter::Counter, family::Family, gauge::ConstGauge},
    registry::{Registry, Unit},
};

pub use histogram::{DurationHistogram, LATENCY_BUCKETS, WAIT_BUCKETS};

use crate::{
    auth::RefreshStats,
    session::{MemoryStore, RedisStore, StoreError},
};

type Labels = [(&'static str, &'static str); 1];
type Histograms = Family<Labels, DurationHistogram, fn() -> DurationHistogram>;

fn latency_family() -> Histograms {
    Histograms::new_with_constructor(DurationHistogram::latency as fn() -> DurationHistogram)
}

/// Every metric the library records. Cheap to clone: clones record into the same families.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub(crate) refresh: Arc<RefreshStats>,
    pub(crate) store: StoreMetrics,
    pub(crate) op: OpMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self { refresh: Arc::default(), store: StoreMetrics::new(), op: OpMetrics::new() }
    }
}

impl Metrics {
    /// Fresh families, all at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every family to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        self.refresh.register(registry);
        registry.register_with_unit(
            "portcullis_store_operation_duration",
            "session store operations, by operation, errors included",
            Unit::Seconds,
            self.store.durations.clone(),
        );
        registry.register(
            "portcullis_store_errors",
            "session store operations that failed, by operation and kind (unavailable: refused, reset or timed out; corrupt; no_sealing_key)",
            self.store.errors.clone(),
        );
        registry.register_with_unit(
            "portcullis_op_request_duration",
            "calls to the OpenID Provider, by endpoint (discovery, jwks, token, revocation, introspection), errors included",
            Unit::Seconds,
            self.op.durations.clone(),
        );
        registry.register(
            "portcullis_op_request_errors",
            "calls to the OpenID Provider that got no usable answer (transport error or an HTTP status the call cannot use), by endpoint",
            self.op.errors.clone(),
        );
    }

    /// The refresh coordinator's counters (the same ones [`Metrics::register`] exports).
    pub fn refresh_stats(&self) -> &Arc<RefreshStats> {
        &self.refresh
    }
}

/// A session store operation, as the `operation` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreOp {
    Load,
    /// The authenticator's per-request read: answered by the read cache when it may be.
    LoadForRequest,
    Create,
    CompareAndSet,
    Delete,
    DeleteIfVersion,
    StateConsumed,
    ConsumeState,
    TryLease,
    RenewLease,
    ReleaseLease,
}

impl StoreOp {
    const ALL: [StoreOp; 11] = [
        Self::Load,
        Self::LoadForRequest,
        Self::Create,
        Self::CompareAndSet,
        Self::Delete,
        Self::DeleteIfVersion,
        Self::StateConsumed,
        Self::ConsumeState,
        Self::TryLease,
        Self::RenewLease,
        Self::ReleaseLease,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::LoadForRequest => "load_for_request",
            Self::Create => "create",
            Self::CompareAndSet => "compare_and_set",
            Self::Delete => "delete",
            Self::DeleteIfVersion => "delete_if_version",
            Self::StateConsumed => "state_consumed",
            Self::ConsumeState => "consume_state",
            Self::TryLease => "try_lease",
            Self::RenewLease => "renew_lease",
            Self::ReleaseLease => "release_lease",
        }
    }
}

/// Store latency and errors by operation; the duration handles are resolved once, since
/// `load` runs on every request.
#[derive(Clone, Debug)]
pub(crate) struct StoreMetrics {
    durations: Histograms,
    by_op: Arc<[DurationHistogram; 11]>,
    errors: Family<[(&'static str, &'static str); 2], Counter>,
}

impl StoreMetrics {
    fn new() -> Self {
        let durations = latency_family();
        let by_op = Arc::new(StoreOp::ALL.map(|op| durations.get_or_create_owned(&[("operation", op.name())])));
        Self { durations, by_op, errors: Family::default() }
    }

    pub(crate) fn observe(&self, op: StoreOp, took: std::time::Duration, error: Option<&StoreError>) {
        self.by_op[op as usize].observe(took);
        if let Some(e) = error {
            let kind = match e {
                StoreError::Unavailable(_) => "unavailable",
                StoreError::Corrupt(_) => "corrupt",
                StoreError::NoSealingKey => "no_sealing_key",
            };
            // Errors are rare: the label lookup is paid only on this path.
            self.errors.get_or_create(&[("operation", op.name()), ("kind", kind)]).inc();
        }
    }
}

/// An OP endpoint, as the `endpoint` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpEndpoint {
    Discovery,
    Jwks,
    Token,
    Revocation,
    Introspection,
}

impl OpEndpoint {
    const ALL: [OpEndpoint; 5] = [Self::Discovery, Self::Jwks, Self::Token, Self::Revocation, Self::Introspection];

    fn name(self) -> &'static str {
        match self {
            Self::Discovery => "discovery",
            Self::Jwks => "jwks",
            Self::Token => "token",
            Self::Revocation => "revocation",
            Self::Introspection => "introspection",
        }
    }
}

/// OP call latency and failures by endpoint.
#[derive(Clone, Debug)]
pub(crate) struct OpMetrics {
    durations: Histograms,
    by_endpoint: Arc<[DurationHistogram; 5]>,
    errors: Family<Labels, Counter>,
    errors_by_endpoint: Arc<[Counter; 5]>,
}

impl Default for OpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl OpMetrics {
    fn new() -> Self {
        let durations = latency_family();
        let errors = Family::<Labels, Counter>::default();
        let by_endpoint = Arc::new(OpEndpoint::ALL.map(|e| durations.get_or_create_owned(&[("endpoint", e.name())])));
        let errors_by_endpoint = Arc::new(OpEndpoint::ALL.map(|e| errors.get_or_create_owned(&[("endpoint", e.name())])));
        Self { durations, by_endpoint, errors, errors_by_endpoint }
    }

    /// Times `call` against `endpoint`; `failed` tells which outcomes count as errors.
    pub(crate) async fn time<T, E>(
        &self,
        endpoint: OpEndpoint,
        call: impl Future<Output = Result<T, E>>,
        failed: impl FnOnce(&Result<T, E>) -> bool,
    ) -> Result<T, E> {
        let started = tokio::time::Instant::now();
        let result = call.await;
        self.by_endpoint[endpoint as usize].observe(started.elapsed());
        if failed(&result) {
            self.errors_by_endpoint[endpoint as usize].inc();
        }
        result
    }
}

/// Adds `portcullis_sessions_active`, the memory store's live sessions, counted at each scrape.
pub fn register_memory_store(registry: &mut Registry, store: MemoryStore) {
    registry.register_collector(Box::new(MemoryStoreCollector(store)));
}

/// Adds `portcullis_store_notification_restarts_total`: how often the Redis store's
/// change-notification listener reconnected (`RedisStore::notification_restarts`), and
/// `portcullis_store_replica_ack_missing_total`: session writes no replica acknowledged
/// (`RedisStore::replica_acks_missing`).
pub fn register_redis_store(registry: &mut Registry, store: Arc<RedisStore>) {
    registry.register_collector(Box::new(RedisStoreCollector(store)));
}

struct MemoryStoreCollector(MemoryStore);

impl std::fmt::Debug for MemoryStoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryStoreCollector")
    }
}

impl Collector for MemoryStoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(self.0.len() as i64);
        let metric =
            encoder.encode_descriptor("portcullis_sessions_active", "live sessions in the memory store", None, gauge.metric_type())?;
        gauge.encode(metric)
    }
}

struct RedisStoreCollector(Arc<RedisStore>);

impl std::fmt::Debug for RedisStoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisStoreCollector")
    }
}

impl Collector for RedisStoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(self.0.notification_restarts());
        let metric = encoder.encode_descriptor(
            "portcullis_store_notification_restarts",
            "restarts of the Redis change-notification listener (lost or half-open pub/sub connection)",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)?;
        let counter = ConstCounter::new(self.0.replica_acks_missing());
        let metric = encoder.encode_descriptor(
            "portcullis_store_replica_ack_missing",
            "session writes (refresh leases, refreshed tokens) no Redis replica acknowledged: a failover now would roll them back",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}
