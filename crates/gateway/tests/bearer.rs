//! API clients with their own bearer token (issue 9 items 2 and 6), against the real gateway
//! and the real OP (`oidc-provider`): JWT access tokens for `http://api.test` and opaque
//! tokens from the `client_credentials` grant, plus tokens forged here.

mod common;

use std::time::{Duration, Instant};

use aws_lc_rs::{hmac, rand::SystemRandom, rsa, signature};
use common::{Setup, Store};
use portcullis_testkit::{API_RESOURCE, OpOptions, Upstream};
use serde_json::{Value, json};

/// The bearer routes, all on an upstream that checks nothing (the OP cannot introspect JWTs).
fn bearer_routes(upstream: &str) -> String {
    let route = |prefix: &str, policy: &str, rest: &str| {
        format!("\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nunauthenticated = \"{policy}\"\n{rest}\n")
    };
    [
        route("/jwt", "deny", "bearer = \"jwt\"\naudiences = [\"http://api.test\"]"),
        route("/jwt-write", "deny", "bearer = \"jwt\"\naudiences = [\"http://api.test\"]\nrequired_scopes = [\"api:write\"]"),
        route("/jwt-other", "deny", "bearer = \"jwt\"\naudiences = [\"http://other.test\"]"),
        // Lists the gateway's own client id as an audience: the `aud` of its ID tokens. Only
        // the `typ: at+jwt` rule keeps an ID token out here.
        route("/jwt-gw", "deny", "bearer = \"jwt\"\naudiences = [\"gw\", \"http://api.test\"]"),
        route("/introspect", "deny", "bearer = \"introspect\"\nrequired_scopes = [\"api:read\"]"),
        route("/browser", "login", "bearer = \"jwt\"\naudiences = [\"http://api.test\"]"),
    ]
    .concat()
}

async fn start(op_options: OpOptions, cache_ttl: &str) -> (Setup, Upstream) {
    let api = Upstream::start(None).await;
    let api_url = api.url();
    let setup = Setup::start_with(Store::Memory, op_options, |o| {
        o.extra = format!("[bearer]\nintrospection_cache_ttl = \"{cache_ttl}\"\n{}", bearer_routes(&api_url));
        // A short skew so an expired token can be waited out.
        o.env.push(("PORTCULLIS_OIDC__CLOCK_SKEW".into(), "1s".into()));
    })
    .await;
    (setup, api)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn call(setup: &Setup, path: &str, token: &str) -> reqwest::Response {
    http().get(setup.url(path)).bearer_auth(token).send().await.unwrap()
}

// --- JWT surgery: base64url and signing with keys the OP never had ---------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64url(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn b64url_decode(text: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        bits = (bits << 6) | B64.iter().position(|b| *b == c).unwrap() as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

fn part(token: &str, i: usize) -> Value {
    serde_json::from_slice(&b64url_decode(token.split('.').nth(i).unwrap())).unwrap()
}

fn unsigned(header: &Value, payload: &Value) -> String {
    format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(payload.to_string().as_bytes()))
}

fn sign_rs256(key: &rsa::KeyPair, header: &Value, payload: &Value) -> String {
    let input = unsigned(header, payload);
    let mut sig = vec![0; key.public_modulus_len()];
    key.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig).unwrap();
    format!("{input}.{}", b64url(&sig))
}

fn sign_hs256(secret: &[u8], header: &Value, payload: &Value) -> String {
    let input = unsigned(header, payload);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}

fn assert_refused(response: &reqwest::Response, status: u16, error: &str, what: &str) {
    assert_eq!(response.status().as_u16(), status, "{what}");
    let challenge = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(challenge.starts_with("Bearer ") && challenge.contains(&format!("error=\"{error}\"")), "{what}: {challenge}");
}

// --- Tests ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_jwt_reaches_the_upstream_unchanged_with_identity_headers() {
    let (setup, api) = start(OpOptions::default(), "60s").await;
    let token = setup.op.api_token(Some(API_RESOURCE), "api:read api:write").await;
    assert_eq!(part(&token, 0)["typ"], "at+jwt", "the OP issues RFC 9068 tokens");
    let response = http()
        .get(setup.url("/jwt/orders"))
        .bearer_auth(&token)
        .header("X-Forwarded-User", "admin")
        .header("X_Forwarded_Email", "admin@example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", setup.gateway.log_text());
    let seen = api.last().expect("the upstream was reached");
    assert_eq!(seen.bearer.as_deref(), Some(token.as_str()), "the token is forwarded unchanged");
    assert_eq!(seen.headers.get("x-forwarded-user").map(String::as_str), Some("api-client"));
    assert_eq!(seen.headers.get("x-forwarded-email").map(String::as_str), Some("api-client@clients.example.test"));
    assert_eq!(seen.headers.get("x-forwarded-groups").map(String::as_str), Some("api-clients"));
    assert!(!seen.headers.contains_key("x_forwarded_email"), "client identity headers never pass");

    // No ambient authority: a bearer request another site "sends" is not a forged request.
    let response = http()
        .post(setup.url("/jwt/orders"))
        .bearer_auth(&token)
        .header("Sec-Fetch-Site", "cross-site")
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "bearer requests are not subject to the cross-site check");

    // A bearer route without a token: the route's policy (deny) as before.
    let response = http().get(setup.url("/jwt/orders")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(!setup.gateway.log_text().contains(&token), "a token reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_misused_tokens_are_refused() {
    let (setup, api) = start(OpOptions::default(), "60s").await;
    let op = &setup.op;
    let real = op.api_token(Some(API_RESOURCE), "api:read").await;
    // Expires in 1 s; with the gateway's 1 s skew it is refused from 2 s on.
    op.configure(json!({ "api_token_ttl": 1 })).await;
    let short = op.api_token(Some(API_RESOURCE), "api:read").await;
    let issued = Instant::now();
    op.configure(json!({ "api_token_ttl": 300 })).await;
    let id_token = op.id_token("alice", &format!("{}/oauth2/callback", setup.gateway.url())).await;

    let (header, payload) = (part(&real, 0), part(&real, 1));
    let own_key = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).unwrap();
    let jwks: Value = http().get(format!("{}/jwks", op.direct())).send().await.unwrap().json().await.unwrap();
    let op_public_key = jwks["keys"][0].to_string();
    let mut admin = payload.clone();
    admin["sub"] = json!("admin");
    let real_signature = real.rsplit('.').next().unwrap();
    let mut unknown_kid = header.clone();
    unknown_kid["kid"] = json!("not-a-key-of-the-op");

    tokio::time::sleep(Duration::from_secs(3).saturating_sub(issued.elapsed())).await;
    // (what, path, token, status, RFC 6750 error)
    let table: Vec<(&str, &str, String, u16, &str)> = vec![
        ("signed with a key the OP never had", "/jwt/x", sign_rs256(&own_key, &header, &payload), 401, "invalid_token"),
        ("a real kid with someone else's key", "/jwt/x", sign_rs256(&own_key, &unknown_kid, &payload), 401, "invalid_token"),
        ("alg none", "/jwt/x", format!("{}.", unsigned(&json!({"alg": "none", "typ": "at+jwt"}), &payload)), 401, "invalid_token"),
        (
            "HS256 with the OP's public key as the secret",
            "/jwt/x",
            sign_hs256(op_public_key.as_bytes(), &json!({"alg": "HS256", "typ": "at+jwt", "kid": header["kid"]}), &payload),
            401,
            "invalid_token",
        ),
        ("payload changed, signature kept", "/jwt/x", format!("{}.{real_signature}", unsigned(&header, &admin)), 401, "invalid_token"),
        ("a real token for another audience", "/jwt-other/x", real.clone(), 401, "invalid_token"),
        ("expired", "/jwt/x", short, 401, "invalid_token"),
        ("a real token without the required scope", "/jwt-write/x", real.clone(), 403, "insufficient_scope"),
        ("garbage", "/jwt/x", "garbage".into(), 401, "invalid_token"),
        ("three dots of nothing", "/jwt/x", "a.b.c".into(), 401, "invalid_token"),
        ("an ID token presented as an access token", "/jwt-gw/x", id_token.clone(), 401, "invalid_token"),
        ("a JWT access token at an introspection route", "/introspect/x", real.clone(), 401, "invalid_token"),
    ];
    for (what, path, token, status, error) in &table {
        api.clear();
        let response = call(&setup, path, token).await;
        assert_refused(&response, *status, error, what);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], *error, "{what}: {body}");
        assert!(api.seen().is_empty(), "{what}: a refused token reached the upstream");
    }
    // The 403 names the scope that is missing.
    let response = call(&setup, "/jwt-write/x", &real).await;
    let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(challenge.contains("scope=\"api:write\""), "{challenge}");

    // The same real token is fine where its audience and scopes fit.
    assert_eq!(call(&setup, "/jwt/x", &real).await.status(), 200);
    let log = setup.gateway.log_text();
    for (what, _, token, _, _) in &table {
        assert!(!log.contains(token.as_str()), "{what}: the token reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_accepts_opaque_tokens_and_refuses_revoked_ones_after_the_cache_entry() {
    let (setup, api) = start(OpOptions::default(), "3s").await;
    let op = &setup.op;
    let token = op.api_token(None, "api:read").await;
    assert_eq!(token.split('.').count(), 1, "an opaque token");
    let before = op.stats().await["introspections"].as_u64().unwrap();
    for _ in 0..5 {
        let response = call(&setup, "/introspect/x", &token).await;
        assert_eq!(response.status(), 200, "{}", setup.gateway.log_text());
    }
    let seen = api.last().unwrap();
    assert_eq!(seen.bearer.as_deref(), Some(token.as_str()));
    assert_eq!(seen.headers.get("x-forwarded-user").map(String::as_str), Some("api-client"), "sub = the client");
    let asked = op.stats().await["introspections"].as_u64().unwrap() - before;
    assert_eq!(asked, 1, "five requests, one introspection: the answer is cached");

    // Without the required scope: a valid token, refused with 403.
    let narrow = op.api_token(None, "api:write").await;
    assert_refused(&call(&setup, "/introspect/x", &narrow).await, 403, "insufficient_scope", "no api:read");

    // Revoked at the OP: refused once the cache entry (3 s) has expired.
    op.revoke_api_token(&token).await;
    let revoked = Instant::now();
    let deadline = revoked + Duration::from_secs(20);
    loop {
        let response = call(&setup, "/introspect/x", &token).await;
        if response.status() == 401 {
            assert_refused(&response, 401, "invalid_token", "revoked");
            break;
        }
        assert_eq!(response.status(), 200);
        assert!(Instant::now() < deadline, "a revoked token was still accepted 20 s later");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!setup.gateway.log_text().contains(&token), "a token reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_cache_never_outlives_the_tokens_exp() {
    // A cache TTL far longer than the token's life.
    let (setup, _api) = start(OpOptions::default(), "10m").await;
    let op = &setup.op;
    op.configure(json!({ "api_token_ttl": 2 })).await;
    let token = op.api_token(None, "api:read").await;
    let issued = Instant::now();
    assert_eq!(call(&setup, "/introspect/x", &token).await.status(), 200);
    let before = op.stats().await["introspections"].as_u64().unwrap();
    let deadline = issued + Duration::from_secs(15);
    loop {
        let response = call(&setup, "/introspect/x", &token).await;
        if response.status() == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "an expired token was still accepted from the cache");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(issued.elapsed() >= Duration::from_secs(1), "refused before it expired");
    // Until its exp the answer came from the cache; after, one more question (or none).
    let asked = op.stats().await["introspections"].as_u64().unwrap() - before;
    assert!(asked <= 2, "{asked} introspections for one token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_unreachable_in_introspect_mode_is_503_not_401() {
    let (setup, _api) = start(OpOptions { behind_forwarder: true, ..OpOptions::default() }, "60s").await;
    let op = &setup.op;
    let token = op.api_token(None, "api:read").await;
    let jwt = op.api_token(Some(API_RESOURCE), "api:read").await;
    op.set_reachable(false).await;
    let response = call(&setup, "/introspect/x", &token).await;
    assert_eq!(response.status(), 503, "an OP that cannot be asked says nothing about the token");
    assert!(response.headers().contains_key("retry-after"));
    // JWTs are checked locally with the keys already fetched: the OP being down changes nothing.
    assert_eq!(call(&setup, "/jwt/x", &jwt).await.status(), 200);
    op.set_reachable(true).await;
    assert_eq!(call(&setup, "/introspect/x", &token).await.status(), 200, "and the same token works once it is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cookie_wins_over_a_bearer_token() {
    let (setup, api) = start(OpOptions::default(), "60s").await;
    let (browser, _) = setup.logged_in("/browser/page", "alice").await;
    let api_token = setup.op.api_token(Some(API_RESOURCE), "api:read").await;
    for (what, token) in [("a valid API token", api_token.as_str()), ("garbage", "garbage")] {
        api.clear();
        let response = browser.http().get(setup.url("/browser/data")).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), 200, "{what}");
        let seen = api.last().unwrap();
        assert_eq!(seen.headers.get("x-forwarded-user").map(String::as_str), Some("alice"), "{what}");
        assert_ne!(seen.bearer.as_deref(), Some(token), "{what}: the session's token replaces the client's");
    }
}
