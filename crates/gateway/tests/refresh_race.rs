//! The headline: one refresh grant per session however many requests and instances, every
//! request served, no cookie changed. Several gateway processes share only a real Redis; the
//! OP (`oidc-provider`) counts the grants it receives.

mod common;

use std::time::Duration;

use futures_util::future::join_all;
use portcullis_testkit::{Browser, Gateway, GatewayOptions, Op, OpOptions, Redis, Upstream, free_port};

use common::BIN;

/// Three (or `n`) gateways behind one public URL, sharing one Redis.
struct Cluster {
    op: Op,
    upstream: Upstream,
    redis: Redis,
    gateways: Vec<Gateway>,
    cookie: String,
}

/// Refresh timing for tests: short lease so lapses are quick to observe.
const REFRESH: &str = "\n[refresh]\nlease_ttl = \"1s\"\nmax_wait = \"15s\"\npoll_interval = \"200ms\"\n";

impl Cluster {
    async fn start(n: usize, op_options: OpOptions, env: &[(&str, &str)]) -> Self {
        let redis = Redis::start().await;
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let public_url = format!("http://127.0.0.1:{}", ports[0]);
        let op = Op::start(op_options, std::slice::from_ref(&public_url)).await;
        let upstream = Upstream::start(Some(op.direct())).await;
        let mut gateways = Vec::new();
        for port in ports {
            let mut options = GatewayOptions::new(&op.issuer(), &upstream.url());
            options.port = port;
            options.store = "redis".into();
            options.redis_url = Some(redis.url());
            options.public_url = Some(public_url.clone());
            options.extra = REFRESH.into();
            options.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let gateway = Gateway::start(BIN, &options).await;
            gateway.wait_ready().await;
            gateways.push(gateway);
        }
        let browser = Browser::new();
        let hops = browser.login(&format!("{public_url}/"), "alice").await;
        assert_eq!(hops.last().unwrap().status, 200, "{hops:#?}");
        let cookie = browser.cookie(&public_url, "portcullis").expect("session cookie");
        upstream.clear();
        Self { op, upstream, redis, gateways, cookie }
    }

    /// `count` API calls at once, spread round-robin over the given instances.
    async fn burst(&self, count: usize, instances: &[usize], tag: &str) -> Vec<(u16, bool, String)> {
        let http = reqwest::Client::new();
        let calls = (0..count).map(|i| {
            let gateway = &self.gateways[instances[i % instances.len()]];
            let request = http
                .get(format!("{}/api/{tag}/{i}", gateway.url()))
                .header("cookie", format!("portcullis={}", self.cookie))
                .header("accept", "application/json")
                .send();
            async move {
                let response = request.await.expect("the gateway answers");
                let status = response.status().as_u16();
                let set_cookie = response.headers().contains_key("set-cookie");
                (status, set_cookie, response.text().await.unwrap_or_default())
            }
        });
        join_all(calls).await
    }

    fn logs(&self) -> String {
        self.gateways.iter().map(Gateway::log_text).collect::<Vec<_>>().join("\n----\n")
    }
}

/// The scenario of DESIGN.md, five rounds: the token expires, 50 parallel requests with the
/// same cookie over 3 instances. Exactly one grant per round, all 50 served upstream with an
/// active token, no Set-Cookie.
async fn one_grant_per_expiry(rotate: bool) {
    let ttl = 3;
    let c = Cluster::start(3, OpOptions { access_token_ttl: ttl, rotate_refresh_token: rotate, ..OpOptions::default() }, &[]).await;
    for round in 1..=5u64 {
        tokio::time::sleep(Duration::from_millis(ttl * 1000 + 300)).await;
        c.upstream.clear();
        let results = c.burst(50, &[0, 1, 2], &format!("round{round}")).await;
        for (i, (status, set_cookie, body)) in results.iter().enumerate() {
            assert_eq!(*status, 200, "round {round}, request {i}: {body}\n{}", c.logs());
            assert!(!set_cookie, "round {round}, request {i} changed the cookie");
        }
        let seen = c.upstream.seen();
        assert_eq!(seen.len(), 50, "round {round}: every request reached the upstream");
        assert!(seen.iter().all(|s| s.active == Some(true)), "round {round}: every token was active at the OP");
        let tokens: std::collections::HashSet<_> = seen.iter().map(|s| s.bearer.clone()).collect();
        assert_eq!(tokens.len(), 1, "round {round}: all requests carried the one refreshed token");
        assert_eq!(c.op.refresh_grants().await, round, "round {round}: exactly one refresh grant at the OP\n{}", c.logs());
    }
    let stats = c.op.stats().await;
    assert_eq!(stats["grant_outcomes"]["refresh_token:invalid_grant"], 0, "{stats}");
    let after = c.burst(3, &[0, 1, 2], "after").await;
    assert!(after.iter().all(|r| r.0 == 200), "the session still works afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_grant_per_expiry_with_rotating_op() {
    one_grant_per_expiry(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_grant_per_expiry_without_rotation() {
    one_grant_per_expiry(false).await;
}

/// A token endpoint slower than the lease TTL: the watchdog keeps the lease, so no second
/// instance takes it and replays the refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_slower_than_the_lease() {
    let c = Cluster::start(3, OpOptions { access_token_ttl: 2, ..OpOptions::default() }, &[]).await;
    c.op.configure(serde_json::json!({ "token_delay_ms": 3000 })).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let results = c.burst(30, &[0, 1, 2], "slow").await;
    assert!(results.iter().all(|r| r.0 == 200), "{results:?}\n{}", c.logs());
    assert_eq!(c.op.refresh_grants().await, 1, "a 3 s token call under a 1 s lease is still one grant\n{}", c.logs());
    assert!(c.logs().contains("tokens refreshed"));
}

/// Starts a refresh on instance 0 (the OP holds it for `delay`), waits until the OP has it,
/// then sends `count` requests to instances 1 and 2 and kills instance 0.
async fn kill_the_lease_holder(c: &Cluster, count: usize) -> Vec<(u16, bool, String)> {
    let http = reqwest::Client::new();
    let holder = http
        .get(format!("{}/api/holder", c.gateways[0].url()))
        .header("cookie", format!("portcullis={}", c.cookie))
        .header("accept", "application/json")
        .send();
    let holder = tokio::spawn(holder);
    for _ in 0..100 {
        if c.op.refresh_grants().await >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.op.refresh_grants().await, 1, "instance 0 started the refresh");
    let waiters = c.burst(count, &[1, 2], "waiters");
    let killer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.gateways[0].kill();
    };
    let (results, ()) = tokio::join!(waiters, killer);
    assert!(holder.await.unwrap().is_err(), "the killed instance never answered");
    results
}

/// Rotation off: after the lease lapses another instance completes the refresh; every request
/// on the survivors is served; one extra grant at most; the session survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_holder_killed_rotation_off() {
    let c =
        Cluster::start(3, OpOptions { access_token_ttl: 2, rotate_refresh_token: false, token_delay_ms: 0, ..OpOptions::default() }, &[])
            .await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    c.op.configure(serde_json::json!({ "token_delay_ms": 2500 })).await;
    let results = kill_the_lease_holder(&c, 20).await;
    assert!(results.iter().all(|r| r.0 == 200), "{results:?}\n{}", c.logs());
    assert_eq!(c.op.refresh_grants().await, 2, "exactly one more grant after the lease lapsed");
    let after = c.burst(4, &[1, 2], "after").await;
    assert!(after.iter().all(|r| r.0 == 200), "the session survives");
    assert!(c.upstream.seen().iter().all(|s| s.active == Some(true)));
}

/// Rotation on: the dead holder's request consumed the refresh token at the OP and its answer
/// died with it. The survivor's retry gets `invalid_grant` (and the OP revokes the grant):
/// the session ends cleanly, API calls get 401, page loads go to login, and no revoked token is
/// ever forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_holder_killed_rotation_on_ends_session_cleanly() {
    let c = Cluster::start(3, OpOptions { access_token_ttl: 2, rotate_refresh_token: true, ..OpOptions::default() }, &[]).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    c.op.configure(serde_json::json!({ "token_delay_ms": 2500 })).await;
    let results = kill_the_lease_holder(&c, 10).await;
    for (status, _, body) in &results {
        assert_eq!(*status, 401, "{body}\n{}", c.logs());
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], "unauthenticated");
        assert!(body["login_url"].as_str().unwrap().contains("/oauth2/start"));
    }
    assert_eq!(c.op.refresh_grants().await, 2);
    assert!(c.upstream.seen().is_empty(), "no request was forwarded with a dead token");
    // Page loads go to login; API calls keep getting 401 (not a loop of forwarded 401s).
    let browser = Browser::new();
    browser.set_cookie(&c.gateways[1].url(), &format!("portcullis={}; Path=/", c.cookie));
    let hop = browser.navigate(&format!("{}/page", c.gateways[1].url())).await;
    assert_eq!(hop.status, 302);
    assert!(hop.location.unwrap().as_str().starts_with(&c.op.issuer()));
    let again = c.burst(4, &[1, 2], "again").await;
    assert!(again.iter().all(|r| r.0 == 401));
    assert!(c.upstream.seen().is_empty());
    assert_eq!(c.op.refresh_grants().await, 2, "a dead session causes no more grants");
    assert!(c.logs().contains("session ended"));
}

/// Redis frozen mid-run: clear 503s, the gateway stays up; Redis back: the same cookie works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_503_and_keeps_the_session() {
    let c =
        Cluster::start(2, OpOptions { access_token_ttl: 60, ..OpOptions::default() }, &[("PORTCULLIS_SESSION__STORE_TIMEOUT", "500ms")])
            .await;
    assert!(c.burst(4, &[0, 1], "before").await.iter().all(|r| r.0 == 200));
    c.redis.pause();
    let during = c.burst(4, &[0, 1], "during").await;
    c.redis.resume();
    for (status, set_cookie, body) in &during {
        assert_eq!(*status, 503, "{body}");
        assert!(!set_cookie);
        assert!(body.contains("session_store_unavailable"), "{body}");
    }
    let http = reqwest::Client::new();
    for g in &c.gateways {
        assert_eq!(http.get(format!("{}/healthz", g.url())).send().await.unwrap().status(), 200);
    }
    let after = c.burst(4, &[0, 1], "after").await;
    assert!(after.iter().all(|r| r.0 == 200), "{after:?}");
}

/// OP unreachable (connection refused): served while the token is valid; after expiry 503 with
/// the session kept; served again once the OP is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_unreachable_then_back() {
    let c = Cluster::start(2, OpOptions { access_token_ttl: 4, behind_forwarder: true, ..OpOptions::default() }, &[]).await;
    c.op.set_reachable(false).await;
    let valid = c.burst(6, &[0, 1], "valid").await;
    assert!(valid.iter().all(|r| r.0 == 200), "a valid token is forwarded while the OP is down: {valid:?}");
    tokio::time::sleep(Duration::from_millis(4300)).await;
    let expired = c.burst(6, &[0, 1], "expired").await;
    for (status, _, body) in &expired {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains("identity_provider_unavailable"), "{body}");
    }
    c.op.set_reachable(true).await;
    // A failed refresh's answer is reused for a second (no flood against a failing OP).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let back = c.burst(6, &[0, 1], "back").await;
    assert!(back.iter().all(|r| r.0 == 200), "{back:?}\n{}", c.logs());
    assert_eq!(c.op.refresh_grants().await, 1, "grants counted by the OP: only the one that reached it");
}

/// A refresh that got no answer may have consumed a rotating refresh token. The gateway
/// records that, answers 503 without re-presenting the token until the settle time passed,
/// then presents it exactly once more. Here the OP never saw it (injected timeout before the
/// OP): the retry succeeds and the session lives on.
///
/// The settle window's length is measured, not assumed: probes every 250 ms from the moment
/// the outcome became unknown get 503 (and cause no grant) until the 3 s window has passed,
/// and the first one after it is served. A gateway settling for 300 ms instead (or not at all)
/// re-presents the token within about a second (once the failed flight's 1 s back-off ends)
/// and fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_outcome_not_consumed_retries_once_after_settling() {
    const SETTLE: Duration = Duration::from_secs(3);
    // The refresh task gives up on the OP's answer after 1 s (`op_answer_timeout`): a
    // connection that really died, as far as the gateway can tell.
    let env = [("PORTCULLIS_REFRESH__OP_ANSWER_TIMEOUT", "1s"), ("PORTCULLIS_REFRESH__SETTLE_AFTER_UNKNOWN", "3s")];
    let c = Cluster::start(2, OpOptions { access_token_ttl: 2, ..OpOptions::default() }, &env).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    c.op.configure(serde_json::json!({ "token_fail": "timeout" })).await;
    let first = c.burst(4, &[0, 1], "first").await;
    // The outcome was recorded as unknown just before these answers went out.
    let unknown_since = std::time::Instant::now();
    assert!(first.iter().all(|r| r.0 == 503), "{first:?}");
    assert_eq!(c.op.refresh_grants().await, 1);
    c.op.configure(serde_json::json!({ "token_fail": null })).await;
    let mut served_after = None;
    let mut probe = 0;
    while unknown_since.elapsed() < SETTLE + Duration::from_secs(4) {
        probe += 1;
        let results = c.burst(2, &[0, 1], &format!("probe{probe}")).await;
        let elapsed = unknown_since.elapsed();
        assert!(results.iter().all(|r| r.0 == 200 || r.0 == 503), "probe {probe} at {elapsed:?}: {results:?}");
        if results.iter().any(|r| r.0 == 200) {
            // (The other instance may still answer its own 503 for the failed flight's 1 s.)
            served_after = Some(elapsed);
            break;
        }
        assert_eq!(c.op.refresh_grants().await, 1, "probe {probe} at {elapsed:?}: not re-presented inside the settle window");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let served_after = served_after.unwrap_or_else(|| panic!("never served after the settle window\n{}", c.logs()));
    // The gateway stamped the unknown outcome a few ms before `unknown_since`.
    assert!(
        served_after >= SETTLE - Duration::from_millis(300),
        "re-presented {served_after:?} after the unknown outcome, inside the {SETTLE:?} window"
    );
    assert!(served_after <= SETTLE + Duration::from_millis(2500), "served only {served_after:?} after the unknown outcome");
    assert_eq!(c.op.refresh_grants().await, 2, "presented exactly once more");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = c.burst(4, &[0, 1], "after").await;
    // (Its 2 s token is due again by now: a further, proactive grant is normal here.)
    assert!(after.iter().all(|r| r.0 == 200), "the session lives on: {after:?}\n{}", c.logs());
}

/// Same, but the OP did process the lost request (it was slower than the gateway's timeout)
/// and rotated the token: the single retry gets `invalid_grant` and the session ends cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_outcome_consumed_ends_session_cleanly() {
    // The refresh task gives up on the OP's answer after 1 s (`op_answer_timeout`): a
    // connection that really died, as far as the gateway can tell.
    let env = [("PORTCULLIS_REFRESH__OP_ANSWER_TIMEOUT", "1s"), ("PORTCULLIS_REFRESH__SETTLE_AFTER_UNKNOWN", "3s")];
    let c = Cluster::start(2, OpOptions { access_token_ttl: 2, ..OpOptions::default() }, &env).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    c.op.configure(serde_json::json!({ "token_delay_ms": 2000 })).await;
    let first = c.burst(4, &[0, 1], "first").await;
    assert!(first.iter().all(|r| r.0 == 503), "{first:?}");
    c.op.configure(serde_json::json!({ "token_delay_ms": 0 })).await;
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let after = c.burst(4, &[0, 1], "after").await;
    assert!(after.iter().all(|r| r.0 == 401), "{after:?}\n{}", c.logs());
    assert_eq!(c.op.refresh_grants().await, 2);
    assert!(c.upstream.seen().is_empty(), "nothing forwarded with a dead token");
}

/// Inside the leeway the token is still valid: the request is forwarded at once with it and
/// the refresh runs behind it; the next request carries the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proactive_refresh_does_not_make_requests_wait() {
    let c = Cluster::start(1, OpOptions { access_token_ttl: 8, token_delay_ms: 0, ..OpOptions::default() }, &[]).await;
    let first = c.burst(1, &[0], "fresh").await;
    assert_eq!(first[0].0, 200);
    let old_token = c.upstream.last().unwrap().bearer;
    c.op.configure(serde_json::json!({ "token_delay_ms": 1500 })).await;
    // 8 s token, 25 % leeway: due from 6 s, expired (minus the 1 s in-flight margin) at 7 s.
    tokio::time::sleep(Duration::from_millis(6200)).await;
    let started = std::time::Instant::now();
    let due = c.burst(5, &[0], "due").await;
    let took = started.elapsed();
    assert!(due.iter().all(|r| r.0 == 200), "{due:?}");
    assert!(took < Duration::from_millis(1000), "requests inside the leeway must not wait for the 1.5 s refresh: {took:?}");
    assert!(c.upstream.seen().iter().all(|s| s.bearer == old_token), "forwarded with the still-valid token");
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(c.burst(1, &[0], "after").await[0].0, 200);
    assert_ne!(c.upstream.last().unwrap().bearer, old_token, "the background refresh landed");
    assert_eq!(c.op.refresh_grants().await, 1, "one background refresh for the five requests");
}

/// A due-soon (proactive) refresh raced across instances: three gateways see the token inside
/// its leeway at once and each starts a background refresh; with a rotating OP a second grant
/// would present the rotated token and reuse detection would end the session. One grant, every
/// request served at once, and the session lives on with the new token everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proactive_refresh_raced_across_instances_is_one_grant() {
    let c = Cluster::start(3, OpOptions { access_token_ttl: 8, rotate_refresh_token: true, ..OpOptions::default() }, &[]).await;
    assert!(c.burst(3, &[0, 1, 2], "fresh").await.iter().all(|r| r.0 == 200));
    let old_token = c.upstream.last().unwrap().bearer;
    // Keeps the winner's token call in flight while the other instances find the token due.
    c.op.configure(serde_json::json!({ "token_delay_ms": 800 })).await;
    // 8 s token, 25 % leeway: due from 6 s, expired (minus the 1 s in-flight margin) at 7 s.
    tokio::time::sleep(Duration::from_millis(6100)).await;
    for wave in 0..3 {
        let due = c.burst(15, &[0, 1, 2], &format!("due{wave}")).await;
        assert!(due.iter().all(|r| r.0 == 200), "wave {wave}: {due:?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.upstream.clear();
    let after = c.burst(9, &[0, 1, 2], "after").await;
    assert!(after.iter().all(|r| r.0 == 200), "{after:?}\n{}", c.logs());
    let tokens: std::collections::HashSet<_> = c.upstream.seen().iter().map(|s| s.bearer.clone()).collect();
    assert_eq!(tokens.len(), 1, "every instance forwards the one new token");
    assert!(!tokens.contains(&old_token), "the background refresh landed");
    assert_eq!(c.op.refresh_grants().await, 1, "three instances, one proactive grant\n{}", c.logs());
    assert_eq!(c.op.stats().await["grant_outcomes"]["refresh_token:invalid_grant"], 0);
}

/// The pub/sub connection that carries change notifications is killed by Redis mid-run
/// (`CLIENT KILL TYPE pubsub`). Each instance notices, logs and restarts its listener; after
/// that a request waiting on another instance's refresh is still woken by the notification:
/// `refresh.poll_interval` is 30 s here and `max_wait` 15 s, so an answer within about a
/// second of the write can only come from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_by_notification_after_the_listener_is_killed() {
    let c =
        Cluster::start(2, OpOptions { access_token_ttl: 3, ..OpOptions::default() }, &[("PORTCULLIS_REFRESH__POLL_INTERVAL", "30s")]).await;
    let killed = std::process::Command::new("redis-cli").args(["-u", &c.redis.url(), "CLIENT", "KILL", "TYPE", "pubsub"]).output().unwrap();
    assert!(killed.status.success(), "{killed:?}");
    let started = std::time::Instant::now();
    while c.gateways.iter().any(|g| !g.log_text().contains("restarting the listener")) {
        assert!(started.elapsed() < Duration::from_secs(15), "the listeners did not restart\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The token expires; instance 0 refreshes (the OP takes 1 s), instance 1 waits for it.
    tokio::time::sleep(Duration::from_millis(3300).saturating_sub(started.elapsed())).await;
    c.op.configure(serde_json::json!({ "token_delay_ms": 1000 })).await;
    let http = reqwest::Client::new();
    let holder = tokio::spawn(
        http.get(format!("{}/api/holder", c.gateways[0].url()))
            .header("cookie", format!("portcullis={}", c.cookie))
            .header("accept", "application/json")
            .send(),
    );
    while c.op.refresh_grants().await == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting_since = std::time::Instant::now();
    let waiters = c.burst(5, &[1], "waiter").await;
    let waited = waiting_since.elapsed();
    assert_eq!(holder.await.unwrap().unwrap().status(), 200);
    assert!(waiters.iter().all(|r| r.0 == 200), "{waiters:?}\n{}", c.logs());
    assert!(waited < Duration::from_millis(2500), "woken after {waited:?}: not by the notification\n{}", c.logs());
    assert_eq!(c.op.refresh_grants().await, 1);
}

/// A refresh slower than `refresh.max_wait`: waiters get a clear 503 at the deadline, never a
/// hang, and the session is kept: once the refresh lands, requests are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_give_up_with_503_at_max_wait() {
    let c = Cluster::start(1, OpOptions { access_token_ttl: 2, ..OpOptions::default() }, &[("PORTCULLIS_REFRESH__MAX_WAIT", "1s")]).await;
    c.op.configure(serde_json::json!({ "token_delay_ms": 2500 })).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let started = std::time::Instant::now();
    let waited = c.burst(5, &[0], "waiting").await;
    let took = started.elapsed();
    for (status, _, body) in &waited {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains("refresh_timeout"), "{body}");
    }
    assert!(took < Duration::from_millis(2000), "answered at the 1 s deadline, took {took:?}");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let after = c.burst(5, &[0], "after").await;
    assert!(after.iter().all(|r| r.0 == 200), "{after:?}\n{}", c.logs());
    assert_eq!(c.op.refresh_grants().await, 1);
}

/// An OP answering 5xx is not hammered: requests arriving within a second of a failed refresh
/// get its answer (503, session kept) without another token call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_op_is_not_flooded() {
    let c = Cluster::start(1, OpOptions { access_token_ttl: 2, ..OpOptions::default() }, &[]).await;
    c.op.configure(serde_json::json!({ "token_fail": "500" })).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    for wave in 0..3 {
        let r = c.burst(10, &[0], &format!("wave{wave}")).await;
        assert!(r.iter().all(|x| x.0 == 503), "{r:?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(c.op.refresh_grants().await, 1, "30 requests in under a second: one token call");
    c.op.configure(serde_json::json!({ "token_fail": null })).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c.burst(10, &[0], "recovered").await;
    assert!(r.iter().all(|x| x.0 == 200), "{r:?}");
    assert_eq!(c.op.refresh_grants().await, 2);
}
