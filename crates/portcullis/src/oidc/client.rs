//! The relying party: everything Portcullis asks of the OP, built from discovery.

use jsonwebtoken::Algorithm;
use serde_json::Value;
use url::Url;

use super::{
    OidcError, ProviderMetadata,
    id_token::{self, Expectations},
    jwks::JwksCache,
    token::{self, ClientCredentials, TokenError, TokenResponse},
};
use crate::{
    config::OidcConfig,
    metrics::{Metrics, OpEndpoint, OpMetrics},
    session::{Identity, TokenSet, now_millis},
};

/// A discovered OP and this client's registration at it.
pub struct OidcClient {
    http: reqwest::Client,
    metadata: ProviderMetadata,
    jwks: JwksCache,
    creds: ClientCredentials,
    scopes: String,
    redirect_uri: Url,
    post_logout_redirect_uri: Url,
    algorithms: Vec<Algorithm>,
    clock_skew: std::time::Duration,
    user_claim: String,
    groups_claim: String,
    extra_auth_params: Vec<(String, String)>,
    allow_unverified_email: bool,
    metrics: OpMetrics,
}

/// A token-endpoint answer the caller cannot use: `invalid_grant` is a definitive answer, not
/// a failure of the call.
fn token_call_failed<T>(result: &Result<T, TokenError>) -> bool {
    matches!(result, Err(e) if !matches!(e, TokenError::InvalidGrant))
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient").field("issuer", &self.metadata.issuer).field("creds", &self.creds).finish_non_exhaustive()
    }
}

impl OidcClient {
    /// Runs discovery and fetches the JWKS.
    pub async fn discover(config: &OidcConfig, redirect_uri: Url, post_logout_redirect_uri: Url) -> Result<Self, OidcError> {
        Self::discover_with_metrics(config, redirect_uri, post_logout_redirect_uri, &Metrics::default()).await
    }

    /// [`OidcClient::discover`], timing every call to the OP into `metrics`
    /// (`portcullis_op_request_duration_seconds{endpoint}`).
    pub async fn discover_with_metrics(
        config: &OidcConfig,
        redirect_uri: Url,
        post_logout_redirect_uri: Url,
        metrics: &Metrics,
    ) -> Result<Self, OidcError> {
        let op = metrics.op.clone();
        let http = super::http::client(config.http_timeout);
        let metadata = op.time(OpEndpoint::Discovery, ProviderMetadata::discover(&http, &config.issuer), Result::is_err).await?;
        let jwks = JwksCache::fetch_new(http.clone(), metadata.jwks_uri.clone(), op.clone()).await?;
        let algorithms = config
            .id_token_algorithms
            .iter()
            .map(|a| id_token::parse_allowed_algorithm(a).map_err(OidcError::Discovery))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            http,
            metadata,
            jwks,
            creds: ClientCredentials {
                client_id: config.client_id.clone(),
                client_secret: config.client_secret.clone().unwrap_or_default(),
                method: config.auth_method,
            },
            scopes: config.scopes.join(" "),
            redirect_uri,
            post_logout_redirect_uri,
            algorithms,
            clock_skew: config.clock_skew,
            user_claim: config.user_claim.clone(),
            groups_claim: config.groups_claim.clone(),
            extra_auth_params: config.extra_auth_params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            allow_unverified_email: config.allow_unverified_email,
            metrics: op,
        })
    }

    /// The JWKS cache, for the periodic refresh (`auth::provider`).
    pub(crate) fn jwks(&self) -> &JwksCache {
        &self.jwks
    }

    /// The discovered metadata.
    pub fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    /// The signature algorithms accepted on tokens this OP signs (`oidc.id_token_algorithms`,
    /// never `none` or HMAC): the bearer module applies the same allow-list to access tokens.
    pub(crate) fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// RFC 7662 introspection of an API client's token, with this client's credentials (as
    /// `oidc.auth_method` says). `Ok(None)`: the OP advertises no introspection endpoint.
    /// The answer is returned raw; `bearer::introspect` decides what it means. The token is
    /// sent only in the form body, never in a URL, and no error message carries it.
    pub(crate) async fn introspect(&self, token: &str) -> Result<Option<serde_json::Map<String, Value>>, OidcError> {
        let Some(endpoint) = &self.metadata.introspection_endpoint else { return Ok(None) };
        let form = vec![("token", token.to_string()), ("token_type_hint", "access_token".to_string())];
        let send = token::authenticated_post(&self.http, endpoint, &self.creds, form).send();
        let usable = |r: &reqwest::Response| r.status().is_success() || r.status() == reqwest::StatusCode::BAD_REQUEST;
        let response = self
            .metrics
            .time(OpEndpoint::Introspection, send, |r| !r.as_ref().is_ok_and(usable))
            .await
            .map_err(|e| OidcError::Introspection(super::http::describe(&e)))?;
        // 400: the OP read the request and will not vouch for the token (oidc-provider answers
        // so for a JWT it issued itself): inactive. 401/403 (our credentials) and 5xx say
        // nothing about the token: the caller answers 503.
        if response.status() == reqwest::StatusCode::BAD_REQUEST {
            return Ok(Some(serde_json::Map::from_iter([("active".to_string(), Value::Bool(false))])));
        }
        if !response.status().is_success() {
            return Err(OidcError::Introspection(format!("HTTP {}", response.status())));
        }
        let body: Value = response.json().await.map_err(|e| OidcError::Introspection(format!("not JSON: {e}")))?;
        match body {
            Value::Object(map) => Ok(Some(map)),
            _ => Err(OidcError::Introspection("the answer is not a JSON object".into())),
        }
    }

    /// The authorization request URL (code flow, PKCE S256).
    pub fn authorization_url(&self, state: &str, nonce: &str, code_challenge: &str) -> Url {
        let mut url = self.metadata.authorization_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.creds.client_id)
            .append_pair("redirect_uri", self.redirect_uri.as_str())
            .append_pair("scope", &self.scopes)
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256")
            .extend_pairs(self.extra_auth_params.iter());
        url
    }

    /// RFC 9207 check of the authorization response's `iss` parameter, before the code is
    /// sent anywhere: when present it must name this OP's issuer exactly; when the OP advertises
    /// `authorization_response_iss_parameter_supported`, it must be present. Without it, an
    /// attacker's OP in a multi-OP setup (or a mix-up) could have our code redeemed at the
    /// wrong token endpoint.
    pub fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), OidcError> {
        check_response_issuer(&self.metadata, iss)
    }

    /// Exchanges an authorization code; validates the ID token against the login's nonce.
    /// Refuses an identity whose email would be forwarded while the OP says it is unverified
    /// (unless `oidc.allow_unverified_email`): an upstream trusting `X-Forwarded-Email` would
    /// otherwise let anyone claim any address at an OP that lets users type one in.
    pub async fn exchange_code(&self, code: &str, code_verifier: &str, nonce: &str) -> Result<(TokenSet, Identity), OidcError> {
        let form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", self.redirect_uri.to_string()),
            ("code_verifier", code_verifier.to_string()),
        ];
        let request = token::request_tokens(token::authenticated_post(&self.http, &self.metadata.token_endpoint, &self.creds, form));
        let response = self.metrics.time(OpEndpoint::Token, request, token_call_failed).await?;
        let issued_at = received_at();
        let id_token = response.id_token.as_deref().ok_or(OidcError::IdToken("the token response has no id_token".into()))?;
        let claims = id_token::validate(id_token, &self.jwks, &self.expect(Some(nonce), None)).await?;
        let identity = self.identity(claims)?;
        if !self.allow_unverified_email && email_unverified(&identity) {
            return Err(OidcError::UnverifiedEmail);
        }
        Ok((tokens_from(response, issued_at, None), identity))
    }

    /// Redeems a refresh token. Once the OP answered 2xx the presented refresh token is
    /// consumed, so whatever can be kept is kept: the new access and refresh tokens always;
    /// the identity from the new ID token when it verifies (claims follow the refresh: a group
    /// removed at the OP disappears here), else the previous identity, logged. The one 2xx that
    /// is refused is an ID token about another `sub` (Core §12.2): the session must end rather
    /// than forward someone else's tokens under this user's name. `wait` bounds the whole call
    /// (the refresh task's wait for the OP, far longer than a request's).
    pub async fn refresh(&self, current: &TokenSet, subject: &str, wait: std::time::Duration) -> Result<Refreshed, TokenError> {
        let Some(refresh_token) = current.refresh_token.clone() else {
            return Err(TokenError::InvalidGrant);
        };
        let form = vec![("grant_type", "refresh_token".to_string()), ("refresh_token", refresh_token)];
        let request = token::authenticated_post(&self.http, &self.metadata.token_endpoint, &self.creds, form).timeout(wait);
        let mut response = self.metrics.time(OpEndpoint::Token, token::request_refresh(request), token_call_failed).await?;
        let issued_at = received_at();
        let identity = match response.id_token.as_deref() {
            None => None,
            Some(id_token) => match id_token::validate_refreshed(id_token, &self.jwks, &self.expect(None, None)).await {
                Ok(claims) if claims.get("sub").and_then(Value::as_str) != Some(subject) => return Err(TokenError::SubjectChanged),
                Ok(claims) => match self.identity(claims) {
                    Ok(identity) => Some(identity),
                    Err(e) => {
                        tracing::warn!(error = %e, "refreshed ID token lacks the user claim; keeping the previous identity");
                        None
                    }
                },
                Err(e) => {
                    // Not ours to verify (a lagging clock, a key not yet published): the tokens
                    // are still the OP's answer to our grant. The unverified ID token is not
                    // kept either; the previous one stays for `id_token_hint`.
                    tracing::warn!(error = %e, "refreshed ID token did not verify; keeping the new tokens and the previous identity");
                    response.id_token = None;
                    None
                }
            },
        };
        Ok(Refreshed { tokens: tokens_from(response, issued_at, Some(current)), identity })
    }

    /// Revokes a refresh token (RFC 7009) when the OP has a revocation endpoint.
    pub async fn revoke_refresh_token(&self, refresh_token: &str) -> Result<(), OidcError> {
        let Some(endpoint) = &self.metadata.revocation_endpoint else { return Ok(()) };
        let form = vec![("token", refresh_token.to_string()), ("token_type_hint", "refresh_token".to_string())];
        let send = token::authenticated_post(&self.http, endpoint, &self.creds, form).send();
        let response = self
            .metrics
            .time(OpEndpoint::Revocation, send, |r| !r.as_ref().is_ok_and(|r| r.status().is_success()))
            .await
            .map_err(|e| OidcError::Revocation(super::http::describe(&e)))?;
        if !response.status().is_success() {
            return Err(OidcError::Revocation(format!("HTTP {}", response.status())));
        }
        Ok(())
    }

    /// Where to send the browser to end its session at the OP, when the OP supports it.
    pub fn end_session_url(&self, id_token_hint: Option<&str>) -> Option<Url> {
        let mut url = self.metadata.end_session_endpoint.clone()?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(hint) = id_token_hint {
                q.append_pair("id_token_hint", hint);
            }
            q.append_pair("client_id", &self.creds.client_id);
            q.append_pair("post_logout_redirect_uri", self.post_logout_redirect_uri.as_str());
        }
        Some(url)
    }

    fn expect<'a>(&'a self, nonce: Option<&'a str>, subject: Option<&'a str>) -> Expectations<'a> {
        Expectations {
            issuer: &self.metadata.issuer,
            client_id: &self.creds.client_id,
            nonce,
            subject,
            algorithms: &self.algorithms,
            clock_skew: self.clock_skew,
        }
    }

    fn identity(&self, mut claims: id_token::Claims) -> Result<Identity, OidcError> {
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_string();
        let user = match claims.get(&self.user_claim) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => return Err(OidcError::IdToken(format!("the ID token has no {:?} claim (oidc.user_claim)", self.user_claim))),
        };
        let email = claims.get("email").and_then(Value::as_str).map(String::from);
        let groups = Identity::groups_in(&claims, &self.groups_claim);
        // Protocol claims say nothing about the user and would only bloat every session. `acr`
        // and `amr` stay: how the user authenticated is what `require_claims` rules ask about
        // (`acr = ["mfa"]`).
        for technical in ["nonce", "at_hash", "c_hash", "s_hash", "auth_time", "iat", "exp", "nbf", "jti", "sid", "azp", "aud", "iss"] {
            claims.remove(technical);
        }
        Ok(Identity { subject, user, email, groups, claims })
    }
}

/// What a refresh grant answered with 2xx yields.
#[derive(Debug)]
pub struct Refreshed {
    /// The new tokens (fields the OP left out carried over).
    pub tokens: TokenSet,
    /// The user as the refreshed ID token describes them; `None` keeps the previous identity
    /// (no ID token in the answer, or one that did not verify).
    pub identity: Option<Identity>,
}

fn check_response_issuer(metadata: &ProviderMetadata, iss: Option<&str>) -> Result<(), OidcError> {
    match iss {
        // Simple string comparison, as RFC 9207 §2.4 requires (no normalization).
        Some(iss) if iss == metadata.issuer => Ok(()),
        Some(iss) => {
            let shown: String = iss.chars().filter(|c| !c.is_control()).take(100).collect();
            Err(OidcError::ResponseIssuer(format!("{shown:?} is not the configured issuer {:?}", metadata.issuer)))
        }
        None if metadata.authorization_response_iss_parameter_supported => {
            Err(OidcError::ResponseIssuer("missing, though the OP advertises authorization_response_iss_parameter_supported".into()))
        }
        None => Ok(()),
    }
}

/// An email is forwarded (it is in the identity) and the OP says it is not verified. A
/// missing `email_verified` is not a refusal (many OPs only send it for self-asserted emails,
/// as oauth2-proxy also reads it); the string `"false"` (some OPs send strings) is.
pub(crate) fn email_unverified(identity: &Identity) -> bool {
    identity.email.is_some()
        && match identity.claims.get("email_verified") {
            Some(Value::Bool(verified)) => !verified,
            Some(Value::String(s)) => !s.eq_ignore_ascii_case("true"),
            Some(_) => true,
            None => false,
        }
}

/// The clock reading that `expires_in` counts from. The OP starts the clock when it processes
/// the request, somewhere between our send and our receive; the receive time is off only by the
/// answer's transit, while the send time can be off by the OP's whole queueing delay, which
/// would make a slow OP's fresh tokens look expired on arrival.
fn received_at() -> u64 {
    now_millis()
}

fn tokens_from(response: TokenResponse, issued_at: u64, previous: Option<&TokenSet>) -> TokenSet {
    TokenSet {
        access_token: response.access_token,
        issued_at,
        expires_at: response.expires_in.map(|s| issued_at + s * 1000),
        refresh_token: response.refresh_token.or_else(|| previous.and_then(|p| p.refresh_token.clone())),
        id_token: response.id_token.or_else(|| previous.and_then(|p| p.id_token.clone())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn metadata(advertised: bool) -> ProviderMetadata {
        serde_json::from_value(json!({
            "issuer": "https://op.example",
            "authorization_endpoint": "https://op.example/auth",
            "token_endpoint": "https://op.example/token",
            "jwks_uri": "https://op.example/jwks",
            "authorization_response_iss_parameter_supported": advertised,
        }))
        .unwrap()
    }

    #[test]
    fn response_issuer_rfc_9207() {
        // (advertised, iss, accepted)
        let table: &[(bool, Option<&str>, bool)] = &[
            (true, Some("https://op.example"), true),
            (true, None, false),
            (true, Some("https://evil.example"), false),
            (true, Some("https://op.example/"), false),
            (true, Some(""), false),
            (false, None, true),
            (false, Some("https://op.example"), true),
            (false, Some("https://evil.example"), false),
        ];
        for &(advertised, iss, accepted) in table {
            let result = check_response_issuer(&metadata(advertised), iss);
            assert_eq!(result.is_ok(), accepted, "advertised={advertised} iss={iss:?}: {result:?}");
        }
        let unadvertised: ProviderMetadata = serde_json::from_value(json!({
            "issuer": "https://op.example",
            "authorization_endpoint": "https://op.example/auth",
            "token_endpoint": "https://op.example/token",
            "jwks_uri": "https://op.example/jwks",
        }))
        .unwrap();
        assert!(!unadvertised.authorization_response_iss_parameter_supported, "absent means not advertised");
    }

    #[test]
    fn unverified_email_rule() {
        let identity = |email: Option<&str>, verified: Option<Value>| {
            let mut claims = serde_json::Map::new();
            if let Some(v) = verified {
                claims.insert("email_verified".into(), v);
            }
            Identity { subject: "s".into(), user: "s".into(), email: email.map(String::from), groups: vec![], claims }
        };
        let table = [
            (Some("a@x"), Some(json!(false)), true),
            (Some("a@x"), Some(json!("false")), true),
            (Some("a@x"), Some(json!(true)), false),
            (Some("a@x"), Some(json!("true")), false),
            (Some("a@x"), None, false),
            (None, Some(json!(false)), false),
        ];
        for (email, verified, refused) in table {
            assert_eq!(email_unverified(&identity(email, verified.clone())), refused, "{email:?} {verified:?}");
        }
    }
}
