//! `POST /token`: the authorization code grant (RFC 6749 §4.1.3, PKCE per RFC 7636 §4.6) and
//! the refresh token grant (§6) with rotation and reuse detection, plus the knobs that make it
//! slow or unreliable on purpose.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::{
    ClientConfig,
    crypto::{random_unit, s256_challenge},
    knobs::Knobs,
    oauth_error::OAuthError,
    params::Params,
    provider::{Provider, now_millis},
    store::{Issued, Lifetimes, Refused},
};

/// How long an injected timeout holds the request: longer than any sensible client timeout,
/// so the client, not the OP, decides when to give up.
const HOLD: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    scope: String,
}

pub(crate) async fn post(State(op): State<Arc<Provider>>, headers: HeaderMap, body: Bytes) -> Response {
    let knobs = op.knobs();
    if !knobs.token_latency.is_zero() {
        wait(&op, knobs.token_latency).await;
    }
    let mut params = match Params::parse(&body) {
        Ok(params) => params,
        Err(e) => return finish(&op, "none", Err(OAuthError::invalid_request(e))),
    };
    // Only known names become counter keys, so arbitrary input cannot grow the stats map.
    let grant_type = match params.get("grant_type") {
        Some("authorization_code") => "authorization_code",
        Some("refresh_token") => "refresh_token",
        Some(_) => "other",
        None => "none",
    };
    let client = match crate::client_auth::authenticate(&op, &headers, &mut params) {
        Ok(client) => client,
        Err(e) => return finish(&op, grant_type, Err(e)),
    };
    let result = match grant_type {
        "authorization_code" => authorization_code(&op, client, &params, &knobs),
        "refresh_token" => match inject_failure(&op, &knobs).await {
            Some(failure) => Err(failure),
            None => refresh(&op, client, &params, &knobs),
        },
        "none" => Err(OAuthError::invalid_request("grant_type is required")),
        _ => Err(OAuthError::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", "supported: authorization_code, refresh_token")),
    };
    finish(&op, grant_type, result)
}

/// Counts and logs the outcome, and turns it into the response.
fn finish(op: &Provider, grant_type: &str, result: Result<TokenResponse, OAuthError>) -> Response {
    match result {
        Ok(tokens) => {
            op.count(|s| s.token_request(grant_type, "ok"));
            tracing::debug!(grant_type, "token request: ok");
            let mut response = Json(tokens).into_response();
            // RFC 6749 §5.1: token responses must not be cached.
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        // A held request was counted as `timeout` when the hold began.
        Err(e) if e.error == "temporarily_unavailable" => e.into_response(),
        Err(e) => {
            op.count(|s| s.token_request(grant_type, e.error));
            tracing::debug!(grant_type, error = e.error, description = %e.description, "token request refused");
            e.into_response()
        }
    }
}

fn authorization_code(op: &Provider, client: &ClientConfig, params: &Params, knobs: &Knobs) -> Result<TokenResponse, OAuthError> {
    let code = params.get("code").ok_or_else(|| OAuthError::invalid_request("code is required"))?;
    let redirect_uri = params.get("redirect_uri");
    let verifier = params.get("code_verifier");
    let redeemed = op.store().redeem_code(code, &client.client_id, now_millis(), lifetimes(knobs), |code| {
        // RFC 6749 §4.1.3: the redirect_uri must be the one of the authorization request.
        if redirect_uri != Some(code.redirect_uri.as_str()) {
            return Err(OAuthError::invalid_grant("redirect_uri does not match the authorization request"));
        }
        let Some(verifier) = verifier else {
            return Err(OAuthError::invalid_grant("code_verifier is required (PKCE)"));
        };
        // RFC 7636 §4.1: 43 to 128 unreserved characters.
        let well_formed = (43..=128).contains(&verifier.len())
            && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if !well_formed || !crate::crypto::secret_eq(&s256_challenge(verifier), &code.code_challenge) {
            return Err(OAuthError::invalid_grant("PKCE verification failed: code_verifier does not match code_challenge"));
        }
        Ok(())
    });
    match redeemed {
        Ok(Ok((issued, nonce))) => {
            tracing::info!(client_id = %client.client_id, username = ?issued.grant.username, "authorization code redeemed");
            Ok(response(op, issued, nonce.as_deref(), knobs))
        }
        Ok(Err(e)) => Err(e),
        Err(Refused::Replayed) => {
            tracing::warn!(client_id = %client.client_id, "authorization code replayed: the tokens issued for it are revoked");
            Err(OAuthError::invalid_grant("the code was already used; the tokens issued for it are revoked"))
        }
        Err(refused) => Err(refused_error(refused)),
    }
}

fn refresh(op: &Provider, client: &ClientConfig, params: &Params, knobs: &Knobs) -> Result<TokenResponse, OAuthError> {
    let token = params.get("refresh_token").ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
    let redeemed = op.store().redeem_refresh(
        token,
        &client.client_id,
        params.get("scope"),
        now_millis(),
        lifetimes(knobs),
        knobs.rotate_refresh_tokens,
    );
    match redeemed {
        Ok(issued) => Ok(response(op, issued, None, knobs)),
        Err(Refused::Replayed) => {
            op.count(|s| s.reuse_detections += 1);
            tracing::warn!(client_id = %client.client_id, "refresh token reuse detected: the whole grant is revoked");
            Err(OAuthError::invalid_grant("refresh token reuse detected: the grant and all its tokens are revoked"))
        }
        Err(refused) => Err(refused_error(refused)),
    }
}

fn refused_error(refused: Refused) -> OAuthError {
    match refused {
        Refused::Invalid(why) => OAuthError::invalid_grant(why),
        Refused::Replayed => OAuthError::invalid_grant("replayed"),
        Refused::ScopeExceeded => OAuthError::new(StatusCode::BAD_REQUEST, "invalid_scope", "the requested scope exceeds the grant"),
    }
}

fn response(op: &Provider, issued: Issued, nonce: Option<&str>, knobs: &Knobs) -> TokenResponse {
    let has_openid = issued.scope.split(' ').any(|s| s == "openid");
    TokenResponse {
        id_token: has_openid.then(|| op.id_token(&issued.grant, nonce, knobs)),
        access_token: issued.access_token,
        token_type: "Bearer",
        expires_in: knobs.access_token_ttl.as_secs().max(1),
        refresh_token: issued.refresh_token,
        scope: issued.scope,
    }
}

fn lifetimes(knobs: &Knobs) -> Lifetimes {
    Lifetimes { access_ms: knobs.access_token_ttl.as_secs().max(1) * 1000, refresh_ms: knobs.refresh_token_ttl.as_secs().max(1) * 1000 }
}

/// Rolls the dice for a refresh-token request. Runs before the token is looked at, so an
/// injected failure never consumes or rotates it: the client may retry with the same token.
async fn inject_failure(op: &Provider, knobs: &Knobs) -> Option<OAuthError> {
    let f = knobs.failures;
    let draw = random_unit();
    if draw < f.server_error {
        tracing::info!("injected failure: server_error");
        return Some(OAuthError::server_error("injected failure"));
    }
    if draw < f.server_error + f.timeout {
        tracing::info!("injected failure: holding the request (timeout)");
        op.count(|s| s.token_request("refresh_token", "timeout"));
        wait(op, HOLD).await;
        return Some(OAuthError::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "injected timeout"));
    }
    if draw < f.server_error + f.timeout + f.invalid_grant {
        tracing::info!("injected failure: invalid_grant");
        return Some(OAuthError::invalid_grant("injected failure"));
    }
    None
}

/// Sleeps, but not past shutdown: a held request must not keep the server from stopping.
async fn wait(op: &Provider, duration: Duration) {
    let mut shutdown = op.shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = shutdown.wait_for(|stopping| *stopping) => {}
    }
}
