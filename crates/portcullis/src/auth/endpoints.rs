//! The `/oauth2/*` endpoints, named as oauth2-proxy names them so nginx configs carry over.

use axum::{
    Router,
    extract::{Query, State},
    response::{IntoResponse, Redirect, Response},
    routing::{any, get},
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;

use super::{
    Authenticator, Failure, RequestKind,
    cross_site::{self, Site},
    login::CallbackQuery,
    responses::sign_out_page,
    return_to::safe_return_path,
};
use crate::session::{SessionKey, SessionRecord, StoreError};

/// `rd` parameter of start and sign-out.
#[derive(Debug, Deserialize)]
struct ReturnQuery {
    rd: Option<String>,
}

/// Forward-auth: `/oauth2/auth` (nginx `auth_request`, Caddy `forward_auth`, Traefik
/// `forwardAuth`) and `/oauth2/auth/<original path>` (Envoy `ext_authz`), every method (Envoy
/// and some proxies send the original one). `global` is the config's `[authorization]`; a
/// route's rules apply when the request carries its `Arc<RouteConfig>` (the gateway looks the
/// route up from the original URI). Answers only requests carrying a
/// [`ForwardedRequest`](super::ForwardedRequest): see `forward_auth.rs`.
pub fn forward_auth_routes(auth: Authenticator, global: impl Into<super::authorization::GlobalRules>) -> Router {
    let state = super::forward_auth::ForwardAuth::new(auth, global.into());
    Router::new()
        .route(super::forward_auth::FORWARD_AUTH_PATH, any(super::forward_auth::handle))
        .route("/oauth2/auth/{*original}", any(super::forward_auth::handle))
        .with_state(state)
}

/// `/oauth2/start`, `/oauth2/callback`, `/oauth2/sign_out` and `/oauth2/userinfo`. Forward-auth
/// is [`forward_auth_routes`] (it needs the authorization rules).
pub fn routes(auth: Authenticator) -> Router {
    Router::new()
        .route("/oauth2/start", get(start))
        .route("/oauth2/callback", get(callback))
        .route("/oauth2/sign_out", get(confirm_sign_out).post(sign_out))
        .route("/oauth2/userinfo", get(userinfo))
        .with_state(auth)
}

async fn start(State(auth): State<Authenticator>, headers: HeaderMap, Query(q): Query<ReturnQuery>) -> Response {
    auth.begin_login(q.rd.as_deref().unwrap_or("/"), &headers).await
}

async fn callback(State(auth): State<Authenticator>, headers: HeaderMap, Query(q): Query<CallbackQuery>) -> Response {
    auth.finish_login(q, &headers).await
}

/// `GET /oauth2/sign_out`: the confirmation page, whoever links to it. A GET ends nothing: a
/// link, image or top-level navigation from another site carries the `SameSite=Lax` cookie,
/// and used to end the session, revoke the refresh token and end the user's single sign-on.
async fn confirm_sign_out(Query(q): Query<ReturnQuery>) -> Response {
    sign_out_page(StatusCode::OK, None, q.rd.as_deref().and_then(safe_return_path))
}

/// `POST /oauth2/sign_out`: ends the session when the browser says the request came from this
/// gateway's own origin (`Sec-Fetch-Site: same-origin`, or without it an `Origin` equal to
/// `public_url`'s). Another site gets 403 and nothing ends. A POST with neither header (curl, a
/// browser from before 2020) gets the confirmation page: sign-out needs positive evidence, and
/// the page's own button sends it. Scripts sign out with `Origin: <public_url>`.
async fn sign_out(State(auth): State<Authenticator>, headers: HeaderMap, Query(q): Query<ReturnQuery>) -> Response {
    let return_to = q.rd.as_deref().and_then(safe_return_path);
    match cross_site::judge(&headers, &cross_site::origin_of(&auth.0.public_url)) {
        Site::SameOrigin => end_session(&auth, &headers, return_to).await,
        Site::Other(reason) => {
            tracing::warn!(reason, "cross-site sign-out refused; nothing ended");
            match RequestKind::of(&headers) {
                RequestKind::Navigation => sign_out_page(
                    StatusCode::FORBIDDEN,
                    Some("Another site asked to sign you out, so nothing was ended. If you want to sign out, use this button."),
                    return_to,
                ),
                RequestKind::Api => Failure::cross_site().respond(RequestKind::Api),
            }
        }
        Site::Unknown => {
            tracing::info!("sign-out POST without Origin or Sec-Fetch-Site; asking for confirmation");
            sign_out_page(StatusCode::OK, None, return_to)
        }
    }
}

/// Ends the session here, revokes its refresh token at the OP, then sends the browser to the
/// OP's end-session endpoint (or to `rd`). Deleting first: a failing OP must not keep the user
/// logged in at the gateway.
async fn end_session(auth: &Authenticator, headers: &HeaderMap, return_to: Option<&str>) -> Response {
    let inner = &auth.0;
    let mut clear = vec![inner.cookies.clear_session()];
    let ended = match &inner.cookie_sessions {
        Some(cookie_sessions) => cookie_sessions.read(headers).map(|payload| {
            clear = cookie_sessions.end(&payload.key, headers);
            (payload.key, payload.record)
        }),
        None => match end_stored_session(auth, headers).await {
            Ok(ended) => ended,
            Err(failure) => return failure.respond(RequestKind::of(headers)),
        },
    };
    let mut id_token = None;
    if let Some((key, record)) = ended {
        tracing::info!(session = %key, user = %record.identity.user, "logged out");
        if let (Some(rt), Some(client)) = (record.tokens.refresh_token.as_deref(), inner.provider.get())
            && let Err(e) = client.revoke_refresh_token(rt).await
        {
            tracing::warn!(session = %key, error = %e, "logout: refresh token revocation failed");
        }
        id_token = record.tokens.id_token;
    }
    let local = return_to.unwrap_or("/").to_string();
    let target = inner.provider.get().and_then(|c| c.end_session_url(id_token.as_deref())).map(String::from).unwrap_or(local);
    let mut response = Redirect::to(&target).into_response();
    *response.status_mut() = StatusCode::FOUND;
    for cookie in clear {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Deletes the request's server-side session; returns what it held.
async fn end_stored_session(auth: &Authenticator, headers: &HeaderMap) -> Result<Option<(SessionKey, SessionRecord)>, Failure> {
    let inner = &auth.0;
    let Some(id) = super::cookies::find(headers, &inner.cookies.session_name).and_then(|v| inner.codec.decode(v)) else {
        return Ok(None);
    };
    let key = id.key();
    let unavailable = |e: StoreError| {
        tracing::warn!(session = %key, error = %e, "logout: session store unavailable");
        Failure::unavailable("session_store_unavailable", "Logging out is not possible right now. Please retry.")
    };
    let Some(record) = inner.store.load(&key).await.map_err(unavailable)? else { return Ok(None) };
    inner.store.delete(&key).await.map_err(unavailable)?;
    Ok(Some((key.clone(), (*record).clone())))
}

/// The session's user claims as JSON; 401 without a session.
async fn userinfo(State(auth): State<Authenticator>, headers: HeaderMap) -> Response {
    match auth.authenticate(&headers).await {
        Ok(Some(session)) => {
            let identity = &session.record.identity;
            let mut body = identity.claims.clone();
            body.insert("user".into(), identity.user.clone().into());
            if let Some(email) = &identity.email {
                body.insert("email".into(), email.clone().into());
            }
            let mut response = axum::Json(body).into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Ok(None) => Failure::unauthenticated(Some(auth.login_url("/"))).respond(RequestKind::Api),
        Err(e) => e.failure().respond(RequestKind::Api),
    }
}
