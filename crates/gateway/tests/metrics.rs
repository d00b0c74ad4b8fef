//! `/metrics` (issue 11, item 1): the real binary with its metrics listener on, scraped over
//! HTTP before and after a login, a refresh race and failures (dead upstream, refused path,
//! OP 5xx, `invalid_grant`), one instance on the memory store and three on a real Redis. The
//! text exposition is parsed and the counters compared: exact deltas where the protocol
//! determines them (one grant for a race of N requests, N answers, one lease, one write),
//! bounds where scheduling decides (how many requests joined the flight).

mod common;

use std::{collections::HashMap, time::Duration};

use common::{BIN, Setup, Store};
use futures_util::future::join_all;
use portcullis_testkit::{Browser, Gateway, GatewayOptions, Op, OpOptions, Redis, Upstream, free_port};
use serde_json::json;

/// One scrape: series (name and labels exactly as exposed) → value.
#[derive(Debug)]
struct Scrape(HashMap<String, f64>);

impl Scrape {
    async fn of(metrics_url: &str) -> Self {
        let response = reqwest::get(metrics_url).await.expect("the metrics listener answers");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
        let text = response.text().await.unwrap();
        let mut series = HashMap::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample line: {line}"));
            series.insert(name.to_string(), value.parse().unwrap_or_else(|_| panic!("not a number: {line}")));
        }
        Self(series)
    }

    /// The value of `name{labels}` (labels in exposition order); 0 when the series is absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0.get(&key(name, labels)).copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.0.contains_key(&key(name, labels))
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// `after - before` for one series.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels) - before.get(name, labels)
}

/// Access tokens' lifetime at the OP, in seconds. Not shorter: the test upstream asks the OP
/// whether each token it receives is active, and on a loaded machine (the node OP answering a
/// refresh in over a second, then 30 introspections) a 2 s token expires at the OP before the
/// last request of a burst is checked.
const TTL: u64 = 5;

/// Past the tokens' expiry, with a margin: the gateway counts a token's life from when the
/// answer reached it, the OP from when it issued it; within that gap the gateway still
/// forwards the token (due soon, refreshed in the background).
const EXPIRED: u64 = TTL * 1000 + 800;

const REQUESTS: &str = "portcullis_http_requests_total";
const GRANTS: &str = "portcullis_refresh_grants_total";
const STORE_OPS: &str = "portcullis_store_operation_duration_seconds_count";
const OP_CALLS: &str = "portcullis_op_request_duration_seconds_count";

/// `n` parallel API calls with `cookie`; their statuses.
async fn burst(url: &str, cookie: &str, n: usize) -> Vec<u16> {
    let http = reqwest::Client::new();
    let calls = (0..n).map(|i| {
        http.get(format!("{url}/api/{i}")).header("cookie", format!("portcullis={cookie}")).header("accept", "application/json").send()
    });
    join_all(calls).await.into_iter().map(|r| r.expect("the gateway answers").status().as_u16()).collect()
}

/// One instance, memory store: login, a race of 20 requests over an expired token, then a
/// dead upstream, a refused path, an OP answering 500 and an OP answering `invalid_grant`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_login_refresh_race_and_failures() {
    let metrics_port = free_port();
    let dead_upstream = format!("http://127.0.0.1:{}", free_port());
    let s = Setup::start_with(Store::Memory, OpOptions { access_token_ttl: TTL, ..OpOptions::default() }, |o| {
        o.env.push(("PORTCULLIS_METRICS__LISTEN".into(), format!("127.0.0.1:{metrics_port}")));
        o.routes.push(("/dead".into(), dead_upstream, "allow".into()));
    })
    .await;
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    // Not on the public listener.
    let public = reqwest::get(s.url("/metrics")).await.unwrap();
    assert!(!public.text().await.unwrap().contains("portcullis_http_requests_total"), "/metrics is not served on the public side");

    let start = Scrape::of(&metrics).await;
    assert_eq!(start.get("portcullis_sessions_active", &[]), 0.0);
    assert_eq!(start.get("portcullis_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(start.has("portcullis_op_request_duration_seconds_count", &[("endpoint", "discovery")]), "discovery was timed");

    // Login.
    let (alice, _) = s.logged_in("/", "alice").await;
    let alice_cookie = s.session_cookie(&alice).unwrap();
    let login = Scrape::of(&metrics).await;
    assert_eq!(login.get("portcullis_sessions_active", &[]), 1.0);
    assert_eq!(delta(&start, &login, REQUESTS, &[("route", "/oauth2/callback"), ("status", "302")]), 1.0);
    assert_eq!(delta(&start, &login, REQUESTS, &[("route", "/"), ("status", "200")]), 1.0, "the page after login");
    assert_eq!(delta(&start, &login, OP_CALLS, &[("endpoint", "token")]), 1.0, "one code exchange");
    assert_eq!(delta(&start, &login, STORE_OPS, &[("operation", "create")]), 1.0);
    assert_eq!(delta(&start, &login, STORE_OPS, &[("operation", "consume_state")]), 1.0);

    // The race: 20 requests, one expired token.
    tokio::time::sleep(Duration::from_millis(EXPIRED)).await;
    let n = 20;
    let statuses = burst(&s.gateway.url(), &alice_cookie, n).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let race = Scrape::of(&metrics).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&login, &race, name, labels);
    assert_eq!(d("portcullis_refresh_grants_started_total", &[]), 1.0, "one grant for {n} requests");
    assert_eq!(d(GRANTS, &[("outcome", "success")]), 1.0);
    assert_eq!(s.op.refresh_grants().await, 1, "the OP agrees");
    assert_eq!(d(OP_CALLS, &[("endpoint", "token")]), 1.0);
    assert_eq!(d(REQUESTS, &[("route", "/api"), ("status", "200")]), n as f64);
    assert_eq!(d("portcullis_http_request_duration_seconds_count", &[("route", "/api")]), n as f64);
    assert_eq!(d("portcullis_upstream_response_duration_seconds_count", &[("route", "/api")]), n as f64);
    let local_waits = d("portcullis_refresh_waits_total", &[("scope", "local")]);
    assert!((1.0..n as f64).contains(&local_waits), "requests joined the one flight: {local_waits}");
    assert_eq!(d("portcullis_refresh_wait_duration_seconds_count", &[("scope", "local")]), local_waits, "each wait timed");
    assert_eq!(d("portcullis_refresh_waits_total", &[("scope", "remote")]), 0.0, "one instance: nobody else holds the lease");
    assert_eq!(d("portcullis_refresh_lease_contended_total", &[]), 0.0);
    // The refresh task: load, lease, load under the lease, write, release; each request one load.
    assert_eq!(d(STORE_OPS, &[("operation", "try_lease")]), 1.0);
    assert_eq!(d(STORE_OPS, &[("operation", "compare_and_set")]), 1.0);
    assert_eq!(d(STORE_OPS, &[("operation", "release_lease")]), 1.0);
    // One per-request read each, plus the coordinator's own reads of the store.
    assert_eq!(d(STORE_OPS, &[("operation", "load_for_request")]), n as f64);
    assert_eq!(d(STORE_OPS, &[("operation", "load")]), 2.0);
    assert_eq!(d("portcullis_refresh_cas_conflicts_total", &[]), 0.0);

    // A second user, whose token the OP will fail to refresh with a 500.
    let (bob, _) = s.logged_in("/", "bob").await;
    let bob_cookie = s.session_cookie(&bob).unwrap();
    let http = reqwest::Client::new();
    let before_failures = Scrape::of(&metrics).await;
    assert_eq!(before_failures.get("portcullis_sessions_active", &[]), 2.0);

    // A dead upstream: 502, and no upstream answer to time.
    let dead = http.get(s.url("/dead/x")).send().await.unwrap();
    assert_eq!(dead.status(), 502);
    // A path the boundary refuses.
    let refused = http.get(s.url("/admin%2fx")).send().await.unwrap();
    assert_eq!(refused.status(), 400);

    // Both tokens expire; the OP fails bob's refresh (500), then rejects alice's (invalid_grant).
    tokio::time::sleep(Duration::from_millis(EXPIRED)).await;
    s.op.configure(json!({ "token_fail": "500" })).await;
    assert_eq!(burst(&s.gateway.url(), &bob_cookie, 1).await, [503], "OP down: 503, session kept");
    s.op.configure(json!({ "token_fail": "invalid_grant" })).await;
    assert_eq!(burst(&s.gateway.url(), &alice_cookie, 1).await, [401], "refresh token dead: the session ends");
    s.op.configure(json!({ "token_fail": null })).await;

    let end = Scrape::of(&metrics).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before_failures, &end, name, labels);
    assert_eq!(d(REQUESTS, &[("route", "/dead"), ("status", "502")]), 1.0);
    assert!(!end.has("portcullis_upstream_response_duration_seconds_count", &[("route", "/dead")]), "no upstream answer was timed");
    assert_eq!(d(REQUESTS, &[("route", "refused"), ("status", "400")]), 1.0);
    assert_eq!(d(GRANTS, &[("outcome", "transient")]), 1.0, "the 500");
    assert_eq!(d(GRANTS, &[("outcome", "invalid_grant")]), 1.0);
    assert_eq!(d(GRANTS, &[("outcome", "success")]), 0.0);
    assert_eq!(d("portcullis_op_request_errors_total", &[("endpoint", "token")]), 1.0, "a 500 is an error, invalid_grant an answer");
    assert_eq!(d(OP_CALLS, &[("endpoint", "token")]), 2.0);
    assert_eq!(d("portcullis_refresh_sessions_ended_total", &[("reason", "invalid_grant")]), 1.0);
    assert_eq!(d(STORE_OPS, &[("operation", "delete_if_version")]), 1.0, "the ended session, deleted at its version");
    assert_eq!(d(REQUESTS, &[("route", "/api"), ("status", "503")]), 1.0);
    assert_eq!(d(REQUESTS, &[("route", "/api"), ("status", "401")]), 1.0);
    assert_eq!(end.get("portcullis_sessions_active", &[]), 1.0, "bob's session is kept, alice's ended");
    assert_eq!(d("portcullis_store_errors_total", &[("operation", "load"), ("kind", "unavailable")]), 0.0);

    // The Grafana dashboard queries only series this gateway exposes (three appear only with
    // an event or a store this run does not have).
    let exposed: std::collections::HashSet<&str> = end.0.keys().map(|k| k.split('{').next().unwrap()).collect();
    let absent_here =
        ["portcullis_store_errors_total", "portcullis_store_notification_restarts_total", "portcullis_store_replica_ack_missing_total"];
    let names = dashboard_metric_names();
    assert!(names.len() >= 20, "{names:?}");
    for name in &names {
        assert!(
            exposed.contains(name.as_str()) || absent_here.contains(&name.as_str()),
            "the dashboard queries {name}, which is not exposed"
        );
    }
}

/// Every `portcullis_*` name the example Grafana dashboard's queries use.
fn dashboard_metric_names() -> std::collections::BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/grafana/portcullis-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    let mut names = std::collections::BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("portcullis_") {
            let name: String = rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    names
}

/// Three instances on one Redis, an OP slower than a third of the lease (and well inside it,
/// so a starved watchdog on a busy machine cannot let it lapse): 30 requests spread over the
/// instances make one grant; the two instances that did not get the lease each wait
/// for it once (remote wait), and the holder's watchdog renews it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_instance_race_counts_one_grant_and_the_remote_waits() {
    let redis = Redis::start().await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let public_url = format!("http://127.0.0.1:{}", ports[0]);
    let op = Op::start(OpOptions { access_token_ttl: TTL, ..OpOptions::default() }, std::slice::from_ref(&public_url)).await;
    let upstream = Upstream::start(Some(op.direct())).await;
    let mut gateways = Vec::new();
    let mut metrics = Vec::new();
    for port in &ports {
        let metrics_port = free_port();
        let mut options = GatewayOptions::new(&op.issuer(), &upstream.url());
        options.port = *port;
        options.store = "redis".into();
        options.redis_url = Some(redis.url());
        options.public_url = Some(public_url.clone());
        options.routes = vec![("/".into(), upstream.url(), "login".into()), ("/api".into(), upstream.url(), "login".into())];
        options.extra = "\n[refresh]\nlease_ttl = \"3s\"\nmax_wait = \"15s\"\npoll_interval = \"200ms\"\n".into();
        options.env = vec![("PORTCULLIS_METRICS__LISTEN".into(), format!("127.0.0.1:{metrics_port}"))];
        let gateway = Gateway::start(BIN, &options).await;
        gateway.wait_ready().await;
        gateways.push(gateway);
        metrics.push(format!("http://127.0.0.1:{metrics_port}/metrics"));
    }
    let browser = Browser::new();
    let hops = browser.login(&format!("{public_url}/"), "alice").await;
    assert_eq!(hops.last().unwrap().status, 200, "{hops:#?}");
    let cookie = browser.cookie(&public_url, "portcullis").expect("session cookie");

    let scrape_all = || join_all(metrics.iter().map(|m| Scrape::of(m)));
    let before = scrape_all().await;
    for scrape in &before {
        assert!(scrape.has("portcullis_store_notification_restarts_total", &[]), "the Redis listener's restarts are exported");
        assert!(!scrape.has("portcullis_sessions_active", &[]), "no session count for Redis");
    }
    assert!(dashboard_metric_names().contains("portcullis_store_notification_restarts_total"), "the dashboard shows listener restarts");

    // Slower than a third of the lease (renewed at 1 s), well inside it.
    op.configure(json!({ "token_delay_ms": 1500 })).await;
    tokio::time::sleep(Duration::from_millis(EXPIRED)).await;
    let http = reqwest::Client::new();
    let calls = (0..30).map(|i| {
        let gateway = &gateways[i % 3];
        http.get(format!("{}/api/{i}", gateway.url()))
            .header("cookie", format!("portcullis={cookie}"))
            .header("accept", "application/json")
            .send()
    });
    let statuses: Vec<u16> = join_all(calls).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
    let after = scrape_all().await;
    let total = |name: &str, labels: &[(&str, &str)]| -> f64 { before.iter().zip(&after).map(|(b, a)| delta(b, a, name, labels)).sum() };
    let logs = || gateways.iter().map(Gateway::log_text).collect::<Vec<_>>().join("\n----\n");
    let seen: Vec<_> = upstream.seen().iter().map(|s| s.active).collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{statuses:?}\ngrants started {}, OP {}, upstream saw active {seen:?}\n{}",
        total("portcullis_refresh_grants_started_total", &[]),
        op.stats().await,
        logs()
    );
    assert_eq!(total("portcullis_refresh_grants_started_total", &[]), 1.0, "one grant across three instances");
    assert_eq!(total(GRANTS, &[("outcome", "success")]), 1.0);
    assert_eq!(op.refresh_grants().await, 1);
    assert_eq!(total("portcullis_refresh_waits_total", &[("scope", "remote")]), 2.0, "the two other instances each waited once");
    assert_eq!(total("portcullis_refresh_wait_duration_seconds_count", &[("scope", "remote")]), 2.0);
    assert!(total("portcullis_refresh_lease_contended_total", &[]) >= 2.0);
    assert!(total("portcullis_refresh_lease_renewals_total", &[]) >= 1.0, "the watchdog renewed the lease during the slow call");
    assert_eq!(total("portcullis_refresh_lease_lost_total", &[]), 0.0);
    assert_eq!(total(STORE_OPS, &[("operation", "compare_and_set")]), 1.0, "one write");
    assert_eq!(total(REQUESTS, &[("route", "/api"), ("status", "200")]), 30.0);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(delta(b, a, REQUESTS, &[("route", "/api"), ("status", "200")]), 10.0, "instance {i} answered its share");
        assert_eq!(a.get("portcullis_store_notification_restarts_total", &[]), 0.0, "instance {i}");
    }
    // The remote waits end with the holder's write, after the OP's delay (how long each
    // lasted depends on when its instance's first request arrived).
    let remote_wait_sum = total("portcullis_refresh_wait_duration_seconds_sum", &[("scope", "remote")]);
    assert!(remote_wait_sum > 0.0 && remote_wait_sum < 2.0 * 3.0, "{remote_wait_sum}");
}
