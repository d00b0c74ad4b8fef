//! Client authentication at the token, introspection and revocation endpoints:
//! `client_secret_basic` or `client_secret_post` (RFC 6749 §2.3.1), never both at once.

use axum::http::{HeaderMap, header};
use base64::{Engine, engine::general_purpose::STANDARD};

use crate::{ClientConfig, crypto::secret_eq, oauth_error::OAuthError, params::Params, provider::Provider};

/// The authenticated client, or `invalid_client` (401). Takes `client_id` and `client_secret`
/// out of the form so that later code never sees the secret.
/// The common start of `/introspect` and `/revoke`: the form, an authenticated client, and the
/// `token` parameter.
pub(crate) fn token_request<'a>(op: &'a Provider, headers: &HeaderMap, body: &[u8]) -> Result<(&'a ClientConfig, String), OAuthError> {
    let mut params = Params::parse(body).map_err(OAuthError::invalid_request)?;
    let client = authenticate(op, headers, &mut params)?;
    let token = params.get("token").ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    Ok((client, token.to_string()))
}

pub(crate) fn authenticate<'a>(op: &'a Provider, headers: &HeaderMap, params: &mut Params) -> Result<&'a ClientConfig, OAuthError> {
    let body_id = params.take("client_id");
    let body_secret = params.take("client_secret");
    let basic = match headers.get(header::AUTHORIZATION) {
        Some(value) => Some(parse_basic(value.to_str().unwrap_or_default()).ok_or_else(|| {
            OAuthError::invalid_client("the Authorization header is not Basic base64(urlencode(client_id):urlencode(client_secret))")
        })?),
        None => None,
    };
    let (id, secret) = match (basic, body_secret) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request("use one client authentication method, not both Basic and client_secret"));
        }
        (Some((id, secret)), None) => {
            if body_id.as_ref().is_some_and(|b| *b != id) {
                return Err(OAuthError::invalid_request("client_id in the body differs from the Basic credentials"));
            }
            (id, secret)
        }
        (None, Some(secret)) => (body_id.ok_or_else(|| OAuthError::invalid_client("client_secret without client_id"))?, secret),
        (None, None) => {
            return Err(OAuthError::invalid_client("client authentication is required (client_secret_basic or client_secret_post)"));
        }
    };
    let client = op.clients.get(&id);
    // Compare against something even for an unknown client, so timing does not reveal which
    // client ids exist.
    let expected = client.map_or("unknown client", |c| c.client_secret.as_str());
    match client {
        Some(client) if secret_eq(&secret, expected) => Ok(client),
        _ => {
            tracing::info!(client_id = ?id, "client authentication failed");
            Err(OAuthError::invalid_client("unknown client or wrong client secret"))
        }
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// `application/x-www-form-urlencoded` decoding of one value (`+` is a space).
fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let header = format!("Basic {}", STANDARD.encode("my%20client:s%3Acret+x"));
        assert_eq!(parse_basic(&header), Some(("my client".into(), "s:cret x".into())));
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic(&format!("Basic {}", STANDARD.encode("no-colon"))), None);
        assert_eq!(parse_basic(&format!("Basic {}", STANDARD.encode("a:%zz"))), None);
    }
}
