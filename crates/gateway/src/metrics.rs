//! `/metrics`: the registry of one gateway and the listener that serves it.
//!
//! The listener is separate from the public one (`[metrics] listen`, off unless set), so
//! nothing about traffic, the OP or the store is visible from the public side. The registry
//! holds the library's families (`portcullis::metrics`: refresh, store, OP), the collectors of
//! the store in use, and the gateway's own:
//!
//! - `portcullis_http_requests_total{route,status}`: answers, by route and status;
//! - `portcullis_http_request_duration_seconds{route}`: time to the response head;
//! - `portcullis_upstream_response_duration_seconds{route}`: time from sending to the
//!   upstream to its response head (requests the upstream answered).
//!
//! `route` is the configured prefix of the route (a bounded set: the route table), the path
//! path of the gateway's own endpoints (`/oauth2/callback`, `/healthz`, …), `unmatched`
//! for a path no route covers, or `refused` for a request the boundary turned away (400).
//! `status` is the code for the codes in [`CODES`], else its class (`4xx`); either way a fixed
//! set.
//!
//! Hot path: each route resolves its label sets once (a counter per status slot, on first
//! use), so a proxied request costs two clock reads and three atomic adds, never a label-hash
//! lookup (a `Family` lookup hashes the labels and takes a read lock on every call).

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{
    Router,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use portcullis::{
    metrics::{DurationHistogram, Metrics},
    session::{MemoryStore, RedisStore},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text, text},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use tokio::net::TcpListener;

/// Status codes that get a label of their own; others are counted by class.
const CODES: [u16; 30] = [
    101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 410, 413, 415, 422, 429, 431, 500, 501,
    502, 503, 504,
];
/// The label of each slot: [`CODES`], then the classes.
const STATUSES: [&str; 35] = [
    "101", "200", "201", "202", "204", "206", "301", "302", "303", "304", "307", "308", "400", "401", "403", "404", "405", "408", "409",
    "410", "413", "415", "422", "429", "431", "500", "501", "502", "503", "504", "1xx", "2xx", "3xx", "4xx", "5xx",
];
const SLOTS: usize = STATUSES.len();

fn slot(status: StatusCode) -> usize {
    let code = status.as_u16();
    match CODES.binary_search(&code) {
        Ok(i) => i,
        // StatusCode admits 100..=999; anything past 5xx is counted with 5xx.
        Err(_) => CODES.len() + usize::from(code / 100).clamp(1, 5) - 1,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

type Histograms = Family<RouteLabel, DurationHistogram, fn() -> DurationHistogram>;

/// The gateway's request metrics. Cheap to clone: clones record into the same families.
#[derive(Clone, Debug)]
pub(crate) struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Histograms,
    upstream: Histograms,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        let latency = DurationHistogram::latency as fn() -> DurationHistogram;
        Self {
            requests: Family::default(),
            durations: Histograms::new_with_constructor(latency),
            upstream: Histograms::new_with_constructor(latency),
        }
    }
}

impl HttpMetrics {
    /// The handles of one route (resolved lazily, once per status slot).
    pub(crate) fn route(&self, route: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            route: route.to_string(),
            metrics: self.clone(),
            by_status: std::array::from_fn(|_| OnceLock::new()),
            duration: OnceLock::new(),
            upstream: OnceLock::new(),
        })
    }

    fn register(&self, registry: &mut Registry) {
        registry.register("portcullis_http_requests", "answered requests, by route and status", self.requests.clone());
        registry.register_with_unit(
            "portcullis_http_request_duration",
            "time from a request's arrival to its response head, by route",
            Unit::Seconds,
            self.durations.clone(),
        );
        registry.register_with_unit(
            "portcullis_upstream_response_duration",
            "time from forwarding a request to the upstream's response head, by route (answered requests)",
            Unit::Seconds,
            self.upstream.clone(),
        );
    }
}

/// One route's metric handles.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    route: String,
    metrics: HttpMetrics,
    by_status: [OnceLock<Counter>; SLOTS],
    duration: OnceLock<DurationHistogram>,
    upstream: OnceLock<DurationHistogram>,
}

impl RouteMetrics {
    fn label(&self) -> RouteLabel {
        RouteLabel { route: self.route.clone() }
    }

    /// One answered request: its status and the time to its response head.
    pub(crate) fn record(&self, status: StatusCode, took: Duration) {
        self.count(status);
        self.duration.get_or_init(|| self.metrics.durations.get_or_create_owned(&self.label())).observe(took);
    }

    /// One answered request whose duration is not worth a histogram observation (a refusal
    /// before any work).
    pub(crate) fn count(&self, status: StatusCode) {
        let i = slot(status);
        self.by_status[i]
            .get_or_init(|| self.metrics.requests.get_or_create_owned(&RequestLabels { route: self.route.clone(), status: STATUSES[i] }))
            .inc();
    }

    /// The upstream answered (a response head) `took` after the request was sent.
    pub(crate) fn upstream_answered(&self, took: Duration) {
        self.upstream.get_or_init(|| self.metrics.upstream.get_or_create_owned(&self.label())).observe(took);
    }
}

/// Middleware for the gateway's own endpoints (`/oauth2/*`, probes): labelled by their path. Not on the proxied path; there the route's handles are used.
pub(crate) async fn track_endpoint(State(metrics): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let started = tokio::time::Instant::now();
    let route = endpoint_name(req.uri().path()).to_string();
    let response = next.run(req).await;
    let took = started.elapsed();
    let status = STATUSES[slot(response.status())];
    metrics.requests.get_or_create(&RequestLabels { route: route.clone(), status }).inc();
    metrics.durations.get_or_create(&RouteLabel { route }).observe(took);
    response
}

/// The `route` label of a gateway endpoint: its path, from a fixed list (forward-auth's
/// `/oauth2/auth/<original URI>` is one name; anything unforeseen is `other`).
fn endpoint_name(path: &str) -> &'static str {
    const ENDPOINTS: [&str; 7] =
        ["/oauth2/start", "/oauth2/callback", "/oauth2/sign_out", "/oauth2/userinfo", "/oauth2/auth", "/healthz", "/readyz"];
    if path.starts_with("/oauth2/auth/") {
        return "/oauth2/auth";
    }
    ENDPOINTS.into_iter().find(|e| *e == path).unwrap_or("other")
}

/// What the registry reads from the store in use.
pub(crate) enum StoreCollector {
    Memory(MemoryStore),
    Redis(Arc<RedisStore>),
    None,
}

/// The registry of one gateway: the library's families, the store's collector, the
/// gateway's request metrics and `portcullis_build_info{version}`.
pub(crate) fn registry(library: &Metrics, http: &HttpMetrics, store: StoreCollector) -> Registry {
    let mut registry = Registry::default();
    library.register(&mut registry);
    http.register(&mut registry);
    match store {
        StoreCollector::Memory(store) => portcullis::metrics::register_memory_store(&mut registry, store),
        StoreCollector::Redis(store) => portcullis::metrics::register_redis_store(&mut registry, store),
        StoreCollector::None => {}
    }
    let info = Family::<[(&'static str, &'static str); 1], Gauge>::default();
    info.get_or_create(&[("version", env!("CARGO_PKG_VERSION"))]).set(1);
    registry.register("portcullis_build_info", "the running version (always 1)", info);
    registry
}

/// Serves `GET /metrics` from `registry` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let app = Router::new().route("/metrics", get(scrape)).with_state(registry);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition: OpenMetrics for a scraper that asks for it (Prometheus does), the classic
/// Prometheus text format otherwise (curl, older scrapers).
async fn scrape(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    let openmetrics =
        headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains("application/openmetrics-text"));
    let mut body = String::with_capacity(16 * 1024);
    let (content_type, encoded) = if openmetrics {
        (OPENMETRICS, text::encode(&mut body, &registry))
    } else {
        (prometheus_text::CONTENT_TYPE, prometheus_text::encode(&mut body, &registry))
    };
    match encoded {
        Ok(()) => ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_slots_are_the_code_or_its_class() {
        for (i, code) in CODES.iter().enumerate() {
            assert_eq!(STATUSES[i], code.to_string());
        }
        assert!(CODES.is_sorted(), "binary search needs them sorted");
        let label = |code: u16| STATUSES[slot(StatusCode::from_u16(code).unwrap())];
        assert_eq!(label(200), "200");
        assert_eq!(label(503), "503");
        assert_eq!(label(299), "2xx");
        assert_eq!(label(418), "4xx");
        assert_eq!(label(599), "5xx");
        assert_eq!(label(999), "5xx");
        assert_eq!(label(100), "1xx");
    }
}
