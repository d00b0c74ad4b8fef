//! OpenID Provider metadata from discovery (OpenID Connect Discovery 1.0).

use serde::Deserialize;
use url::Url;

use super::OidcError;

/// The parts of the discovery document Portcullis uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    /// Must equal the configured issuer exactly (Discovery §4.3), or tokens could be mixed up.
    pub issuer: String,
    /// Where the browser is sent to log in.
    pub authorization_endpoint: Url,
    /// Code exchange and refresh.
    pub token_endpoint: Url,
    /// Signing keys of ID tokens.
    pub jwks_uri: Url,
    /// RFC 7009 revocation, used at logout when present.
    #[serde(default)]
    pub revocation_endpoint: Option<Url>,
    /// RP-initiated logout, used at logout when present.
    #[serde(default)]
    pub end_session_endpoint: Option<Url>,
    /// RFC 7662 introspection, when present.
    #[serde(default)]
    pub introspection_endpoint: Option<Url>,
    /// RFC 9207: the OP puts `iss` in every authorization response; the callback then refuses
    /// a response without it.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    /// `S256` must be among these when the OP lists them.
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
}

impl ProviderMetadata {
    /// Fetches `<issuer>/.well-known/openid-configuration` and checks it names the same issuer.
    pub async fn discover(http: &reqwest::Client, issuer: &Url) -> Result<Self, OidcError> {
        let base = issuer.as_str().trim_end_matches('/');
        let url = format!("{base}/.well-known/openid-configuration");
        let response =
            http.get(&url).send().await.map_err(|e| OidcError::Discovery(format!("GET {url}: {}", super::http::describe(&e))))?;
        if !response.status().is_success() {
            return Err(OidcError::Discovery(format!("GET {url}: HTTP {}", response.status())));
        }
        let metadata: Self =
            response.json().await.map_err(|e| OidcError::Discovery(format!("GET {url}: not a discovery document: {e}")))?;
        if metadata.issuer.trim_end_matches('/') != base {
            return Err(OidcError::Discovery(format!("issuer mismatch: configured {base}, OP says {}", metadata.issuer)));
        }
        if let Some(methods) = &metadata.code_challenge_methods_supported
            && !methods.iter().any(|m| m == "S256")
        {
            return Err(OidcError::Discovery("the OP does not support PKCE S256".into()));
        }
        Ok(metadata)
    }
}
