//! The gateway's HTTP surface, assembled in one place, outermost first:
//!
//! 0. The boundary (`boundary.rs`), before any routing: one canonical path, and the client's
//!    copies of gateway-owned headers removed (a trusted front proxy's statement about the
//!    original request kept aside, as an extension, for forward-auth).
//! 1. `/oauth2/*` (login, callback, sign-out, userinfo), `/healthz`, `/readyz`: the library's
//!    endpoints and the probes, answered by the gateway itself.
//! 2. `/oauth2/auth` and `/oauth2/auth/*` (forward-auth for nginx, Caddy, Traefik, Envoy):
//!    `forward_auth_route` canonicalizes the original URI the front proxy names and looks up
//!    its route (so the route's policy and rules apply), then the library's endpoint answers.
//! 3. Everything else ([`Proxied`], one hand-written service, reached without the router for
//!    any path outside `/oauth2/` and the probes): the route table picks the route (404 when
//!    none); the library's auth layer, called as a function with the route's policy, resolves
//!    the session (refreshing if due) and sets the identity headers, and applies the global and
//!    the route's authorization rules to that caller (403, or anonymous on a public route); the
//!    proxy streams the request to the route's upstream.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use http::StatusCode;
use portcullis::{
    auth::{Admission, AuthLayer, Authenticator, Failure, GlobalRules, OriginalRequest, RequestKind},
    config::{Config, Unauthenticated},
};
use tower::service_fn;

use crate::{
    boundary::{Boundary, Gateway},
    canonical_path,
    health::{self, Readiness},
    metrics::{self, HttpMetrics},
    proxy::Proxy,
    routes::LiveRoutes,
};

/// The whole gateway, serving the route table `table` holds (a reload replaces it).
pub(crate) fn router(config: &Config, table: LiveRoutes, auth: Authenticator, readiness: Readiness, http: &HttpMetrics) -> Gateway {
    let proxied = Arc::new(Proxied {
        table: table.clone(),
        auth: AuthLayer::new(auth.clone(), Unauthenticated::Login),
        // The authenticator's live rules: a reload replaces them.
        rules: auth.global_rules(),
        proxy: Proxy::new(config.server.client_body_timeout),
    });
    // Paths under `/oauth2/` the library does not answer fall through to the route table.
    let fallback = {
        let proxied = proxied.clone();
        service_fn(move |req: Request<Body>| {
            let proxied = proxied.clone();
            async move { Ok::<_, std::convert::Infallible>(proxied.serve(req).await) }
        })
    };

    // Forward-auth: the original URI's route picked here, the answer given by the library.
    let forward_auth_routing = Arc::new(ForwardAuthRouting { table, paths: canonical_path::Settings::new(config) });
    let forward_auth = portcullis::auth::forward_auth_routes(auth.clone(), auth.global_rules())
        .route_layer(middleware::from_fn_with_state(forward_auth_routing, forward_auth_route));

    let routed = Router::new()
        .merge(portcullis::auth::routes(auth))
        .merge(forward_auth)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz).with_state(readiness))
        // Request metrics of the endpoints above, by path; proxied requests record theirs
        // with their route's handles in `Proxied::serve`.
        .route_layer(middleware::from_fn_with_state(http.clone(), metrics::track_endpoint))
        .fallback_service(fallback);
    // The boundary runs before the router matches, so every route below sees the canonical
    // path and none of the client's copies of gateway-owned headers.
    Gateway::new(Arc::new(Boundary::new(config, http.route("refused"))), routed, proxied)
}

/// Whether `path` may be one the router answers itself (`/oauth2/*`, the probes); every other
/// path goes straight to [`Proxied`], the hot path, without the router's dispatch.
pub(crate) fn is_router_path(path: &str) -> bool {
    path.starts_with("/oauth2/") || path == "/healthz" || path == "/readyz"
}

/// The proxy path as one hand-written service: route lookup, then the library's auth layer
/// (session, cross-site check, identity headers) and authorization rules called as functions,
/// then the proxy. The auth layer, the authorization layer, a `from_fn` router layer and a
/// `service_fn` each cost a boxed future, a service clone and extension inserts per request
/// (BENCHMARKS.md, issue 10). This is the one place where a request's route, caller, status
/// and duration are all known.
pub(crate) struct Proxied {
    table: LiveRoutes,
    auth: AuthLayer,
    /// `[authorization]`, applied with the route's own rules to every caller (reloadable).
    rules: GlobalRules,
    proxy: Proxy,
}

impl Proxied {
    /// Answers one request that the boundary let through.
    pub(crate) async fn serve(&self, mut req: Request<Body>) -> Response {
        let started = tokio::time::Instant::now();
        let table = self.table.load();
        let Some(route) = table.lookup(req.uri().path()) else {
            let mut failure = Failure::bad_request("no_route", "There is nothing at this address.");
            failure.status = StatusCode::NOT_FOUND;
            let response = failure.respond(RequestKind::of(req.headers())).into_response();
            table.unmatched.record(response.status(), started.elapsed());
            return response;
        };
        crate::access_log::note_route(&req, &route.config);
        let rules = self.rules.load();
        let response = match self.auth.admit(&mut req, Some(&route.config), Some(&rules)).await {
            Admission::Respond(response) => response,
            Admission::Forward(admitted) => {
                if let Some(caller) = &admitted.caller {
                    crate::access_log::note_caller(&req, caller);
                }
                let mut response = self.proxy.forward(route, req).await;
                admitted.finish(&mut response);
                response
            }
        };
        route.metrics.record(response.status(), started.elapsed());
        response
    }
}

/// What `forward_auth_route` needs: the route table and the path rules of the boundary.
struct ForwardAuthRouting {
    table: LiveRoutes,
    paths: canonical_path::Settings,
}

/// For a forward-auth call: the original request as the trusted front proxy names it (or
/// Envoy's path), its URI made canonical by the boundary's own rules (a proxy may pass the
/// client's spelling as it came: `/public/../admin` must be judged as `/admin`, the path the
/// upstream will be routed on), and its route's config, for the library's endpoint.
async fn forward_auth_route(State(routing): State<Arc<ForwardAuthRouting>>, mut req: Request, next: Next) -> Response {
    let kind = RequestKind::of(req.headers());
    let mut original = match OriginalRequest::of(&req) {
        Ok(original) => original,
        Err(failure) => {
            tracing::warn!(code = failure.code, "forward-auth refused");
            return failure.respond(kind);
        }
    };
    let canonical = original.uri.parse::<http::Uri>().map_err(|e| e.to_string()).and_then(|uri| {
        canonical_path::canonicalize_uri(&routing.paths, &uri).map(|c| c.map(|c| c.to_string())).map_err(|r| r.to_string())
    });
    match canonical {
        Ok(Some(uri)) => original.uri = uri,
        Ok(None) => {}
        Err(reason) => {
            tracing::info!(%reason, "forward-auth: original path refused");
            return Failure::bad_request("bad_path", reason).respond(kind);
        }
    }
    let path = original.uri.split('?').next().unwrap_or("/");
    if let Some(route) = routing.table.load().lookup(path) {
        req.extensions_mut().insert(route.config.clone());
    }
    req.extensions_mut().insert(original);
    next.run(req).await
}
