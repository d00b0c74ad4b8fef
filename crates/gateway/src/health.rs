//! `/healthz` (the process answers) and `/readyz` (it can log users in and serve sessions).

use std::sync::Arc;

use axum::{Json, extract::State, response::IntoResponse};
use http::StatusCode;
use portcullis::{auth::ProviderHandle, session::RedisStore};
use serde_json::json;

/// What readiness depends on.
#[derive(Clone)]
pub(crate) struct Readiness {
    pub(crate) provider: ProviderHandle,
    pub(crate) redis: Option<Arc<RedisStore>>,
}

/// Liveness: answers as long as the process serves HTTP, whatever the OP or store do.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the OP has been discovered and the store answers.
pub(crate) async fn readyz(State(ready): State<Readiness>) -> impl IntoResponse {
    let provider = ready.provider.get().is_some();
    let store = match &ready.redis {
        Some(redis) => redis.ping().await.map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let ok = provider && store.is_ok();
    let body = json!({
        "ready": ok,
        "identity_provider": if provider { "discovered" } else { "not reachable yet" },
        "session_store": match &store { Ok(()) => "ok".to_string(), Err(e) => e.clone() },
    });
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}
