//! Starting and stopping the OP, and its router: every endpoint in one place.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    routing::{get, post},
};
use tokio::{sync::watch, task::JoinHandle};
use url::Url;

use crate::{
    DevOpConfig, DevOpError, Stats, authorize, discovery, introspect,
    keys::Keys,
    knobs::{self, Knobs},
    logout,
    provider::Provider,
    revoke, stats, token, userinfo,
};

/// How long [`DevOp::shutdown`] waits for in-flight requests before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running development OP. Dropping it stops the server too (without waiting).
pub struct DevOp {
    addr: SocketAddr,
    issuer: Url,
    provider: Arc<Provider>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DevOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevOp").field("addr", &self.addr).field("issuer", &self.provider.issuer).finish_non_exhaustive()
    }
}

/// Validates the configuration, generates keys, binds, and serves in a spawned task. Returns once
/// the socket is listening, so the issuer is reachable as soon as this returns.
pub async fn start(config: DevOpConfig) -> Result<DevOp, DevOpError> {
    if !config.listen.ip().is_loopback() {
        if !config.allow_non_loopback {
            return Err(DevOpError::NonLoopback(config.listen));
        }
        tracing::warn!(listen = %config.listen, "the development OP listens on a non-loopback address: anyone who can reach it can sign in");
    }
    config.validate()?;
    // RSA key generation takes a noticeable moment of CPU; keep it off the async workers.
    let keys = tokio::task::spawn_blocking(Keys::generate).await.map_err(|e| DevOpError::Keys(e.to_string()))??;
    if let Some(issuer) = &config.issuer
        && (!matches!(issuer.scheme(), "http" | "https") || issuer.query().is_some() || issuer.fragment().is_some())
    {
        return Err(DevOpError::InvalidConfig(format!("issuer {issuer}: must be an http(s) URL without query or fragment (Discovery §3)")));
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(DevOpError::Bind)?;
    let addr = listener.local_addr().map_err(DevOpError::Bind)?;
    let issuer = match &config.issuer {
        Some(issuer) => issuer.clone(),
        None => Url::parse(&format!("http://{addr}")).expect("a socket address makes a valid URL"),
    };
    let (stop, stopped) = watch::channel(false);
    let provider = Arc::new(Provider {
        // `Url` writes a bare origin with a trailing slash; relying parties configure and compare
        // the issuer without it.
        issuer: issuer.as_str().trim_end_matches('/').to_string(),
        keys,
        clients: config.clients.iter().map(|c| (c.client_id.clone(), c.clone())).collect::<BTreeMap<_, _>>(),
        users: config.users.clone(),
        store: Default::default(),
        knobs: std::sync::Mutex::new(Knobs::from_config(&config)),
        stats: Default::default(),
        shutdown: stopped.clone(),
        http: reqwest::Client::builder()
            // A logout endpoint that redirects is misconfigured; following it could post the
            // logout token somewhere unintended.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| DevOpError::InvalidConfig(format!("HTTP client for back-channel logout: {e}")))?,
    });
    let app = router(provider.clone());
    let mut until_stopped = stopped;
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = until_stopped.wait_for(|stop| *stop).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "the development OP stopped serving");
        }
    });
    tracing::info!(%addr, issuer = %provider.issuer, clients = config.clients.len(), users = config.users.len(), "development OP listening");
    Ok(DevOp { addr, issuer, provider, stop, task: Some(task) })
}

fn router(provider: Arc<Provider>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery::configuration))
        .route("/jwks", get(discovery::jwks))
        .route("/authorize", get(authorize::get).post(authorize::post))
        .route("/token", post(token::post))
        .route("/userinfo", get(userinfo::userinfo).post(userinfo::userinfo))
        .route("/introspect", post(introspect::introspect))
        .route("/revoke", post(revoke::revoke))
        .route("/end_session", get(logout::get).post(logout::post))
        .route("/stats", get(stats::get))
        .route("/stats/reset", post(stats::reset))
        .route("/control", get(knobs::get).post(knobs::post))
        // Browsers ask for it on every page; 204 keeps their consoles free of 404 noise.
        .route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }))
        .with_state(provider)
}

impl DevOp {
    /// The issuer, as configured or `http://<bound address>`.
    pub fn issuer(&self) -> Url {
        self.issuer.clone()
    }

    /// The bound address (the real port when the configured one was 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.provider.stats()
    }

    /// Stops accepting connections, releases held requests, and waits (at most a few seconds)
    /// for in-flight ones to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await.is_err()
        {
            // Keep-alive connections of a client that never sends again would otherwise keep
            // the graceful shutdown waiting.
            task.abort();
        }
        tracing::info!(addr = %self.addr, "development OP stopped");
    }
}

impl Drop for DevOp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
