//! Refresh storm (issue 3): N sessions whose access tokens expire together, C concurrent
//! requests each, over 3 gateway processes sharing one Redis behind one public URL.
//!
//! ```sh
//! cargo bench -p portcullis-gateway --bench refresh_storm
//! ```
//!
//! Steps: start redis-server, the test OP (`tests/op`, refresh-token rotation on), a
//! non-introspecting upstream and 3 release-built gateways; log in N users (each with its own
//! browser, `STORM_LOGIN_PARALLEL` at a time) with access-token lifetime T; touch nothing until
//! T + 1 s after the last login, so every token has expired; then send the N×C requests, at most
//! `STORM_INFLIGHT` in flight, each session's requests spread round-robin over the instances.
//! Right after, the same N×C requests again as a baseline (tokens fresh, no refresh).
//!
//! Environment (defaults in brackets):
//! - `STORM_SESSIONS` [1000]: sessions (users) N
//! - `STORM_CONCURRENCY` [20]: requests per session C
//! - `STORM_INFLIGHT` [256]: requests in flight at most
//! - `STORM_TOKEN_TTL` [60]: access-token lifetime T at the OP, in seconds
//! - `STORM_LOGIN_PARALLEL` [16]: logins in flight at most
//! - `STORM_ORDER` [session]: `session` sends each session's C requests back to back (they are
//!   concurrent, so they exercise the single flight and the cross-instance lease; about
//!   INFLIGHT/C sessions refresh at a time); `round` sends one request of every session, then the
//!   next round (up to INFLIGHT refreshes at once at the OP)
//! - `STORM_GATEWAY_BIN` [the `portcullis` binary cargo built for this bench]: run another
//!   gateway binary instead (e.g. a copy, when other builds share the target dir)
//! - `STORM_GATEWAY_LOG` [info]: the gateways' `PORTCULLIS_LOG` filter
//! - `STORM_KEEP_LOGS` [unset]: a directory to copy the gateways' logs to, and to write every
//!   request's figures to (`storm.csv`, `baseline.csv`: session, request, instance, start and
//!   latency in ms, status)
//! - `STORM_REDIS` [single]: `single` runs one redis-server; `cluster` a 3-master Redis Cluster
//!   (`redis+cluster://` seeds, ACL user), sessions spread over its slots by their `{key}` tag
//! - `STORM_OP_STORE` [unbounded]: `unbounded` replaces the 1000-entry LRU that backs
//!   oidc-provider's in-memory adapter with a plain map (see below); `stock` keeps it
//!
//! The test OP keeps everything in oidc-provider's `MemoryAdapter`, one LRU of 1000 entries
//! for all models. A login writes about ten (session, interaction, code, grant, tokens, …), so
//! beyond 150–300 sessions the OP silently evicts grants and refresh tokens, answers
//! their refresh with `invalid_grant`, and the gateway ends those sessions. Nothing in
//! `tests/op/provider.mjs` sets the size, so by default this benchmark re-runs itself with
//! `NODE_OPTIONS=--import=<data: URL>`: a preload that swaps the LRU's methods for an
//! unbounded map (expiry kept) in the OP process. `STORM_OP_STORE=stock` shows the stock
//! behaviour.
//!
//! Passes when the OP received exactly N refresh grants during the storm, every request of both
//! phases got a 200, and the N access tokens forwarded during the storm are all active at the OP
//! (introspected after the storm: a refresh token replayed under rotation would have revoked its
//! grant); otherwise prints FAIL and exits with status 1.
//!
//! Under `cargo test --benches` (no `--bench` argument) it only prints that it was skipped.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use portcullis_testkit::{Browser, Gateway, GatewayOptions, Op, OpOptions, Redis, RedisCluster, Upstream, free_port};
use serde_json::Value;
use tokio::sync::Semaphore;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const INSTANCES: usize = 3;
/// Per request: a request still unanswered after this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Whole login phase, whole storm or baseline phase: bounded in time whatever happens.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Session,
    Round,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpStore {
    Unbounded,
    Stock,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    sessions: usize,
    concurrency: usize,
    inflight: usize,
    token_ttl: u64,
    login_parallel: usize,
    order: Order,
    op_store: OpStore,
    cluster: bool,
}

fn env_number(name: &str, default: u64, min: u64) -> u64 {
    let value = match std::env::var(name) {
        Ok(raw) if !raw.trim().is_empty() => raw.trim().parse().unwrap_or_else(|_| panic!("{name} must be a whole number, got {raw:?}")),
        _ => default,
    };
    assert!(value >= min, "{name} must be at least {min}, got {value}");
    value
}

impl Settings {
    fn from_env() -> Self {
        let order = match std::env::var("STORM_ORDER").as_deref() {
            Err(_) | Ok("") | Ok("session") => Order::Session,
            Ok("round") => Order::Round,
            Ok(other) => panic!("STORM_ORDER must be \"session\" or \"round\", got {other:?}"),
        };
        let op_store = match std::env::var("STORM_OP_STORE").as_deref() {
            Err(_) | Ok("") | Ok("unbounded") => OpStore::Unbounded,
            Ok("stock") => OpStore::Stock,
            Ok(other) => panic!("STORM_OP_STORE must be \"unbounded\" or \"stock\", got {other:?}"),
        };
        Self {
            sessions: env_number("STORM_SESSIONS", 1000, 1) as usize,
            concurrency: env_number("STORM_CONCURRENCY", 20, 1) as usize,
            inflight: env_number("STORM_INFLIGHT", 256, 1) as usize,
            // The gateway treats a token with 1 s left as expired and refreshes in the background
            // in the last quarter of its life; below 5 s a login could not even land on its page.
            token_ttl: env_number("STORM_TOKEN_TTL", 60, 5),
            login_parallel: env_number("STORM_LOGIN_PARALLEL", 16, 1) as usize,
            order,
            op_store,
            cluster: match std::env::var("STORM_REDIS").as_deref() {
                Err(_) | Ok("") | Ok("single") => false,
                Ok("cluster") => true,
                Ok(other) => panic!("STORM_REDIS must be \"single\" or \"cluster\", got {other:?}"),
            },
        }
    }

    fn requests(&self) -> usize {
        self.sessions * self.concurrency
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("refresh_storm: skipped; run it with `cargo bench -p portcullis-gateway --bench refresh_storm`");
        return;
    }
    let settings = Settings::from_env();
    if settings.op_store == OpStore::Unbounded && std::env::var_os(CHILD_MARK).is_none() {
        // The OP inherits NODE_OPTIONS from this process; setting it here would need
        // `std::env::set_var` (unsafe, and unsafe code is forbidden), so run again with it.
        let mut node_options = std::env::var("NODE_OPTIONS").unwrap_or_default();
        node_options.push_str(&format!(" --import={}", op_store_preload()));
        let status = std::process::Command::new(std::env::current_exe().expect("own path"))
            .args(std::env::args_os().skip(1))
            .env("NODE_OPTIONS", node_options.trim_start())
            .env(CHILD_MARK, "1")
            .status()
            .expect("run the benchmark with NODE_OPTIONS");
        std::process::exit(status.code().unwrap_or(1));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    // Every child process (redis-server, node, gateways) is killed when `run` drops it, before
    // the exit status is decided.
    let passed = runtime.block_on(run(settings));
    drop(runtime);
    if !passed {
        std::process::exit(1);
    }
}

/// Set in the re-run that carries the OP preload (not `PORTCULLIS_*`: the gateways inherit
/// the environment and read that prefix as configuration).
const CHILD_MARK: &str = "REFRESH_STORM_CHILD";

/// A `data:` URL module for `node --import`: oidc-provider's LRU (the store of its in-memory
/// adapter) becomes an unbounded map that still honours each entry's expiry.
fn op_store_preload() -> String {
    let lru = portcullis_testkit::repo_root().join("tests/op/node_modules/oidc-provider/lib/helpers/lru.js");
    assert!(lru.exists(), "{} is missing: run scripts/install-test-deps.sh, or set STORM_OP_STORE=stock", lru.display());
    let source = format!(
        r#"import LRU from "file://{lru}";
const maps = new WeakMap();
const map = (lru) => {{ let m = maps.get(lru); if (!m) {{ m = new Map(); maps.set(lru, m); }} return m; }};
const live = (lru, key) => {{
  const e = map(lru).get(key);
  if (e && e.expiry !== undefined && e.expiry <= Date.now()) {{ map(lru).delete(key); return undefined; }}
  return e;
}};
LRU.prototype.get = function get(key) {{ return live(this, key)?.value; }};
LRU.prototype.has = function has(key) {{ return live(this, key) !== undefined; }};
LRU.prototype.set = function set(key, value, {{ maxAge }} = {{}}) {{
  const expiry = typeof maxAge === "number" && maxAge !== Infinity ? Date.now() + maxAge : undefined;
  map(this).set(key, {{ value, expiry }});
  return this;
}};
LRU.prototype.delete = function del(key) {{ return map(this).delete(key); }};
LRU.prototype.clear = function clear() {{ map(this).clear(); }};
Object.defineProperty(LRU.prototype, "size", {{ get() {{ return map(this).size; }} }});
"#,
        lru = lru.display()
    );
    // Percent-encode all but unreserved characters: NODE_OPTIONS splits on spaces, and `#`
    // would start a fragment.
    let mut url = String::from("data:text/javascript,");
    for byte in source.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            url.push(byte as char);
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url
}

/// Size and modification time (Unix seconds) of a file: enough to notice that a shared
/// target dir's binary was rebuilt (from another checkout, say) under this run.
fn binary_identity(path: &str) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some((meta.len(), modified))
}

/// What one phase (storm or baseline) measured.
struct Phase {
    /// Latency of every request that got an answer, sorted.
    latencies: Vec<Duration>,
    /// Count by status; 0 for no answer (connection error, timeout).
    statuses: BTreeMap<u16, usize>,
    /// First request sent until the last answer read.
    wall: Duration,
}

impl Phase {
    fn ok(&self) -> usize {
        self.statuses.get(&200).copied().unwrap_or(0)
    }

    fn throughput(&self) -> f64 {
        let answered: usize = self.statuses.values().sum();
        answered as f64 / self.wall.as_secs_f64()
    }

    /// Nearest-rank percentile, in milliseconds.
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil().max(1.0) as usize;
        ms(self.latencies[rank - 1])
    }

    fn max(&self) -> f64 {
        self.latencies.last().map_or(f64::NAN, |d| ms(*d))
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<9} {requests} requests in {wall:.2} s = {rps:.0} req/s; latency p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; statuses {statuses:?}",
            requests = self.statuses.values().sum::<usize>(),
            wall = self.wall.as_secs_f64(),
            rps = self.throughput(),
            p50 = self.percentile(50.0),
            p99 = self.percentile(99.0),
            max = self.max(),
            statuses = self.statuses,
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(settings: Settings) -> bool {
    let n = settings.sessions;
    println!(
        "refresh storm: {n} sessions x {c} requests = {total}, {INSTANCES} gateways (redis store: {topology}), at most {inflight} in flight, order {order:?}, access token ttl {ttl} s",
        c = settings.concurrency,
        total = settings.requests(),
        inflight = settings.inflight,
        order = settings.order,
        ttl = settings.token_ttl,
        topology = if settings.cluster { "3-master cluster" } else { "single node" },
    );
    println!(
        "OP store: {}",
        match settings.op_store {
            OpStore::Unbounded => "unbounded (oidc-provider's 1000-entry LRU replaced by a preload)",
            OpStore::Stock => "stock (oidc-provider's 1000-entry LRU: expect evicted grants beyond 150-300 sessions)",
        }
    );
    let bin = std::env::var("STORM_GATEWAY_BIN").unwrap_or_else(|_| BIN.to_string());
    let identity = binary_identity(&bin);
    let age = identity
        .and_then(|(_, mtime)| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs().checked_sub(mtime));
    println!("gateway binary: {bin} ({} bytes, built {} s ago)", identity.map_or(0, |i| i.0), age.map_or(-1, |a| a as i64));
    if !bin.contains("/release/") && std::env::var_os("STORM_GATEWAY_BIN").is_none() {
        println!("warning: the gateway binary is not a release build; run this under `cargo bench`");
    }

    // --- setup ----------------------------------------------------------------------------
    // Kept alive until the end of `run`: dropping them kills the servers.
    let (_single, _cluster, redis_url) = if settings.cluster {
        let cluster = RedisCluster::start(3, 0).await;
        let url = cluster.url();
        (None, Some(cluster), url)
    } else {
        let redis = Redis::start().await;
        let url = redis.url();
        (Some(redis), None, url)
    };
    let ports: Vec<u16> = (0..INSTANCES).map(|_| free_port()).collect();
    let public_url = format!("http://127.0.0.1:{}", ports[0]);
    let op_options = OpOptions { access_token_ttl: settings.token_ttl, rotate_refresh_token: true, ..OpOptions::default() };
    let op = Op::start(op_options, std::slice::from_ref(&public_url)).await;
    // No introspection: the upstream must not load the OP during the measurement.
    let upstream = Upstream::start(None).await;
    let mut gateways = Vec::new();
    for port in &ports {
        let mut options = GatewayOptions::new(&op.issuer(), &upstream.url());
        options.port = *port;
        options.store = "redis".into();
        options.redis_url = Some(redis_url.clone());
        options.public_url = Some(public_url.clone());
        // Production log level (the testkit's default adds portcullis=debug).
        options.env = vec![("PORTCULLIS_LOG".into(), std::env::var("STORM_GATEWAY_LOG").unwrap_or_else(|_| "info".into()))];
        let gateway = Gateway::start(&bin, &options).await;
        gateway.wait_ready().await;
        gateways.push(gateway);
    }
    let urls: Vec<String> = gateways.iter().map(Gateway::url).collect();
    let control = reqwest::Client::new();

    // --- logins ---------------------------------------------------------------------------
    let login_started = Instant::now();
    let logins = futures_util::stream::iter(0..n)
        .map(|i| {
            let public_url = public_url.clone();
            async move {
                // One browser (cookie jar, connection pool) per user, dropped after its login.
                let browser = Browser::new();
                let hops = browser.login(&format!("{public_url}/"), &format!("storm-user-{i:05}")).await;
                let last = hops.last().expect("at least one hop");
                assert_eq!(last.status, 200, "login {i} did not land on the page: {last:?}");
                browser.cookie(&public_url, "portcullis").unwrap_or_else(|| panic!("login {i}: no session cookie"))
            }
        })
        .buffered(settings.login_parallel)
        .collect::<Vec<String>>();
    let Ok(cookies) = tokio::time::timeout(PHASE_TIMEOUT, logins).await else {
        println!("FAIL: {n} logins took longer than {PHASE_TIMEOUT:?}");
        return false;
    };
    let last_login = Instant::now();
    let login_time = last_login - login_started;
    let code_grants = op.stats().await["grants"]["authorization_code"].as_u64().unwrap_or(0);
    println!(
        "logins:   {n} in {:.2} s ({:.1}/s, {} at a time); authorization_code grants at the OP: {code_grants}",
        login_time.as_secs_f64(),
        n as f64 / login_time.as_secs_f64(),
        settings.login_parallel,
    );
    let distinct_cookies: HashSet<&String> = cookies.iter().collect();
    assert_eq!(distinct_cookies.len(), n, "every login made its own session");

    // --- wait until every token has expired ----------------------------------------------
    // The last token was issued before `last_login`; the gateway treats a token with 1 s or
    // less left as expired, so T after the last login all are, and 1 s more is margin.
    let storm_at = last_login + Duration::from_secs(settings.token_ttl + 1);
    println!("waiting {:.1} s until every access token has expired", storm_at.saturating_duration_since(Instant::now()).as_secs_f64());
    tokio::time::sleep_until(storm_at.into()).await;
    let reset = control.post(format!("{}/__test/reset", op.direct())).send().await.expect("OP reset");
    assert!(reset.status().is_success(), "OP counters reset");
    upstream.clear();

    // --- storm ----------------------------------------------------------------------------
    let Some(storm) = fire(&settings, &urls, &cookies, "storm").await else {
        println!("FAIL: the storm took longer than {PHASE_TIMEOUT:?}");
        return false;
    };
    let storm_stats = op.stats().await;
    let (storm_seen, storm_with_bearer, storm_tokens) = {
        let seen = upstream.seen();
        let with_bearer = seen.iter().filter(|s| s.bearer.is_some()).count();
        let distinct: HashSet<String> = seen.iter().filter_map(|s| s.bearer.clone()).collect();
        upstream.clear();
        (seen.len(), with_bearer, distinct)
    };
    // The upstream does not introspect (it would load the OP during the measurement), so ask
    // the OP now whether the tokens forwarded during the storm are alive: a refresh token
    // presented twice under rotation makes oidc-provider revoke the whole grant.
    let introspected = Instant::now();
    let active = futures_util::stream::iter(storm_tokens.iter())
        .map(|token| op.introspect(token))
        .buffer_unordered(16)
        .filter(|active| std::future::ready(*active))
        .count()
        .await;
    let introspected = introspected.elapsed();

    // --- baseline: the same requests, tokens fresh -----------------------------------------
    let Some(baseline) = fire(&settings, &urls, &cookies, "baseline").await else {
        println!("FAIL: the baseline took longer than {PHASE_TIMEOUT:?}");
        return false;
    };
    let after_stats = op.stats().await;
    let baseline_distinct = upstream.seen().iter().filter_map(|s| s.bearer.clone()).collect::<HashSet<_>>().len();
    upstream.clear();

    // --- report ---------------------------------------------------------------------------
    let count = |stats: &Value, path: &[&str]| path.iter().fold(stats, |v, k| &v[*k]).as_u64().unwrap_or(0);
    let storm_grants = count(&storm_stats, &["grants", "refresh_token"]);
    let baseline_grants = count(&after_stats, &["grants", "refresh_token"]).saturating_sub(storm_grants);
    let token = &storm_stats["token_ms_by_grant"]["refresh_token"];
    let token_p50 = token["p50"].as_f64().unwrap_or(f64::NAN);
    let token_p99 = token["p99"].as_f64().unwrap_or(f64::NAN);

    println!();
    storm.print("storm:");
    println!(
        "          upstream saw {} requests, {} with a bearer, {} distinct access tokens (one per session expected: {n})",
        storm_seen,
        storm_with_bearer,
        storm_tokens.len()
    );
    println!(
        "          active at the OP afterwards (introspection, {:.1} s): {active} of {}",
        introspected.as_secs_f64(),
        storm_tokens.len()
    );
    println!(
        "token endpoint (refresh_token, at the OP): count {}, p50 {token_p50:.1} ms, p99 {token_p99:.1} ms, max {:.1} ms; outcomes {}",
        token["count"],
        token["max"].as_f64().unwrap_or(f64::NAN),
        storm_stats["grant_outcomes"],
    );
    baseline.print("baseline:");
    println!("          {baseline_distinct} distinct access tokens at the upstream; refresh grants during the baseline: {baseline_grants}");
    println!(
        "storm/baseline: p50 x{:.2}, p99 x{:.2}, throughput x{:.2}",
        storm.percentile(50.0) / baseline.percentile(50.0),
        storm.percentile(99.0) / baseline.percentile(99.0),
        storm.throughput() / baseline.throughput(),
    );
    println!(
        "total duration: {:.1} s (logins {:.1} s, then the wait for expiry)",
        login_started.elapsed().as_secs_f64(),
        login_time.as_secs_f64()
    );
    for (i, gateway) in gateways.iter().enumerate() {
        let log = gateway.log_text();
        let warnings = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).count();
        let ended = log.lines().filter(|l| l.contains("session ended")).count();
        println!("gateway {i}: {ended} sessions ended (invalid_grant), {warnings} WARN/ERROR log lines");
        if let Some(first) = log.lines().find(|l| l.contains("WARN") || l.contains("ERROR")) {
            println!("  first: {first}");
        }
        if let Ok(dir) = std::env::var("STORM_KEEP_LOGS") {
            let path = std::path::Path::new(&dir).join(format!("gateway-{i}.log"));
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &log)).expect("keep the gateway log");
            println!("  log kept in {}", path.display());
        }
    }

    if binary_identity(&bin) != identity {
        println!("warning: {bin} was replaced during the run (another build into the same target dir?)");
    }

    let total = settings.requests();
    let checks = [
        (storm_grants == n as u64, format!("refresh grants at the OP during the storm: {storm_grants} (sessions: {n})")),
        (storm.ok() == total, format!("storm: {} of {total} requests answered 200", storm.ok())),
        (
            active == storm_tokens.len() && active == n,
            format!("access tokens forwarded during the storm: {} distinct, {active} active at the OP (sessions: {n})", storm_tokens.len()),
        ),
        (baseline.ok() == total, format!("baseline: {} of {total} requests answered 200", baseline.ok())),
    ];
    println!();
    for (ok, what) in &checks {
        println!("{} {what}", if *ok { "PASS" } else { "FAIL" });
    }
    if baseline_grants != 0 {
        println!(
            "note: the baseline caused {baseline_grants} refresh grants (tokens were inside the refresh leeway: lengthen STORM_TOKEN_TTL)"
        );
    }
    checks.iter().all(|(ok, _)| *ok)
}

/// Sends every session's requests, at most `inflight` at once, and measures each one from
/// sending until its body is read.
async fn fire(settings: &Settings, urls: &[String], cookies: &[String], tag: &str) -> Option<Phase> {
    let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("client");
    let (n, c) = (cookies.len(), settings.concurrency);
    let jobs: Vec<(usize, usize)> = match settings.order {
        Order::Session => (0..n).flat_map(|s| (0..c).map(move |k| (s, k))).collect(),
        Order::Round => (0..c).flat_map(|k| (0..n).map(move |s| (s, k))).collect(),
    };
    let semaphore = Arc::new(Semaphore::new(settings.inflight));
    let phase = async {
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(jobs.len());
        for (session, k) in jobs {
            let permit = semaphore.clone().acquire_owned().await.expect("semaphore open");
            // Round-robin per session, so each session's requests reach every instance.
            let url = format!("{}/api/{tag}/{session}/{k}", urls[(session + k) % urls.len()]);
            let request = http.get(url).header("cookie", format!("portcullis={}", cookies[session])).header("accept", "application/json");
            let instance = (session + k) % urls.len();
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let offset = sent - started;
                let status = match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        if response.bytes().await.is_ok() { status } else { 0 }
                    }
                    Err(_) => 0,
                };
                let latency = sent.elapsed();
                drop(permit);
                (status, latency, format!("{session},{k},{instance},{:.3},{:.3},{status}\n", ms(offset), ms(latency)))
            }));
        }
        let mut latencies = Vec::with_capacity(tasks.len());
        let mut statuses = BTreeMap::new();
        let mut csv = String::from("session,request,instance,start_ms,latency_ms,status\n");
        for task in tasks {
            let (status, latency, row) = task.await.expect("request task");
            csv.push_str(&row);
            *statuses.entry(status).or_insert(0) += 1;
            if status != 0 {
                latencies.push(latency);
            }
        }
        latencies.sort_unstable();
        if let Ok(dir) = std::env::var("STORM_KEEP_LOGS") {
            let path = std::path::Path::new(&dir).join(format!("{tag}.csv"));
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &csv)).expect("keep the per-request figures");
        }
        Phase { latencies, statuses, wall: started.elapsed() }
    };
    tokio::time::timeout(PHASE_TIMEOUT, phase).await.ok()
}
