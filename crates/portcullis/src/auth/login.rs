//! Login: the authorization code flow with PKCE, `state` and `nonce`, the pending login sealed
//! in a cookie of the browser that started it (`login_state`), single use of each state.

use std::time::Duration;

use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, header};
use serde::Deserialize;

use super::{
    Authenticator, Failure, RequestKind,
    login_state::{self, LoginState},
    return_to::safe_return_path,
};
use crate::{
    crypto,
    oidc::{OidcError, TokenError, pkce},
    session::{SessionId, SessionRecord, now_millis},
};

/// Query of the OP's redirect to `/oauth2/callback`.
#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    /// Authorization code.
    pub code: Option<String>,
    /// The state we sent.
    pub state: Option<String>,
    /// RFC 9207: the issuer that sent this response (mix-up defence).
    pub iss: Option<String>,
    /// Error code when the OP refused the login.
    pub error: Option<String>,
    /// The OP's explanation of `error`.
    pub error_description: Option<String>,
}

/// How long a consumed state stays marked beyond the login timeout: covers clock differences
/// between instances (one instance's clock behind another's would otherwise accept a sealed
/// login whose marker another instance already let expire).
const CONSUMED_MARGIN: Duration = Duration::from_secs(60);

const NOT_FOUND: &str = "This login was not started in this browser, or it expired, was already used, or was replaced by a newer \
                         login. Please log in again.";
const ALREADY_USED: &str = "This login link was already used. Please log in again.";
const STORE_DOWN: &str = "Logging in is not possible right now. Please retry shortly.";

/// Authorization-response error codes of RFC 6749 §4.1.2.1 and OpenID Connect Core §3.1.2.6.
const KNOWN_ERRORS: [&str; 16] = [
    "invalid_request",
    "unauthorized_client",
    "access_denied",
    "unsupported_response_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
    "interaction_required",
    "login_required",
    "account_selection_required",
    "consent_required",
    "invalid_request_uri",
    "invalid_request_object",
    "request_not_supported",
    "request_uri_not_supported",
    "registration_not_supported",
];

impl Authenticator {
    /// Starts a login: seals state, nonce, PKCE verifier and return path into a cookie of
    /// this browser (nothing is stored on the server), and redirects to the OP. `headers` are
    /// the request's: the login cookies already there are counted, and the oldest dropped
    /// beyond [`login_state::MAX_PENDING_LOGINS`].
    pub async fn begin_login(&self, return_to: &str, headers: &HeaderMap) -> Response {
        let inner = &self.0;
        let kind = RequestKind::Navigation;
        let Some(client) = inner.provider.get() else {
            return Failure::unavailable(
                "identity_provider_unavailable",
                "The identity provider is not reachable yet. Please retry shortly.",
            )
            .respond(kind);
        };
        let return_to = match safe_return_path(return_to) {
            Some(path) if path.len() <= login_state::MAX_RETURN_TO => path,
            Some(path) if path.split('?').next().is_some_and(|p| p.len() <= login_state::MAX_RETURN_TO) => {
                tracing::info!("return path too long to keep across the login; the login returns to it without its query");
                path.split('?').next().unwrap_or("/")
            }
            Some(_) => {
                tracing::info!("return path too long to keep across the login; the login returns to /");
                "/"
            }
            None => "/",
        };
        let now = now_millis();
        let login = LoginState {
            state: crypto::random_token::<32>(),
            nonce: crypto::random_token::<32>(),
            code_verifier: pkce::new_verifier(),
            return_to: return_to.to_string(),
            started_at: now,
        };
        let prefix = &inner.cookies.login_prefix;
        let stale = login_state::to_clear(login_state::present(headers, prefix, &inner.login_sealer), now, millis(inner.login_timeout));
        if !stale.is_empty() {
            tracing::debug!(cleared = stale.len(), "login cookies cleared: expired, unreadable, or the oldest beyond the cap");
        }
        let url = client.authorization_url(&login.state, &login.nonce, &pkce::challenge(&login.code_verifier));
        let mut response = Redirect::to(url.as_str()).into_response();
        *response.status_mut() = http::StatusCode::FOUND;
        let h = response.headers_mut();
        for name in &stale {
            h.append(header::SET_COOKIE, inner.cookies.clear_login_state(name));
        }
        let name = login_state::cookie_name(prefix, &login.state);
        h.append(header::SET_COOKIE, inner.cookies.login_state(&name, inner.login_sealer.seal(&login), inner.login_timeout));
        h.insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        response
    }

    /// Completes a login at the callback: opens this browser's sealed login for the `state`,
    /// checks the response's issuer, exchanges the code, validates the ID token, marks the state
    /// consumed, creates a session under a fresh id, and returns to the saved path.
    pub async fn finish_login(&self, query: CallbackQuery, headers: &HeaderMap) -> Response {
        let inner = &self.0;
        let kind = RequestKind::Navigation;
        let start_over = self.login_url("/");
        // Every refusal from here on also clears this login's cookie when there is one: the
        // attempt is over either way.
        let cookie_name = query.state.as_deref().map(|state| login_state::cookie_name(&inner.cookies.login_prefix, state));
        let refuse = |code: &'static str, message: &str| {
            let mut response = Failure::bad_request(code, message).with_login_url(start_over.clone()).respond(kind);
            if let Some(name) = cookie_name.as_deref().filter(|n| super::cookies::find(headers, n).is_some()) {
                response.headers_mut().append(header::SET_COOKIE, inner.cookies.clear_login_state(name));
            }
            response
        };
        if let Some(error) = query.error.as_deref() {
            let error: String = error.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
            let description: String =
                query.error_description.as_deref().unwrap_or("").chars().filter(|c| !c.is_control()).take(200).collect();
            tracing::info!(%error, %description, "the OP refused the login");
            // Anyone can send a browser to this URL: the OP's words are shown on the gateway's
            // page only for a login this browser started (its sealed state matches), and an
            // error code only when it is one the protocols define. Otherwise a crafted link
            // would put the attacker's text ("your account is locked, call …") on our origin.
            let vouched = query
                .state
                .as_deref()
                .zip(cookie_name.as_deref())
                .and_then(|(state, name)| {
                    let login = inner.login_sealer.open(super::cookies::find(headers, name)?)?;
                    login_state::same_state(&login.state, state).then_some(())
                })
                .is_some();
            let message = match (vouched, KNOWN_ERRORS.contains(&error.as_str())) {
                (true, _) => format!("The identity provider did not log you in ({error}). {description}"),
                (false, true) => format!("The identity provider did not log you in ({error})."),
                (false, false) => "The identity provider did not log you in.".to_string(),
            };
            return refuse("login_refused", &message);
        }
        let (Some(code), Some(state), Some(cookie_name)) = (query.code.as_deref(), query.state.as_deref(), cookie_name.as_deref()) else {
            tracing::info!("callback without code or state");
            return refuse("invalid_callback", "This login link is incomplete.");
        };
        let Some(sealed) = super::cookies::find(headers, cookie_name) else {
            tracing::warn!(
                "callback without its login cookie: started in another browser (login CSRF?), expired, already used, or replaced by newer logins"
            );
            return refuse("login_not_found", NOT_FOUND);
        };
        let Some(login) = inner.login_sealer.open(sealed) else {
            tracing::warn!("login cookie rejected: tampered with, or not sealed by this gateway");
            return refuse(
                "login_state_invalid",
                "This login could not be verified: its cookie was changed or is not ours. Please log in again.",
            );
        };
        if !login_state::same_state(&login.state, state) {
            tracing::warn!("login cookie belongs to another login (moved between names?)");
            return refuse("login_not_found", NOT_FOUND);
        }
        if login_state::expired(&login, now_millis(), millis(inner.login_timeout)) {
            tracing::info!("callback for a login that took longer than session.login_timeout");
            return refuse("login_expired", "This login took too long and has expired. Please log in again.");
        }
        let Some(client) = inner.provider.get() else {
            return Failure::unavailable("identity_provider_unavailable", "The identity provider is not reachable. Please retry shortly.")
                .respond(kind);
        };
        if let Err(e) = client.check_response_issuer(query.iss.as_deref()) {
            // RFC 9207 mix-up defence: the code must go to the token endpoint of the OP that
            // issued it, never to ours when another OP (or an attacker's) answered.
            tracing::warn!(error = %e, "callback refused: authorization response issuer check failed");
            return refuse(
                "issuer_mismatch",
                "This login answer did not come from the expected identity provider, so you were not logged in.",
            );
        }
        let state_hash = login_state::state_hash(state);
        // Read before the OP is contacted: a replayed callback (cookie and URL kept by an
        // attacker or by history) must not reach the OP, whose code-reuse detection would revoke
        // the tokens of the real login.
        match inner.store.state_consumed(&state_hash).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::warn!("callback replayed: this login's state was already used");
                return refuse("state_already_used", ALREADY_USED);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot finish login: session store unavailable");
                return Failure::unavailable("session_store_unavailable", STORE_DOWN).respond(kind);
            }
        }
        let (tokens, identity) = match client.exchange_code(code, &login.code_verifier, &login.nonce).await {
            Ok(result) => result,
            Err(e) => {
                let mut response = login_failed(&e, start_over.clone());
                if response.status() != http::StatusCode::SERVICE_UNAVAILABLE {
                    // A retry after a 503 may still work (the code may be unused); anything else ends the attempt.
                    response.headers_mut().append(header::SET_COOKIE, inner.cookies.clear_login_state(cookie_name));
                }
                return response;
            }
        };
        // Only now, with the user authenticated by the OP, is anything written: the marker
        // that makes this state single-use (two racing callbacks: exactly one wins).
        match inner.store.consume_state(&state_hash, inner.login_timeout + CONSUMED_MARGIN).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("callback replayed concurrently: this login's state was already used");
                return refuse("state_already_used", ALREADY_USED);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot finish login: session store unavailable");
                return Failure::unavailable("session_store_unavailable", STORE_DOWN).respond(kind);
            }
        }
        let record =
            SessionRecord { version: 1, created_at: now_millis(), identity, tokens, unsettled_refresh: None, forward: Default::default() };
        let user = record.identity.user.clone();
        let set_cookies = match &inner.cookie_sessions {
            Some(cookie_sessions) => match cookie_sessions.issue(record, headers) {
                Some(cookies) => cookies,
                None => {
                    return Failure::bad_request("session_too_large", "The identity provider's tokens are too large for cookies.")
                        .respond(kind);
                }
            },
            None => {
                // A previous session of this browser ends here: the new login gets a new id
                // (no session fixation).
                if let Some(old) = super::cookies::find(headers, &inner.cookies.session_name).and_then(|v| inner.codec.decode(v)) {
                    let _ = inner.store.delete(&old.key()).await;
                }
                let session_id = SessionId::generate();
                if let Err(e) = inner.store.create(&session_id.key(), &record).await {
                    tracing::warn!(error = %e, "cannot store the new session");
                    return Failure::unavailable("session_store_unavailable", STORE_DOWN).respond(kind);
                }
                tracing::info!(session = %session_id.key(), %user, "logged in");
                vec![inner.cookies.session(inner.codec.encode(&session_id))]
            }
        };
        if inner.cookie_sessions.is_some() {
            tracing::info!(%user, "logged in (cookie store)");
        }
        let mut response = Redirect::to(&login.return_to).into_response();
        *response.status_mut() = http::StatusCode::FOUND;
        let h = response.headers_mut();
        for cookie in set_cookies {
            h.append(header::SET_COOKIE, cookie);
        }
        h.append(header::SET_COOKIE, inner.cookies.clear_login_state(cookie_name));
        h.insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        response
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

fn login_failed(e: &OidcError, start_over: String) -> Response {
    let kind = RequestKind::Navigation;
    match e {
        OidcError::Token(TokenError::InvalidGrant) => {
            tracing::info!("code exchange refused: invalid_grant (replayed or expired code)");
            Failure::bad_request("invalid_grant", "This login link has expired or was already used. Please log in again.")
                .with_login_url(start_over)
                .respond(kind)
        }
        OidcError::Token(e @ (TokenError::Unreachable(_) | TokenError::ServerError(_) | TokenError::OutcomeUnknown(_))) => {
            tracing::warn!(error = %e, "code exchange failed");
            Failure::unavailable("identity_provider_unavailable", "The identity provider did not answer. Please retry.")
                .with_login_url(start_over)
                .respond(kind)
        }
        OidcError::UnverifiedEmail => {
            tracing::warn!("login refused: the OP marks the email unverified (oidc.allow_unverified_email is off)");
            let mut f = Failure::bad_request(
                "email_unverified",
                "Your identity provider has not verified your email address, so you were not logged in. Verify it there, then log in again.",
            )
            .with_login_url(start_over);
            f.status = http::StatusCode::FORBIDDEN;
            f.respond(kind)
        }
        other => {
            tracing::warn!(error = %other, "login failed");
            let mut f =
                Failure::bad_request("login_failed", "The identity provider's answer could not be verified, so you were not logged in.")
                    .with_login_url(start_over);
            f.status = http::StatusCode::BAD_GATEWAY;
            f.respond(kind)
        }
    }
}
