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
//! 3. Everything else: the route table picks the route (404 when none) and tells the auth layer
//!    the route's policy; the auth layer resolves the session (refreshing if due) and sets the
//!    identity headers; the authorization layer applies the global and the route's rules to
//!    that caller (403, or anonymous on a public route); the proxy streams the request to the
//!    route's upstream.

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
    auth::{AuthLayer, Authenticator, AuthorizeLayer, Failure, OriginalRequest, RequestKind},
    config::{Config, Unauthenticated},
};
use tower::{Layer, service_fn};

use crate::{
    boundary::{Boundary, Gateway},
    canonical_path,
    health::{self, Readiness},
    metrics::{self, HttpMetrics},
    proxy::Proxy,
    routes::{LiveRoutes, Route},
};

/// The whole router, serving the route table `table` holds (a reload replaces it).
pub(crate) fn router(config: &Config, table: LiveRoutes, auth: Authenticator, readiness: Readiness, http: &HttpMetrics) -> Gateway {
    let proxy = Arc::new(Proxy::new(config.server.client_body_timeout));
    let forward = service_fn(move |req: Request<Body>| {
        let proxy = proxy.clone();
        async move {
            let route = req.extensions().get::<Arc<Route>>().cloned().expect("select_route ran first");
            crate::access_log::note_caller(&req);
            Ok::<_, std::convert::Infallible>(proxy.forward(&route, req).await)
        }
    });
    // Innermost first. Authorization: the global and the route's rules on the caller the auth
    // layer found (its current identity, re-read per request, so a refresh's claims count).
    // The global rules are the authenticator's live ones: a reload replaces them.
    let authorized = AuthorizeLayer::new(auth.global_rules()).layer(forward);
    // Authentication: cookie → session (refreshing if due), the route's policy without one.
    let authenticated = AuthLayer::new(auth.clone(), Unauthenticated::Login).layer(authorized);
    // Routing: the route, its policy and its config as request extensions, or 404.
    let gateway = Router::new().fallback_service(authenticated).layer(middleware::from_fn_with_state(table.clone(), select_route));

    // Forward-auth: the original URI's route picked here, the answer given by the library.
    let forward_auth_routing = Arc::new(ForwardAuthRouting { table, paths: canonical_path::Settings::new(config) });
    let forward_auth = portcullis::auth::forward_auth_routes(auth.clone(), auth.global_rules())
        .route_layer(middleware::from_fn_with_state(forward_auth_routing, forward_auth_route));

    let routed = Router::new()
        .merge(portcullis::auth::routes(auth))
        .merge(forward_auth)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz).with_state(readiness))
        // Request metrics of the endpoints above, by path; proxied requests record
        // theirs with their route's handles in `select_route`.
        .route_layer(middleware::from_fn_with_state(http.clone(), metrics::track_endpoint))
        .merge(gateway);
    // The boundary runs before the router matches, so every route below sees the canonical
    // path and none of the client's copies of gateway-owned headers.
    Gateway { boundary: Arc::new(Boundary::new(config, http.route("refused"))), router: routed }
}

/// Picks the route and hands its policy to the auth layer.
async fn select_route(State(table): State<LiveRoutes>, mut req: Request, next: Next) -> Response {
    let started = tokio::time::Instant::now();
    let Some(route) = table.load().lookup(req.uri().path()).cloned() else {
        let mut failure = Failure::bad_request("no_route", "There is nothing at this address.");
        failure.status = StatusCode::NOT_FOUND;
        let response = failure.respond(RequestKind::of(req.headers())).into_response();
        table.load().unmatched.record(response.status(), started.elapsed());
        return response;
    };
    let metrics = route.metrics.clone();
    // The route's settings for the library's layers (policy, CSRF switch, bearer mode,
    // audiences, scopes, rules): one extension, read by each layer.
    crate::access_log::note_route(&req, &route.config);
    req.extensions_mut().insert(route.config.clone());
    req.extensions_mut().insert(route);
    let response = next.run(req).await;
    metrics.record(response.status(), started.elapsed());
    response
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
