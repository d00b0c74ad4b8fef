//! Settings that tests and the demo change while the OP runs: `GET /control` reads them,
//! `POST /control` changes any subset. They apply to the next request; tokens already issued
//! keep their lifetimes.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{Json, body::Bytes, extract::State, http::StatusCode, response::IntoResponse};
use serde::{Deserialize, Serialize};

use crate::{DevOpConfig, FailureRates, keys::SigningAlg, provider::Provider};

#[derive(Clone, Debug)]
pub(crate) struct Knobs {
    pub(crate) access_token_ttl: Duration,
    pub(crate) refresh_token_ttl: Duration,
    pub(crate) rotate_refresh_tokens: bool,
    pub(crate) token_latency: Duration,
    pub(crate) failures: FailureRates,
    /// Which key signs ID tokens. Only changeable here: relying parties under test can check
    /// that they follow the JWKS rather than assume RS256.
    pub(crate) id_token_alg: SigningAlg,
    /// Added to the `iat` of ID tokens (negative: in the past), as an OP whose clock runs ahead
    /// of the relying party's would: tests of a relying party's clock-skew handling.
    pub(crate) id_token_iat_offset_secs: i64,
    /// Groups per username replacing the configured ones from the next token on: a user
    /// added to or removed from a group at the OP while logged in.
    pub(crate) user_groups: BTreeMap<String, Vec<String>>,
}

impl Knobs {
    pub(crate) fn from_config(config: &DevOpConfig) -> Self {
        Self {
            access_token_ttl: config.access_token_ttl,
            refresh_token_ttl: config.refresh_token_ttl,
            rotate_refresh_tokens: config.rotate_refresh_tokens,
            token_latency: config.token_latency,
            failures: config.failures,
            id_token_alg: SigningAlg::default(),
            id_token_iat_offset_secs: 0,
            user_groups: BTreeMap::new(),
        }
    }

    fn view(&self) -> KnobsView {
        KnobsView {
            access_token_ttl_secs: self.access_token_ttl.as_secs(),
            refresh_token_ttl_secs: self.refresh_token_ttl.as_secs(),
            rotate_refresh_tokens: self.rotate_refresh_tokens,
            token_latency_ms: self.token_latency.as_millis() as u64,
            failures: self.failures,
            id_token_alg: self.id_token_alg,
            id_token_iat_offset_secs: self.id_token_iat_offset_secs,
            user_groups: self.user_groups.clone(),
        }
    }

    /// Applies a change, or leaves everything as it was and says what is wrong.
    fn apply(&mut self, change: KnobsChange) -> Result<(), String> {
        let mut next = self.clone();
        if let Some(secs) = change.access_token_ttl_secs {
            next.access_token_ttl = Duration::from_secs(secs);
        }
        if let Some(secs) = change.refresh_token_ttl_secs {
            next.refresh_token_ttl = Duration::from_secs(secs);
        }
        if next.access_token_ttl.is_zero() || next.refresh_token_ttl.is_zero() {
            return Err("token lifetimes must be at least 1 second".into());
        }
        if let Some(rotate) = change.rotate_refresh_tokens {
            next.rotate_refresh_tokens = rotate;
        }
        if let Some(ms) = change.token_latency_ms {
            next.token_latency = Duration::from_millis(ms);
        }
        if let Some(f) = change.failures {
            next.failures = FailureRates {
                server_error: f.server_error.unwrap_or(next.failures.server_error),
                timeout: f.timeout.unwrap_or(next.failures.timeout),
                invalid_grant: f.invalid_grant.unwrap_or(next.failures.invalid_grant),
            };
            next.failures.validate()?;
        }
        if let Some(alg) = change.id_token_alg {
            next.id_token_alg = alg;
        }
        if let Some(offset) = change.id_token_iat_offset_secs {
            next.id_token_iat_offset_secs = offset;
        }
        if let Some(groups) = change.user_groups {
            next.user_groups.extend(groups);
        }
        *self = next;
        Ok(())
    }
}

/// The knobs as JSON: what `GET /control` returns and `POST /control` answers with.
#[derive(Serialize)]
struct KnobsView {
    access_token_ttl_secs: u64,
    refresh_token_ttl_secs: u64,
    rotate_refresh_tokens: bool,
    token_latency_ms: u64,
    failures: FailureRates,
    id_token_alg: SigningAlg,
    id_token_iat_offset_secs: i64,
    user_groups: BTreeMap<String, Vec<String>>,
}

/// A `POST /control` body: any subset of the knobs. Unknown members are refused, so a typo
/// does not silently leave a test running with the old setting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KnobsChange {
    access_token_ttl_secs: Option<u64>,
    refresh_token_ttl_secs: Option<u64>,
    rotate_refresh_tokens: Option<bool>,
    token_latency_ms: Option<u64>,
    failures: Option<FailuresChange>,
    id_token_alg: Option<SigningAlg>,
    id_token_iat_offset_secs: Option<i64>,
    user_groups: Option<BTreeMap<String, Vec<String>>>,
    /// An action, not a setting: `true` replaces the signing keys (new `kid`s) at once.
    #[serde(default)]
    rotate_signing_keys: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailuresChange {
    server_error: Option<f64>,
    timeout: Option<f64>,
    invalid_grant: Option<f64>,
}

pub(crate) async fn get(State(op): State<Arc<Provider>>) -> impl IntoResponse {
    Json(op.knobs().view())
}

pub(crate) async fn post(State(op): State<Arc<Provider>>, body: Bytes) -> axum::response::Response {
    let change: KnobsChange = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(e) => return bad_request(format!("not a control document: {e}")),
    };
    if change.rotate_signing_keys {
        // Key generation is a moment of CPU; keep it off the async workers.
        let provider = op.clone();
        match tokio::task::spawn_blocking(move || provider.keys.rotate()).await {
            Ok(Ok(())) => tracing::info!("dev OP signing keys rotated"),
            Ok(Err(e)) => return bad_request(e.to_string()),
            Err(e) => return bad_request(e.to_string()),
        }
    }
    let view = {
        let mut knobs = op.knobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = knobs.apply(change) {
            return bad_request(e);
        }
        knobs.view()
    };
    tracing::info!(
        access_token_ttl_secs = view.access_token_ttl_secs,
        rotate_refresh_tokens = view.rotate_refresh_tokens,
        token_latency_ms = view.token_latency_ms,
        failures = ?view.failures,
        id_token_alg = ?view.id_token_alg,
        "dev OP knobs changed"
    );
    Json(view).into_response()
}

fn bad_request(message: String) -> axum::response::Response {
    (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": "invalid_request", "error_description": message }))).into_response()
}
