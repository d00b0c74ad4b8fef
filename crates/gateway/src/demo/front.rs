//! The round-robin front of `portcullis demo --instances N`: what a load balancer does in
//! production, small enough to live here.
//!
//! Balancing is per request, not per connection: a browser sends its parallel calls over a
//! handful of keep-alive connections, and per-connection balancing would put most of them on
//! one instance, hiding exactly the cross-instance race the demo is meant to show. The
//! forwarding itself is the gateway's own proxy (pooled keep-alive connections to every
//! instance, bodies streamed both ways, upgrades spliced).

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::Context;
use axum::{Router, body::Body, extract::Request, http::HeaderValue};
use portcullis::config::Unauthenticated;
use tokio::net::TcpListener;

use crate::{proxy::Proxy, routes::Route};

/// Names the instance (1-based) that served a request: set by the front on the request
/// towards the instance (the gateway forwards it, the demo app echoes it) and on the response.
pub(crate) const INSTANCE_HEADER: &str = "x-portcullis-instance";

struct Instances {
    /// One catch-all route per instance, for the proxy.
    routes: Vec<Arc<Route>>,
    /// Which instance the next request goes to.
    next: AtomicUsize,
    proxy: Proxy,
}

/// Serves the front on `listener`, spreading requests over `instances` in turn.
pub(crate) async fn serve(
    listener: TcpListener,
    instances: &[SocketAddr],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let routes = instances
        .iter()
        .map(|addr| {
            let upstream = format!("http://{addr}").parse().expect("a socket address makes a URL");
            Arc::new(Route::new("/".into(), upstream, Unauthenticated::Allow))
        })
        .collect();
    let state = Arc::new(Instances { routes, next: AtomicUsize::new(0), proxy: Proxy::new(std::time::Duration::from_secs(60)) });
    let front = Router::new().fallback(move |req: Request<Body>| forward(state.clone(), req));
    axum::serve(listener, front.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .context("round-robin front")
}

async fn forward(instances: Arc<Instances>, mut req: Request<Body>) -> axum::response::Response {
    let n = instances.next.fetch_add(1, Ordering::Relaxed) % instances.routes.len();
    let label = HeaderValue::from(n + 1);
    // Overwrites whatever a client sent: the label is the front's word.
    req.headers_mut().insert(INSTANCE_HEADER, label.clone());
    let mut response = instances.proxy.forward(&instances.routes[n], req).await;
    response.headers_mut().insert(INSTANCE_HEADER, label);
    response
}
