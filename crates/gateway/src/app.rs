//! The gateway's HTTP surface, assembled in one place, outermost first:
//!
//! 0. The boundary (`boundary.rs`), before any routing: one canonical path, and the client's
//!    copies of gateway-owned headers removed.
//! 1. `/oauth2/*` (login, callback, sign-out, userinfo), `/healthz`, `/readyz`: the library's
//!    endpoints and the probes, answered by the gateway itself.
//! 2. Everything else: the route table picks the route (404 when none) and tells the auth layer
//!    the route's policy; the auth layer resolves the session (refreshing if due) and sets the
//!    identity headers; the proxy streams the request to the route's upstream.

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
    auth::{AuthLayer, Authenticator, Failure, RequestKind},
    config::{Config, Unauthenticated},
};
use tower::{Layer, service_fn};

use crate::{
    boundary::{self, Boundary},
    health::{self, Readiness},
    proxy::Proxy,
    routes::{Route, RouteTable},
};

/// The whole router.
pub(crate) fn router(config: &Config, auth: Authenticator, readiness: Readiness) -> Router {
    let table = Arc::new(RouteTable::new(&config.routes));
    let proxy = Arc::new(Proxy::new(config.public_url.scheme()));
    let forward = service_fn(move |req: Request<Body>| {
        let proxy = proxy.clone();
        async move {
            let route = req.extensions().get::<Arc<Route>>().cloned().expect("select_route ran first");
            Ok::<_, std::convert::Infallible>(proxy.forward(&route, req).await)
        }
    });
    let authenticated = AuthLayer::new(auth.clone(), Unauthenticated::Login).layer(forward);
    let gateway = Router::new().fallback_service(authenticated).layer(middleware::from_fn_with_state(table, select_route));

    let routed = Router::new()
        .merge(portcullis::auth::routes(auth))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz).with_state(readiness))
        .merge(gateway);
    // A layer on the outer router runs before the inner router matches, so every route below
    // sees the canonical path.
    let boundary = Arc::new(Boundary::new(config));
    Router::new().fallback_service(routed).layer(middleware::from_fn_with_state(boundary, boundary::apply))
}

/// Picks the route and hands its policy to the auth layer.
async fn select_route(State(table): State<Arc<RouteTable>>, mut req: Request, next: Next) -> Response {
    let Some(route) = table.lookup(req.uri().path()).cloned() else {
        let mut failure = Failure::bad_request("no_route", "There is nothing at this address.");
        failure.status = StatusCode::NOT_FOUND;
        return failure.respond(RequestKind::of(req.headers())).into_response();
    };
    req.extensions_mut().insert(route.unauthenticated);
    req.extensions_mut().insert(portcullis::auth::CsrfProtection::from(route.config.csrf_protection));
    // The route's settings for the library's layers (bearer mode, audiences, scopes, rules).
    req.extensions_mut().insert(route.config.clone());
    req.extensions_mut().insert(route);
    next.run(req).await
}
