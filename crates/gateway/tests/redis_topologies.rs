//! The Redis deployments users run, started for real: one node with TLS (certificates made
//! here), an ACL user and a database number; a 3-master Cluster; a Sentinel group (master,
//! replica, three sentinels). On each, the race of `refresh_race.rs` (3 instances, 50
//! parallel requests across an expiry, rotating OP, grants counted at the OP: exactly one).
//! Sentinel also fails over twice under traffic (`SENTINEL FAILOVER`, then killing the master).
//! Cluster and Sentinel once more with TLS on every link and ACL users only (the default user
//! off), as managed services run them; each also refused with a CA that did not sign the servers'
//! certificates.

mod common;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use portcullis::{
    config::RedisAuth,
    session::{ClientPem, Lifetimes, RedisOptions, RedisStore},
};
use portcullis_testkit::{
    ACL_PASSWORD, Browser, DOWN_AFTER_MS, Gateway, GatewayOptions, Op, OpOptions, RedisCluster, RedisSentinels, SENTINEL_PASSWORD,
    SENTINEL_USER, SecureRedis, TestCerts, TopologyOptions, Upstream, free_port,
};

use common::{BIN, traffic::outage_windows};

const REFRESH: &str = "\n[refresh]\nlease_ttl = \"1s\"\nmax_wait = \"15s\"\npoll_interval = \"200ms\"\n";

/// A poll interval far longer than a refresh: a waiter on another instance that is not woken
/// by the change notification waits this long, and the burst is that slow.
const SLOW_POLL: Duration = Duration::from_secs(5);
const REFRESH_SLOW_POLL: &str = "\n[refresh]\nlease_ttl = \"1s\"\nmax_wait = \"15s\"\npoll_interval = \"5s\"\n";

/// Three gateways behind one public URL on the Redis at `redis_url`.
struct Instances {
    op: Op,
    upstream: Upstream,
    gateways: Vec<Gateway>,
    cookie: String,
}

impl Instances {
    async fn start(redis_url: &str, session_extra: &str, op_options: OpOptions) -> Self {
        Self::start_with(redis_url, session_extra, REFRESH, op_options).await
    }

    /// [`Instances::start`] with `refresh` as the `[refresh]` table.
    async fn start_with(redis_url: &str, session_extra: &str, refresh: &str, op_options: OpOptions) -> Self {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let public_url = format!("http://127.0.0.1:{}", ports[0]);
        let op = Op::start(op_options, std::slice::from_ref(&public_url)).await;
        let upstream = Upstream::start(Some(op.direct())).await;
        let mut gateways = Vec::new();
        for port in ports {
            let gateway = Gateway::start(BIN, &gateway_options(&op, &upstream, port, &public_url, redis_url, session_extra, refresh)).await;
            gateway.wait_ready().await;
            gateways.push(gateway);
        }
        let browser = Browser::new();
        let hops = browser.login(&format!("{public_url}/"), "alice").await;
        let instances = Self { op, upstream, gateways, cookie: String::new() };
        assert_eq!(hops.last().unwrap().status, 200, "{hops:#?}\n{}", instances.logs());
        let cookie = browser.cookie(&public_url, "portcullis").expect("session cookie");
        instances.upstream.clear();
        Self { cookie, ..instances }
    }

    async fn get(&self, http: &reqwest::Client, instance: usize, path: &str) -> (u16, bool, String) {
        let response = http
            .get(format!("{}{path}", self.gateways[instance].url()))
            .header("cookie", format!("portcullis={}", self.cookie))
            .header("accept", "application/json")
            .send()
            .await
            .expect("the gateway answers");
        let status = response.status().as_u16();
        let set_cookie = response.headers().contains_key("set-cookie");
        (status, set_cookie, response.text().await.unwrap_or_default())
    }

    async fn burst(&self, count: usize, tag: &str) -> Vec<(u16, bool, String)> {
        let http = reqwest::Client::new();
        let paths: Vec<String> = (0..count).map(|i| format!("/api/{tag}/{i}")).collect();
        join_all(paths.iter().enumerate().map(|(i, path)| self.get(&http, i % 3, path))).await
    }

    fn logs(&self) -> String {
        self.gateways.iter().map(Gateway::log_text).collect::<Vec<_>>().join("\n----\n")
    }

    /// A fourth gateway for the same OP, upstream and public URL, on `redis_url` with
    /// `session_extra`: started (it answers `/healthz`) but not waited for to be ready.
    async fn another_gateway(&self, redis_url: &str, session_extra: &str) -> Gateway {
        let public_url = self.gateways[0].url();
        Gateway::start(BIN, &gateway_options(&self.op, &self.upstream, free_port(), &public_url, redis_url, session_extra, REFRESH)).await
    }

    /// `rounds` times: the token expires, 50 parallel requests over the 3 instances; exactly
    /// one new grant per round, every request served with the one refreshed token. Returns
    /// the slowest round's burst time.
    async fn one_grant_per_expiry(&self, ttl: u64, rounds: u64) -> Duration {
        let before = self.op.refresh_grants().await;
        let mut slowest = Duration::ZERO;
        for round in 1..=rounds {
            tokio::time::sleep(Duration::from_millis(ttl * 1000 + 300)).await;
            self.upstream.clear();
            let started = Instant::now();
            let results = self.burst(50, &format!("round{round}")).await;
            slowest = slowest.max(started.elapsed());
            for (i, (status, set_cookie, body)) in results.iter().enumerate() {
                assert_eq!(*status, 200, "round {round}, request {i}: {body}\n{}", self.logs());
                assert!(!set_cookie, "round {round}, request {i} changed the cookie");
            }
            let seen = self.upstream.seen();
            assert_eq!(seen.len(), 50, "round {round}: every request reached the upstream");
            assert!(seen.iter().all(|s| s.active == Some(true)), "round {round}: every token was active at the OP");
            let tokens: std::collections::HashSet<_> = seen.iter().map(|s| s.bearer.clone()).collect();
            assert_eq!(tokens.len(), 1, "round {round}: all requests carried the one refreshed token");
            assert_eq!(self.op.refresh_grants().await - before, round, "round {round}: exactly one refresh grant\n{}", self.logs());
        }
        let stats = self.op.stats().await;
        assert_eq!(stats["grant_outcomes"]["refresh_token:invalid_grant"], 0, "{stats}");
        // The change feed was up (waiters woken by notification, not by the poll), ACL included.
        assert!(!self.logs().contains("cannot subscribe"), "{}", self.logs());
        slowest
    }
}

fn gateway_options(
    op: &Op,
    upstream: &Upstream,
    port: u16,
    public_url: &str,
    redis_url: &str,
    session_extra: &str,
    refresh: &str,
) -> GatewayOptions {
    let mut options = GatewayOptions::new(&op.issuer(), &upstream.url());
    options.port = port;
    options.store = "redis".into();
    options.redis_url = Some(redis_url.to_string());
    options.public_url = Some(public_url.to_string());
    options.extra = format!("{session_extra}{refresh}");
    options
}

fn rotating(ttl: u64) -> OpOptions {
    OpOptions { access_token_ttl: ttl, rotate_refresh_token: true, ..OpOptions::default() }
}

const LONG: Lifetimes = Lifetimes { idle: Duration::from_secs(3600), absolute: Duration::from_secs(3600) };

/// TLS with the test's own CA in `session.redis_ca_file`, the ACL user (the default user is
/// off), database 3: the race passes, and the store really uses all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_acl_and_db_number_one_grant_per_expiry() {
    let certs = TestCerts::generate();
    let redis = SecureRedis::start(&certs).await;
    let ca_line = format!("redis_ca_file = \"{}\"\n", certs.ca_file.display());

    // What each setting is for: without the CA, without the credentials, it does not work.
    let ca_pem = std::fs::read(&certs.ca_file).unwrap();
    let with_ca = RedisOptions { ca_pem: Some(ca_pem), ..RedisOptions::default() };
    let no_ca = RedisStore::with_options(&redis.url(), &RedisOptions::default(), LONG, Duration::from_secs(5)).unwrap();
    let err = no_ca.ping().await.unwrap_err().to_string();
    // The certificate error; on a loaded machine the reconnect back-off may hit the timeout first.
    assert!(err.to_lowercase().contains("certificate") || err.contains("no answer"), "the system roots do not know the test CA: {err}");
    let no_user = RedisStore::with_options(&redis.url_without_credentials(), &with_ca, LONG, Duration::from_secs(2)).unwrap();
    let err = no_user.ping().await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("authentication required"), "the default user is off: {err}");
    let ok = RedisStore::with_options(&redis.url(), &with_ca, LONG, Duration::from_secs(2)).unwrap();
    ok.ping().await.expect("TLS + ACL user + db 3");

    let c = Instances::start(&redis.url(), &ca_line, rotating(3)).await;
    c.one_grant_per_expiry(3, 3).await;
    assert_eq!(redis.count_keys(3, "portcullis:*:session").await, 1, "the session is in database 3");
    assert_eq!(redis.count_keys(0, "portcullis:*").await, 0, "nothing in database 0");
}

/// Mutual TLS (`tls-auth-clients yes`): without a client certificate the server refuses the
/// gateway; with `session.redis_client_cert_file`/`_key_file` the race passes, the change
/// listener included (its connection presents the certificate too, else waiters would poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_client_certificate_one_grant_per_expiry() {
    let certs = TestCerts::generate();
    let redis = SecureRedis::start_mutual(&certs).await;
    let without = RedisOptions { ca_pem: ca_pem(&certs), ..RedisOptions::default() };
    let err = store_error(&redis.url(), &without).await;
    assert!(!err.is_empty(), "no client certificate: refused");
    let client_pem = ClientPem { cert: std::fs::read(&certs.cert_file).unwrap(), key: std::fs::read(&certs.key_file).unwrap() };
    let key_text = String::from_utf8(client_pem.key.clone()).unwrap();
    let with = RedisOptions { client_pem: Some(client_pem), ..without };
    assert!(!format!("{with:?}").contains(key_text.lines().nth(1).unwrap()), "the private key is not in Debug: {with:?}");
    RedisStore::with_options(&redis.url(), &with, LONG, Duration::from_secs(3))
        .unwrap()
        .ping()
        .await
        .expect("the client certificate is accepted");

    let lines = format!(
        "{}redis_client_cert_file = \"{}\"\nredis_client_key_file = \"{}\"\n",
        ca_line(&certs),
        certs.cert_file.display(),
        certs.key_file.display()
    );
    let c = Instances::start_with(&redis.url(), &lines, REFRESH_SLOW_POLL, rotating(3)).await;
    race_woken_by_notification(&c).await;
    assert_eq!(redis.count_keys(3, "portcullis:*:session").await, 1, "the session is in database 3");
}

/// A 3-master Cluster through its seed nodes (ACL user): every key of the session on one
/// node (`{key}` hash tag), scripts routed there, notifications seen by every instance
/// (classic PUBLISH is broadcast to every node; each gateway's PSUBSCRIBE is on one node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_one_grant_per_expiry() {
    let cluster = RedisCluster::start(3, 0).await;
    let c = Instances::start(&cluster.url(), "", rotating(3)).await;
    c.one_grant_per_expiry(3, 3).await;
    let sessions = cluster.keys_per_node("portcullis:*:session").await;
    assert_eq!(sessions.iter().sum::<usize>(), 1, "one session, on one node: {sessions:?}");
}

/// Sentinel: the master found by service name; the race passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_one_grant_per_expiry() {
    let group = RedisSentinels::start().await;
    let c = Instances::start(&group.url(), "", rotating(3)).await;
    c.one_grant_per_expiry(3, 3).await;
}

/// One request every 20 ms, round-robin over the instances, timestamped.
async fn traffic(c: &Instances, stop: &tokio::sync::watch::Receiver<bool>) -> Vec<(Duration, u16, String)> {
    let http = reqwest::Client::new();
    let get = |i: usize| {
        let http = http.clone();
        async move {
            let (status, _, body) = c.get(&http, i % 3, &format!("/api/traffic/{i}")).await;
            (status, body)
        }
    };
    common::traffic::traffic(get, stop).await
}

/// Two failovers under traffic, with tokens expiring throughout (3 s lifetime, rotation on):
/// a planned `SENTINEL FAILOVER`, then the new master killed. Requests get `503` at most
/// while the master moves, `200` before and after; nothing else (no `401`: no CAS was rolled
/// back to a spent refresh token, no session lost), and the race still gives one grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_during_traffic() {
    let mut group = RedisSentinels::start().await;
    let c = Instances::start(&group.url(), "", rotating(3)).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let driver = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let first = group.master_port().await;
        let planned_at = Instant::now();
        group.failover().await;
        let second = group.wait_for_new_master(first, Duration::from_secs(20)).await;
        let planned = planned_at.elapsed();
        // Let the demoted master resync as the new master's replica before killing the master.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let killed_at = Instant::now();
        group.data_node(second).kill().await;
        let third = group.wait_for_new_master(second, Duration::from_secs(30)).await;
        let crash = killed_at.elapsed();
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop_tx.send(true).unwrap();
        (planned, crash, third)
    };
    let (results, (planned, crash, third)) = tokio::join!(traffic(&c, &stop), driver);
    let windows = outage_windows(&results);
    let failures: Vec<_> = results.iter().filter(|r| r.1 != 200).map(|r| (r.0, r.1, r.2.clone())).collect();
    eprintln!(
        "sentinel failover: {} requests; planned switch took {planned:?} at the sentinels, crash {crash:?} (down-after {DOWN_AFTER_MS} ms), \
         master now :{third}; outage windows seen by clients: {:?}; {} non-200 answers",
        results.len(),
        windows.iter().map(|(a, b)| b.saturating_sub(*a)).collect::<Vec<_>>(),
        failures.len()
    );
    for (t, status, body) in &failures {
        assert_eq!(*status, 503, "at {t:?} only 503 while the master moves: {body}\n{}", c.logs());
    }
    assert!(windows.len() <= 2 + 1, "at most one outage per failover (and one short blip): {windows:?}");
    assert!(windows.iter().all(|(_, end)| *end != Duration::MAX), "served again after the failovers: {windows:?}\n{}", c.logs());
    let tail = &results[results.len().saturating_sub(20)..];
    assert!(tail.iter().all(|r| r.1 == 200), "200 after the failovers");
    // The session survived both failovers and still refreshes once per expiry.
    c.one_grant_per_expiry(3, 2).await;
}

/// `session.redis_ca_file = <certs' CA>`.
fn ca_line(certs: &TestCerts) -> String {
    format!("redis_ca_file = \"{}\"\n", certs.ca_file.display())
}

/// The secured topologies: TLS on every link, the default user off everywhere.
fn secured(certs: &TestCerts) -> TopologyOptions<'_> {
    TopologyOptions { tls: Some(certs), acl_only: true }
}

/// The race on a secured topology with a 5 s poll: the bursts must be far faster than the
/// poll, so the waiters on the two other instances were woken by the change notification
/// (the pub/sub listener's own TLS + ACL connection works), not by polling.
async fn race_woken_by_notification(c: &Instances) {
    let slowest = c.one_grant_per_expiry(3, 3).await;
    eprintln!("slowest burst of 50 across an expiry: {slowest:?} (poll interval {SLOW_POLL:?})");
    assert!(slowest < SLOW_POLL / 2, "a burst took {slowest:?}: waiters polled instead of being notified\n{}", c.logs());
}

/// A CA that did not sign the servers' certificates, on a gateway beside the working ones:
/// it comes up, `/readyz` says the store is unavailable (503), a request with the session
/// gets `503`, the log names the certificate problem, and nothing panics or shows a password.
async fn refused_with_wrong_ca(c: &Instances, redis_url: &str, session_extra_without_ca: &str) {
    let wrong = TestCerts::generate();
    let gateway = c.another_gateway(redis_url, &format!("{}{session_extra_without_ca}", ca_line(&wrong))).await;
    let http = reqwest::Client::new();
    let ready = http.get(format!("{}/readyz", gateway.url())).send().await.unwrap();
    assert_eq!(ready.status(), 503, "{}", gateway.log_text());
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["session_store"], "unavailable", "{body}");
    let response = http
        .get(format!("{}/api/wrong-ca", gateway.url()))
        .header("cookie", format!("portcullis={}", c.cookie))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503, "{}", gateway.log_text());
    let log = gateway.log_text();
    eprintln!("wrong CA at the gateway: {}", log.lines().find(|l| l.contains("readiness")).unwrap_or("<no readiness line>"));
    assert!(log.to_lowercase().contains("certificate"), "the log names the certificate problem:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    for secret in [ACL_PASSWORD, SENTINEL_PASSWORD] {
        assert!(!log.contains(secret), "a password in the log:\n{log}");
    }
}

/// The store's own error with the wrong CA (what `/readyz` logs): a certificate error, no password.
async fn store_error(url: &str, options: &RedisOptions) -> String {
    let store = RedisStore::with_options(url, options, LONG, Duration::from_secs(3)).unwrap();
    let err = store.ping().await.expect_err("refused").to_string();
    eprintln!("refused: {err}");
    for secret in [ACL_PASSWORD, SENTINEL_PASSWORD] {
        assert!(!err.contains(secret), "a password in the error: {err}");
    }
    err
}

fn ca_pem(certs: &TestCerts) -> Option<Vec<u8>> {
    Some(std::fs::read(&certs.ca_file).unwrap())
}

/// A Cluster with TLS on every link (clients and the Cluster bus) and only ACL users,
/// through `rediss+cluster://` with the test CA in `session.redis_ca_file`: the race gives one
/// grant per expiry, waiters are woken by notification; with another CA, a clear refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_acl_cluster_one_grant_per_expiry() {
    let certs = TestCerts::generate();
    let cluster = RedisCluster::start_with(3, 0, secured(&certs)).await;
    let url = cluster.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");

    let wrong = TestCerts::generate();
    let err = store_error(&url, &RedisOptions { ca_pem: ca_pem(&wrong), ..RedisOptions::default() }).await;
    assert!(err.contains("UnknownIssuer") && err.contains("session.redis_ca_file"), "the wrong CA is named as such: {err}");

    let c = Instances::start_with(&url, &ca_line(&certs), REFRESH_SLOW_POLL, rotating(3)).await;
    race_woken_by_notification(&c).await;
    let sessions = cluster.keys_per_node("portcullis:*:session").await;
    assert_eq!(sessions.iter().sum::<usize>(), 1, "one session, on one node: {sessions:?}");
    refused_with_wrong_ca(&c, &url, "").await;
}

/// A Sentinel group with TLS on every link (clients, replication, the sentinels' links) and
/// only ACL users: the gateway's user on the data nodes in the `rediss+sentinel://` URL, its
/// own user at the sentinels in `session.redis_sentinel_username/password`. The race gives one
/// grant per expiry, waiters are woken by notification; with another CA, or without the
/// sentinel credentials, a clear refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_acl_sentinel_one_grant_per_expiry() {
    let certs = TestCerts::generate();
    let group = RedisSentinels::start_with(secured(&certs)).await;
    let url = group.url();
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    let sentinel_lines = format!("redis_sentinel_username = \"{SENTINEL_USER}\"\nredis_sentinel_password = \"{SENTINEL_PASSWORD}\"\n");
    let sentinel_auth = RedisAuth { username: Some(SENTINEL_USER.into()), password: Some(SENTINEL_PASSWORD.into()) };

    let wrong = TestCerts::generate();
    let err =
        store_error(&url, &RedisOptions { ca_pem: ca_pem(&wrong), sentinel_auth: sentinel_auth.clone(), ..RedisOptions::default() }).await;
    assert!(err.contains("UnknownIssuer") && err.contains("session.redis_ca_file"), "the wrong CA is named as such: {err}");
    let err =
        store_error(&url, &RedisOptions { ca_pem: ca_pem(&certs), sentinel_auth: RedisAuth::default(), ..RedisOptions::default() }).await;
    assert!(err.contains("NOAUTH") && err.contains("session.redis_sentinel_password"), "the sentinels' default user is off: {err}");

    let c = Instances::start_with(&url, &format!("{}{sentinel_lines}", ca_line(&certs)), REFRESH_SLOW_POLL, rotating(3)).await;
    race_woken_by_notification(&c).await;
    refused_with_wrong_ca(&c, &url, &sentinel_lines).await;
}
