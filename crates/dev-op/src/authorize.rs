//! `GET /authorize` and `POST /authorize`: the authorization code flow's front half
//! (RFC 6749 §4.1.1, Core §3.1.2, PKCE per RFC 7636, mandatory and S256 only).
//!
//! The login form carries the whole authorization request in hidden fields, and the POST checks
//! it again from scratch. Nothing is stored per displayed form, so reloading the page or
//! abandoning a login costs no memory. A successful sign-in starts a browser session (a cookie),
//! and a later `/authorize` from the same browser skips the form, as a real OP's single sign-on
//! does.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use url::Url;

use crate::{
    crypto::secret_eq,
    pages::{self, LoginPage},
    params::Params,
    provider::{Provider, now_millis},
    store::{BROWSER_SESSION_TTL_MS, BrowserSession, Grant},
};

/// Scopes this OP knows; others are dropped from the grant (RFC 6749 §3.3 lets the server
/// narrow the request).
pub(crate) const SCOPES: [&str; 5] = ["openid", "offline_access", "profile", "email", "groups"];

/// The browser-session cookie. Cookies ignore ports, so a plain `Path=/` cookie on 127.0.0.1
/// would also reach the gateway and the apps behind it on their own ports; it is set once per
/// OP path that needs it instead.
pub(crate) const SESSION_COOKIE: &str = "portcullis_dev_op_session";
pub(crate) const SESSION_COOKIE_PATHS: [&str; 2] = ["/authorize", "/end_session"];

/// Parameters of the authorization request that the login form carries through.
/// (`prompt` is not: it was acted on when the form was shown.)
const CARRIED: [&str; 8] =
    ["client_id", "redirect_uri", "response_type", "scope", "state", "nonce", "code_challenge", "code_challenge_method"];

/// A checked authorization request.
struct AuthRequest {
    client_id: String,
    redirect_uri: String,
    /// Granted scopes, space-separated.
    scope: String,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: String,
    prompt_none: bool,
    prompt_login: bool,
}

pub(crate) async fn get(State(op): State<Arc<Provider>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let params = match Params::parse(query.unwrap_or_default().as_bytes()) {
        Ok(params) => params,
        Err(e) => return pages::error(StatusCode::BAD_REQUEST, "Invalid sign-in request", &e),
    };
    let request = match check(&op, &params) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    let now = now_millis();
    let session = session_cookie(&headers).and_then(|cookie| Some((cookie.to_string(), op.store().session(cookie, now)?.clone())));
    match session {
        Some((cookie, session)) if !request.prompt_login => {
            tracing::debug!(client_id = %request.client_id, "authorize: existing browser session, no form");
            issue_code(&op, &request, &cookie, &session, None)
        }
        _ if request.prompt_none => {
            error_redirect(&op, &request.redirect_uri, "login_required", "no browser session", request.state.as_deref())
        }
        _ => login_form(&op, &params, &request, "", None, StatusCode::OK),
    }
}

pub(crate) async fn post(State(op): State<Arc<Provider>>, body: Bytes) -> Response {
    let mut params = match Params::parse(&body) {
        Ok(params) => params,
        Err(e) => return pages::error(StatusCode::BAD_REQUEST, "Invalid sign-in request", &e),
    };
    let username = params.take("username").unwrap_or_default();
    let password = params.take("password").unwrap_or_default();
    let request = match check(&op, &params) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    // Compare against some password even for an unknown user, so timing does not tell which
    // usernames exist.
    let user = op.user(&username);
    let expected = user.map_or("no such user", |u| u.password.as_str());
    if !secret_eq(&password, expected) || user.is_none() {
        tracing::info!(username = ?username, client_id = %request.client_id, "sign-in refused: wrong username or password");
        return login_form(&op, &params, &request, &username, Some("Wrong username or password."), StatusCode::UNAUTHORIZED);
    }
    let (cookie, session) = op.store().new_session(&username, now_millis());
    op.count(|s| s.logins += 1);
    tracing::info!(username = ?username, client_id = %request.client_id, "signed in");
    issue_code(&op, &request, &cookie, &session, Some(&cookie))
}

/// Checks a request. Before the client and redirect URI are known good, problems are shown as a
/// page (redirecting to an unchecked URI would be an open redirect); after, they go back to the
/// client as `error=` redirects (RFC 6749 §4.1.2.1).
/// (The refusal is boxed: a `Response` is large, and most requests pass.)
fn check(op: &Provider, params: &Params) -> Result<AuthRequest, Box<Response>> {
    let client_id = params.get("client_id").unwrap_or_default();
    let Some(client) = op.clients.get(client_id) else {
        return Err(Box::new(pages::error(StatusCode::BAD_REQUEST, "Unknown application", "The client_id is not registered at this OP.")));
    };
    let redirect_uri = params.get("redirect_uri").unwrap_or_default();
    if !client.redirect_uris.iter().any(|r| r == redirect_uri) {
        return Err(Box::new(pages::error(
            StatusCode::BAD_REQUEST,
            "Invalid redirect URI",
            "The redirect_uri is missing or not registered for this application (compared as exact strings).",
        )));
    }
    let state = params.get("state");
    let fail = |error, description| Err(Box::new(error_redirect(op, redirect_uri, error, description, state)));
    if params.get("request").is_some() {
        return fail("request_not_supported", "request objects are not supported");
    }
    if params.get("request_uri").is_some() {
        return fail("request_uri_not_supported", "request_uri is not supported");
    }
    if params.get("response_type") != Some("code") {
        return fail("unsupported_response_type", "only response_type=code is supported");
    }
    let requested: Vec<&str> = params.get("scope").unwrap_or_default().split(' ').collect();
    if !requested.contains(&"openid") {
        return fail("invalid_scope", "the scope must include openid");
    }
    let Some(code_challenge) = params.get("code_challenge") else {
        return fail("invalid_request", "PKCE is required: send code_challenge and code_challenge_method=S256");
    };
    // Absent means `plain` (RFC 7636 §4.3), which gives no protection against a stolen code.
    if params.get("code_challenge_method") != Some("S256") {
        return fail("invalid_request", "code_challenge_method must be S256");
    }
    // An S256 challenge is the base64url of 32 bytes: 43 characters, no padding.
    if code_challenge.len() != 43 || !code_challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return fail("invalid_request", "code_challenge is not a base64url-encoded SHA-256 hash");
    }
    let prompt: Vec<&str> = params.get("prompt").unwrap_or_default().split(' ').collect();
    if prompt.contains(&"none") && prompt.len() > 1 {
        return fail("invalid_request", "prompt=none cannot be combined with other values");
    }
    let mut scope: Vec<&str> = Vec::new();
    for s in requested.into_iter().filter(|s| SCOPES.contains(s)) {
        if !scope.contains(&s) {
            scope.push(s);
        }
    }
    Ok(AuthRequest {
        client_id: client_id.to_string(),
        redirect_uri: redirect_uri.to_string(),
        scope: scope.join(" "),
        state: state.map(String::from),
        nonce: params.get("nonce").map(String::from),
        code_challenge: code_challenge.to_string(),
        prompt_none: prompt.contains(&"none"),
        prompt_login: prompt.contains(&"login"),
    })
}

fn login_form(op: &Provider, params: &Params, request: &AuthRequest, username: &str, error: Option<&str>, status: StatusCode) -> Response {
    let hidden = CARRIED.iter().filter_map(|k| Some((*k, params.get(k)?))).collect();
    // The default demo user is shown and pre-filled; configured users' passwords never are.
    let demo = op.user("demo").filter(|u| u.password == "demo").map(|_| ("demo", "demo"));
    pages::login(&LoginPage { app: &request.client_id, hidden, username, demo, error }, status)
}

/// `302` to the client with a fresh code. `new_cookie` is set when this request signed in.
fn issue_code(op: &Provider, request: &AuthRequest, cookie: &str, session: &BrowserSession, new_cookie: Option<&str>) -> Response {
    let grant = Grant {
        client_id: request.client_id.clone(),
        username: session.username.clone(),
        scope: request.scope.clone(),
        auth_time: session.auth_time,
        sid: session.sid.clone(),
    };
    let code = {
        let mut store = op.store();
        store.session_used_by(cookie, &request.client_id);
        store.new_code(grant, request.redirect_uri.clone(), request.code_challenge.clone(), request.nonce.clone(), now_millis())
    };
    let mut location = Url::parse(&request.redirect_uri).expect("registered redirect URIs are checked at start");
    {
        let mut query = location.query_pairs_mut();
        query.append_pair("code", &code);
        if let Some(state) = &request.state {
            query.append_pair("state", state);
        }
        query.append_pair("iss", &op.issuer);
    }
    let mut response = redirect(location.as_str());
    if let Some(cookie) = new_cookie {
        for path in SESSION_COOKIE_PATHS {
            let value =
                format!("{SESSION_COOKIE}={cookie}; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax", BROWSER_SESSION_TTL_MS / 1000);
            response.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(&value).expect("a base64url cookie is a valid header"));
        }
    }
    response
}

fn error_redirect(op: &Provider, redirect_uri: &str, error: &str, description: &str, state: Option<&str>) -> Response {
    let mut location = Url::parse(redirect_uri).expect("registered redirect URIs are checked at start");
    {
        let mut query = location.query_pairs_mut();
        query.append_pair("error", error).append_pair("error_description", description);
        if let Some(state) = state {
            query.append_pair("state", state);
        }
        query.append_pair("iss", &op.issuer);
    }
    redirect(location.as_str())
}

pub(crate) fn redirect(location: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The browser-session cookie's value, if the request has one.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}
