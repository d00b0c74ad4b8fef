//! What the OP has seen: `GET /stats`, `POST /stats/reset`, [`DevOp::stats`](crate::DevOp::stats).
//! Tests and the demo page use these to assert, for example, that twenty parallel requests
//! through the gateway cost exactly one refresh grant.

use std::{collections::BTreeMap, sync::Arc};

use axum::{Json, extract::State};

use crate::provider::Provider;

/// Counters since start or the last reset.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Token-endpoint requests by `grant_type` (`none` when missing, `other` when unknown),
    /// whatever their outcome.
    pub grants: BTreeMap<String, u64>,
    /// The same requests by `<grant_type>:<outcome>`: `ok`, the OAuth `error` code
    /// (`invalid_grant`, `invalid_client`, `server_error`, …), or `timeout` for a held request.
    /// Injected failures count here like real ones.
    pub outcomes: BTreeMap<String, u64>,
    /// Refresh-token requests that issued tokens (`outcomes["refresh_token:ok"]`).
    pub refresh_grants: u64,
    /// Rotated refresh tokens presented again; each revoked a whole grant.
    pub reuse_detections: u64,
    /// Requests to `/introspect`.
    pub introspections: u64,
    /// Requests to `/revoke`.
    pub revocations: u64,
    /// Successful sign-ins with the login form (not the ones the session cookie skipped).
    pub logins: u64,
    /// Logout tokens delivered (the client answered 2xx).
    pub backchannel_logouts: u64,
}

impl Stats {
    /// Counts one token-endpoint request.
    pub(crate) fn token_request(&mut self, grant_type: &str, outcome: &str) {
        *self.grants.entry(grant_type.to_string()).or_default() += 1;
        *self.outcomes.entry(format!("{grant_type}:{outcome}")).or_default() += 1;
        if grant_type == "refresh_token" && outcome == "ok" {
            self.refresh_grants += 1;
        }
    }
}

pub(crate) async fn get(State(op): State<Arc<Provider>>) -> Json<Stats> {
    Json(op.stats())
}

/// Zeroes the counters (not the knobs, not the tokens) and returns the zeroed stats.
pub(crate) async fn reset(State(op): State<Arc<Provider>>) -> Json<Stats> {
    op.count(|s| *s = Stats::default());
    Json(Stats::default())
}
