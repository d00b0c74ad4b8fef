//! RP-Initiated Logout and Back-Channel Logout: the redirect, the cleared browser session, and
//! the logout token received by a small relying-party server.

mod common;

use std::time::Duration;

use axum::{Router, extract::State, routing::post};
use common::*;
use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use portcullis_dev_op::{ClientConfig, DevOpConfig};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::mpsc;

/// A relying party's back-channel logout endpoint: forwards every form body it receives.
async fn backchannel_receiver() -> (String, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/backchannel",
            post(|State(tx): State<mpsc::UnboundedSender<String>>, body: String| async move {
                let _ = tx.send(body);
                StatusCode::OK
            }),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/backchannel"), rx)
}

fn config_with_backchannel(uri: &str) -> DevOpConfig {
    let mut config = config();
    config.clients[0].backchannel_logout_uri = Some(uri.to_string());
    // A second client the session never logged into: it must not be notified.
    config.clients.push(ClientConfig {
        client_id: "bystander".into(),
        client_secret: "x".into(),
        redirect_uris: vec!["http://127.0.0.1:1/b".into()],
        post_logout_redirect_uris: vec![],
        backchannel_logout_uri: Some(uri.to_string()),
    });
    config
}

#[tokio::test]
async fn end_session_redirects_clears_the_session_and_notifies_the_client() {
    let (backchannel, mut received) = backchannel_receiver().await;
    let op = start(config_with_backchannel(&backchannel)).await;
    let browser = browser();
    let (code, verifier) = sign_in(&op, &browser).await;
    let (_, tokens) = client_post(
        &op,
        "/token",
        &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT_URI), ("code_verifier", &verifier)],
    )
    .await;
    let id_token = str_of(&tokens, "id_token");
    let sid = jsonwebtoken::dangerous::insecure_decode::<Value>(id_token).unwrap().claims["sid"].as_str().unwrap().to_string();

    let mut logout = url::Url::parse(&url(&op, "/end_session")).unwrap();
    logout
        .query_pairs_mut()
        .append_pair("id_token_hint", id_token)
        .append_pair("post_logout_redirect_uri", POST_LOGOUT_URI)
        .append_pair("state", "bye");
    let response = browser.get(logout.as_str()).send().await.unwrap();
    let (base, params) = location_params(&response);
    assert_eq!(base, POST_LOGOUT_URI);
    assert_eq!(param(&params, "state"), Some("bye"));

    // The logout token arrives, signed by the OP, about this session.
    let body = tokio::time::timeout(Duration::from_secs(5), received.recv()).await.expect("a back-channel POST").unwrap();
    let logout_token =
        url::form_urlencoded::parse(body.as_bytes()).find(|(k, _)| k == "logout_token").expect("logout_token").1.into_owned();
    let header = jsonwebtoken::decode_header(&logout_token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
    let jwks: JwkSet = reqwest::get(url(&op, "/jwks")).await.unwrap().json().await.unwrap();
    let key = DecodingKey::from_jwk(jwks.find(header.kid.as_deref().unwrap()).unwrap()).unwrap();
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[CLIENT_ID]);
    validation.set_issuer(&[url(&op, "")]);
    let claims = jsonwebtoken::decode::<Value>(&logout_token, &key, &validation).expect("a valid logout token").claims;
    assert_eq!(claims["sid"], sid);
    assert_eq!(claims["sub"], "demo");
    assert!(claims["jti"].is_string() && claims["iat"].is_u64());
    assert!(claims.get("nonce").is_none(), "Back-Channel Logout §2.4: a logout token has no nonce");
    assert_eq!(claims["events"], serde_json::json!({"http://schemas.openid.net/event/backchannel-logout": {}}));
    eventually("the delivery to be counted", || op.stats().backchannel_logouts == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(received.try_recv().is_err(), "only the client the session used is notified");

    // The browser session is gone: the next authorization shows the form again.
    let (_, challenge) = pkce();
    let again = browser.get(authorize_url(&op, &challenge, &[])).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK, "the login form, not a code");
    // offline_access tokens outlive the browser session (Back-Channel Logout §2.7).
    assert_eq!(introspect(&op, str_of(&tokens, "refresh_token")).await["active"], true);
    op.shutdown().await;
}

#[tokio::test]
async fn end_session_without_redirect_shows_the_signed_out_page() {
    let op = start(config()).await;
    let browser = browser();
    sign_in(&op, &browser).await;
    let response = browser.get(url(&op, "/end_session")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("You are signed out"));
    let (_, challenge) = pkce();
    assert_eq!(browser.get(authorize_url(&op, &challenge, &[])).send().await.unwrap().status(), StatusCode::OK);
    op.shutdown().await;
}

#[tokio::test]
async fn unregistered_post_logout_redirect_or_forged_hint_is_refused() {
    let op = start(config()).await;
    let http = browser();
    let cases = [
        format!("post_logout_redirect_uri={}&client_id={CLIENT_ID}", "http%3A%2F%2Fevil.example%2F"),
        format!("post_logout_redirect_uri={}", url::form_urlencoded::byte_serialize(POST_LOGOUT_URI.as_bytes()).collect::<String>()),
        "id_token_hint=eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.".to_string(),
    ];
    for query in cases {
        let response = http.get(format!("{}?{query}", url(&op, "/end_session"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert!(response.headers().get("location").is_none());
    }
    // With client_id alone, a registered URI is accepted.
    let ok = format!(
        "{}?client_id={CLIENT_ID}&post_logout_redirect_uri={}",
        url(&op, "/end_session"),
        url::form_urlencoded::byte_serialize(POST_LOGOUT_URI.as_bytes()).collect::<String>()
    );
    assert_eq!(http.get(ok).send().await.unwrap().status(), StatusCode::FOUND);
    op.shutdown().await;
}
