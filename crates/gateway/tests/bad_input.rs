//! Hostile and broken input: each gets a clear answer and a log line, never a 500, a panic or a
//! lost session.

mod common;

use common::{BIN, Setup, Store};
use portcullis_testkit::{Browser, Gateway, GatewayOptions, Op, OpOptions, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_cookie_is_no_session_and_the_real_one_still_works() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let good = s.session_cookie(&browser).unwrap();
    let mut flipped = good.clone().into_bytes();
    let i = flipped.len() - 5;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();

    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for value in [flipped.as_str(), "garbage", "v1.AAAA.BBBB", "", "v1..", &"x".repeat(3000)] {
        let r = http
            .get(s.url("/page"))
            .header("cookie", format!("portcullis={value}"))
            .header("sec-fetch-mode", "navigate")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302, "navigation with cookie {value:?} must go to login");
        assert!(r.headers()["location"].to_str().unwrap().starts_with(&s.op.issuer()));
        let r = http
            .get(s.url("/api/x"))
            .header("cookie", format!("portcullis={value}"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "API call with cookie {value:?}");
    }
    assert!(s.gateway.log_text().contains("session cookie rejected"), "a log line says why");
    let r = http.get(s.url("/page")).header("cookie", format!("portcullis={good}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the real session is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_redirects_are_refused() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let targets =
        ["//evil.example", "/\\evil.example", "https://evil.example", "http:evil.example", "/\t/evil.example", "javascript:alert(1)"];
    for target in targets {
        let browser = Browser::new();
        let start =
            format!("{}?rd={}", s.url("/oauth2/start"), url::form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>());
        let hops = browser.login(&start, "alice").await;
        let callback = hops.iter().find(|h| h.url.path() == "/oauth2/callback").unwrap();
        assert_eq!(callback.location.as_ref().unwrap().as_str(), s.url("/"), "rd={target:?} must land on / of the gateway");
    }
    // A request whose own path looks like a protocol-relative URL returns to its canonical
    // path (slashes merged before routing), on the gateway.
    let browser = Browser::new();
    let hops = browser.login(&s.url("//evil.example/x"), "alice").await;
    let callback = hops.iter().find(|h| h.url.path() == "/oauth2/callback").unwrap();
    assert_eq!(callback.location.as_ref().unwrap().as_str(), s.url("/evil.example/x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_refused_callbacks_get_clear_errors() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let (browser, hops) = s.logged_in("/", "alice").await;
    let callback = hops.iter().find(|h| h.url.path() == "/oauth2/callback").unwrap().url.clone();

    // Replaying the callback (same code, same state): its login cookie was cleared by the first
    // use (and `login_state.rs` shows the replay with the cookie kept is refused too).
    let replay = browser.navigate(callback.as_str()).await;
    assert_eq!(replay.status, 400);
    assert!(replay.body.contains("was already used"), "{}", replay.body);

    let cases = [
        ("/oauth2/callback?code=abc&state=forged", 400, "was already used"),
        ("/oauth2/callback", 400, "incomplete"),
        ("/oauth2/callback?code=abc", 400, "incomplete"),
        ("/oauth2/callback?state=%F0%9F%92%A9%F0%9F%92%A9%F0%9F%92%A9&code=x", 400, "not started in this browser"),
        ("/oauth2/callback?error=access_denied&error_description=%3Cscript%3Ealert(1)%3C/script%3E", 400, "access_denied"),
        // A crafted link cannot put its own words on the gateway's page: no login of this
        // browser vouches for it, so neither its description nor an unknown code is shown.
        (
            "/oauth2/callback?error=access_denied&error_description=Account+locked%2C+call+555-0100",
            400,
            "did not log you in (access_denied).",
        ),
        ("/oauth2/callback?error=Call_555-0100_now&state=forged", 400, "did not log you in."),
    ];
    for (path, status, text) in cases {
        let hop = Browser::new().navigate(&s.url(path)).await;
        assert_eq!(hop.status, status, "{path}: {}", hop.body);
        assert!(hop.body.contains(text), "{path}: {}", hop.body);
        assert!(!hop.body.contains("<script>"), "{path}: OP text must be escaped");
        assert!(!hop.body.contains("555-0100"), "{path}: a crafted link's words are not shown: {}", hop.body);
        assert!(hop.body.contains("/oauth2/start"), "{path}: offers to log in again");
    }
    let log = s.gateway.log_text();
    assert!(log.contains("callback without its login cookie") && log.contains("the OP refused the login"), "{log}");
    // The session survives all of it.
    assert_eq!(browser.http().get(s.url("/")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_in_another_browser_is_refused() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    // The attacker logs in at the OP, stops before the callback, and hands the link to the
    // victim's browser (login CSRF: the victim would end up in the attacker's account).
    let attacker = Browser::new();
    let hops = attacker.login_until(&s.url("/"), "mallory", &|u| u.path() == "/oauth2/callback").await;
    let stolen = hops.last().unwrap().location.clone().expect("stopped at the callback link");
    let hop = Browser::new().navigate(stolen.as_str()).await;
    assert_eq!(hop.status, 400, "{}", hop.body);
    assert!(hop.body.contains("not started in this browser"), "{}", hop.body);
    assert!(!hop.set_cookies.iter().any(|c| c.starts_with("portcullis=")));
    assert!(s.gateway.log_text().contains("login CSRF"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_identity_headers_never_reach_the_upstream() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let r = browser
        .http()
        .get(s.url("/api/me"))
        .header("authorization", "Bearer forged-by-client")
        .header("x-forwarded-user", "mallory")
        .header("x-forwarded-email", "mallory@evil.example")
        .header("x-forwarded-groups", "admins")
        .header("x-auth-request-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = s.upstream.last().unwrap();
    assert_eq!(seen.headers["x-forwarded-user"], "alice");
    assert_eq!(seen.headers["x-forwarded-email"], "alice@example.test");
    assert!(!seen.headers.contains_key("x-forwarded-groups"));
    assert!(!seen.headers.contains_key("x-auth-request-user"));
    assert_ne!(seen.bearer.as_deref(), Some("forged-by-client"));
    assert_eq!(seen.active, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_op_at_start_then_recovers() {
    let op_port = free_port();
    let options = GatewayOptions::new(&format!("http://127.0.0.1:{op_port}"), "http://127.0.0.1:9");
    let gateway = Gateway::start(BIN, &options).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    assert_eq!(http.get(format!("{}/healthz", gateway.url())).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{}/readyz", gateway.url())).send().await.unwrap().status(), 503);
    let r = http.get(format!("{}/page", gateway.url())).header("sec-fetch-mode", "navigate").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.text().await.unwrap().contains("identity provider"));
    // Discovery logs from its own task: wait for the line rather than racing its write.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gateway.log_text().contains("not reachable yet") {
        assert!(std::time::Instant::now() < deadline, "no log line says the OP is not reachable:\n{}", gateway.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let op = Op::start(OpOptions { port: Some(op_port), ..OpOptions::default() }, &[gateway.url()]).await;
    gateway.wait_ready().await;
    let hops = Browser::new().follow(&format!("{}/page", gateway.url())).await;
    assert!(hops[0].location.as_ref().unwrap().as_str().starts_with(&op.issuer()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_get_an_answer_not_a_crash() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let cookie = s.session_cookie(&browser).unwrap();
    let http = reqwest::Client::new();
    // A 200 KB header: refused by the HTTP layer, the process carries on.
    let r = http.get(s.url("/")).header("x-big", "a".repeat(200_000)).send().await;
    assert!(r.map(|r| r.status().is_client_error()).unwrap_or(true));
    // Non-UTF-8 cookie bytes: no session, not a 500.
    let r = http
        .get(s.url("/api/x"))
        .header("cookie", reqwest::header::HeaderValue::from_bytes(b"portcullis=\xff\xfe").unwrap())
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Many cookies, ours among them.
    let many = (0..100).map(|i| format!("c{i}=v{i}")).collect::<Vec<_>>().join("; ");
    let r = http.get(s.url("/")).header("cookie", format!("{many}; portcullis={cookie}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(http.get(s.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_secrets_never_reach_the_log() {
    let s = Setup::start(Store::Memory, OpOptions { access_token_ttl: 2, ..OpOptions::default() }).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let cookie = s.session_cookie(&browser).unwrap();
    let mut tokens = vec![s.upstream.last().unwrap().bearer.unwrap()];
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(browser.http().get(s.url("/")).send().await.unwrap().status(), 200);
    tokens.push(s.upstream.last().unwrap().bearer.unwrap());
    browser.sign_out(&s.gateway.url()).await;
    let log = s.gateway.log_text();
    assert!(log.contains("logged in") && log.contains("logged out"), "{log}");
    for secret in tokens.iter().chain([&cookie, &portcullis_testkit::CLIENT_SECRET.to_string(), &"or9UtaSFLwIWWCKa2M8yYFb".to_string()]) {
        assert!(!log.contains(secret.as_str()), "the log leaks a secret");
    }
    let id_part = cookie.split('.').nth(1).unwrap();
    assert!(!log.contains(id_part), "the log leaks the session id");
}

/// The OP's own refusal of a login this browser started (here `prompt=none` without a session
/// at the OP: `login_required`) is explained with the OP's words: its state is vouched for by the
/// browser's sealed login cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_the_op_shows_its_explanation() {
    let s = Setup::start_with(Store::Memory, OpOptions::default(), |o| o.extra.push_str("\n[oidc.extra_auth_params]\nprompt = \"none\"\n"))
        .await;
    let hops = Browser::new().follow(&s.url("/page")).await;
    let last = hops.last().unwrap();
    assert_eq!(last.url.path(), "/oauth2/callback", "{hops:#?}");
    assert_eq!(last.status, 400, "{}", last.body);
    assert!(last.body.contains("(login_required)"), "{}", last.body);
    let description = last.url.query_pairs().find(|(k, _)| k == "error_description").map(|(_, v)| v.to_string()).unwrap_or_default();
    assert!(!description.is_empty() && last.body.contains(&description), "the OP's description {description:?} is shown: {}", last.body);
}
