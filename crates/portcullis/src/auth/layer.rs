//! `AuthLayer`: the tower middleware that puts a session in front of any axum/hyper service.
//!
//! ```text
//! let app = Router::new().route("/api", get(handler))
//!     .layer(AuthLayer::new(authenticator, Unauthenticated::Login));
//! ```
//! The inner service sees `Authorization: Bearer <fresh access token>`, the identity headers,
//! and a [`Session`] extension; never the client's own identity headers or the session cookie.
//! A per-request policy can be set by an outer layer by inserting an [`Unauthenticated`]
//! extension (the gateway's route table does this).

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use axum::{body::Body, response::Response};
use futures_util::future::BoxFuture;
use http::Request;
use tower::{Layer, Service};

use super::{Authenticator, Failure, RequestKind, identity_headers};
use crate::config::Unauthenticated;

/// Adds session authentication to a service.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Authenticator,
    default_policy: Unauthenticated,
}

impl AuthLayer {
    /// `default_policy` applies unless the request carries an [`Unauthenticated`] extension.
    pub fn new(auth: Authenticator, default_policy: Unauthenticated) -> Self {
        Self { auth, default_policy }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.auth.clone(), default_policy: self.default_policy }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticator,
    default_policy: Unauthenticated,
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
        Box::pin(async move {
            let cookie_name = auth.cookies().session_name.clone();
            let kind = RequestKind::of(req.headers());
            let outcome = auth.authenticate(req.headers()).await;
            let headers = req.headers_mut();
            match outcome {
                Ok(Some(session)) => {
                    identity_headers::strip_client_identity(headers, true);
                    identity_headers::set_identity(headers, &session.record);
                    identity_headers::strip_cookie(headers, &cookie_name);
                    let set_cookies = session.set_cookies.clone();
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
