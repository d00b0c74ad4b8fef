//! Refresh tokens (rotation, reuse detection, rotation off), introspection, revocation and the
//! runtime knobs, over real HTTP.

mod common;

use common::*;
use portcullis_dev_op::DevOpConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn rotation_and_reuse_detection_revoke_the_whole_grant() {
    let op = start(config()).await;
    let first = tokens(&op).await;
    let rt1 = str_of(&first, "refresh_token");

    let (status, second) = refresh(&op, rt1).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let rt2 = str_of(&second, "refresh_token");
    assert_ne!(rt1, rt2, "rotated");
    assert_ne!(str_of(&first, "access_token"), str_of(&second, "access_token"));
    let id_token = jsonwebtoken::dangerous::insecure_decode::<Value>(str_of(&second, "id_token")).unwrap().claims;
    assert!(id_token.get("nonce").is_none(), "a refreshed ID token carries no nonce");
    assert_eq!(id_token["sub"], "demo");
    assert_eq!(introspect(&op, str_of(&second, "access_token")).await["active"], true);
    assert_eq!(introspect(&op, rt1).await["active"], false, "a rotated token is inactive");

    // The old refresh token comes back: invalid_grant, and everything of the grant dies.
    let (status, replay) = refresh(&op, rt1).await;
    assert_eq!((status, str_of(&replay, "error")), (StatusCode::BAD_REQUEST, "invalid_grant"));
    assert_eq!(introspect(&op, str_of(&second, "access_token")).await, json!({"active": false}));
    assert_eq!(introspect(&op, rt2).await, json!({"active": false}));
    assert_eq!(refresh(&op, rt2).await.1["error"], "invalid_grant", "the successor is revoked too");

    let stats = op.stats();
    assert_eq!(stats.reuse_detections, 1);
    assert_eq!(stats.refresh_grants, 1);
    assert_eq!(stats.grants["refresh_token"], 3);
    assert_eq!(stats.outcomes["refresh_token:ok"], 1);
    assert_eq!(stats.outcomes["refresh_token:invalid_grant"], 2);
    op.shutdown().await;
}

#[tokio::test]
async fn without_rotation_the_same_refresh_token_keeps_working() {
    let op = start(DevOpConfig { rotate_refresh_tokens: false, ..config() }).await;
    let first = tokens(&op).await;
    let rt = str_of(&first, "refresh_token");
    let mut access_tokens = vec![str_of(&first, "access_token").to_string()];
    for _ in 0..3 {
        let (status, body) = refresh(&op, rt).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(str_of(&body, "refresh_token"), rt, "the same refresh token is handed back");
        access_tokens.push(str_of(&body, "access_token").to_string());
    }
    for at in &access_tokens {
        assert_eq!(introspect(&op, at).await["active"], true, "earlier access tokens stay valid until they expire");
    }
    assert_eq!(op.stats().reuse_detections, 0);
    assert_eq!(op.stats().refresh_grants, 3);
    op.shutdown().await;
}

#[tokio::test]
async fn introspection_of_access_and_refresh_tokens() {
    let op = start(config()).await;
    let body = tokens(&op).await;
    let at = introspect(&op, str_of(&body, "access_token")).await;
    assert_eq!(at["active"], true);
    assert_eq!(at["sub"], "demo");
    assert_eq!(at["client_id"], CLIENT_ID);
    assert_eq!(at["token_type"], "Bearer");
    assert_eq!(at["scope"], "openid offline_access profile email");
    let (exp, iat) = (at["exp"].as_u64().unwrap(), at["iat"].as_u64().unwrap());
    assert!((299..=301).contains(&(exp - iat)), "exp - iat = {}", exp - iat);

    let rt = introspect(&op, str_of(&body, "refresh_token")).await;
    assert_eq!(rt["active"], true);
    assert_eq!(rt["sub"], "demo");
    assert!(rt["exp"].as_u64().unwrap() - rt["iat"].as_u64().unwrap() >= 24 * 3600 - 1);

    assert_eq!(introspect(&op, "unknown").await, json!({"active": false}));
    // Introspection needs client authentication.
    let response = reqwest::Client::new().post(url(&op, "/introspect")).form(&[("token", "x")]).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(op.stats().introspections, 4);
    op.shutdown().await;
}

#[tokio::test]
async fn access_tokens_expire_with_the_configured_ttl() {
    let op = start(config()).await;
    control(&op, json!({"access_token_ttl_secs": 1})).await;
    let body = tokens(&op).await;
    assert_eq!(body["expires_in"], 1);
    assert_eq!(introspect(&op, str_of(&body, "access_token")).await["active"], true);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(introspect(&op, str_of(&body, "access_token")).await["active"], false);
    assert_eq!(refresh(&op, str_of(&body, "refresh_token")).await.0, StatusCode::OK, "the refresh token outlives it");
    op.shutdown().await;
}

#[tokio::test]
async fn revocation_of_refresh_and_access_tokens() {
    let op = start(config()).await;

    // A refresh token takes its grant with it.
    let body = tokens(&op).await;
    let (status, _) = client_post(&op, "/revoke", &[("token", str_of(&body, "refresh_token")), ("token_type_hint", "refresh_token")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(introspect(&op, str_of(&body, "refresh_token")).await["active"], false);
    assert_eq!(introspect(&op, str_of(&body, "access_token")).await["active"], false);
    assert_eq!(refresh(&op, str_of(&body, "refresh_token")).await.1["error"], "invalid_grant");

    // An access token only itself.
    let body = tokens(&op).await;
    assert_eq!(client_post(&op, "/revoke", &[("token", str_of(&body, "access_token"))]).await.0, StatusCode::OK);
    assert_eq!(introspect(&op, str_of(&body, "access_token")).await["active"], false);
    assert_eq!(refresh(&op, str_of(&body, "refresh_token")).await.0, StatusCode::OK);

    // Unknown tokens: 200 all the same.
    assert_eq!(client_post(&op, "/revoke", &[("token", "never-issued")]).await.0, StatusCode::OK);
    assert_eq!(op.stats().revocations, 3);
    op.shutdown().await;
}

#[tokio::test]
async fn control_changes_knobs_at_runtime_and_refuses_nonsense() {
    let op = start(config()).await;
    let knobs = control(&op, json!({"rotate_refresh_tokens": false, "failures": {"server_error": 0.25}})).await;
    assert_eq!(knobs["rotate_refresh_tokens"], false);
    assert_eq!(knobs["failures"], json!({"server_error": 0.25, "timeout": 0.0, "invalid_grant": 0.0}));
    assert_eq!(knobs["access_token_ttl_secs"], 300);
    let read: Value = reqwest::get(url(&op, "/control")).await.unwrap().json().await.unwrap();
    assert_eq!(read, knobs);

    let http = reqwest::Client::new();
    for bad in [json!({"failures": {"timeout": 2.0}}), json!({"rotate_refresh_token": true}), json!({"access_token_ttl_secs": 0})] {
        let response = http.post(url(&op, "/control")).json(&bad).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let read: Value = reqwest::get(url(&op, "/control")).await.unwrap().json().await.unwrap();
    assert_eq!(read, knobs, "a refused change changes nothing");
    op.shutdown().await;
}

#[tokio::test]
async fn id_tokens_can_be_switched_to_es256() {
    let op = start(config()).await;
    control(&op, json!({"id_token_alg": "ES256"})).await;
    let body = tokens(&op).await;
    let header = jsonwebtoken::decode_header(str_of(&body, "id_token")).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let jwks: jsonwebtoken::jwk::JwkSet = reqwest::get(url(&op, "/jwks")).await.unwrap().json().await.unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(header.kid.as_deref().unwrap()).unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[CLIENT_ID]);
    validation.set_issuer(&[url(&op, "")]);
    jsonwebtoken::decode::<Value>(str_of(&body, "id_token"), &key, &validation).expect("verifies with the ES256 JWK");
    op.shutdown().await;
}

#[tokio::test]
async fn stats_reset() {
    let op = start(config()).await;
    tokens(&op).await;
    assert_eq!(op.stats().logins, 1);
    let zero: portcullis_dev_op::Stats = reqwest::Client::new().post(url(&op, "/stats/reset")).send().await.unwrap().json().await.unwrap();
    assert_eq!(zero, portcullis_dev_op::Stats::default());
    let read: portcullis_dev_op::Stats = reqwest::get(url(&op, "/stats")).await.unwrap().json().await.unwrap();
    assert_eq!(read, op.stats());
    assert_eq!(read, portcullis_dev_op::Stats::default());
    op.shutdown().await;
}
