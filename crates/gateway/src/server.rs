//! Starting and stopping the gateway.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use portcullis::{
    auth::{Authenticator, ProviderHandle},
    config::{Config, StoreKind},
    session::{Lifetimes, MemoryStore, RedisStore, SessionStore},
};

use crate::{app, health::Readiness};

/// Runs until SIGINT/SIGTERM, then drains in-flight requests.
pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let lifetimes = Lifetimes { idle: config.session.idle_timeout, absolute: config.session.absolute_timeout };
    let (store, redis): (Arc<dyn SessionStore>, _) = match config.session.store {
        // The cookie store keeps sessions in the browser; pending logins stay in memory.
        StoreKind::Memory | StoreKind::Cookie => (Arc::new(MemoryStore::new(lifetimes)), None),
        StoreKind::Redis => {
            let url = config.session.redis_url.as_deref().context("session.redis_url is required")?;
            let redis = Arc::new(RedisStore::new(url, lifetimes, config.session.store_timeout)?);
            (redis.clone(), Some(redis))
        }
    };
    let provider = ProviderHandle::default();
    let post_logout = config.oidc.post_logout_redirect_url.clone().unwrap_or_else(|| config.public_url.clone());
    provider.spawn_discovery(config.oidc.clone(), config.redirect_uri(), post_logout);
    let auth = Authenticator::new(&config, store, provider.clone());
    let router = app::router(&config, auth, Readiness { provider, redis });

    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, public_url = %config.public_url, store = ?config.session.store, routes = config.routes.len(), "portcullis listening");
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server error")?;
    tracing::info!("portcullis stopped");
    Ok(())
}

async fn shutdown_signal() {
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
