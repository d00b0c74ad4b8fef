//! Shared test support: an OP on a free loopback port and a scripted browser and client for it.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use aws_lc_rs::digest;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use portcullis_dev_op::{ClientConfig, DevOp, DevOpConfig};
use reqwest::StatusCode;
use serde_json::Value;
use url::Url;

pub const CLIENT_ID: &str = "app";
pub const CLIENT_SECRET: &str = "app-secret";
pub const REDIRECT_URI: &str = "http://127.0.0.1:1/callback";
pub const POST_LOGOUT_URI: &str = "http://127.0.0.1:1/signed-out";

/// A configuration on `127.0.0.1:0` with the test client registered.
pub fn config() -> DevOpConfig {
    DevOpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        clients: vec![ClientConfig {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            redirect_uris: vec![REDIRECT_URI.into()],
            post_logout_redirect_uris: vec![POST_LOGOUT_URI.into()],
            backchannel_logout_uri: None,
        }],
        ..DevOpConfig::default()
    }
}

pub async fn start(config: DevOpConfig) -> DevOp {
    portcullis_dev_op::start(config).await.expect("the dev OP starts")
}

/// A browser: keeps cookies, never follows redirects (the test looks at each one).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand_bytes());
    let challenge = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
    (verifier, challenge)
}

fn rand_bytes() -> [u8; 32] {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut b).unwrap();
    b
}

pub fn url(op: &DevOp, path: &str) -> String {
    format!("{}{path}", op.issuer().as_str().trim_end_matches('/'))
}

/// The authorization URL for the test client, with extra or overriding parameters.
pub fn authorize_url(op: &DevOp, challenge: &str, overrides: &[(&str, Option<&str>)]) -> String {
    let mut params: Vec<(&str, Option<&str>)> = vec![
        ("response_type", Some("code")),
        ("client_id", Some(CLIENT_ID)),
        ("redirect_uri", Some(REDIRECT_URI)),
        ("scope", Some("openid offline_access profile email")),
        ("state", Some("st-123")),
        ("nonce", Some("n-456")),
        ("code_challenge", Some(challenge)),
        ("code_challenge_method", Some("S256")),
    ];
    for (key, value) in overrides {
        match params.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = *value,
            None => params.push((key, *value)),
        }
    }
    let mut url = Url::parse(&url(op, "/authorize")).unwrap();
    for (k, v) in params {
        if let Some(v) = v {
            url.query_pairs_mut().append_pair(k, v);
        }
    }
    url.to_string()
}

/// The hidden `<input>`s of a page, unescaped.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .map(|rest| {
            let attr = |name: &str| {
                let start = rest.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                unescape(&rest[start..start + rest[start..].find('"').unwrap()])
            };
            (attr("name"), attr("value"))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Submits the login form shown at `authorize_url` with these credentials; returns the response.
pub async fn submit_login(op: &DevOp, browser: &reqwest::Client, form_page: &str, username: &str, password: &str) -> reqwest::Response {
    let mut form = hidden_fields(form_page);
    form.push(("username".into(), username.into()));
    form.push(("password".into(), password.into()));
    browser.post(url(op, "/authorize")).form(&form).send().await.unwrap()
}

/// The query parameters of a redirect's `Location`.
pub fn location_params(response: &reqwest::Response) -> (String, Vec<(String, String)>) {
    assert_eq!(response.status(), StatusCode::FOUND, "expected a redirect");
    let location = response.headers()["location"].to_str().unwrap();
    let url = Url::parse(location).unwrap();
    let base =
        format!("{}://{}{}", url.scheme(), url.host_str().unwrap(), url.port().map(|p| format!(":{p}")).unwrap_or_default()) + url.path();
    (base, url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
}

pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Signs in as demo/demo through the login page; returns the code and the PKCE verifier.
pub async fn sign_in(op: &DevOp, browser: &reqwest::Client) -> (String, String) {
    let (verifier, challenge) = pkce();
    let page = browser.get(authorize_url(op, &challenge, &[])).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    let redirect = submit_login(op, browser, &page, "demo", "demo").await;
    let (_, params) = location_params(&redirect);
    assert_eq!(param(&params, "state"), Some("st-123"));
    (param(&params, "code").expect("a code").to_string(), verifier)
}

/// A client-authenticated POST (client_secret_basic) to an OP endpoint: status and JSON body.
pub async fn client_post(op: &DevOp, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = reqwest::Client::new().post(url(op, path)).basic_auth(CLIENT_ID, Some(CLIENT_SECRET)).form(form).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
}

/// Signs in and redeems the code: the token response.
pub async fn tokens(op: &DevOp) -> Value {
    let browser = browser();
    let (code, verifier) = sign_in(op, &browser).await;
    let (status, body) = client_post(
        op,
        "/token",
        &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT_URI), ("code_verifier", &verifier)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

pub async fn refresh(op: &DevOp, refresh_token: &str) -> (StatusCode, Value) {
    client_post(op, "/token", &[("grant_type", "refresh_token"), ("refresh_token", refresh_token)]).await
}

pub async fn introspect(op: &DevOp, token: &str) -> Value {
    let (status, body) = client_post(op, "/introspect", &[("token", token)]).await;
    assert_eq!(status, StatusCode::OK);
    body
}

pub fn str_of<'a>(body: &'a Value, key: &str) -> &'a str {
    body[key].as_str().unwrap_or_else(|| panic!("no {key} in {body}"))
}

pub async fn control(op: &DevOp, change: Value) -> Value {
    let response = reqwest::Client::new().post(url(op, "/control")).json(&change).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Polls until `check` holds or the deadline passes.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
