//! The Redis store's read cache across gateway processes: three instances on one real Redis,
//! the real OP (`oidc-provider`). A refresh through one instance is what the others forward
//! next, a logout through one is refused by the others within 2 s although their copies
//! would be served for 30 s, and the idle timeout still ends sessions.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use portcullis_testkit::{Browser, Gateway, GatewayOptions, Op, OpOptions, Redis, Upstream, free_port};

use common::BIN;

struct Cluster {
    op: Op,
    upstream: Upstream,
    _redis: Redis,
    gateways: Vec<Gateway>,
    browser: Browser,
    cookie: String,
}

impl Cluster {
    /// `n` gateways behind one public URL; `session` is TOML for the `[session]` table (its
    /// `read_cache` sub-table included).
    async fn start(n: usize, op_options: OpOptions, session: &str, clock_skew: &str) -> Self {
        let redis = Redis::start().await;
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let public_url = format!("http://127.0.0.1:{}", ports[0]);
        let op = Op::start(op_options, std::slice::from_ref(&public_url)).await;
        let upstream = Upstream::start(None).await;
        let mut gateways = Vec::new();
        for port in ports {
            let mut options = GatewayOptions::new(&op.issuer(), &upstream.url());
            options.port = port;
            options.store = "redis".into();
            options.redis_url = Some(redis.url());
            options.public_url = Some(public_url.clone());
            options.extra = format!("{session}\n[refresh]\nlease_ttl = \"1s\"\nmax_wait = \"15s\"\npoll_interval = \"200ms\"\n");
            options.env = vec![("PORTCULLIS_OIDC__CLOCK_SKEW".into(), clock_skew.into())];
            let gateway = Gateway::start(BIN, &options).await;
            gateway.wait_ready().await;
            gateways.push(gateway);
        }
        let browser = Browser::new();
        let hops = browser.login(&format!("{public_url}/"), "alice").await;
        assert_eq!(hops.last().unwrap().status, 200, "{hops:#?}");
        let cookie = browser.cookie(&public_url, "portcullis").expect("session cookie");
        Self { op, upstream, _redis: redis, gateways, browser, cookie }
    }

    /// One API call through instance `i`: its status and the bearer token the upstream got.
    async fn call(&self, i: usize, tag: &str) -> (u16, Option<String>) {
        let path = format!("/api/{tag}/{}", rand_tag());
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.gateways[i].url()))
            .header("cookie", format!("portcullis={}", self.cookie))
            .header("accept", "application/json")
            .send()
            .await
            .expect("the gateway answers");
        let status = response.status().as_u16();
        let bearer = self.upstream.seen().into_iter().find(|s| s.path == path).and_then(|s| s.bearer);
        (status, bearer)
    }

    fn logs(&self) -> String {
        self.gateways.iter().map(Gateway::log_text).collect::<Vec<_>>().join("\n----\n")
    }
}

/// One call of the loops: started, finished, instance, the token the upstream got.
type Call = (Instant, Instant, usize, Option<String>);

fn rand_tag() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// 20 s tokens (due with 5 s left; copies served while more than 6 s are left, skew 1 s), copies kept
/// up to 30 s. B and C call in a loop all along, A once after expiry. Whichever instance
/// commits the refresh (the first call inside the leeway starts it), every call to any
/// instance that starts after some call came back with the new token carries it, never the old
/// one; one grant. Then
/// a sign-out through A is refused by B and C within 2 s (their copies are fresh: only the
/// notification can tell them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_and_logout_through_one_instance_reach_the_others() {
    let session = "idle_timeout = \"120s\"\n[session.read_cache]\nrenew_interval = \"30s\"\n";
    let c = Arc::new(Cluster::start(3, OpOptions { access_token_ttl: 20, ..OpOptions::default() }, session, "1s").await);
    let (status, t1) = c.call(0, "first").await;
    assert_eq!(status, 200);
    let t1 = t1.expect("a token");

    // B and C keep calling: (started, finished, instance, token).
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for i in [1, 2] {
        let (c, calls, stop) = (c.clone(), calls.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let started = Instant::now();
                let (status, token) = c.call(i, "loop").await;
                assert_eq!(status, 200, "instance {i}\n{}", c.logs());
                calls.lock().unwrap().push((started, Instant::now(), i, token));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Past expiry: A's request waits for the refresh (B and C may start it too: one grant).
    tokio::time::sleep(Duration::from_millis(20_300)).await;
    let (status, t2) = c.call(0, "refresh").await;
    let answered = Instant::now();
    assert_eq!(status, 200);
    let t2 = t2.expect("a token");
    assert_ne!(t2, t1, "A forwarded a refreshed token");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for l in loops {
        l.await.unwrap();
    }
    let calls = calls.lock().unwrap().clone();
    // The refresh was committed before the first answer that carried its token.
    let first_new = calls
        .iter()
        .filter(|(.., t)| t.as_deref() == Some(t2.as_str()))
        .map(|(_, finished, ..)| *finished)
        .min()
        .unwrap_or(answered)
        .min(answered);
    let after: Vec<_> = calls.iter().filter(|(started, ..)| *started > first_new).collect();
    assert!(after.len() >= 6, "B and C kept calling after the refresh: {}", after.len());
    for (_, _, i, token) in &after {
        assert_eq!(token.as_deref(), Some(t2.as_str()), "instance {i} forwarded another token than the committed refresh's");
    }
    assert!(calls.iter().all(|(.., t)| t.as_deref() == Some(t1.as_str()) || t.as_deref() == Some(t2.as_str())));
    let before_expiry = calls.iter().filter(|(started, ..)| *started < answered - Duration::from_secs(9)).count();
    assert!(before_expiry >= 6, "B and C were called while the first token was fresh: {before_expiry}");
    assert_eq!(c.op.refresh_grants().await, 1, "one grant\n{}", c.logs());

    // Fresh copies of T2 on B and C, then a logout through A.
    for i in [1, 2] {
        assert_eq!(c.call(i, "warm").await, (200, Some(t2.clone())));
        assert_eq!(c.call(i, "warm").await, (200, Some(t2.clone())));
    }
    let hop = c.browser.sign_out(&c.gateways[0].url()).await;
    assert!(hop.status < 400, "signed out: {hop:#?}");
    let signed_out = Instant::now();
    for i in [1, 2] {
        loop {
            let (status, _) = c.call(i, "after-logout").await;
            if status == 401 {
                break;
            }
            assert_eq!(status, 200);
            assert!(signed_out.elapsed() < Duration::from_secs(2), "instance {i} still serves the session after the logout\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("logout through A refused by B and C after {:?}", signed_out.elapsed());
}

/// Idle timeout 4 s, copies renewed every second: a session used every 300 ms for 8 s lives on
/// (each renewal reached Redis), and one left alone for 5 s is over on every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_still_ends_sessions() {
    let session = "idle_timeout = \"4s\"\n[session.read_cache]\nrenew_interval = \"1s\"\n";
    let c = Cluster::start(2, OpOptions { access_token_ttl: 600, ..OpOptions::default() }, session, "1s").await;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let (status, _) = c.call(n % 2, "busy").await;
        assert_eq!(status, 200, "used every 300 ms, the session must live ({:?} in)\n{}", started.elapsed(), c.logs());
        n += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for i in [0, 1] {
        assert_eq!(c.call(i, "idle").await.0, 401, "instance {i} still serves an idle session");
    }
}

/// `GETEX` calls Redis has served so far (`INFO commandstats`).
fn getex_calls(redis_url: &str) -> u64 {
    let port = redis_url.rsplit(':').next().and_then(|p| p.split('/').next()).expect("port in the Redis URL");
    let out = std::process::Command::new("redis-cli").args(["-p", port, "INFO", "commandstats"]).output().expect("redis-cli runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("cmdstat_getex:calls="))
        .map_or(0, |rest| rest.split(',').next().unwrap_or("0").parse().unwrap_or(0))
}

/// The gateway as built (its store wrapped for metrics, then the cache) answers a hot session
/// from memory: 20 requests within the renew interval cost Redis no `GETEX`. (A wrapper that
/// forwarded the per-request read as a plain `load` once sent every request to Redis.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_sessions_are_answered_without_redis_reads() {
    let op = OpOptions { access_token_ttl: 600, ..OpOptions::default() };
    let cluster = Cluster::start(1, op, "[session.read_cache]\nrenew_interval = \"60s\"\n", "5s").await;
    let url = cluster._redis.url();
    let (status, _) = cluster.call(0, "fill").await;
    assert_eq!(status, 200, "{}", cluster.logs());
    let before = getex_calls(&url);
    for i in 0..20 {
        let (status, bearer) = cluster.call(0, &format!("hot{i}")).await;
        assert_eq!(status, 200);
        assert!(bearer.is_some(), "the upstream got the token");
    }
    let reads = getex_calls(&url) - before;
    assert_eq!(reads, 0, "20 hot requests read Redis {reads} times: the read cache is not in use");
}
