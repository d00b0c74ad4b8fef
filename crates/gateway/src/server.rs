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
    session::{Lifetimes, MemoryStore, RedisOptions, RedisStore, SessionStore},
};
use tokio::net::TcpListener;

use crate::{
    app,
    health::Readiness,
    routes::{LiveRoutes, RouteTable},
};

mod connections;

/// Runs until SIGINT/SIGTERM, then drains in-flight requests.
pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let listener = bind(config.listen).await?;
    serve(config, listener, shutdown_signal()).await
}

/// Binds a loopback or configured address, naming it on failure.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}

/// Serves one gateway built from `config` on `listener` until `shutdown` resolves, then
/// drains in-flight requests. `config.listen` is not used: the caller chose the socket.
pub(crate) async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (router, discovery) = build(&config)?;
    tracing::info!(listen = %listener.local_addr()?, public_url = %config.public_url, store = ?config.session.store, routes = config.routes.len(), "portcullis listening");
    connections::serve(listener, router, &config.server, shutdown).await;
    // Discovery retries forever while the OP is down; a stopped gateway has no use for it
    // (in the demo, other gateways go on running in the same process).
    discovery.abort();
    tracing::info!(public_url = %config.public_url, "portcullis stopped");
    Ok(())
}

/// The store, the OP handle (discovered in the background) and the router.
fn build(config: &Config) -> anyhow::Result<(crate::boundary::Gateway, tokio::task::JoinHandle<()>)> {
    let lifetimes = Lifetimes { idle: config.session.idle_timeout, absolute: config.session.absolute_timeout };
    let (store, redis): (Arc<dyn SessionStore>, _) = match config.session.store {
        // The cookie store keeps sessions in the browser; pending logins stay in memory.
        StoreKind::Memory | StoreKind::Cookie => (Arc::new(MemoryStore::new(lifetimes)), None),
        StoreKind::Redis => {
            let url = config.session.redis_url.as_deref().context("session.redis_url is required")?;
            let options = RedisOptions::from_config(&config.session).map_err(anyhow::Error::msg)?;
            let redis = Arc::new(RedisStore::with_options(url, &options, lifetimes, config.session.store_timeout)?);
            (redis.clone(), Some(redis))
        }
    };
    let provider = ProviderHandle::default();
    let post_logout = config.oidc.post_logout_redirect_url.clone().unwrap_or_else(|| config.public_url.clone());
    let discovery = provider.spawn_discovery(config.oidc.clone(), config.redirect_uri(), post_logout);
    let auth = Authenticator::new(config, store, provider.clone());
    let routes = LiveRoutes::new(RouteTable::new(&config.routes));
    Ok((app::router(config, routes, auth, Readiness::new(provider, redis)), discovery))
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
