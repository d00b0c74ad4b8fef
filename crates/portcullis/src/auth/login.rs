//! Login: the authorization code flow with PKCE, `state`, `nonce`, and a browser binding.

use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, header};
use serde::Deserialize;

use super::{Authenticator, Failure, RequestKind, return_to::safe_return_path};
use crate::{
    crypto,
    oidc::{OidcError, TokenError, pkce},
    session::{PendingLogin, SessionId, SessionRecord, now_millis},
};

/// Query of the OP's redirect to `/oauth2/callback`.
#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    /// Authorization code.
    pub code: Option<String>,
    /// The state we sent.
    pub state: Option<String>,
    /// Error code when the OP refused the login.
    pub error: Option<String>,
    /// The OP's explanation of `error`.
    pub error_description: Option<String>,
}

/// The store key of a pending login: a hash of `state`, so the store never holds a value an
/// attacker could replay as a callback parameter.
fn state_key(state: &str) -> String {
    crypto::b64(&crypto::sha256(state.as_bytes()))
}

/// The part of `state` that names this login's binding cookie.
fn login_id(state: &str) -> &str {
    // `get`, not indexing: `state` comes from the query and may split a UTF-8 character.
    state.get(..state.len().min(10)).unwrap_or("")
}

impl Authenticator {
    /// Starts a login: remembers PKCE verifier, nonce and return path, binds the login to this
    /// browser with a cookie, and redirects to the OP.
    pub async fn begin_login(&self, return_to: &str) -> Response {
        let inner = &self.0;
        let kind = RequestKind::Navigation;
        let Some(client) = inner.provider.get() else {
            return Failure::unavailable(
                "identity_provider_unavailable",
                "The identity provider is not reachable yet. Please retry shortly.",
            )
            .respond(kind);
        };
        let return_to = safe_return_path(return_to).unwrap_or("/").to_string();
        let state = crypto::random_token::<32>();
        let nonce = crypto::random_token::<32>();
        let verifier = pkce::new_verifier();
        let binding = crypto::random_token::<32>();
        let pending = PendingLogin {
            code_verifier: verifier.clone(),
            nonce: nonce.clone(),
            return_to,
            browser_binding: crypto::b64(&inner.login_mac.sign(binding.as_bytes())),
            started_at: now_millis(),
        };
        if let Err(e) = inner.store.put_login(&state_key(&state), &pending, inner.login_timeout).await {
            tracing::warn!(error = %e, "cannot start login: session store unavailable");
            return Failure::unavailable("session_store_unavailable", "Logging in is not possible right now. Please retry shortly.")
                .respond(kind);
        }
        let url = client.authorization_url(&state, &nonce, &pkce::challenge(&verifier));
        let mut response = Redirect::to(url.as_str()).into_response();
        *response.status_mut() = http::StatusCode::FOUND;
        response.headers_mut().append(header::SET_COOKIE, inner.cookies.login_binding(login_id(&state), &binding, inner.login_timeout));
        response.headers_mut().insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        response
    }

    /// Completes a login at the callback: checks state and browser binding, exchanges the code,
    /// validates the ID token, creates a session under a fresh id, and returns to the saved path.
    pub async fn finish_login(&self, query: CallbackQuery, headers: &HeaderMap) -> Response {
        let inner = &self.0;
        let kind = RequestKind::Navigation;
        let start_over = self.login_url("/");
        if let Some(error) = query.error.as_deref() {
            let error: String = error.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
            let description: String =
                query.error_description.as_deref().unwrap_or("").chars().filter(|c| !c.is_control()).take(200).collect();
            tracing::info!(%error, %description, "the OP refused the login");
            return Failure::bad_request("login_refused", format!("The identity provider did not log you in ({error}). {description}"))
                .with_login_url(start_over)
                .respond(kind);
        }
        let (Some(code), Some(state)) = (query.code.as_deref(), query.state.as_deref()) else {
            tracing::info!("callback without code or state");
            return Failure::bad_request("invalid_callback", "This login link is incomplete.").with_login_url(start_over).respond(kind);
        };
        let pending = match inner.store.take_login(&state_key(state)).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                tracing::info!("callback with an unknown, expired or already used state");
                return Failure::bad_request("unknown_state", "This login link has expired or was already used. Please log in again.")
                    .with_login_url(start_over)
                    .respond(kind);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot finish login: session store unavailable");
                return Failure::unavailable("session_store_unavailable", "Logging in is not possible right now. Please retry shortly.")
                    .respond(kind);
            }
        };
        let id = login_id(state);
        let binding = super::cookies::find(headers, &format!("{}{id}", inner.cookies.login_prefix));
        let bound = binding.is_some_and(|b| crypto::b64(&inner.login_mac.sign(b.as_bytes())) == pending.browser_binding);
        if !bound {
            tracing::warn!("callback from a browser that did not start this login (login CSRF?)");
            return Failure::bad_request("login_not_bound", "This login was started in another browser. Please log in again here.")
                .with_login_url(start_over)
                .respond(kind);
        }
        let Some(client) = inner.provider.get() else {
            return Failure::unavailable("identity_provider_unavailable", "The identity provider is not reachable. Please retry shortly.")
                .respond(kind);
        };
        let (tokens, identity) = match client.exchange_code(code, &pending.code_verifier, &pending.nonce).await {
            Ok(result) => result,
            Err(e) => return login_failed(&e, start_over),
        };
        let record = SessionRecord { version: 1, created_at: now_millis(), identity, tokens, unsettled_refresh: None };
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
                    return Failure::unavailable(
                        "session_store_unavailable",
                        "Logging in is not possible right now. Please retry shortly.",
                    )
                    .respond(kind);
                }
                tracing::info!(session = %session_id.key(), %user, "logged in");
                vec![inner.cookies.session(inner.codec.encode(&session_id))]
            }
        };
        if inner.cookie_sessions.is_some() {
            tracing::info!(%user, "logged in (cookie store)");
        }
        let mut response = Redirect::to(&pending.return_to).into_response();
        *response.status_mut() = http::StatusCode::FOUND;
        let h = response.headers_mut();
        for cookie in set_cookies {
            h.append(header::SET_COOKIE, cookie);
        }
        h.append(header::SET_COOKIE, inner.cookies.clear_login_binding(id));
        h.insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        response
    }
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
