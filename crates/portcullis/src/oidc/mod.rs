//! The OpenID Connect relying party: discovery, JWKS, ID-token validation, token calls.

mod client;
mod http;
pub(crate) mod id_token;
mod jwks;
mod metadata;
pub(crate) mod pkce;
mod token;

pub(crate) use client::email_unverified;
pub use client::{OidcClient, Refreshed};
pub use metadata::ProviderMetadata;
pub use token::TokenError;

/// Something went wrong talking to, or believing, the OP.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OidcError {
    /// Discovery failed or the document is unusable.
    #[error("discovery: {0}")]
    Discovery(String),
    /// The JWKS could not be fetched or parsed.
    #[error("JWKS: {0}")]
    Jwks(String),
    /// No key matches the token's `kid`, even after a refetch.
    #[error("no signing key {0:?} in the OP's JWKS")]
    UnknownKey(String),
    /// The ID token is invalid.
    #[error("ID token rejected: {0}")]
    IdToken(String),
    /// The token endpoint failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The authorization response's RFC 9207 `iss` is missing (when the OP advertises it) or
    /// names another issuer: a mix-up attack, or a misconfigured OP.
    #[error("authorization response issuer: {0}")]
    ResponseIssuer(String),
    /// The ID token marks the email it carries `email_verified: false`, and
    /// `oidc.allow_unverified_email` is off.
    #[error("the OP has not verified the user's email address")]
    UnverifiedEmail,
    /// The introspection endpoint failed (transport, non-2xx, not a JSON object).
    #[error("introspection: {0}")]
    Introspection(String),
    /// Revocation failed.
    #[error("revocation: {0}")]
    Revocation(String),
}
