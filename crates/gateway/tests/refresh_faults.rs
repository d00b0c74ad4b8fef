//! Faults around one refresh (issue 8): an abandoned leader, a frozen OP, a proxy's 502/504, a
//! 2xx the gateway cannot fully verify, a store error on the final write, claims that change at
//! the OP. Each scenario counts the OP's grants and checks every response: the rule under test
//! is that a refresh token the OP may have consumed is never presented again blindly, and that
//! tokens the OP did send are never dropped.

mod common;

use std::time::Duration;

use common::{BIN, Setup, Store};
use futures_util::future::join_all;
use portcullis_testkit::{Gateway, GatewayOptions, OpOptions, Upstream, free_port};
use serde_json::json;

/// `n` parallel API calls with `cookie`; (status, body, the new session cookie if one was set).
async fn burst(url: &str, cookie: &str, n: usize) -> Vec<(u16, String, Option<String>)> {
    let http = reqwest::Client::new();
    let calls = (0..n).map(|i| {
        http.get(format!("{url}/api/{i}")).header("cookie", format!("portcullis={cookie}")).header("accept", "application/json").send()
    });
    let mut out = Vec::new();
    for r in join_all(calls).await {
        let r = r.expect("the gateway answers");
        let status = r.status().as_u16();
        let set = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.strip_prefix("portcullis=").map(|v| v.split(';').next().unwrap().to_string()));
        out.push((status, r.text().await.unwrap_or_default(), set));
    }
    out
}

fn env(pairs: &[(&str, &str)]) -> impl FnOnce(&mut GatewayOptions) {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |o| o.env.extend(pairs)
}

/// Item 1. Cookie store: the client that led a refresh goes away (its request is dropped)
/// while the OP is slow. The refresh finishes anyway and leaves its handoff: the next
/// requests with the same old cookie are served with the new tokens and the new cookie, and
/// the OP saw one grant. (It used to leave a dead flight: 503 until a restart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_store_abandoned_leader_does_not_wedge_the_session() {
    let s = Setup::start_with(Store::Memory, OpOptions { access_token_ttl: 2, ..OpOptions::default() }, |o| {
        o.store = "cookie".into();
    })
    .await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let c0 = s.session_cookie(&browser).unwrap();
    s.op.configure(json!({ "token_delay_ms": 1500 })).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let dropped =
        impatient.get(s.url("/api/leader")).header("cookie", format!("portcullis={c0}")).header("accept", "application/json").send().await;
    assert!(dropped.is_err(), "the leader's client gave up before the OP answered");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let after = burst(&s.gateway.url(), &c0, 5).await;
    for (status, body, set) in &after {
        assert_eq!(*status, 200, "{body}\n{}", s.gateway.log_text());
        assert!(set.is_some(), "the old cookie is handed the new one");
    }
    assert_eq!(s.op.refresh_grants().await, 1);
}

/// Item 4. The OP freezes (SIGSTOP) past the token's expiry, with the refresh request queued
/// in its socket. Requests meanwhile get 503 at `max_wait`, the session kept; the refresh task
/// keeps its connection. Once the OP resumes, its answer is taken: the next request is served
/// within a second, and the rotating OP saw exactly one grant (dropping the connection at
/// `http_timeout` lost that answer, made everyone wait out `settle_after_unknown`, and then the
/// re-presented token hit reuse detection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_op_answer_is_taken_when_it_resumes() {
    let s = Setup::start_with(
        Store::Memory,
        OpOptions { access_token_ttl: 2, ..OpOptions::default() },
        env(&[
            ("PORTCULLIS_OIDC__HTTP_TIMEOUT", "1s"),
            ("PORTCULLIS_REFRESH__SETTLE_AFTER_UNKNOWN", "6s"),
            ("PORTCULLIS_REFRESH__MAX_WAIT", "1s"),
        ]),
    )
    .await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let cookie = s.session_cookie(&browser).unwrap();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    s.op.freeze();
    let during = burst(&s.gateway.url(), &cookie, 4).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = burst(&s.gateway.url(), &cookie, 2).await;
    s.op.thaw();
    for (status, body, _) in during.iter().chain(&still) {
        assert_eq!(*status, 503, "{body}");
    }
    let thawed = tokio::time::Instant::now();
    let mut served = None;
    while thawed.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = burst(&s.gateway.url(), &cookie, 1).await.remove(0);
        if r.0 == 200 {
            served = Some(thawed.elapsed());
            break;
        }
    }
    let served = served.unwrap_or_else(|| panic!("not served after the OP resumed\n{}", s.gateway.log_text()));
    assert!(served < Duration::from_secs(1), "served {served:?} after the OP resumed");
    let after = burst(&s.gateway.url(), &cookie, 4).await;
    assert!(after.iter().all(|r| r.0 == 200), "{after:?}");
    assert_eq!(s.op.refresh_grants().await, 1, "the queued request was the only grant");
    assert_eq!(s.op.stats().await["grant_outcomes"]["refresh_token:invalid_grant"], 0);
}

/// Item 5. A proxy in front of the OP answers 502 / 504 after the OP processed (and rotated)
/// the refresh token. That is an unknown outcome, not "not sent": the token is not presented
/// again within the settle time (it used to be, a second later, tripping reuse detection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_502_and_504_are_outcome_unknown() {
    for mode in ["502_after", "504_after"] {
        let s = Setup::start_with(
            Store::Memory,
            OpOptions { access_token_ttl: 2, ..OpOptions::default() },
            env(&[("PORTCULLIS_REFRESH__SETTLE_AFTER_UNKNOWN", "5s")]),
        )
        .await;
        let (browser, _) = s.logged_in("/", "alice").await;
        let cookie = s.session_cookie(&browser).unwrap();
        tokio::time::sleep(Duration::from_millis(2300)).await;
        s.op.configure(json!({ "token_fail": mode })).await;
        let first = burst(&s.gateway.url(), &cookie, 3).await;
        assert!(first.iter().all(|r| r.0 == 503), "{mode}: {first:?}");
        s.op.configure(json!({ "token_fail": null })).await;
        // Past the one-second reuse of a failed flight's answer, inside the settle time.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let settling = burst(&s.gateway.url(), &cookie, 3).await;
        assert!(settling.iter().all(|r| r.0 == 503), "{mode}: {settling:?}\n{}", s.gateway.log_text());
        assert_eq!(s.op.refresh_grants().await, 1, "{mode}: the possibly consumed token was not re-presented");
        assert!(s.gateway.log_text().contains("outcome unknown"), "{mode}");
    }
}

/// Item 6. Redis stops answering between the OP's answer and the final compare-and-set. The
/// same CAS is retried and lands once Redis is back: the request that waited is served, the
/// session lives on with the new tokens, one grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_error_on_the_final_write_is_retried() {
    let s = Setup::start_with(
        Store::Redis,
        OpOptions { access_token_ttl: 2, ..OpOptions::default() },
        env(&[("PORTCULLIS_SESSION__STORE_TIMEOUT", "300ms")]),
    )
    .await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let cookie = s.session_cookie(&browser).unwrap();
    s.op.configure(json!({ "token_delay_ms": 1500 })).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let url = s.gateway.url();
    let holder = tokio::spawn({
        let cookie = cookie.clone();
        async move { burst(&url, &cookie, 1).await.remove(0) }
    });
    // The refresh is at the OP; Redis freezes before the answer comes back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let redis = s.redis.as_ref().unwrap();
    redis.pause();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    redis.resume();
    let (status, body, _) = holder.await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", s.gateway.log_text());
    assert!(s.gateway.log_text().contains("could not write the refreshed tokens; retrying"), "{}", s.gateway.log_text());
    let after = burst(&s.gateway.url(), &cookie, 4).await;
    assert!(after.iter().all(|r| r.0 == 200), "{after:?}");
    assert_eq!(s.op.refresh_grants().await, 1);
}

// ---------------------------------------------------------------------------------------------
// Against the development OP (in process): key rotation, clock skew, groups that change.
// ---------------------------------------------------------------------------------------------

struct DevSetup {
    op: portcullis_dev_op::DevOp,
    control: String,
    upstream: Upstream,
    gateway: Gateway,
    http: reqwest::Client,
}

impl DevSetup {
    async fn start(store: &str, token_ttl: Duration) -> Self {
        let port = free_port();
        let gateway_url = format!("http://127.0.0.1:{port}");
        let config = portcullis_dev_op::DevOpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            clients: vec![portcullis_dev_op::ClientConfig {
                redirect_uris: vec![format!("{gateway_url}/oauth2/callback")],
                post_logout_redirect_uris: vec![format!("{gateway_url}/")],
                ..portcullis_dev_op::ClientConfig::default()
            }],
            access_token_ttl: token_ttl,
            ..portcullis_dev_op::DevOpConfig::default()
        };
        let op = portcullis_dev_op::start(config).await.unwrap();
        let issuer = op.issuer().as_str().trim_end_matches('/').to_string();
        let upstream = Upstream::start(None).await;
        let mut options = GatewayOptions::new(&issuer, &upstream.url());
        options.port = port;
        options.store = store.into();
        let gateway = Gateway::start(BIN, &options).await;
        gateway.wait_ready().await;
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).cookie_store(true).build().unwrap();
        Self { control: format!("{issuer}/control"), op, upstream, gateway, http }
    }

    async fn control(&self, change: serde_json::Value) {
        let r = self.http.post(&self.control).json(&change).send().await.unwrap();
        assert!(r.status().is_success(), "{change}: {}", r.text().await.unwrap());
    }

    /// Logs in as demo/demo through the dev OP's form; the browser's cookie jar keeps the session.
    async fn login(&self) {
        let mut url: reqwest::Url = format!("{}/", self.gateway.url()).parse().unwrap();
        let mut page = String::new();
        for _ in 0..10 {
            let r = self.http.get(url.clone()).header("sec-fetch-mode", "navigate").header("accept", "text/html").send().await.unwrap();
            match r.headers().get("location") {
                Some(next) => url = url.join(next.to_str().unwrap()).unwrap(),
                None => {
                    page = r.text().await.unwrap();
                    break;
                }
            }
        }
        let form = &page[page.find("<form").expect("a login form")..];
        let attr = |html: &str, name: &str| -> String {
            let start = html.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            html[start..start + html[start..].find('"').unwrap()].replace("&amp;", "&")
        };
        let action = url.join(&attr(form, "action")).unwrap();
        let mut fields: Vec<(String, String)> = Vec::new();
        for input in form.split("<input").skip(1) {
            if input.contains("type=\"hidden\"") {
                fields.push((attr(input, "name"), attr(input, "value")));
            }
        }
        fields.push(("username".into(), "demo".into()));
        fields.push(("password".into(), "demo".into()));
        let mut r = self.http.post(action.clone()).header("sec-fetch-mode", "navigate").form(&fields).send().await.unwrap();
        let mut at = action;
        while let Some(next) = r.headers().get("location").map(|l| l.to_str().unwrap().to_string()) {
            at = at.join(&next).unwrap();
            r = self.http.get(at.clone()).header("sec-fetch-mode", "navigate").header("accept", "text/html").send().await.unwrap();
        }
        assert_eq!(r.status(), 200, "login ended at {at}\n{}", self.gateway.log_text());
    }

    /// `n` parallel API calls with the browser's cookies.
    async fn burst(&self, n: usize) -> Vec<(u16, String)> {
        let calls = (0..n).map(|i| self.http.get(format!("{}/api/{i}", self.gateway.url())).header("accept", "application/json").send());
        let mut out = Vec::new();
        for r in join_all(calls).await {
            let r = r.unwrap();
            out.push((r.status().as_u16(), r.text().await.unwrap_or_default()));
        }
        out
    }

    fn grants(&self) -> u64 {
        self.op.stats().refresh_grants
    }
}

/// Item 3. Whatever the refreshed ID token's trouble, the OP answered 2xx and consumed the
/// refresh token: the new tokens are kept (the previous identity when the ID token does not
/// verify), the old token is never presented again, and the session outlives several rounds.
/// Cases: a signing key rotated during the JWKS refetch cool-down (the gateway fetched the
/// JWKS at start-up, seconds ago), and an `iat` ahead of the gateway's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_refresh_is_never_thrown_away() {
    let cases: &[(&str, serde_json::Value)] = &[
        ("signing key rotated during the JWKS cool-down", json!({ "rotate_signing_keys": true })),
        ("iat ahead of the gateway's clock", json!({ "id_token_iat_offset_secs": 600 })),
    ];
    for store in ["memory", "cookie"] {
        for (name, change) in cases {
            let s = DevSetup::start(store, Duration::from_secs(2)).await;
            s.login().await;
            s.control(change.clone()).await;
            for round in 1..=2u64 {
                tokio::time::sleep(Duration::from_millis(2300)).await;
                let r = s.burst(5).await;
                for (status, body) in &r {
                    assert_eq!(*status, 200, "{store}, {name}, round {round}: {body}\n{}", s.gateway.log_text());
                }
                assert_eq!(s.grants(), round, "{store}, {name}, round {round}");
            }
            assert_eq!(s.op.stats().reuse_detections, 0, "{store}, {name}: a consumed refresh token was presented again");
            let seen = s.upstream.last().unwrap();
            assert_eq!(seen.headers.get("x-forwarded-user").map(String::as_str), Some("demo"), "{store}, {name}: identity kept");
        }
    }
}

/// Item 9. Claims follow the refresh: the user is moved from group "demo" to "ops" at the OP;
/// after the next refresh the upstream sees the new groups, not the login's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_follow_the_refresh() {
    for store in ["memory", "cookie"] {
        let s = DevSetup::start(store, Duration::from_secs(2)).await;
        s.login().await;
        assert_eq!(s.burst(1).await[0].0, 200);
        let groups = |s: &DevSetup| s.upstream.last().unwrap().headers.get("x-forwarded-groups").cloned();
        assert_eq!(groups(&s).as_deref(), Some("demo"), "{store}: groups at login");
        s.control(json!({ "user_groups": { "demo": ["ops"] } })).await;
        tokio::time::sleep(Duration::from_millis(2300)).await;
        let r = s.burst(1).await;
        assert_eq!(r[0].0, 200, "{r:?}");
        assert_eq!(s.grants(), 1);
        assert_eq!(groups(&s).as_deref(), Some("ops"), "{store}: groups after the refresh");
        assert_eq!(s.upstream.last().unwrap().headers.get("x-forwarded-user").map(String::as_str), Some("demo"));
    }
}
