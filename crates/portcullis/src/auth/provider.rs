//! The OP as the rest of the gateway sees it: maybe not discovered yet, and re-read over time.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::time::{Instant, MissedTickBehavior, interval_at};
use url::Url;

use crate::{config::OidcConfig, metrics::Metrics, oidc::OidcClient};

/// Shared handle to the OP client, filled once discovery succeeds. Until then, requests with a
/// fresh session are served as usual; only logins and refreshes answer 503.
///
/// Re-discovery swaps the client as a whole: a request holds the `Arc` it got from
/// [`ProviderHandle::get`] until it is done, so a login or refresh in flight finishes with the
/// metadata and keys it started with, never a mix of two documents.
#[derive(Clone, Default)]
pub struct ProviderHandle(Arc<RwLock<Option<Arc<OidcClient>>>>);

impl ProviderHandle {
    /// A handle that already holds a client.
    pub fn ready(client: OidcClient) -> Self {
        Self(Arc::new(RwLock::new(Some(Arc::new(client)))))
    }

    /// The client, if discovery has succeeded.
    pub fn get(&self) -> Option<Arc<OidcClient>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn install(&self, client: OidcClient) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(client));
    }

    /// Runs discovery until it succeeds, backing off from 1 s to 30 s, logging every failure.
    /// The gateway starts listening at once: an OP that is down at boot must not take
    /// `/healthz` and already-logged-in users down with it.
    ///
    /// Then, for as long as the task runs: the JWKS is fetched again every
    /// `oidc.jwks_refresh_interval` (a key the OP dropped stops being trusted), and discovery
    /// again every `oidc.discovery_refresh_interval` (endpoints and `jwks_uri` may move). A
    /// failure keeps the last good client and keys and is logged; the next tick tries again.
    pub fn spawn_discovery(&self, config: OidcConfig, redirect_uri: Url, post_logout: Url) -> tokio::task::JoinHandle<()> {
        self.spawn_discovery_with_metrics(config, redirect_uri, post_logout, Metrics::default())
    }

    /// [`ProviderHandle::spawn_discovery`], with every OP call of the clients it makes timed
    /// into `metrics`.
    pub fn spawn_discovery_with_metrics(
        &self,
        config: OidcConfig,
        redirect_uri: Url,
        post_logout: Url,
        metrics: Metrics,
    ) -> tokio::task::JoinHandle<()> {
        let handle = self.clone();
        tokio::spawn(async move {
            let discover = || OidcClient::discover_with_metrics(&config, redirect_uri.clone(), post_logout.clone(), &metrics);
            let mut delay = Duration::from_secs(1);
            loop {
                match discover().await {
                    Ok(client) => {
                        tracing::info!(issuer = %config.issuer, "OpenID Provider discovered");
                        handle.install(client);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(issuer = %config.issuer, error = %e, retry_in = ?delay, "OpenID Provider not reachable yet; logins wait for it");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }

            let start = Instant::now();
            let mut jwks_timer = interval_at(start + config.jwks_refresh_interval, config.jwks_refresh_interval);
            let mut discovery_timer = interval_at(start + config.discovery_refresh_interval, config.discovery_refresh_interval);
            // A slow OP delays the next attempt rather than causing a burst of catch-up fetches.
            jwks_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
            discovery_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = discovery_timer.tick() => match discover().await {
                        Ok(client) => {
                            tracing::info!(issuer = %config.issuer, "OpenID Provider metadata refreshed");
                            handle.install(client);
                            // The new client fetched its JWKS just now.
                            jwks_timer.reset();
                        }
                        Err(e) => tracing::warn!(issuer = %config.issuer, error = %e, "re-discovery failed; keeping the last good metadata and keys"),
                    },
                    _ = jwks_timer.tick() => {
                        let Some(client) = handle.get() else { continue };
                        match client.jwks().refresh_all().await {
                            Ok(r) if r.dropped.is_empty() => tracing::debug!(keys = r.keys, "JWKS refreshed"),
                            Ok(r) => tracing::info!(keys = r.keys, dropped = ?r.dropped, "JWKS refreshed; keys the OP dropped are no longer trusted"),
                            Err(e) => tracing::warn!(issuer = %config.issuer, error = %e, "JWKS refresh failed; keeping the last good keys"),
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    //! The refresh loop against a real HTTP server on 127.0.0.1 whose JWKS and discovery
    //! document the test changes. Intervals of a fraction of a second: config validation (which
    //! requires at least 10 s) does not run here.

    use std::sync::Mutex;

    use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
    use jsonwebtoken::Algorithm;
    use serde_json::{Value, json};

    use super::*;

    #[derive(Default)]
    struct OpState {
        kids: Vec<String>,
        jwks_fails: bool,
        token_endpoint: String,
    }

    type Shared = Arc<Mutex<OpState>>;

    fn rsa_key(kid: &str) -> Value {
        // Shape only: the refresh is about which keys are trusted, not about verifying.
        json!({ "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": "sXch", "e": "AQAB" })
    }

    async fn start_op(state: Shared) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let issuer = base.clone();
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move |State(s): State<Shared>| {
                    let issuer = issuer.clone();
                    async move {
                        let token = s.lock().unwrap().token_endpoint.clone();
                        Json(json!({
                            "issuer": issuer,
                            "authorization_endpoint": format!("{issuer}/auth"),
                            "token_endpoint": format!("{issuer}{token}"),
                            "jwks_uri": format!("{issuer}/jwks"),
                        }))
                    }
                }),
            )
            .route(
                "/jwks",
                get(|State(s): State<Shared>| async move {
                    let s = s.lock().unwrap();
                    if s.jwks_fails {
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    Json(json!({ "keys": s.kids.iter().map(|k| rsa_key(k)).collect::<Vec<_>>() })).into_response()
                }),
            )
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        base
    }

    fn config(issuer: &str, jwks_every: Duration, discovery_every: Duration) -> OidcConfig {
        let mut config: OidcConfig =
            serde_json::from_value(json!({ "issuer": issuer, "client_id": "portcullis", "client_secret": "s" })).unwrap();
        config.jwks_refresh_interval = jwks_every;
        config.discovery_refresh_interval = discovery_every;
        config
    }

    async fn trusted(handle: &ProviderHandle, kid: &str) -> bool {
        handle.get().unwrap().jwks().key_for(Some(kid), Algorithm::RS256).await.is_ok()
    }

    async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn started(state: &Shared, jwks_every: Duration, discovery_every: Duration) -> (ProviderHandle, tokio::task::JoinHandle<()>) {
        let issuer = start_op(state.clone()).await;
        let handle = ProviderHandle::default();
        let url: Url = format!("{issuer}/cb").parse().unwrap();
        let task = handle.spawn_discovery(config(&issuer, jwks_every, discovery_every), url.clone(), url);
        eventually("discovered", async || handle.get().is_some()).await;
        (handle, task)
    }

    #[tokio::test]
    async fn a_dropped_key_stops_being_trusted_and_a_failed_refresh_keeps_the_last_good_set() {
        let state: Shared =
            Arc::new(Mutex::new(OpState { kids: vec!["old".into()], token_endpoint: "/token".into(), ..Default::default() }));
        let (handle, task) = started(&state, Duration::from_millis(300), Duration::from_secs(3600)).await;
        assert!(trusted(&handle, "old").await);

        // The OP rotates: "new" published, "old" withdrawn. No token names "new" yet, so only
        // the periodic refresh can notice that "old" is gone (the unknown-kid refetch is in its
        // 10 s cool-down after discovery's fetch, so it is not what makes this pass).
        state.lock().unwrap().kids = vec!["new".into()];
        eventually("the dropped key is no longer trusted", async || !trusted(&handle, "old").await).await;
        assert!(trusted(&handle, "new").await);

        // The JWKS endpoint fails, then answers an empty set: both keep the last good keys.
        state.lock().unwrap().jwks_fails = true;
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(trusted(&handle, "new").await, "a failed refresh keeps the last good set");
        {
            let mut s = state.lock().unwrap();
            s.jwks_fails = false;
            s.kids = vec![];
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(trusted(&handle, "new").await, "an empty set is a failed refresh");
        task.abort();
    }

    #[tokio::test]
    async fn rediscovery_swaps_the_client_and_in_flight_holders_keep_theirs() {
        let state: Shared = Arc::new(Mutex::new(OpState { kids: vec!["k".into()], token_endpoint: "/token".into(), ..Default::default() }));
        let (handle, task) = started(&state, Duration::from_secs(3600), Duration::from_millis(300)).await;
        let before = handle.get().unwrap();
        assert!(before.metadata().token_endpoint.as_str().ends_with("/token"));

        state.lock().unwrap().token_endpoint = "/v2/token".into();
        eventually("the new metadata is in use", async || handle.get().unwrap().metadata().token_endpoint.as_str().ends_with("/v2/token"))
            .await;
        // What a request already held is untouched.
        assert!(before.metadata().token_endpoint.as_str().ends_with("/token"));

        // An OP that stops answering discovery: the last good client stays.
        state.lock().unwrap().jwks_fails = true;
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(handle.get().unwrap().metadata().token_endpoint.as_str().ends_with("/v2/token"));
        task.abort();
    }
}
