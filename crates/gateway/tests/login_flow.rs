//! The core path, end to end, against `oidc-provider`: login, proxying with a fresh token,
//! refresh after expiry with the same cookie, logout. Runs on the memory and Redis stores.

mod common;

use std::time::Duration;

use common::{Setup, Store};
use portcullis_testkit::OpOptions;

for_each_store!(
    login_redirect_chain_and_cookie,
    request_after_expiry_gets_new_token_and_same_cookie,
    logout_revokes_and_ends_session,
    api_calls_without_session_get_401_json,
    route_policies,
);

async fn login_redirect_chain_and_cookie(store: Store) {
    let s = Setup::start(store, OpOptions::default()).await;
    let (browser, hops) = s.logged_in("/app/page?x=1", "alice").await;

    // 1. The gateway sends the navigation straight to the OP's authorization endpoint.
    let first = &hops[0];
    assert_eq!(first.status, 302);
    let auth = first.location.clone().unwrap();
    assert!(auth.as_str().starts_with(&format!("{}/auth?", s.op.issuer())), "{auth}");
    let q: std::collections::HashMap<_, _> = auth.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "gw");
    assert_eq!(q["redirect_uri"], s.url("/oauth2/callback"));
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43);
    assert!(q["scope"].split(' ').any(|x| x == "openid") && q["scope"].contains("offline_access"));
    let binding = first.set_cookies.iter().find(|c| c.starts_with("portcullis_login_")).expect("login state cookie");
    assert!(binding.contains("HttpOnly") && binding.split("; ").any(|a| a == "Path=/"), "{binding}");

    // 2. The callback sets the session cookie and returns to the page first asked for.
    let callback = hops.iter().find(|h| h.url.path() == "/oauth2/callback").expect("callback hop");
    assert_eq!(callback.status, 302);
    assert_eq!(callback.location.as_ref().unwrap().as_str(), s.url("/app/page?x=1"));
    let cookie = callback.set_cookies.iter().find(|c| c.starts_with("portcullis=")).expect("session cookie");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert!(!cookie.contains("Secure"), "http public_url: no Secure flag: {cookie}");
    let value = cookie.split(';').next().unwrap().trim_start_matches("portcullis=");
    assert!(value.len() >= 60, "opaque id + MAC: {value}");

    // 3. The upstream got an active access token and the identity headers.
    let seen = s.upstream.last().unwrap();
    assert_eq!(seen.path, "/app/page?x=1");
    assert_eq!(seen.active, Some(true), "{seen:?}");
    assert_eq!(seen.headers.get("x-forwarded-user").map(String::as_str), Some("alice"));
    assert_eq!(seen.headers.get("x-forwarded-email").map(String::as_str), Some("alice@example.test"));
    assert!(!seen.headers.get("cookie").is_some_and(|c| c.contains("portcullis=")), "the session cookie must not reach the upstream");

    // 4. userinfo shows the claims.
    let info: serde_json::Value = browser.http().get(s.url("/oauth2/userinfo")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["email"], "alice@example.test");
}

async fn request_after_expiry_gets_new_token_and_same_cookie(store: Store) {
    let s = Setup::start(store, OpOptions { access_token_ttl: 3, ..OpOptions::default() }).await;
    let (browser, _) = s.logged_in("/", "bob").await;
    let cookie_before = s.session_cookie(&browser).unwrap();
    let first_token = s.upstream.last().unwrap().bearer.unwrap();
    assert_eq!(s.op.refresh_grants().await, 0);

    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert!(!s.op.introspect(&first_token).await, "the first token has expired at the OP");

    let response = browser.http().get(s.url("/after-expiry")).header("accept", "application/json").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("set-cookie").is_none(), "a refresh must not change the cookie");
    let seen = s.upstream.last().unwrap();
    assert_eq!(seen.active, Some(true));
    assert_ne!(seen.bearer.as_deref(), Some(first_token.as_str()));
    assert_eq!(s.op.refresh_grants().await, 1);
    assert_eq!(s.session_cookie(&browser).unwrap(), cookie_before);

    // And the refreshed session keeps working.
    let again = browser.http().get(s.url("/again")).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(s.op.refresh_grants().await, 1);
}

async fn logout_revokes_and_ends_session(store: Store) {
    let s = Setup::start(store, OpOptions::default()).await;
    let (browser, _) = s.logged_in("/", "carol").await;
    let token = s.upstream.last().unwrap().bearer.unwrap();

    let hop = browser.sign_out(&s.gateway.url()).await;
    assert_eq!(hop.status, 302);
    let end = hop.location.unwrap();
    assert!(end.as_str().starts_with(&format!("{}/session/end?", s.op.issuer())), "{end}");
    let q: std::collections::HashMap<_, _> = end.query_pairs().into_owned().collect();
    assert!(q["id_token_hint"].split('.').count() == 3);
    assert_eq!(q["post_logout_redirect_uri"], s.url("/"));
    assert!(hop.set_cookies.iter().any(|c| c.starts_with("portcullis=;") && c.contains("Max-Age=0")), "{:?}", hop.set_cookies);

    let stats = s.op.stats().await;
    assert_eq!(stats["revocations"], 1, "{stats}");
    // oidc-provider revokes the whole grant with its refresh token: the access token dies too.
    assert!(!s.op.introspect(&token).await);

    // The old cookie no longer opens anything.
    let hop = browser.navigate(&s.url("/")).await;
    assert_eq!(hop.status, 302);
    assert!(hop.location.unwrap().as_str().starts_with(&s.op.issuer()));
}

async fn api_calls_without_session_get_401_json(store: Store) {
    let s = Setup::start(store, OpOptions::default()).await;
    let http = reqwest::Client::new();
    for accept in [("accept", "application/json"), ("sec-fetch-mode", "cors")] {
        let r = http.get(s.url("/api/data")).header(accept.0, accept.1).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("www-authenticate").is_some());
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthenticated");
        assert_eq!(body["login_url"], s.url("/oauth2/start?rd=%2Fapi%2Fdata"));
    }
    assert!(s.upstream.seen().is_empty());
}

async fn route_policies(store: Store) {
    let s = Setup::start(store, OpOptions::default()).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    // allow: forwarded without identity, spoofed identity stripped.
    let r = http.get(s.url("/public/x")).header("x-forwarded-user", "mallory").header("x-auth-request-email", "m@x").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = s.upstream.last().unwrap();
    assert!(!seen.headers.contains_key("x-forwarded-user") && !seen.headers.contains_key("x-auth-request-email"), "{seen:?}");
    // deny: 401 even for a page load.
    let r = http.get(s.url("/internal/x")).header("sec-fetch-mode", "navigate").send().await.unwrap();
    assert_eq!(r.status(), 401);
    // login: a page load goes to the OP.
    let r = http.get(s.url("/x")).header("sec-fetch-mode", "navigate").send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert!(r.headers()["location"].to_str().unwrap().starts_with(&s.op.issuer()));
}

/// `client_secret_post` (the OP's `gw-post` client accepts only that method): login and a
/// refresh work; the OP rejects the other method, so a wrong choice would fail here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_login_and_refresh() {
    let s = Setup::start_with(Store::Memory, OpOptions { access_token_ttl: 2, ..OpOptions::default() }, |o| {
        o.env.push(("PORTCULLIS_OIDC__CLIENT_ID".into(), "gw-post".into()));
        o.env.push(("PORTCULLIS_OIDC__AUTH_METHOD".into(), "client_secret_post".into()));
    })
    .await;
    let browser = portcullis_testkit::Browser::new();
    let hops = browser.login(&s.url("/"), "dora").await;
    let auth = hops[0].location.clone().unwrap();
    assert!(auth.query_pairs().any(|(k, v)| k == "client_id" && v == "gw-post"));
    // The upstream introspects as `gw`, which cannot see `gw-post`'s tokens: expect its 401
    // but proof that the gateway got and forwarded a token.
    assert!(s.upstream.last().unwrap().bearer.is_some(), "{hops:#?}");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let _ = browser.http().get(s.url("/again")).send().await.unwrap();
    assert_eq!(s.op.refresh_grants().await, 1);
    let stats = s.op.stats().await;
    assert_eq!(stats["grant_outcomes"]["refresh_token:ok"], 1, "{stats}");
    assert_eq!(stats["grant_outcomes"]["authorization_code:ok"], 1, "{stats}");
}
