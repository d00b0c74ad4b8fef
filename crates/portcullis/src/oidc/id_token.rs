//! ID token validation (OpenID Connect Core §3.1.3.7).

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{OidcError, jwks::JwksCache};

/// Parses an allow-list entry. `none` and the HMAC family are refused outright: `none` is no
/// signature at all, and HS* with a public key as the "secret" is the classic key-confusion forgery.
pub(crate) fn parse_allowed_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name.parse().map_err(|_| format!("unknown algorithm {name:?}"))?;
    if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
        return Err(format!("{name} is refused: HMAC ID tokens would need the client secret as a key"));
    }
    Ok(alg)
}

/// What an ID token must match.
pub(crate) struct Expectations<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) client_id: &'a str,
    /// The login's nonce; `None` on refresh, where the OP need not repeat it.
    pub(crate) nonce: Option<&'a str>,
    /// On refresh, the new token must be about the same user (Core §12.2).
    pub(crate) subject: Option<&'a str>,
    pub(crate) algorithms: &'a [Algorithm],
    pub(crate) clock_skew: Duration,
}

/// Validated claims of an ID token.
pub(crate) type Claims = Map<String, Value>;

/// Verifies signature and claims; returns the claims.
pub(crate) async fn validate(token: &str, jwks: &JwksCache, expect: &Expectations<'_>) -> Result<Claims, OidcError> {
    let header = allowed_header(token, expect)?;
    let jwk = jwks.key_for(header.kid.as_deref(), header.alg).await?;
    check(token, &header, &jwk, expect)
}

/// [`validate`] for an ID token the OP's token endpoint just sent in answer to our refresh
/// grant: an unknown `kid` refetches the JWKS even during its cool-down (see
/// `JwksCache::key_for_trusted`), because that answer consumed the refresh token.
pub(crate) async fn validate_refreshed(token: &str, jwks: &JwksCache, expect: &Expectations<'_>) -> Result<Claims, OidcError> {
    let header = allowed_header(token, expect)?;
    let jwk = jwks.key_for_trusted(header.kid.as_deref(), header.alg).await?;
    check(token, &header, &jwk, expect)
}

fn allowed_header(token: &str, expect: &Expectations<'_>) -> Result<jsonwebtoken::Header, OidcError> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| OidcError::IdToken(format!("malformed header: {e}")))?;
    if !expect.algorithms.contains(&header.alg) {
        return Err(OidcError::IdToken(format!("algorithm {:?} is not allowed", header.alg)));
    }
    Ok(header)
}

fn check(token: &str, header: &jsonwebtoken::Header, jwk: &jsonwebtoken::jwk::Jwk, expect: &Expectations<'_>) -> Result<Claims, OidcError> {
    let key = DecodingKey::from_jwk(jwk).map_err(|e| OidcError::IdToken(format!("unusable key: {e}")))?;

    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[expect.issuer]);
    validation.set_audience(&[expect.client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = expect.clock_skew.as_secs();
    // RFC 7519 §4.1.5: not before `nbf` (jsonwebtoken leaves this check off by default).
    validation.validate_nbf = true;
    let claims: Claims = jsonwebtoken::decode(token, &key, &validation).map_err(|e| OidcError::IdToken(e.to_string()))?.claims;

    check_iat(&claims, expect.clock_skew)?;
    check_azp(&claims, expect.client_id)?;
    if let Some(nonce) = expect.nonce
        && claims.get("nonce").and_then(Value::as_str) != Some(nonce)
    {
        return Err(OidcError::IdToken("nonce does not match the login".into()));
    }
    if let Some(subject) = expect.subject
        && claims.get("sub").and_then(Value::as_str) != Some(subject)
    {
        return Err(OidcError::IdToken("sub changed on refresh".into()));
    }
    Ok(claims)
}

fn check_iat(claims: &Claims, skew: Duration) -> Result<(), OidcError> {
    // NumericDate may be fractional (RFC 7519 §2).
    let iat = claims.get("iat").and_then(Value::as_f64).filter(|t| *t >= 0.0).ok_or_else(|| OidcError::IdToken("no iat".into()))?;
    if iat > (jsonwebtoken::get_current_timestamp() + skew.as_secs()) as f64 {
        return Err(OidcError::IdToken("issued in the future".into()));
    }
    Ok(())
}

/// Core §3.1.3.7 items 4–5: with several audiences `azp` must be present, and when present it
/// must be this client.
fn check_azp(claims: &Claims, client_id: &str) -> Result<(), OidcError> {
    let several_audiences = claims.get("aud").and_then(Value::as_array).is_some_and(|a| a.len() > 1);
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == client_id => Ok(()),
        Some(_) => Err(OidcError::IdToken("azp is not this client".into())),
        None if several_audiences => Err(OidcError::IdToken("several audiences and no azp".into())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_refuses_none_and_hmac() {
        for bad in ["none", "HS256", "HS384", "HS512", "nonsense", ""] {
            assert!(parse_allowed_algorithm(bad).is_err(), "accepted {bad}");
        }
        for good in ["RS256", "PS256", "ES256", "ES384", "EdDSA"] {
            assert!(parse_allowed_algorithm(good).is_ok(), "refused {good}");
        }
    }

    #[test]
    fn azp_rules() {
        let claims = |v: Value| v.as_object().unwrap().clone();
        assert!(check_azp(&claims(serde_json::json!({"aud": "gw"})), "gw").is_ok());
        assert!(check_azp(&claims(serde_json::json!({"aud": ["gw", "x"], "azp": "gw"})), "gw").is_ok());
        assert!(check_azp(&claims(serde_json::json!({"aud": ["gw", "x"]})), "gw").is_err());
        assert!(check_azp(&claims(serde_json::json!({"aud": "gw", "azp": "other"})), "gw").is_err());
    }
}

#[cfg(test)]
#[path = "id_token_tests.rs"]
mod tests_forged;
