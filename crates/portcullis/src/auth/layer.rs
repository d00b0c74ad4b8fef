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
use crate::config::Unauthenticated;

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
}

impl AuthLayer {
    /// `default_policy` applies unless the request carries an [`Unauthenticated`] extension.
    /// Cross-site protection is on unless turned off here or per request.
    pub fn new(auth: Authenticator, default_policy: Unauthenticated) -> Self {
        let own_origin = cross_site::origin_of(&auth.0.public_url).into();
        Self { auth, default_policy, default_csrf: CsrfProtection::On, own_origin }
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
        let policy = req.extensions().get::<Unauthenticated>().copied().unwrap_or(self.default_policy);
        let csrf = req.extensions().get::<CsrfProtection>().copied().unwrap_or(self.default_csrf);
        let own_origin = self.own_origin.clone();
        Box::pin(async move {
            let cookie_name = auth.cookies().session_name.clone();
            let kind = RequestKind::of(req.headers());
            // Judged before the headers are edited below; acted on only when there is a session.
            let cross_site = match csrf == CsrfProtection::On && cross_site::is_unsafe(req.method()) {
                true => match cross_site::judge(req.headers(), &own_origin) {
                    Site::Other(reason) => Some((reason, req.method().clone(), req.uri().path().to_string())),
                    Site::SameOrigin | Site::Unknown => None,
                },
                false => None,
            };
            let outcome = auth.authenticate(req.headers()).await;
            let headers = req.headers_mut();
            match outcome {
                Ok(Some(session)) => {
                    // Every session today comes from the cookie, which the browser attaches to
                    // requests other sites make it send: that ambient authority is what a
                    // forged request borrows. (A request that authenticates by a bearer token
                    // it carries itself would skip this check.) Requests without a session,
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
                Ok(None) | Err(_) if policy == Unauthenticated::Allow => {
                    identity_headers::strip_client_identity(headers, false);
                    identity_headers::strip_cookie(headers, &cookie_name);
                    inner.call(req).await
                }
                Ok(None) if policy == Unauthenticated::Login => {
                    let return_to = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    Ok(auth.login_required(kind, return_to, req.headers()).await)
                }
                Ok(None) => Ok(Failure::unauthenticated(None).respond(kind)),
                Err(e) => {
                    tracing::warn!(error = %e, path = %req.uri().path(), "request refused; session kept");
                    Ok(e.failure().respond(kind))
                }
            }
        })
    }
}
