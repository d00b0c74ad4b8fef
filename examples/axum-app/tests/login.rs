//! The example application against the real OP (`oidc-provider`): a browser logs in and
//! reaches `/me`; an API client calls `/api/orders` with its own token.

use std::time::Duration;

use portcullis::config::Config;
use portcullis_testkit::{API_RESOURCE, Browser, CLIENT_ID, CLIENT_SECRET, Op, OpOptions, free_port};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_and_an_api_client_brings_its_token() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let op = Op::start(OpOptions::default(), std::slice::from_ref(&base)).await;
    let config = Config::builder(base.parse().unwrap(), op.issuer().parse().unwrap(), CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .session_secret(portcullis::config::generate_secret())
        .build()
        .unwrap();
    let (app, _discovery) = portcullis_example_axum_app::app(&config);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{base}/")).send().await.unwrap().status(), 200, "/ is public");
    // Discovery runs in the background; the layer answers 503 until the OP is known.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let token = op.api_token(Some(API_RESOURCE), "api:read").await;
    loop {
        let r = http.get(format!("{base}/api/orders")).bearer_auth(&token).send().await.unwrap();
        if r.status() != 503 {
            assert_eq!(r.status(), 200, "an API client's own token");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["for"], "api-client");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the OP was never discovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http.get(format!("{base}/api/orders")).bearer_auth("forged").send().await.unwrap().status(), 401);

    let browser = Browser::new();
    let hops = browser.login(&format!("{base}/me"), "alice").await;
    let last = hops.last().unwrap();
    assert_eq!(last.status, 200, "{hops:#?}");
    let me: Value = serde_json::from_str(&last.body).unwrap();
    assert_eq!(me["user"], "alice");
    assert_eq!(me["via"], "session");
    assert!(me["access_token_expires_at"].is_u64(), "{me}");
}
