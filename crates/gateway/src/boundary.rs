//! The request boundary: what every request goes through before routing, so that nothing
//! behind it (the `/oauth2/*` endpoints, the route table, the auth layer, the upstream) ever
//! sees a path or a gateway-owned header the way the client spelled it.
//!
//! 1. One canonical path (`canonical_path`): the path the router matches is the path the
//!    upstream receives; what cannot be made unambiguous is refused with 400.
//! 2. Headers the gateway owns (`client_headers`): the client's copies are removed here,
//!    whatever their spelling, before any layer sets the gateway's own. From a peer in
//!    `trusted_proxies` only, `X-Forwarded-Uri`/`-Method` and `X-Original-*` are first read
//!    into a `ForwardedRequest` extension for forward-auth.

use std::{pin::Pin, sync::Arc};

use axum::{
    Router,
    body::Body,
    response::{IntoResponse, Response},
};
use http::Request;
use portcullis::{
    auth::{Failure, RequestKind},
    config::Config,
};
use tower::ServiceExt;

use crate::{
    app::{Proxied, is_router_path},
    canonical_path,
    client_headers::{self, Peer},
    metrics::RouteMetrics,
};

/// Settings of the boundary, built once from the config.
#[derive(Debug)]
pub(crate) struct Boundary {
    paths: canonical_path::Settings,
    headers: client_headers::Settings,
    /// Requests the boundary refused, counted as route `refused`.
    refused: Arc<RouteMetrics>,
}

impl Boundary {
    pub(crate) fn new(config: &Config, refused: Arc<RouteMetrics>) -> Self {
        Self { paths: canonical_path::Settings::new(config), headers: client_headers::Settings::new(config), refused }
    }
}

/// Canonical path, then owned headers removed: the request as the router may see it (`None`), or
/// the refusal to send instead. A plain function called by [`Gateway`], not an axum middleware: an
/// outer router with a `from_fn` layer cost ~1,500 instructions per request (BENCHMARKS.md).
pub(crate) fn apply<B>(boundary: &Boundary, req: &mut Request<B>, peer_info: Option<&Peer>) -> Option<Response> {
    match canonical_path::canonicalize_uri(&boundary.paths, req.uri()) {
        Ok(Some(uri)) => *req.uri_mut() = uri,
        Ok(None) => {}
        Err(refusal) => {
            // The path as sent, quoted and cut short: it is the attacker's text (the query,
            // which may carry tokens, is left out).
            let path = req.uri().path();
            let shown = path.char_indices().nth(200).map_or(path, |(end, _)| &path[..end]);
            tracing::info!(reason = %refusal, path = ?shown, "request path refused");
            return Some(Failure::bad_request("bad_path", refusal.to_string()).respond(RequestKind::of(req.headers())).into_response());
        }
    }
    let peer = peer_info.map(|p| p.ip);
    // A trusted front proxy's statement about the original request, for forward-auth: read
    // before the pass below removes the headers, kept as an extension (no upstream sees it).
    if let Some(forwarded) = client_headers::forwarded_request(&boundary.headers, req.headers(), peer) {
        req.extensions_mut().insert(forwarded);
    }
    client_headers::sanitize_from(&boundary.headers, req.headers_mut(), peer_info);
    None
}

/// The whole gateway as one service: the boundary, then the router (`/oauth2/*`, the probes)
/// or, for every other path, the proxy path directly.
#[derive(Clone)]
pub(crate) struct Gateway(Arc<Parts>);

struct Parts {
    boundary: Arc<Boundary>,
    router: Router,
    proxied: Arc<Proxied>,
}

impl Gateway {
    pub(crate) fn new(boundary: Arc<Boundary>, router: Router, proxied: Arc<Proxied>) -> Self {
        Self(Arc::new(Parts { boundary, router, proxied }))
    }

    /// Answers one request from `peer` (`None`: in-process callers without a socket). The
    /// boundary runs at once; the returned future does the rest.
    #[allow(dead_code)]
    pub(crate) fn serve<B>(&self, req: Request<B>, peer: Option<&Peer>) -> Pin<Box<dyn Future<Output = Response> + Send>>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        Box::pin(self.serve_unboxed(req, peer))
    }

    /// [`Gateway::serve`] without the outer box, for a caller that wraps the future in its own
    /// (the access log). The proxy path's state machine (route, auth, proxy: kilobytes) is
    /// boxed where it is made, so the futures around it stay small: each of them is moved by
    /// value a few times (into the access log's future, into hyper's dispatcher), and a move
    /// copies the whole state machine. Unboxed in hyper's dispatcher it cost ~28,000
    /// instructions per request; boxed one level up (around the access log's future) the
    /// copies still cost ~1,500 (callgrind, BENCHMARKS.md).
    pub(crate) fn serve_unboxed<B>(&self, mut req: Request<B>, peer: Option<&Peer>) -> impl Future<Output = Response> + Send + use<B>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let refusal = apply(&self.0.boundary, &mut req, peer);
        if let Some(refusal) = &refusal {
            self.0.boundary.refused.count(refusal.status());
        }
        let this = self.clone();
        async move {
            if let Some(refusal) = refusal {
                return refusal;
            }
            let parts = &*this.0;
            if is_router_path(req.uri().path()) {
                match parts.router.clone().oneshot(req.map(Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            } else {
                Box::pin(parts.proxied.serve(req.map(Body::new))).await
            }
        }
    }
}
