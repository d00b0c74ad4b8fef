//! The pending login travels sealed in the browser's cookie: no server state before the
//! callback, several logins per browser (capped), each state used once, and the callback's
//! checks (cookie, expiry, RFC 9207 `iss`, `email_verified`). Real gateway, real oidc-provider,
//! real redis-server.

mod common;

use common::{Setup, Store};
use portcullis_testkit::{Browser, Hop, OpOptions};
use reqwest::Url;

const LOGIN_PREFIX: &str = "portcullis_login_";

fn is_callback(u: &Url) -> bool {
    u.path() == "/oauth2/callback"
}

/// The login cookie a `/oauth2/start` (or login-route) answer set: `(name, value)`.
fn login_cookie_set(hop: &Hop) -> (String, String) {
    hop.set_cookies
        .iter()
        .filter_map(|c| c.split(';').next()?.split_once('='))
        .find(|(n, v)| n.starts_with(LOGIN_PREFIX) && !v.is_empty())
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .unwrap_or_else(|| panic!("no login cookie set: {hop:#?}"))
}

/// Names of the login cookies a response cleared.
fn login_cookies_cleared(hop: &Hop) -> Vec<String> {
    hop.set_cookies
        .iter()
        .filter(|c| c.split("; ").any(|a| a == "Max-Age=0"))
        .filter_map(|c| c.split(';').next()?.split_once('='))
        .filter(|(n, _)| n.starts_with(LOGIN_PREFIX))
        .map(|(n, _)| n.to_string())
        .collect()
}

/// Logs `browser` in at the OP once (so later attempts go straight back to the callback) and
/// returns nothing; the gateway session it also gets is irrelevant to `/oauth2/start`.
async fn sign_in_at_op(s: &Setup, browser: &Browser) {
    let hops = browser.login(&s.url("/oauth2/start?rd=/warmup"), "alice").await;
    assert_eq!(hops.last().unwrap().status, 200, "{hops:#?}");
}

/// Starts a login at `/oauth2/start?rd=<rd>` in a browser already signed in at the OP and
/// stops before the callback: the start hop and the callback URL.
async fn attempt(s: &Setup, browser: &Browser, rd: &str) -> (Hop, Url) {
    let hops = browser.follow_until(&s.url(&format!("/oauth2/start?rd={rd}")), &is_callback).await;
    let callback =
        hops.last().unwrap().location.clone().filter(is_callback).unwrap_or_else(|| panic!("did not reach the callback: {hops:#?}"));
    (hops[0].clone(), callback)
}

/// A login by `user` in a fresh browser, stopped before the callback.
async fn fresh_attempt(s: &Setup, user: &str, path: &str) -> (Browser, Hop, Url) {
    let browser = Browser::new();
    let hops = browser.login_until(&s.url(path), user, &is_callback).await;
    let callback = hops.last().unwrap().location.clone().expect("stopped at the callback link");
    (browser, hops[0].clone(), callback)
}

fn redis_dbsize(s: &Setup) -> u64 {
    let url = s.redis.as_ref().expect("redis store").url();
    let out = std::process::Command::new("redis-cli").args(["-u", &url, "DBSIZE"]).output().expect("run redis-cli");
    assert!(out.status.success(), "redis-cli: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("DBSIZE is a number")
}

fn authorization_code_grants(stats: &serde_json::Value) -> u64 {
    stats["grants"]["authorization_code"].as_u64().unwrap_or(0)
}

/// 1,000 `/oauth2/start` and 1,000 navigations to a login route without a session: not one
/// Redis key. Each got its sealed cookie; a real login afterwards does write (its session and the
/// consumed-state marker), so the count is not zero for want of a working store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flood_leaves_no_server_state() {
    let s = Setup::start(Store::Redis, OpOptions::default()).await;
    let before = redis_dbsize(&s);
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let paths: Vec<String> = (0..2000).map(|i| if i % 2 == 0 { format!("/oauth2/start?rd=/p{i}") } else { format!("/page{i}") }).collect();
    for chunk in paths.chunks(25) {
        let requests = chunk.iter().map(|p| http.get(s.url(p)).header("sec-fetch-mode", "navigate").header("accept", "text/html").send());
        for r in futures_util::future::join_all(requests).await {
            let r = r.unwrap();
            assert_eq!(r.status(), 302);
            let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).collect();
            assert!(cookies.iter().any(|c| c.starts_with(LOGIN_PREFIX)), "each start carries its sealed login: {cookies:?}");
        }
    }
    assert_eq!(redis_dbsize(&s), before, "unauthenticated login starts must not write to Redis");

    let (_browser, _) = s.logged_in("/", "alice").await;
    assert_eq!(redis_dbsize(&s), before + 2, "a completed login writes its session and its consumed-state marker");
}

/// Two tabs of one browser log in at once; each login completes and returns to its own page,
/// in either order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_logins_in_one_browser_both_complete() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let browser = Browser::new();
    sign_in_at_op(&s, &browser).await;
    let (start_a, callback_a) = attempt(&s, &browser, "/tab-a").await;
    let (start_b, callback_b) = attempt(&s, &browser, "/tab-b").await;
    assert_ne!(login_cookie_set(&start_a).0, login_cookie_set(&start_b).0, "one cookie per attempt");

    let b = browser.navigate(callback_b.as_str()).await;
    assert_eq!((b.status, b.location.as_ref().map(Url::as_str)), (302, Some(s.url("/tab-b").as_str())), "{}", b.body);
    assert_eq!(login_cookies_cleared(&b), [login_cookie_set(&start_b).0], "only its own login cookie is cleared");
    let a = browser.navigate(callback_a.as_str()).await;
    assert_eq!((a.status, a.location.as_ref().map(Url::as_str)), (302, Some(s.url("/tab-a").as_str())), "{}", a.body);
    assert_eq!(browser.http().get(s.url("/tab-a")).send().await.unwrap().status(), 200);
}

/// A sixth login in flight drops the oldest: its callback gets a clear 400, the other five work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixth_concurrent_login_drops_the_oldest() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let browser = Browser::new();
    sign_in_at_op(&s, &browser).await;
    let mut attempts = Vec::new();
    for i in 1..=6 {
        attempts.push(attempt(&s, &browser, &format!("/tab-{i}")).await);
    }
    let names: Vec<String> = attempts.iter().map(|(start, _)| login_cookie_set(start).0).collect();
    for (i, (start, _)) in attempts.iter().enumerate().take(5) {
        assert!(login_cookies_cleared(start).is_empty(), "attempt {}: below the cap nothing is cleared", i + 1);
    }
    assert_eq!(login_cookies_cleared(&attempts[5].0), [names[0].clone()], "the sixth start clears the oldest");

    let oldest = browser.navigate(attempts[0].1.as_str()).await;
    assert_eq!(oldest.status, 400, "{}", oldest.body);
    assert!(oldest.body.contains("replaced by a newer login"), "{}", oldest.body);
    assert!(oldest.body.contains("/oauth2/start"), "offers to log in again: {}", oldest.body);
    for (i, (_, callback)) in attempts.iter().enumerate().skip(1) {
        let hop = browser.navigate(callback.as_str()).await;
        assert_eq!(hop.status, 302, "attempt {}: {}", i + 1, hop.body);
        assert_eq!(hop.location.unwrap().as_str(), s.url(&format!("/tab-{}", i + 1)));
    }
}

/// A callback URL replayed with its login cookie (kept by an attacker, or restored) is refused
/// as already used before the OP is contacted: the OP's code-reuse detection would otherwise
/// revoke the real login's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_callback_with_its_cookie_is_refused() {
    for store in [Store::Memory, Store::Redis] {
        let s = Setup::start(store, OpOptions::default()).await;
        let (browser, start, callback) = fresh_attempt(&s, "alice", "/app").await;
        let (name, value) = login_cookie_set(&start);
        let first = browser.navigate(callback.as_str()).await;
        assert_eq!(first.status, 302, "{store:?}: {}", first.body);
        let grants = authorization_code_grants(&s.op.stats().await);

        let thief = Browser::new();
        thief.set_cookie(&s.gateway.url(), &format!("{name}={value}; Path=/"));
        browser.set_cookie(&s.gateway.url(), &format!("{name}={value}; Path=/"));
        for (who, b) in [("same browser", &browser), ("other browser", &thief)] {
            let replay = b.navigate(callback.as_str()).await;
            assert_eq!(replay.status, 400, "{store:?} {who}: {}", replay.body);
            assert!(replay.body.contains("already used"), "{store:?} {who}: {}", replay.body);
            assert!(!replay.set_cookies.iter().any(|c| c.starts_with("portcullis=")), "{store:?} {who}: no session");
        }
        assert_eq!(authorization_code_grants(&s.op.stats().await), grants, "{store:?}: the replay never reached the OP");
        assert!(s.gateway.log_text().contains("state was already used"), "{store:?}");
        assert_eq!(browser.http().get(s.url("/app")).send().await.unwrap().status(), 200, "{store:?}: the real session lives");
    }
}

/// Every broken login cookie gets a 400 with a sentence saying what happened, and no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_login_cookies_get_clear_refusals() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let flip = |v: &str| {
        let mut b = v.as_bytes().to_vec();
        let i = b.len() / 2;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    // (case, how the cookie jar is changed before the callback, expected text)
    type Tamper = fn(&str, &str, &str, &dyn Fn(&str) -> String) -> Option<String>;
    let cases: &[(&str, Tamper, &str)] = &[
        ("tampered value", |n, v, _, flip| Some(format!("{n}={}", flip(v))), "could not be verified"),
        ("truncated value", |n, v, _, _| Some(format!("{n}={}", &v[..v.len() / 2])), "could not be verified"),
        ("garbage value", |n, _, _, _| Some(format!("{n}=not-a-sealed-login")), "could not be verified"),
        ("another login's seal under this name", |n, _, other, _| Some(format!("{n}={other}")), "not started in this browser"),
        ("no cookie (another browser: login CSRF)", |_, _, _, _| None, "not started in this browser"),
    ];
    let (_, other_start, _) = fresh_attempt(&s, "mallory", "/").await;
    let other_value = login_cookie_set(&other_start).1;
    for (case, tamper, text) in cases {
        let (browser, start, callback) = fresh_attempt(&s, "alice", "/").await;
        let (name, value) = login_cookie_set(&start);
        let target = match tamper(&name, &value, &other_value, &flip) {
            Some(cookie) => {
                browser.set_cookie(&s.gateway.url(), &format!("{cookie}; Path=/"));
                browser
            }
            None => Browser::new(),
        };
        let hop = target.navigate(callback.as_str()).await;
        assert_eq!(hop.status, 400, "{case}: {}", hop.body);
        assert!(hop.body.contains(text), "{case}: {}", hop.body);
        assert!(hop.body.contains("/oauth2/start"), "{case}: offers to log in again");
        assert!(!hop.set_cookies.iter().any(|c| c.starts_with("portcullis=")), "{case}: no session");
    }
    let log = s.gateway.log_text();
    assert!(log.contains("login cookie rejected") && log.contains("login CSRF"), "{log}");
}

/// A login cookie presented after `session.login_timeout` is refused even if the browser kept
/// it (the sealed start time decides, not the cookie's Max-Age).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_login_is_refused() {
    let s = Setup::start_with(Store::Memory, OpOptions::default(), |o| o.extra.push_str("login_timeout = \"2s\"\n")).await;
    let (browser, start, callback) = fresh_attempt(&s, "alice", "/").await;
    let (name, value) = login_cookie_set(&start);
    assert!(start.set_cookies.iter().any(|c| c.contains("Max-Age=2")), "the cookie lives as long as a login may: {:?}", start.set_cookies);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    browser.set_cookie(&s.gateway.url(), &format!("{name}={value}; Path=/"));
    let hop = browser.navigate(callback.as_str()).await;
    assert_eq!(hop.status, 400, "{}", hop.body);
    assert!(hop.body.contains("took too long and has expired"), "{}", hop.body);
    assert_eq!(login_cookies_cleared(&hop), [name], "the dead login's cookie is cleared");
}

/// With an https `public_url` the login cookie is `__Host-` prefixed, `Secure`, `Path=/`,
/// `HttpOnly`, `SameSite=Lax`, short-lived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_login_cookie_attributes() {
    let s = Setup::start_with(Store::Memory, OpOptions::default(), |o| o.public_url = Some(format!("https://127.0.0.1:{}", o.port))).await;
    let hop = Browser::new().navigate(&s.url("/oauth2/start?rd=/x")).await;
    assert_eq!(hop.status, 302);
    let cookie =
        hop.set_cookies.iter().find(|c| c.starts_with("__Host-portcullis_login_")).unwrap_or_else(|| panic!("{:?}", hop.set_cookies));
    let attrs: Vec<&str> = cookie.split("; ").skip(1).collect();
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Secure", "Max-Age=600"] {
        assert!(attrs.contains(&attr), "{cookie} lacks {attr}");
    }
    assert!(!cookie.contains("Domain="), "{cookie}");
}

/// RFC 9207: oidc-provider advertises `authorization_response_iss_parameter_supported`, so a
/// callback without `iss`, or with another issuer, is refused before the code is redeemed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_response_issuer_is_checked() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let discovery: serde_json::Value =
        reqwest::get(format!("{}/.well-known/openid-configuration", s.op.issuer())).await.unwrap().json().await.unwrap();
    assert_eq!(discovery["authorization_response_iss_parameter_supported"], true, "the test OP advertises RFC 9207");
    let cases: &[(&str, Option<&str>)] = &[
        ("missing", None),
        ("another issuer", Some("http://127.0.0.1:1/evil")),
        ("trailing slash", Some("__ISSUER__/")),
        ("empty", Some("")),
    ];
    for (case, iss) in cases {
        let (browser, _, callback) = fresh_attempt(&s, "alice", "/").await;
        let sent: Vec<(String, String)> = callback.query_pairs().into_owned().collect();
        assert!(sent.iter().any(|(k, v)| k == "iss" && *v == s.op.issuer()), "the OP sends iss: {callback}");
        let mut forged = callback.clone();
        {
            let mut q = forged.query_pairs_mut();
            q.clear();
            for (k, v) in sent.iter().filter(|(k, _)| k != "iss") {
                q.append_pair(k, v);
            }
            if let Some(iss) = iss {
                q.append_pair("iss", &iss.replace("__ISSUER__", &s.op.issuer()));
            }
        }
        let grants = authorization_code_grants(&s.op.stats().await);
        let hop = browser.navigate(forged.as_str()).await;
        assert_eq!(hop.status, 400, "{case}: {}", hop.body);
        assert!(hop.body.contains("did not come from the expected identity provider"), "{case}: {}", hop.body);
        assert_eq!(authorization_code_grants(&s.op.stats().await), grants, "{case}: the code was not sent to the token endpoint");
    }
    assert!(s.gateway.log_text().contains("issuer check failed"));
    // The genuine response passes.
    let (_browser, hops) = s.logged_in("/", "alice").await;
    assert_eq!(hops.last().unwrap().status, 200);
}

/// An ID token with `email_verified: false` is refused (403) while its email would be forwarded;
/// `oidc.allow_unverified_email = true` lets it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_email_is_refused_unless_allowed() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let hops = Browser::new().login(&s.url("/app"), "unverified-eve").await;
    let last = hops.last().unwrap();
    assert_eq!(last.status, 403, "{}", last.body);
    assert!(last.body.contains("has not verified your email address"), "{}", last.body);
    assert!(!last.set_cookies.iter().any(|c| c.starts_with("portcullis=")), "no session");
    assert!(s.gateway.log_text().contains("email unverified"));
    s.logged_in("/app", "alice").await; // a verified email still logs in

    let s = Setup::start_with(Store::Memory, OpOptions::default(), |o| {
        o.env.push(("PORTCULLIS_OIDC__ALLOW_UNVERIFIED_EMAIL".into(), "true".into()));
    })
    .await;
    s.logged_in("/app", "unverified-eve").await;
    let seen = s.upstream.last().unwrap();
    assert_eq!(seen.headers.get("x-forwarded-email").map(String::as_str), Some("unverified-eve@example.test"));
}
