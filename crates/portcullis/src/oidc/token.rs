//! Token endpoint (RFC 6749 §4.1.3, §6) and revocation (RFC 7009) calls.
//!
//! Written on reqwest rather than through `oauth2`'s client because the refresh coordinator must
//! tell apart outcomes that `oauth2::RequestTokenError` folds together: a request that never left
//! (safe to retry), one that was sent but got no answer (it may have consumed a rotating refresh
//! token: never blindly re-present it), a 5xx, and a definitive `invalid_grant`.

use serde::Deserialize;

use crate::config::ClientAuthMethod;

/// Client credentials as registered at the OP.
#[derive(Clone)]
pub(crate) struct ClientCredentials {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) method: ClientAuthMethod,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials").field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

/// A successful token response.
#[derive(Clone, Deserialize)]
pub(crate) struct TokenResponse {
    pub(crate) access_token: String,
    #[serde(default)]
    pub(crate) token_type: Option<String>,
    #[serde(default)]
    pub(crate) expires_in: Option<u64>,
    #[serde(default)]
    pub(crate) refresh_token: Option<String>,
    #[serde(default)]
    pub(crate) id_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
}

/// Why a token request did not yield tokens. `Clone` so one refresh's outcome can be handed to
/// every request that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The OP says the grant (code or refresh token) is invalid, expired or revoked. Definitive.
    #[error("the OP rejected the grant (invalid_grant)")]
    InvalidGrant,
    /// The OP refused the request for another reason (`invalid_client`, …): a configuration
    /// problem, not the user's; the session is kept.
    #[error("the OP refused the token request: HTTP {status}, error {error}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// OAuth error code.
        error: String,
    },
    /// The OP answered 5xx.
    #[error("the OP failed: HTTP {0}")]
    ServerError(u16),
    /// The request never reached the OP (connection refused, DNS): retrying is safe.
    #[error("the OP is unreachable: {0}")]
    Unreachable(String),
    /// The request was sent but no complete answer came back: the OP may have acted on it.
    #[error("no answer from the OP (outcome unknown): {0}")]
    OutcomeUnknown(String),
    /// The OP answered 200 with something that is not a token response.
    #[error("the OP's token response is invalid: {0}")]
    InvalidResponse(String),
    /// The OP refreshed, but its new ID token is about another user (Core §12.2). The refresh
    /// token is consumed and the tokens are not this user's: the session ends.
    #[error("the refreshed ID token is about another subject")]
    SubjectChanged,
}

impl TokenError {
    /// True when the OP may have consumed the presented grant.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::OutcomeUnknown(_))
    }
}

/// POSTs a form to an OP endpoint with client authentication.
pub(crate) fn authenticated_post(
    http: &reqwest::Client,
    url: &url::Url,
    creds: &ClientCredentials,
    mut form: Vec<(&str, String)>,
) -> reqwest::RequestBuilder {
    let request = http.post(url.clone()).header(reqwest::header::ACCEPT, "application/json");
    match creds.method {
        ClientAuthMethod::ClientSecretBasic => {
            // RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
            let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            request.basic_auth(encode(&creds.client_id), Some(encode(&creds.client_secret))).form(&form)
        }
        ClientAuthMethod::ClientSecretPost => {
            form.push(("client_id", creds.client_id.clone()));
            form.push(("client_secret", creds.client_secret.clone()));
            request.form(&form)
        }
    }
}

/// Sends a token request and classifies the outcome (code exchange: a `token_type` other than
/// Bearer is refused, nothing has been consumed that a new login cannot replace).
pub(crate) async fn request_tokens(request: reqwest::RequestBuilder) -> Result<TokenResponse, TokenError> {
    let (status, body) = send(request).await?;
    let tokens = classify(status, &body)?;
    if tokens.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
        return Err(TokenError::InvalidResponse("token_type is not Bearer".into()));
    }
    Ok(tokens)
}

/// Sends a `refresh_token` grant and classifies the outcome. A 2xx has consumed the presented
/// refresh token whatever its body says (DESIGN, "two rules learned the hard way"), so nothing
/// about a readable 2xx body makes it an error here: an unexpected `token_type` is logged and
/// the tokens kept. A 2xx without a readable token response is `OutcomeUnknown`, so the old
/// refresh token is not re-presented before the settle time.
pub(crate) async fn request_refresh(request: reqwest::RequestBuilder) -> Result<TokenResponse, TokenError> {
    let (status, body) = send(request).await?;
    let tokens = classify(status, &body)?;
    if let Some(t) = tokens.token_type.as_deref().filter(|t| !t.eq_ignore_ascii_case("bearer")) {
        tracing::warn!(token_type = %sanitize(t), "refreshed access token is not of type Bearer; keeping it (the refresh token is consumed)");
    }
    Ok(tokens)
}

async fn send(request: reqwest::RequestBuilder) -> Result<(reqwest::StatusCode, bytes::Bytes), TokenError> {
    let response = request.send().await.map_err(classify_transport)?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| TokenError::OutcomeUnknown(super::http::describe(&e)))?;
    Ok((status, body))
}

/// What an answer from the token endpoint means, from its status and body.
fn classify(status: reqwest::StatusCode, body: &[u8]) -> Result<TokenResponse, TokenError> {
    use reqwest::StatusCode;
    if status.is_success() {
        // The OP acted on the grant: an unreadable body is not "nothing happened".
        return serde_json::from_slice::<TokenResponse>(body)
            .map_err(|e| TokenError::OutcomeUnknown(format!("HTTP {} with an unreadable token response: {e}", status.as_u16())));
    }
    // 502 and 504 come from a proxy in front of the OP: the request may have reached the OP,
    // which may have consumed the refresh token before the proxy gave up on its answer.
    if matches!(status, StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT) {
        return Err(TokenError::OutcomeUnknown(format!("HTTP {} from a proxy in front of the OP", status.as_u16())));
    }
    if status.is_server_error() {
        return Err(TokenError::ServerError(status.as_u16()));
    }
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(e) if e.error == "invalid_grant" => Err(TokenError::InvalidGrant),
        Ok(e) => Err(TokenError::Refused { status: status.as_u16(), error: sanitize(&e.error) }),
        Err(_) => Err(TokenError::Refused { status: status.as_u16(), error: "<no error code>".into() }),
    }
}

fn classify_transport(e: reqwest::Error) -> TokenError {
    if e.is_connect() {
        TokenError::Unreachable(super::http::describe(&e))
    } else {
        // A timeout or reset after the connection was up: the request may have been processed.
        TokenError::OutcomeUnknown(super::http::describe(&e))
    }
}

/// OAuth error codes are a restricted charset; anything else is not echoed into logs.
fn sanitize(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_graphic()).take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each answer of the token endpoint means. `Ok` is a token response; the error
    /// names are the `TokenError` variant.
    #[test]
    fn answers_are_classified() {
        let tokens = r#"{"access_token":"a","token_type":"Bearer","expires_in":60,"refresh_token":"r"}"#;
        let cases: &[(u16, &str, &str)] = &[
            (200, tokens, "ok"),
            (200, r#"{"access_token":"a","token_type":"DPoP"}"#, "ok"),
            // 2xx: the grant was consumed, whatever the body looks like.
            (200, "not json", "unknown"),
            (200, r#"{"token_type":"Bearer"}"#, "unknown"),
            (201, "", "unknown"),
            // A proxy's 502/504 may come after the OP consumed the token.
            (502, "<html>Bad Gateway</html>", "unknown"),
            (504, "", "unknown"),
            (500, r#"{"error":"server_error"}"#, "server"),
            (503, "", "server"),
            (400, r#"{"error":"invalid_grant"}"#, "invalid_grant"),
            (400, r#"{"error":"invalid_client"}"#, "refused"),
            (401, "", "refused"),
        ];
        for (status, body, expected) in cases {
            let got = match classify(reqwest::StatusCode::from_u16(*status).unwrap(), body.as_bytes()) {
                Ok(_) => "ok",
                Err(TokenError::OutcomeUnknown(_)) => "unknown",
                Err(TokenError::ServerError(_)) => "server",
                Err(TokenError::InvalidGrant) => "invalid_grant",
                Err(TokenError::Refused { .. }) => "refused",
                Err(other) => panic!("{status} {body}: unexpected {other:?}"),
            };
            assert_eq!(got, *expected, "HTTP {status} {body}");
        }
    }
}
