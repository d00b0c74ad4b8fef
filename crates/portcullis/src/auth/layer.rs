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
    Authenticator, Caller, Failure, RequestKind, Session,
    authorization::{self, Verdict},
    cross_site::{self, Site},
    identity_headers,
};
use crate::{
    bearer::{BearerPolicy, BearerSettings},
    config::{AuthorizationRules, RouteConfig, Unauthenticated},
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
        AuthService { inner, layer: self.clone() }
    }
}

/// What [`AuthLayer::admit`] decided for one request.
pub enum Admission {
    /// Forward the request (its headers are edited: identity set, client copies and the
    /// gateway's cookies removed); the response then goes through [`Admitted::finish`].
    Forward(Admitted),
    /// Answer with this instead (login redirect, 401, 403, 503).
    Respond(Response),
}

/// A request that may be forwarded, and who it comes from.
pub struct Admitted {
    /// Who the request comes from; `None` on an `allow` route without one (or a caller served
    /// anonymously there because it failed the authorization rules).
    pub caller: Option<Caller>,
    /// The session behind a [`Caller::Session`].
    pub session: Option<Session>,
    /// `Set-Cookie` values the response must carry (a cookie-store refresh re-sealed the
    /// session); kept when the caller is served anonymously.
    set_cookies: Vec<http::HeaderValue>,
}

impl Admitted {
    fn anonymous() -> Self {
        Self { caller: None, session: None, set_cookies: Vec::new() }
    }

    /// Adds what the response owes the browser (the re-sealed session cookie).
    pub fn finish(self, response: &mut Response) {
        append_cookies(response, self.set_cookies);
    }
}

fn append_cookies(response: &mut Response, cookies: Vec<http::HeaderValue>) {
    for cookie in cookies {
        response.headers_mut().append(http::header::SET_COOKIE, cookie);
    }
}

impl AuthLayer {
    /// The whole of the layer's work on one request, for a service that calls it itself
    /// instead of being wrapped (the gateway's proxy path: no boxed future per layer, no
    /// extensions). `route` is the request's route (its policy, CSRF switch and bearer
    /// settings; else a request's `Arc<RouteConfig>` extension, else the layer's defaults).
    /// With `rules`, the authorization rules [`AuthorizeLayer`](super::AuthorizeLayer) would
    /// apply (the global ones, and the route's) are applied too.
    pub async fn admit<B>(&self, req: &mut Request<B>, route: Option<&RouteConfig>, rules: Option<&AuthorizationRules>) -> Admission {
        let extension = match route {
            Some(_) => None,
            None => req.extensions().get::<Arc<RouteConfig>>().cloned(),
        };
        let route = route.or(extension.as_deref());
        // Explicit extensions first (library users), then the route's settings.
        let policy = req.extensions().get::<Unauthenticated>().copied().or(route.map(|r| r.unauthenticated)).unwrap_or(self.default_policy);
        let csrf = req
            .extensions()
            .get::<CsrfProtection>()
            .copied()
            .or(route.map(|r| CsrfProtection::from(r.csrf_protection)))
            .unwrap_or(self.default_csrf);
        let auth = &self.auth;
        let cookie_name = &auth.cookies().session_name;
        // `RequestKind` is read only where a response is made: forwarded requests never need it.
        let outcome = auth.authenticate(req.headers()).await;
        let mut admitted = match outcome {
            Ok(Some(session)) => {
                // Every session today comes from the cookie, which the browser attaches to
                // requests other sites make it send: that ambient authority is what a forged
                // request borrows. A request that authenticates by a bearer token it carries
                // itself (below) skips this check. Requests without a session, on `allow`
                // routes, borrow nothing and are not checked. Judged on the headers as the
                // client sent them (before the edits below).
                if csrf == CsrfProtection::On
                    && cross_site::needs_same_origin(req.method(), req.headers())
                    && let Site::Other(reason) = cross_site::judge(req.headers(), &self.own_origin)
                {
                    tracing::warn!(session = %session.key, method = %req.method(), path = %req.uri().path(), reason, "cross-site request refused");
                    let mut response = Failure::cross_site().respond(RequestKind::of(req.headers()));
                    // A cookie-store refresh re-sealed the session: the browser must still get
                    // the new cookie, or its old one would stop working.
                    append_cookies(&mut response, session.set_cookies);
                    return Admission::Respond(response);
                }
                let headers = req.headers_mut();
                // The client's `Authorization` is not removed here: `set_identity` replaces it
                // (or removes it, if the token cannot be a header value).
                identity_headers::strip_client_identity(headers, false);
                identity_headers::set_identity(headers, &session.record);
                identity_headers::strip_cookie(headers, cookie_name);
                let set_cookies = session.set_cookies.clone();
                Admitted { caller: Some(Caller::Session(session.record.clone())), session: Some(session), set_cookies }
            }
            Ok(None) => {
                let bearer = match route {
                    Some(route) => BearerPolicy::from(route),
                    None => self.default_bearer.policy(),
                };
                match auth.authenticate_bearer_with(req.headers(), &bearer).await {
                    Ok(Some(identity)) => {
                        let headers = req.headers_mut();
                        // The client's identity headers go; its Authorization (the token just
                        // validated) stays, unchanged.
                        identity_headers::strip_client_identity(headers, false);
                        identity_headers::strip_cookie(headers, cookie_name);
                        set_bearer_identity(headers, &identity);
                        Admitted { caller: Some(Caller::Bearer(identity)), session: None, set_cookies: Vec::new() }
                    }
                    Err(e) => return Admission::Respond(e.respond(bearer.required_scopes)),
                    Ok(None) => match without_session(policy, auth, req, cookie_name).await {
                        Some(response) => return Admission::Respond(response),
                        None => Admitted::anonymous(),
                    },
                }
            }
            Err(_) if policy == Unauthenticated::Allow => match without_session(policy, auth, req, cookie_name).await {
                Some(response) => return Admission::Respond(response),
                None => Admitted::anonymous(),
            },
            Err(e) => {
                tracing::warn!(error = %e, path = %req.uri().path(), "request refused; session kept");
                return Admission::Respond(e.failure().respond(RequestKind::of(req.headers())));
            }
        };
        if let (Some(global), Some(caller)) = (rules, &admitted.caller) {
            match authorization::decide(Some(caller), global, route, None, policy) {
                Verdict::Pass => {}
                Verdict::Anonymous(refusal) => {
                    authorization::log_refusal(caller, route, &refusal, true);
                    // What was set for the caller goes: the token and the identity headers.
                    identity_headers::strip_client_identity(req.headers_mut(), true);
                    admitted.caller = None;
                    admitted.session = None;
                }
                Verdict::Refuse(refusal) => {
                    authorization::log_refusal(caller, route, &refusal, false);
                    let mut response = refusal.failure(caller.identity()).respond(RequestKind::of(req.headers()));
                    append_cookies(&mut response, admitted.set_cookies);
                    return Admission::Respond(response);
                }
            }
        }
        Admission::Forward(admitted)
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
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
        let layer = self.layer.clone();
        Box::pin(async move {
            match layer.admit(&mut req, None, None).await {
                Admission::Respond(response) => Ok(response),
                Admission::Forward(mut admitted) => {
                    if let Some(caller) = admitted.caller.take() {
                        req.extensions_mut().insert(caller);
                    }
                    if let Some(session) = admitted.session.take() {
                        req.extensions_mut().insert(session);
                    }
                    let mut response = inner.call(req).await?;
                    admitted.finish(&mut response);
                    Ok(response)
                }
            }
        })
    }
}

/// No session and no bearer identity: the route's `unauthenticated` policy. `None`: forward
/// (an `allow` route, the client's identity headers and the gateway's cookies removed).
async fn without_session<B>(policy: Unauthenticated, auth: &Authenticator, req: &mut Request<B>, cookie_name: &str) -> Option<Response> {
    match policy {
        Unauthenticated::Allow => {
            let headers = req.headers_mut();
            identity_headers::strip_client_identity(headers, false);
            identity_headers::strip_cookie(headers, cookie_name);
            None
        }
        Unauthenticated::Login => {
            let return_to = req.uri().path_and_query().map_or("/", |p| p.as_str());
            Some(auth.login_required(RequestKind::of(req.headers()), return_to, req.headers()).await)
        }
        Unauthenticated::Deny => Some(Failure::unauthenticated(None).respond(RequestKind::of(req.headers()))),
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
