//! The Portcullis library's own relying party (`portcullis::oidc::OidcClient`) against this OP:
//! discovery, the authorization URL, the code exchange with its ID-token validation, refresh
//! under rotation, revocation and the end-session URL. This is the pairing `portcullis demo` runs.

mod common;

use common::*;
use portcullis::{
    config::OidcConfig,
    oidc::{OidcClient, TokenError},
};
use reqwest::StatusCode;
use serde_json::json;
use url::Url;

/// The refresh call's bound on waiting for the OP.
const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn client(op: &portcullis_dev_op::DevOp, auth_method: &str) -> OidcClient {
    let config: OidcConfig = serde_json::from_value(json!({
        // As a gateway config would name it: `http://127.0.0.1:PORT`, no trailing slash.
        "issuer": url(op, ""),
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "auth_method": auth_method,
        "scopes": ["openid", "offline_access", "profile", "email"],
    }))
    .unwrap();
    OidcClient::discover(&config, Url::parse(REDIRECT_URI).unwrap(), Url::parse(POST_LOGOUT_URI).unwrap()).await.expect("discovery")
}

#[tokio::test]
async fn the_portcullis_client_logs_in_refreshes_and_logs_out() {
    let op = start(config()).await;
    for auth_method in ["client_secret_basic", "client_secret_post"] {
        let oidc = client(&op, auth_method).await;
        assert_eq!(oidc.metadata().issuer, url(&op, ""));

        // The authorization URL the gateway would send the browser to shows our login page.
        let (verifier, challenge) = pkce();
        let browser = browser();
        let page = browser.get(oidc.authorization_url("state-1", "nonce-1", &challenge).as_str()).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let redirect = submit_login(&op, &browser, &page.text().await.unwrap(), "demo", "demo").await;
        let (base, params) = location_params(&redirect);
        assert_eq!(base, REDIRECT_URI);
        assert_eq!(param(&params, "state"), Some("state-1"));

        // The code exchange validates the ID token (signature via JWKS, iss, aud, nonce).
        let (tokens, identity) = oidc.exchange_code(param(&params, "code").unwrap(), &verifier, "nonce-1").await.expect("code exchange");
        assert_eq!(identity.subject, "demo");
        assert_eq!(identity.email.as_deref(), Some("demo@example.test"));
        assert_eq!(identity.groups, ["demo"]);
        assert!(tokens.expires_at.is_some() && tokens.refresh_token.is_some());

        // Refresh with rotation: a new refresh token; the old one is now a reuse.
        let refreshed = oidc.refresh(&tokens, "demo", WAIT).await.expect("refresh");
        assert_eq!(refreshed.identity.as_ref().map(|i| i.groups.clone()), Some(vec!["demo".to_string()]), "claims follow the refresh");
        let refreshed = refreshed.tokens;
        assert_ne!(refreshed.refresh_token, tokens.refresh_token);
        assert!(matches!(oidc.refresh(&tokens, "demo", WAIT).await, Err(TokenError::InvalidGrant)));

        // Revocation and the end-session URL.
        let fresh = oidc.refresh(&refreshed, "demo", WAIT).await;
        assert!(matches!(fresh, Err(TokenError::InvalidGrant)), "reuse detection revoked the family");
        let (verifier, challenge) = pkce();
        let again = browser.get(oidc.authorization_url("s2", "n2", &challenge).as_str()).send().await.unwrap();
        let (_, params) = location_params(&again);
        let (tokens, _) = oidc.exchange_code(param(&params, "code").unwrap(), &verifier, "n2").await.expect("SSO code exchange");
        oidc.revoke_refresh_token(tokens.refresh_token.as_deref().unwrap()).await.expect("revocation");
        assert!(matches!(oidc.refresh(&tokens, "demo", WAIT).await, Err(TokenError::InvalidGrant)));

        let end = oidc.end_session_url(tokens.id_token.as_deref()).expect("an end_session_endpoint");
        let response = browser.get(end.as_str()).send().await.unwrap();
        assert_eq!(location_params(&response).0, POST_LOGOUT_URI);
    }
    assert_eq!(op.stats().reuse_detections, 2);
    op.shutdown().await;
}
