//! Starting and stopping the gateway.
//!
//! [`serve`] runs one gateway on a listener the caller bound, until the caller's shutdown
//! future resolves; [`run`] is the binary's use of it (bind `listen`, stop on SIGINT/SIGTERM).
//! `portcullis demo` calls [`serve`] once per gateway instance, all in one process.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;

use portcullis::{
    auth::{Authenticator, ProviderHandle},
    config::{Config, StoreKind},
    metrics::Metrics,
    session::{InstrumentedStore, Lifetimes, MemoryStore, RedisStore, SessionStore},
};
use tokio::net::TcpListener;

use crate::{
    app,
    health::Readiness,
    metrics::{self, HttpMetrics, StoreCollector},
    routes::{LiveRoutes, RouteTable},
};

mod connections;

/// Runs until SIGINT/SIGTERM, then drains in-flight requests.
pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let listener = bind(config.listen).await?;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(bind(addr).await.context("metrics.listen")?),
        None => None,
    };
    serve_with_metrics(config, listener, metrics_listener, shutdown_signal()).await
}

/// Binds a loopback or configured address, naming it on failure.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}

/// Serves one gateway built from `config` on `listener` until `shutdown` resolves, then
/// drains in-flight requests. `config.listen` is not used: the caller chose the socket.
#[allow(dead_code)]
pub(crate) async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_metrics(config, listener, None, shutdown).await
}

/// [`serve`], with `/metrics` on `metrics_listener` when given (`config.metrics.listen` is not
/// used either). The metrics listener stays up while requests drain.
pub(crate) async fn serve_with_metrics(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (router, discovery, registry) = build(&config)?;
    let metrics_server = match metrics_listener {
        Some(metrics_listener) => {
            tracing::info!(listen = %metrics_listener.local_addr()?, "metrics listening (GET /metrics)");
            Some(tokio::spawn(metrics::serve(metrics_listener, Arc::new(registry))))
        }
        None => None,
    };
    tracing::info!(listen = %listener.local_addr()?, public_url = %config.public_url, store = ?config.session.store, routes = config.routes.len(), "portcullis listening");
    connections::serve(listener, router, &config.server, shutdown).await;
    // Discovery retries forever while the OP is down; a stopped gateway has no use for it
    // (in the demo, other gateways go on running in the same process).
    discovery.abort();
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    tracing::info!(public_url = %config.public_url, "portcullis stopped");
    Ok(())
}

/// The store, the OP handle (discovered in the background), the router, and the registry
/// of everything they record.
fn build(
    config: &Config,
) -> anyhow::Result<(crate::boundary::Gateway, tokio::task::JoinHandle<()>, prometheus_client::registry::Registry)> {
    let lifetimes = Lifetimes { idle: config.session.idle_timeout, absolute: config.session.absolute_timeout };
    let (store, redis, collector): (Arc<dyn SessionStore>, _, _) = match config.session.store {
        StoreKind::Memory => {
            let memory = MemoryStore::new(lifetimes);
            (Arc::new(memory.clone()), None, StoreCollector::Memory(memory))
        }
        // The cookie store keeps sessions in the browser; pending logins stay in memory.
        StoreKind::Cookie => (Arc::new(MemoryStore::new(lifetimes)), None, StoreCollector::None),
        StoreKind::Redis => {
            let url = config.session.redis_url.as_deref().context("session.redis_url is required")?;
            let redis = Arc::new(RedisStore::new(url, lifetimes, config.session.store_timeout)?);
            (redis.clone(), Some(redis.clone()), StoreCollector::Redis(redis))
        }
    };
    let library = Metrics::new();
    let http = HttpMetrics::default();
    let store: Arc<dyn SessionStore> = Arc::new(InstrumentedStore::new(store, &library));
    let provider = ProviderHandle::default();
    let post_logout = config.oidc.post_logout_redirect_url.clone().unwrap_or_else(|| config.public_url.clone());
    let discovery = provider.spawn_discovery_with_metrics(config.oidc.clone(), config.redirect_uri(), post_logout, library.clone());
    let auth = Authenticator::with_metrics(config, store, provider.clone(), &library);
    let routes = LiveRoutes::new(RouteTable::new(&config.routes, &http));
    let router = app::router(config, routes, auth, Readiness::new(provider, redis), &http);
    Ok((router, discovery, metrics::registry(&library, &http, collector)))
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
