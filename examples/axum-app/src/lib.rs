//! An axum application that protects its own routes with Portcullis, without the gateway
//! process: the library's [`AuthLayer`] in front of the handlers, the `/oauth2/*` endpoints
//! merged into the app's router.
//!
//! - `/` is public.
//! - `/me` needs a login: a browser is sent to the OP and back; the handler reads the
//!   [`Caller`] (and, for browser sessions, the [`Session`]) the layer put in the request.
//! - `/api/orders` takes the browser session or an API client's own JWT access token for
//!   `http://api.test` with scope `api:read` (`AuthLayer::with_bearer`).

use std::sync::Arc;

use axum::{Extension, Json, Router, routing::get};
use portcullis::{
    auth::{self, AuthLayer, Authenticator, Caller, ProviderHandle, Session},
    bearer::BearerSettings,
    config::{Config, Unauthenticated},
    session::{Lifetimes, MemoryStore},
};
use serde_json::{Value, json};

/// The audience API clients' tokens must name to call `/api/orders`.
pub const API_AUDIENCE: &str = "http://api.test";

/// The application and the background task that discovers the OP (and refreshes its keys).
pub fn app(config: &Config) -> (Router, tokio::task::JoinHandle<()>) {
    let store = Arc::new(MemoryStore::new(Lifetimes { idle: config.session.idle_timeout, absolute: config.session.absolute_timeout }));
    let provider = ProviderHandle::default();
    let post_logout = config.oidc.post_logout_redirect_url.clone().unwrap_or_else(|| config.public_url.clone());
    let discovery = provider.spawn_discovery(config.oidc.clone(), config.redirect_uri(), post_logout);
    let authenticator = Authenticator::new(config, store, provider);

    let protected = Router::new().route("/me", get(me)).route("/api/orders", get(orders)).route_layer(
        AuthLayer::new(authenticator.clone(), Unauthenticated::Login)
            .with_bearer(BearerSettings::jwt([API_AUDIENCE]).require_scopes(["api:read"])),
    );
    let router = Router::new().route("/", get(|| async { "Public page. Try /me." })).merge(protected).merge(auth::routes(authenticator));
    (router, discovery)
}

/// Who is calling, however they authenticated.
async fn me(Extension(caller): Extension<Caller>, session: Option<Extension<Session>>) -> Json<Value> {
    let identity = caller.identity();
    let via = match &caller {
        Caller::Session(_) => "session",
        Caller::Bearer(_) => "bearer",
    };
    Json(json!({
        "user": identity.user,
        "email": identity.email,
        "via": via,
        // Only browser sessions have one: when the access token the layer holds expires.
        "access_token_expires_at": session.and_then(|Extension(s)| s.record.tokens.expires_at),
    }))
}

async fn orders(Extension(caller): Extension<Caller>) -> Json<Value> {
    Json(json!({ "orders": [], "for": caller.identity().user }))
}
