//! `AuthLayer`: the tower middleware that puts a session in front of any axum/hyper service.
//!
//! ```text
//! let app = Router::new().route("/api", get(handler))
//!     .layer(AuthLayer::new(authenticator, Unauthenticated::Login));
//! ```
//! The inner service sees `Authorization: Bearer <fresh access token>`, the identity headers,
//! and a [`Session`] extension; never the client's own identity headers or the session cookie.
//! A per-request policy can be set by an outer layer by inserting an [`Unauthenticated`]
//! extension (the gateway's route table does this), and likewise a [`CsrfProtection`].
//!
//! Cross-site request forgery: a cookie-authenticated request with an unsafe method (anything
//! but GET, HEAD, OPTIONS) that the browser marks as sent by another site gets 403 and never
//! reaches the inner service (rules in `cross_site.rs`). On by default; off per request with
//! `CsrfProtection::Off`, or for the whole layer with [`AuthLayer::without_csrf_protection`].
//!
//! API clients with their own token: where bearer tokens are on (the route's
//! `Arc<RouteConfig>` extension, which the gateway inserts, else the layer's
//! [`AuthLayer::with_bearer`] default), a request **without a session** that carries
//! `Authorization: Bearer` has the token checked (`crate::bearer`). Valid: the token is
//! forwarded unchanged, the identity headers come from its claims, and the inner service
//! sees [`Caller::Bearer`]. Invalid: 401 `invalid_token`; valid without a required scope:
//! 403 `insufficient_scope`; OP not answering: 503. A session cookie wins over a bearer token
//! on the same request (its access token replaces the client's `Authorization`), so a
//! browser page that also sends a token keeps acting as the logged-in user. A bearer request
//! is not subject to the cross-site check: the browser never attaches a token by itself, so
//! there is no ambient authority for another site to borrow.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{body::Body, response::Response};
use futures_util::future::BoxFuture;
use http::Request;
use tower::{Layer, Service};

use super::{
    Authenticator, Caller, Failure, RequestKind,
    cross_site::{self, Site},
    identity_headers,
};
use crate::{
    bearer::{BearerPolicy, BearerSettings},
    config::{RouteConfig, Unauthenticated},
    session::Identity,
};

/// Whether cookie-authenticated unsafe requests from another site are refused. As a request
/// extension it overrides the layer's default for that request (the gateway inserts the
/// route's `csrf_protection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CsrfProtection {
    /// Refuse them with 403 (the default).
    #[default]
    On,
    /// Forward them: the upstream has its own defence (tokens), or expects cross-site posts.
    Off,
}

impl From<bool> for CsrfProtection {
    fn from(on: bool) -> Self {
        if on { Self::On } else { Self::Off }
    }
}

/// Adds session authentication to a service.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Authenticator,
    default_policy: Unauthenticated,
    default_csrf: CsrfProtection,
    /// `public_url`'s origin, serialized once rather than per request.
    own_origin: Arc<str>,
    /// Bearer tokens where the request carries no `Arc<RouteConfig>`.
    default_bearer: Arc<BearerSettings>,
}

impl AuthLayer {
    /// `default_policy` applies unless the request carries an [`Unauthenticated`] extension.
    /// Cross-site protection is on unless turned off here or per request.
    pub fn new(auth: Authenticator, default_policy: Unauthenticated) -> Self {
        let own_origin = cross_site::origin_of(&auth.0.public_url).into();
        Self { auth, default_policy, default_csrf: CsrfProtection::On, own_origin, default_bearer: Arc::default() }
    }

    /// Accepts API clients' own bearer tokens as `settings` says, on requests that carry no
    /// `Arc<RouteConfig>` extension (a route's own `bearer`, `audiences` and
    /// `required_scopes` win). Off by default.
    pub fn with_bearer(mut self, settings: BearerSettings) -> Self {
        self.default_bearer = Arc::new(settings);
        self
    }

    /// Forwards cookie-authenticated unsafe requests from other sites unless a request carries
    /// `CsrfProtection::On`. Only for services that defend themselves (e.g. with CSRF tokens).
    pub fn without_csrf_protection(mut self) -> Self {
        self.default_csrf = CsrfProtection::Off;
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            default_policy: self.default_policy,
            default_csrf: self.default_csrf,
            own_origin: self.own_origin.clone(),
            default_bearer: self.default_bearer.clone(),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticator,
    default_policy: Unauthenticated,
    default_csrf: CsrfProtection,
    own_origin: Arc<str>,
    default_bearer: Arc<BearerSettings>,
}

impl<S> Service<Request<Body>> for AuthService<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        // Explicit extensions first (library users), then the route's settings (the gateway
        // inserts its `Arc<RouteConfig>` only: each extra extension is a boxed insert per request).
        let route = req.extensions().get::<Arc<RouteConfig>>().cloned();
        let policy =
            req.extensions().get::<Unauthenticated>().copied().or(route.as_ref().map(|r| r.unauthenticated)).unwrap_or(self.default_policy);
        let csrf = req
            .extensions()
            .get::<CsrfProtection>()
            .copied()
            .or(route.as_ref().map(|r| CsrfProtection::from(r.csrf_protection)))
            .unwrap_or(self.default_csrf);
        let own_origin = self.own_origin.clone();
        let default_bearer = self.default_bearer.clone();
        Box::pin(async move {
            let cookie_name = auth.cookies().session_name.clone();
            let kind = RequestKind::of(req.headers());
            // Judged before the headers are edited below; acted on only when there is a session.
            let cross_site = match csrf == CsrfProtection::On && cross_site::needs_same_origin(req.method(), req.headers()) {
                true => match cross_site::judge(req.headers(), &own_origin) {
                    Site::Other(reason) => Some((reason, req.method().clone(), req.uri().path().to_string())),
                    Site::SameOrigin | Site::Unknown => None,
                },
                false => None,
            };
            let outcome = auth.authenticate(req.headers()).await;
            match outcome {
                Ok(Some(session)) => {
                    let headers = req.headers_mut();
                    // Every session today comes from the cookie, which the browser attaches to
                    // requests other sites make it send: that ambient authority is what a
                    // forged request borrows. A request that authenticates by a bearer token
                    // it carries itself (below) skips this check. Requests without a session,
                    // on `allow` routes, borrow nothing and are not checked.
                    if let Some((reason, method, path)) = cross_site {
                        tracing::warn!(session = %session.key, %method, %path, reason, "cross-site request refused");
                        let mut response = Failure::cross_site().respond(kind);
                        // A cookie-store refresh re-sealed the session: the browser must still
                        // get the new cookie, or its old one would stop working.
                        for cookie in session.set_cookies {
                            response.headers_mut().append(http::header::SET_COOKIE, cookie);
                        }
                        return Ok(response);
                    }
                    identity_headers::strip_client_identity(headers, true);
                    identity_headers::set_identity(headers, &session.record);
                    identity_headers::strip_cookie(headers, &cookie_name);
                    let set_cookies = session.set_cookies.clone();
                    req.extensions_mut().insert(Caller::Session(session.record.clone()));
                    req.extensions_mut().insert(session);
                    let mut response = inner.call(req).await?;
                    for cookie in set_cookies {
                        response.headers_mut().append(http::header::SET_COOKIE, cookie);
                    }
                    Ok(response)
                }
                Ok(None) => {
                    let bearer = match &route {
                        Some(route) => BearerPolicy::from(&**route),
                        None => default_bearer.policy(),
                    };
                    match auth.authenticate_bearer_with(req.headers(), &bearer).await {
                        Ok(Some(identity)) => {
                            let headers = req.headers_mut();
                            // The client's identity headers go; its Authorization (the token
                            // just validated) stays, unchanged.
                            identity_headers::strip_client_identity(headers, false);
                            identity_headers::strip_cookie(headers, &cookie_name);
                            set_bearer_identity(headers, &identity);
                            req.extensions_mut().insert(Caller::Bearer(identity));
                            inner.call(req).await
                        }
                        Err(e) => Ok(e.respond(bearer.required_scopes)),
                        Ok(None) => without_session(policy, kind, &auth, req, inner, &cookie_name).await,
                    }
                }
                Err(_) if policy == Unauthenticated::Allow => without_session(policy, kind, &auth, req, inner, &cookie_name).await,
                Err(e) => {
                    tracing::warn!(error = %e, path = %req.uri().path(), "request refused; session kept");
                    Ok(e.failure().respond(kind))
                }
            }
        })
    }
}

/// No session and no bearer identity: the route's `unauthenticated` policy.
async fn without_session<S>(
    policy: Unauthenticated,
    kind: RequestKind,
    auth: &Authenticator,
    mut req: Request<Body>,
    mut inner: S,
    cookie_name: &str,
) -> Result<Response, Infallible>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    match policy {
        Unauthenticated::Allow => {
            let headers = req.headers_mut();
            identity_headers::strip_client_identity(headers, false);
            identity_headers::strip_cookie(headers, cookie_name);
            inner.call(req).await
        }
        Unauthenticated::Login => {
            let return_to = req.uri().path_and_query().map_or("/", |p| p.as_str());
            Ok(auth.login_required(kind, return_to, req.headers()).await)
        }
        Unauthenticated::Deny => Ok(Failure::unauthenticated(None).respond(kind)),
    }
}

/// `X-Forwarded-User`, `-Email`, `-Groups` from a bearer token's claims (the session path's
/// `identity_headers::set_identity` also sets `Authorization`, which here stays the client's).
fn set_bearer_identity(headers: &mut http::HeaderMap, identity: &Identity) {
    let mut insert = |name: http::HeaderName, value: &str| match http::HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        // A claim with control characters could split headers; better absent than mangled.
        Err(_) => tracing::warn!(header = %name, "claim value is not a valid header value; header omitted"),
    };
    insert(identity_headers::USER, &identity.user);
    if let Some(email) = &identity.email {
        insert(identity_headers::EMAIL, email);
    }
    if !identity.groups.is_empty() {
        insert(identity_headers::GROUPS, &identity.groups.join(","));
    }
}
