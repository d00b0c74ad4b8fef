//! `/healthz` (the process answers) and `/readyz` (it can log users in and serve sessions).
//!
//! While the gateway shuts down (SIGTERM/SIGINT), `/readyz` answers 503 `{"draining": true}`.
//!
//! `/readyz` is public (load balancers probe it without credentials), so it says only *which*
//! dependency is down. The reason (a Redis error naming host and port, an authentication
//! failure) goes to the log at warn, once per change of state rather than once per probe.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use axum::{Json, extract::State, response::IntoResponse};
use http::StatusCode;
use portcullis::{auth::ProviderHandle, session::RedisStore};
use serde_json::json;

/// What readiness depends on.
#[derive(Clone)]
pub(crate) struct Readiness {
    provider: ProviderHandle,
    redis: Option<Arc<RedisStore>>,
    /// The last store error logged (`None`: the store answered last time), so a probe every
    /// second against a dead Redis logs once, and the recovery once.
    last_store_error: Arc<Mutex<Option<String>>>,
    /// Set at SIGTERM/SIGINT: from then on `/readyz` answers 503 whatever the dependencies
    /// say, so a load balancer stops sending new requests while the ones in flight finish.
    draining: Arc<AtomicBool>,
}

impl Readiness {
    pub(crate) fn new(provider: ProviderHandle, redis: Option<Arc<RedisStore>>) -> Self {
        Self { provider, redis, last_store_error: Arc::default(), draining: Arc::default() }
    }

    /// The gateway is shutting down: not ready any more, for good.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Logs a change of the store's state: the error at warn, the recovery at info.
    fn note_store(&self, result: &Result<(), String>) {
        let mut last = self.last_store_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Err(e) if last.as_deref() != Some(e.as_str()) => {
                tracing::warn!(error = %e, "readiness: the session store does not answer");
                *last = Some(e.clone());
            }
            Ok(()) if last.is_some() => {
                tracing::info!("readiness: the session store answers again");
                *last = None;
            }
            _ => {}
        }
    }
}

/// Liveness: answers as long as the process serves HTTP, whatever the OP or store do.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the OP has been discovered and the store answers. The body names the
/// dependencies and their state only (`ok` or `unavailable`), never an error text.
pub(crate) async fn readyz(State(ready): State<Readiness>) -> impl IntoResponse {
    if ready.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "draining": true })));
    }
    let provider = ready.provider.get().is_some();
    let store = match &ready.redis {
        Some(redis) => redis.ping().await.map_err(|e| e.to_string()),
        None => Ok(()),
    };
    ready.note_store(&store);
    let ok = provider && store.is_ok();
    let state = |up: bool| if up { "ok" } else { "unavailable" };
    let body = json!({
        "ready": ok,
        "identity_provider": state(provider),
        "session_store": state(store.is_ok()),
    });
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}
