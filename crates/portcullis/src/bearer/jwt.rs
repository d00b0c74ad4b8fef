//! JWT access tokens (RFC 9068), checked locally against the OP's keys.

use std::time::Duration;

use jsonwebtoken::{DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use super::BearerError;
use crate::oidc::{OidcClient, OidcError};

/// Whether a JOSE `typ` names an RFC 9068 access token. Compared case-insensitively, with
/// or without the `application/` prefix (RFC 7515 §4.1.9).
fn is_access_token_type(typ: &str) -> bool {
    let typ = typ.strip_prefix("application/").unwrap_or(typ);
    typ.eq_ignore_ascii_case("at+jwt")
}

/// Verifies `token` and returns its claims.
///
/// `typ` must be `at+jwt` (RFC 9068 §4: resource servers MUST check it). That is the one
/// rule that keeps an ID token out, whatever the route's `audiences` are: an ID token is
/// signed by the same keys, names the same issuer, and has `aud` = a client id, which an
/// operator may well list as an audience; its `typ` is `JWT` or absent. OPs that issue JWT
/// access tokens without `at+jwt` (older Keycloak, Entra ID v1) are served by
/// `bearer = "introspect"` instead.
pub(super) async fn validate(
    token: &str,
    client: &OidcClient,
    audiences: &[String],
    skew: Duration,
) -> Result<Map<String, Value>, BearerError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| BearerError::Invalid("malformed token"))?;
    if !header.typ.as_deref().is_some_and(is_access_token_type) {
        return Err(BearerError::Invalid("not an access token (typ is not at+jwt)"));
    }
    // The allow-list never holds `none` or HMAC (config validation): an HS256 token "signed"
    // with the OP's public key as the secret is refused here, before any key is looked up.
    if !client.algorithms().contains(&header.alg) {
        return Err(BearerError::Invalid("signature algorithm not allowed"));
    }
    if audiences.is_empty() {
        // Config validation requires audiences for `jwt`; a library user who forgot them gets
        // a refusal, never a token accepted for any audience.
        tracing::error!("bearer = jwt without audiences: every token is refused");
        return Err(BearerError::Invalid("no audience is accepted here"));
    }
    // The shared JWKS cache: an unknown kid refetches at most once per cool-down, so a
    // stream of forged kids cannot turn the gateway into a JWKS-fetching amplifier.
    let jwk = match client.jwks().key_for(header.kid.as_deref(), header.alg).await {
        Ok(jwk) => jwk,
        Err(OidcError::UnknownKey(_)) => return Err(BearerError::Invalid("unknown signing key")),
        Err(e) => return Err(BearerError::Unavailable(e.to_string())),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| BearerError::Invalid("unknown signing key"))?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[client.metadata().issuer.as_str()]);
    validation.set_audience(audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = skew.as_secs();
    validation.validate_nbf = true;
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
        BearerError::Invalid(match e.kind() {
            ErrorKind::ExpiredSignature => "the token has expired",
            ErrorKind::ImmatureSignature => "the token is not valid yet",
            ErrorKind::InvalidAudience => "the token is for another audience",
            ErrorKind::InvalidIssuer => "the token is from another issuer",
            ErrorKind::InvalidSignature => "bad signature",
            ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
            ErrorKind::InvalidAlgorithm => "signature algorithm not allowed",
            _ => "the token could not be verified",
        })
    })?;
    Ok(data.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_token_types() {
        for ok in ["at+jwt", "AT+JWT", "application/at+jwt"] {
            assert!(is_access_token_type(ok), "{ok}");
        }
        for bad in ["JWT", "jwt", "", "at+jwt2", "application/jwt", "id+jwt"] {
            assert!(!is_access_token_type(bad), "{bad}");
        }
    }
}
