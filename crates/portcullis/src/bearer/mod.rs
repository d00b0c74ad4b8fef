//! API clients that bring their own bearer token (issue 9 item 2).
//!
//! A route with `bearer = "jwt"` or `"introspect"` accepts `Authorization: Bearer <token>`
//! from a client without a session cookie. The token is checked here and, when good, forwarded
//! unchanged; the identity headers come from its claims.
//!
//! - `jwt`: validated locally ([`jwt`]): the OP's JWKS (the same cache as ID tokens, so a
//!   forged `kid` costs the OP at most one JWKS fetch per cool-down), the algorithm allow-list
//!   of `oidc.id_token_algorithms` (never `none` or HMAC), `typ: at+jwt` (RFC 9068: what keeps
//!   an ID token from passing as an access token), `iss`, `aud` against the route's
//!   `audiences`, `exp`/`nbf` with `oidc.clock_skew`.
//! - `introspect`: RFC 7662 at the OP ([`introspect`]), answers kept in a bounded cache
//!   ([`cache`]) keyed by a hash of the token, never past the token's `exp`.
//!
//! Then, in both modes, `required_scopes` (`scope` string or `scp` array): a valid token
//! without them is a 403 `insufficient_scope`, anything else wrong a 401 `invalid_token`, an
//! OP that cannot be asked a 503. No token, and no error message, ever reaches a log line.

mod cache;
mod introspect;
mod jwt;

use std::{sync::Arc, time::Duration};

use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Map, Value};

use crate::{
    auth::{Failure, RequestKind},
    config::{BearerMode, Config, RouteConfig},
    oidc::OidcClient,
    session::Identity,
};

/// What one route asks of bearer tokens, borrowed from its [`RouteConfig`] (gateway) or
/// from [`BearerSettings`] (library users, through `AuthLayer::with_bearer`).
#[derive(Debug, Clone, Copy)]
pub struct BearerPolicy<'a> {
    /// Off, JWT or introspection.
    pub mode: BearerMode,
    /// Accepted `aud` values (any one suffices). Required for `jwt`; for `introspect`, checked
    /// when non-empty and the OP's answer names an audience.
    pub audiences: &'a [String],
    /// Scopes the token must carry, all of them.
    pub required_scopes: &'a [String],
}

impl<'a> From<&'a RouteConfig> for BearerPolicy<'a> {
    fn from(route: &'a RouteConfig) -> Self {
        Self { mode: route.bearer, audiences: &route.audiences, required_scopes: &route.required_scopes }
    }
}

/// The owned twin of [`BearerPolicy`], for a layer's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BearerSettings {
    /// Off (the default), JWT or introspection.
    pub mode: BearerMode,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Scopes every token must carry.
    pub required_scopes: Vec<String>,
}

impl BearerSettings {
    /// Validated as JWTs against the OP's keys, for tokens whose `aud` is one of `audiences`.
    pub fn jwt(audiences: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { mode: BearerMode::Jwt, audiences: audiences.into_iter().map(Into::into).collect(), required_scopes: Vec::new() }
    }

    /// Validated by introspection at the OP.
    pub fn introspect() -> Self {
        Self { mode: BearerMode::Introspect, ..Self::default() }
    }

    /// Scopes every token must carry (403 `insufficient_scope` otherwise).
    pub fn require_scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.required_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Borrowed view.
    pub fn policy(&self) -> BearerPolicy<'_> {
        BearerPolicy { mode: self.mode, audiences: &self.audiences, required_scopes: &self.required_scopes }
    }
}

/// Why a bearer token was not accepted. The texts are fixed phrases: they go into
/// `WWW-Authenticate`'s `error_description` and the JSON body, so nothing from the token
/// (or the OP's answer) can reach them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BearerError {
    /// 401 `invalid_token`: malformed, forged, expired, for another audience, revoked.
    #[error("invalid bearer token: {0}")]
    Invalid(&'static str),
    /// 403 `insufficient_scope`: a valid token without the route's `required_scopes`.
    #[error("the bearer token lacks a required scope")]
    InsufficientScope,
    /// 503: the OP could not be asked (not discovered yet, introspection or JWKS unreachable).
    /// A transient failure is not the client's fault, so it is not a 401.
    #[error("bearer token could not be checked: {0}")]
    Unavailable(String),
}

impl BearerError {
    /// The response: JSON (bearer clients are API clients), RFC 6750 §3 challenge.
    /// `required_scopes` is named in the 403's `scope` attribute.
    pub fn respond(&self, required_scopes: &[String]) -> Response {
        let (failure, challenge) = match self {
            Self::Invalid(why) => (
                Failure::bearer_token(StatusCode::UNAUTHORIZED, "invalid_token", format!("The bearer token was refused: {why}.")),
                format!("Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{why}\""),
            ),
            Self::InsufficientScope => (
                Failure::bearer_token(
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    format!("The bearer token lacks a scope this route requires ({}).", required_scopes.join(" ")),
                ),
                // Scope tokens are validated at config load: no quote or backslash in them.
                format!("Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"{}\"", required_scopes.join(" ")),
            ),
            Self::Unavailable(_) => {
                let failure = Failure::unavailable(
                    "identity_provider_unavailable",
                    "The identity provider is not answering, so the bearer token could not be checked. Please retry shortly.",
                );
                return failure.respond(RequestKind::Api);
            }
        };
        let mut response = failure.respond(RequestKind::Api);
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// Longest bearer token looked at; anything longer is refused unread.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The bearer token of a request: `Ok(None)` without an `Authorization` header or with
/// another scheme (e.g. `Basic`, left to the route's policy). Several `Authorization` headers
/// are refused: which one an upstream reads is anyone's guess.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, BearerError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(BearerError::Invalid("several Authorization headers"));
    }
    let Ok(text) = value.to_str() else { return Err(BearerError::Invalid("malformed Authorization header")) };
    let Some((scheme, token)) = text.split_once(' ') else { return Ok(None) };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim_matches(' ');
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || !is_b64token(token) {
        return Err(BearerError::Invalid("malformed token"));
    }
    Ok(Some(token))
}

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// Checks bearer tokens; one per [`crate::auth::Authenticator`].
pub(crate) struct BearerValidator {
    user_claim: String,
    groups_claim: String,
    clock_skew: Duration,
    allow_unverified_email: bool,
    cache: cache::IntrospectionCache,
}

impl BearerValidator {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            user_claim: config.oidc.user_claim.clone(),
            groups_claim: config.oidc.groups_claim.clone(),
            clock_skew: config.oidc.clock_skew,
            allow_unverified_email: config.oidc.allow_unverified_email,
            cache: cache::IntrospectionCache::new(config.bearer.introspection_cache_entries, config.bearer.introspection_cache_ttl),
        }
    }

    /// The identity of a valid `token` under `policy` (whose mode is not `Off`).
    pub(crate) async fn validate(
        &self,
        client: Option<Arc<OidcClient>>,
        token: &str,
        policy: &BearerPolicy<'_>,
    ) -> Result<Arc<Identity>, BearerError> {
        let client = client.ok_or_else(|| BearerError::Unavailable("the OpenID Provider has not been discovered yet".into()))?;
        let (identity, scopes) = match policy.mode {
            BearerMode::Off => return Err(BearerError::Invalid("bearer tokens are not accepted here")),
            BearerMode::Jwt => {
                let claims = jwt::validate(token, &client, policy.audiences, self.clock_skew).await?;
                let scopes = scopes_of(&claims);
                (Arc::new(self.identity(claims)?), scopes)
            }
            BearerMode::Introspect => {
                let answer = self.cache.get_or_fetch(token, || introspect::fetch(&client, token, self, self.clock_skew)).await?;
                match &*answer {
                    introspect::Introspected::Refused(why) => return Err(BearerError::Invalid(why)),
                    introspect::Introspected::Active { identity, scopes, audiences } => {
                        // The cache serves every route: the audience is judged per route.
                        if !policy.audiences.is_empty() && !audiences.is_empty() && !audiences.iter().any(|a| policy.audiences.contains(a))
                        {
                            return Err(BearerError::Invalid("the token is for another audience"));
                        }
                        (identity.clone(), scopes.clone())
                    }
                }
            }
        };
        if !policy.required_scopes.iter().all(|s| scopes.contains(s)) {
            return Err(BearerError::InsufficientScope);
        }
        Ok(identity)
    }

    /// The identity headers' source: user from `oidc.user_claim`, groups from
    /// `oidc.groups_claim`. An email the token marks unverified is not forwarded (unless
    /// `oidc.allow_unverified_email`): an upstream trusting `X-Forwarded-Email` must not be
    /// handed an address anyone could have typed in at the OP.
    fn identity(&self, mut claims: Map<String, Value>) -> Result<Identity, BearerError> {
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(BearerError::Invalid("the token has no sub claim")),
        };
        let user = match claims.get(&self.user_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(BearerError::Invalid("the token lacks the configured user claim")),
        };
        let email = claims.get("email").and_then(Value::as_str).map(String::from);
        let groups = Identity::groups_in(&claims, &self.groups_claim);
        for technical in ["iat", "exp", "nbf", "jti", "iss", "aud", "sid", "active", "token_type", "cnf", "auth_time"] {
            claims.remove(technical);
        }
        let mut identity = Identity { subject, user, email, groups, claims };
        if !self.allow_unverified_email && crate::oidc::email_unverified(&identity) {
            identity.email = None;
        }
        Ok(identity)
    }
}

/// The token's scopes: OAuth's space-separated `scope` string (RFC 9068 §2.2.3), or the
/// `scp` array (or string) some OPs use instead.
fn scopes_of(claims: &Map<String, Value>) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => scopes.extend(s.split(' ').filter(|s| !s.is_empty()).map(String::from)),
            Some(Value::Array(a)) => scopes.extend(a.iter().filter_map(Value::as_str).map(String::from)),
            _ => {}
        }
    }
    scopes
}

/// A short, one-way tag of a token for log lines: lets two lines about the same token be
/// matched without the token itself in the log.
pub(crate) fn log_tag(token: &str) -> String {
    let hash = crate::crypto::labelled_sha256(b"portcullis bearer log tag", token.as_bytes());
    hash[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn bearer_token_parsing() {
        // (Authorization values, expected: Ok(Some(token)) / Ok(None) / Err)
        type Row<'a> = (&'a [&'a str], Result<Option<&'a str>, ()>);
        let table: &[Row<'_>] = &[
            (&[], Ok(None)),
            (&["Basic Zm9vOmJhcg=="], Ok(None)),
            (&["Bearer abc.def-ghi_~+/=="], Ok(Some("abc.def-ghi_~+/=="))),
            (&["bearer abc"], Ok(Some("abc"))),
            (&["BEARER  abc "], Ok(Some("abc"))),
            (&["Bearer "], Err(())),
            (&["Bearer a b"], Err(())),
            (&["Bearer a\"b"], Err(())),
            (&["Bearer ==="], Err(())),
            (&["Bearer abc", "Bearer def"], Err(())),
            (&["Bearer"], Ok(None)),
        ];
        for (values, expected) in table {
            let mut headers = HeaderMap::new();
            for v in *values {
                headers.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            let got = bearer_token(&headers).map_err(|_| ());
            assert_eq!(&got, expected, "{values:?}");
        }
    }

    #[test]
    fn scopes_from_scope_and_scp() {
        let claims = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(scopes_of(&claims(serde_json::json!({"scope": "a  b"}))), ["a", "b"]);
        assert_eq!(scopes_of(&claims(serde_json::json!({"scp": ["a", "b"]}))), ["a", "b"]);
        assert!(scopes_of(&claims(serde_json::json!({"scope": 3}))).is_empty());
    }
}
