//! `GET /.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §3) and `GET /jwks`.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde_json::{Value, json};

use crate::provider::Provider;

pub(crate) async fn configuration(State(op): State<Arc<Provider>>) -> Json<Value> {
    Json(json!({
        "issuer": op.issuer,
        "authorization_endpoint": op.url("/authorize"),
        "token_endpoint": op.url("/token"),
        "jwks_uri": op.url("/jwks"),
        "userinfo_endpoint": op.url("/userinfo"),
        "introspection_endpoint": op.url("/introspect"),
        "revocation_endpoint": op.url("/revoke"),
        "end_session_endpoint": op.url("/end_session"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": crate::authorize::SCOPES,
        "claims_supported": [
            "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "sid",
            "name", "preferred_username", "email", "email_verified", "groups"
        ],
        "prompt_values_supported": ["none", "login"],
        // RFC 9207: redirects carry `iss`, so a client talking to several OPs can tell them apart.
        "authorization_response_iss_parameter_supported": true,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    }))
}

pub(crate) async fn jwks(State(op): State<Arc<Provider>>) -> Json<jsonwebtoken::jwk::JwkSet> {
    Json(op.keys.jwks())
}
