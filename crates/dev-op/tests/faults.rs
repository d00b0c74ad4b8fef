//! Injected failures and latency at the token endpoint, and shutdown with a request held.

mod common;

use std::time::{Duration, Instant};

use common::*;
use portcullis_dev_op::{DevOpConfig, FailureRates};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn server_error_rate_one_fails_every_refresh_and_consumes_nothing() {
    let op = start(config()).await;
    let body = tokens(&op).await;
    let rt = str_of(&body, "refresh_token");
    control(&op, json!({"failures": {"server_error": 1.0}})).await;
    for _ in 0..5 {
        let (status, error) = refresh(&op, rt).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error["error"], "server_error");
    }
    assert_eq!(op.stats().outcomes["refresh_token:server_error"], 5);
    assert_eq!(introspect(&op, rt).await["active"], true, "an injected failure leaves the token alone");

    // Only refresh requests are affected.
    let other = tokens(&op).await;
    assert!(other["access_token"].is_string());

    control(&op, json!({"failures": {"server_error": 0.0}})).await;
    assert_eq!(refresh(&op, rt).await.0, StatusCode::OK, "the same token works once injection stops");
    op.shutdown().await;
}

#[tokio::test]
async fn injected_invalid_grant_does_not_consume_the_token() {
    let op = start(DevOpConfig { failures: FailureRates { invalid_grant: 1.0, ..FailureRates::default() }, ..config() }).await;
    let body = tokens(&op).await;
    let rt = str_of(&body, "refresh_token");
    for _ in 0..3 {
        let (status, error) = refresh(&op, rt).await;
        assert_eq!((status, error["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    }
    control(&op, json!({"failures": {"invalid_grant": 0.0}})).await;
    let (status, fresh) = refresh(&op, rt).await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    let stats = op.stats();
    assert_eq!(stats.outcomes["refresh_token:invalid_grant"], 3);
    assert_eq!(stats.reuse_detections, 0, "not mistaken for reuse");
    assert_eq!(stats.refresh_grants, 1);
    op.shutdown().await;
}

#[tokio::test]
async fn failure_rates_are_roughly_honoured() {
    let op = start(config()).await;
    let rt = str_of(&tokens(&op).await, "refresh_token").to_string();
    control(&op, json!({"rotate_refresh_tokens": false, "failures": {"server_error": 0.5}})).await;
    let mut failures = 0;
    for _ in 0..200 {
        if refresh(&op, &rt).await.0 == StatusCode::INTERNAL_SERVER_ERROR {
            failures += 1;
        }
    }
    // Binomial(200, 0.5): 60..140 is beyond 5.6 standard deviations either way.
    assert!((60..=140).contains(&failures), "{failures} of 200 failed at rate 0.5");
    op.shutdown().await;
}

#[tokio::test]
async fn token_latency_delays_every_token_request() {
    let latency = Duration::from_millis(300);
    let op = start(DevOpConfig { token_latency: latency, ..config() }).await;
    let started = Instant::now();
    let mut rt = str_of(&tokens(&op).await, "refresh_token").to_string();
    assert!(started.elapsed() >= latency, "the code exchange waits too");
    for _ in 0..2 {
        let started = Instant::now();
        let (status, body) = refresh(&op, &rt).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(started.elapsed() >= latency, "took {:?}", started.elapsed());
        rt = str_of(&body, "refresh_token").to_string();
    }
    // Refusals wait too: latency comes before anything else.
    let started = Instant::now();
    assert_eq!(client_post(&op, "/token", &[("grant_type", "refresh_token"), ("refresh_token", "x")]).await.0, StatusCode::BAD_REQUEST);
    assert!(started.elapsed() >= latency);

    // Changed at runtime.
    control(&op, json!({"token_latency_ms": 0})).await;
    let started = Instant::now();
    client_post(&op, "/token", &[("grant_type", "refresh_token"), ("refresh_token", "x")]).await;
    assert!(started.elapsed() < latency);
    op.shutdown().await;
}

#[tokio::test]
async fn an_injected_timeout_holds_the_request_until_the_client_gives_up() {
    let op = start(config()).await;
    let body = tokens(&op).await;
    let rt = str_of(&body, "refresh_token").to_string();
    control(&op, json!({"failures": {"timeout": 1.0}})).await;

    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
    let started = Instant::now();
    let error = impatient
        .post(url(&op, "/token"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", rt.as_str())])
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(op.stats().outcomes["refresh_token:timeout"], 1);

    control(&op, json!({"failures": {"timeout": 0.0}})).await;
    assert_eq!(refresh(&op, &rt).await.0, StatusCode::OK, "the held request did not consume the token");
    op.shutdown().await;
}

#[tokio::test]
async fn shutdown_releases_held_requests() {
    let op = start(config()).await;
    let rt = str_of(&tokens(&op).await, "refresh_token").to_string();
    control(&op, json!({"failures": {"timeout": 1.0}})).await;
    let token_url = url(&op, "/token");
    let held = tokio::spawn(async move {
        reqwest::Client::new()
            .post(token_url)
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", rt.as_str())])
            .send()
            .await
            .map(|r| r.status())
    });
    eventually("the request to be held", || op.stats().outcomes.get("refresh_token:timeout") == Some(&1)).await;

    let started = Instant::now();
    op.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
    let answer = tokio::time::timeout(Duration::from_secs(3), held).await.expect("the held request ends").unwrap();
    assert_eq!(answer.ok(), Some(StatusCode::SERVICE_UNAVAILABLE));
}
