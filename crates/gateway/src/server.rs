//! Starting and stopping the gateway.
//!
//! [`serve`] runs one gateway on a listener the caller bound, until the caller's shutdown
//! future resolves; [`run`] is the binary's use of it (bind `listen`, reload on SIGHUP, stop on
//! SIGINT/SIGTERM). `portcullis demo` calls [`serve`] once per gateway instance, all in one
//! process.
//!
//! Stopping, in order (each step logged at info):
//! 1. The signal: `/readyz` answers 503 at once; everything else is still served for
//!    `server.shutdown_delay` (0 by default), so a load balancer probing readiness stops
//!    sending before connections are refused.
//! 2. The listener closes (new connections are refused); every connection is asked to finish
//!    after its response in flight (HTTP/1) or gets GOAWAY (HTTP/2).
//! 3. Requests and refresh tasks in flight finish, until `server.drain_timeout` after step 2.
//!    Then open connections are closed, refresh tasks still running are abandoned, and the
//!    leases they held released, so another instance takes the session's refresh over at once.
//! 4. Exit 0. A second SIGINT/SIGTERM during 1–3 exits at once (status 1).

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;

use portcullis::{
    auth::{Authenticator, ProviderHandle},
    config::{Config, StoreKind},
    metrics::Metrics,
    session::{CachedStore, InstrumentedStore, Lifetimes, MemoryStore, ReadCacheSettings, RedisOptions, RedisStore, SessionStore},
};
use tokio::{net::TcpListener, time::Instant};

use crate::{
    app,
    health::Readiness,
    metrics::{self, HttpMetrics, StoreCollector},
    reload::{Live, Reloader},
    routes::{LiveRoutes, RouteTable},
};

mod connections;

/// Runs until SIGINT/SIGTERM, then drains in-flight requests; SIGHUP reloads `path`.
pub(crate) async fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let listener = bind(config.listen).await?;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(bind(addr).await.context("metrics.listen")?),
        None => None,
    };
    // Before serving: SIGHUP's default action ends the process.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let gateway = build(&config)?;
    let reloads = tokio::spawn(Reloader::new(path, config.clone(), gateway.live.clone()).on_sighup(hangup));
    let result = serve_built(config, listener, metrics_listener, gateway, shutdown_signal()).await;
    reloads.abort();
    result
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
    let gateway = build(&config)?;
    serve_built(config, listener, metrics_listener, gateway, shutdown).await
}

/// A gateway ready to serve: its router, and the handles its lifecycle needs.
struct Built {
    router: crate::access_log::AccessLog,
    discovery: tokio::task::JoinHandle<()>,
    readiness: Readiness,
    /// What a reload replaces.
    live: Live,
    /// Everything the gateway and the library record, for `/metrics`.
    registry: prometheus_client::registry::Registry,
}

async fn serve_built(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    gateway: Built,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Built { router, discovery, readiness, live, registry } = gateway;
    let metrics_server = match metrics_listener {
        Some(metrics_listener) => {
            tracing::info!(listen = %metrics_listener.local_addr()?, "metrics listening (GET /metrics)");
            Some(tokio::spawn(metrics::serve(metrics_listener, Arc::new(registry))))
        }
        None => None,
    };
    tracing::info!(listen = %listener.local_addr()?, public_url = %config.public_url, store = ?config.session.store, routes = config.routes.len(), "portcullis listening");
    // When the listener closed: the drain deadline of the refresh tasks counts from there, as
    // the connections' does.
    let closed_at = Arc::new(std::sync::OnceLock::new());
    let stopping = {
        let (closed_at, delay, public_url) = (closed_at.clone(), config.server.shutdown_delay, config.public_url.clone());
        async move {
            shutdown.await;
            readiness.start_draining();
            tracing::info!(%public_url, shutdown_delay = ?delay, "shutting down: /readyz answers 503");
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let _ = closed_at.set(Instant::now());
        }
    };
    connections::serve(listener, router, &config.server, stopping).await;
    let deadline = closed_at.get().copied().unwrap_or_else(Instant::now) + config.server.drain_timeout;
    let report = live.auth.drain(deadline).await;
    // Discovery retries forever while the OP is down; a stopped gateway has no use for it
    // (in the demo, other gateways go on running in the same process).
    discovery.abort();
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    tracing::info!(public_url = %config.public_url, refreshes_waited_for = report.running_at_start, refreshes_abandoned = report.abandoned, leases_released = report.leases_released, "portcullis stopped");
    Ok(())
}

/// The store, the OP handle (discovered in the background), the router, and the registry
/// of everything they record.
fn build(config: &Config) -> anyhow::Result<Built> {
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
            let options = RedisOptions::from_config(&config.session).map_err(anyhow::Error::msg)?;
            let redis = Arc::new(RedisStore::with_options(url, &options, lifetimes, config.session.store_timeout)?);
            let store: Arc<dyn SessionStore> = match config.session.read_cache.enabled {
                true => Arc::new(CachedStore::new((*redis).clone(), redis.change_feed(), ReadCacheSettings::from_config(config))),
                false => redis.clone(),
            };
            (store, Some(redis.clone()), StoreCollector::Redis(redis))
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
    let readiness = Readiness::new(provider, redis);
    let live = Live { routes: routes.clone(), auth: auth.clone(), http: http.clone() };
    let gateway = app::router(config, routes, auth, readiness.clone(), &http);
    let router = crate::access_log::AccessLog::new(config, gateway);
    let registry = metrics::registry(&library, &http, collector);
    Ok(Built { router, discovery, readiness, live, registry })
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM. From then on, a second one ends the
/// process at once: an operator who does not want to wait for the drain is not made to.
pub(crate) async fn shutdown_signal() {
    one_signal().await;
    tokio::spawn(async {
        one_signal().await;
        tracing::warn!("second stop signal: exiting without waiting for the drain");
        std::process::exit(1);
    });
}

async fn one_signal() {
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
