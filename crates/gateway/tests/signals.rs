//! Signals, sent for real (`kill`) to the real binary: SIGTERM drains (requests and refreshes in
//! flight finish, held leases are released, `/readyz` turns 503, new connections are refused,
//! exit 0); SIGHUP reloads the config file (routes, rules, session secrets) without dropping a
//! connection, and refuses a file that does not validate or changes what needs a restart.

mod common;

use std::time::{Duration, Instant};

use portcullis_testkit::{Browser, Gateway, GatewayOptions, Op, OpOptions, Redis, Upstream, free_port};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use common::BIN;

/// The secret testkit's generated config carries.
const SECRET: &str = "or9UtaSFLwIWWCKa2M8yYFbdgSrKZIR1sOASg3as6p0xWE9bgkwx7YJudagrJOcd";
/// Others (`portcullis generate-secret`).
const OTHER_SECRET: &str = "O0GuBMjOa3A0uN1TzfRW6kCQkkI+Msdp38tr+NYL4raDqcBKlF0otGHrEze67/q+";
const THIRD_SECRET: &str = "0pwEdmKUfL6rcWdUE+ZS9b6AwIHM0Vl/IwGA7I/IRzPMDay/E70hslL7jlv+LYtx";

/// An OP, an upstream, Redis, and gateways `a` and `b` on it behind one public URL (a's).
struct Pair {
    op: Op,
    upstream: Upstream,
    _redis: Redis,
    a: Gateway,
    b: Gateway,
    cookie: String,
    /// The access token the upstream saw right after login.
    first_token: String,
}

impl Pair {
    async fn start(op_options: OpOptions, a_extra: &str, b_extra: &str) -> Self {
        Self::start_with(op_options, a_extra, b_extra, SECRET).await
    }

    async fn start_with(op_options: OpOptions, a_extra: &str, b_extra: &str, b_secret: &str) -> Self {
        let redis = Redis::start().await;
        let (a_port, b_port) = (free_port(), free_port());
        let public_url = format!("http://127.0.0.1:{a_port}");
        let op = Op::start(op_options, std::slice::from_ref(&public_url)).await;
        let upstream = Upstream::start(Some(op.direct())).await;
        let options = |port: u16, extra: &str| {
            let mut options = GatewayOptions::new(&op.issuer(), &upstream.url());
            options.port = port;
            options.store = "redis".into();
            options.redis_url = Some(redis.url());
            options.public_url = Some(public_url.clone());
            options.extra = extra.into();
            options
        };
        let mut b_options = options(b_port, b_extra);
        b_options.secret = b_secret.into();
        let a_options = options(a_port, a_extra);
        let (a, b) = tokio::join!(Gateway::start(BIN, &a_options), Gateway::start(BIN, &b_options));
        tokio::join!(a.wait_ready(), b.wait_ready());
        let browser = Browser::new();
        let hops = browser.login(&format!("{public_url}/"), "alice").await;
        assert_eq!(hops.last().unwrap().status, 200, "{hops:#?}");
        let cookie = browser.cookie(&public_url, "portcullis").expect("session cookie");
        let first_token = upstream.last().and_then(|s| s.bearer).expect("the upstream saw the token");
        Self { op, upstream, _redis: redis, a, b, cookie, first_token }
    }

    /// Waits until the OP has received a refresh grant (counted on arrival, before its delay):
    /// the refresh task holds the lease and waits for the answer.
    async fn grant_sent(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.op.refresh_grants().await == 0 {
            assert!(Instant::now() < deadline, "no refresh grant reached the OP:\n{}", self.a.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn call(&self, gateway: &Gateway, path: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("{}{path}", gateway.url()))
            .header("cookie", format!("portcullis={}", self.cookie))
            .send()
            .await
            .unwrap()
    }
}

/// Sends SIGTERM to `gateway` and expects exit status 0 within `within`.
async fn expect_clean_exit(gateway: &mut Gateway, within: Duration) {
    let status = gateway.wait_exit(within).await.unwrap_or_else(|| panic!("still running after {within:?}:\n{}", gateway.log_text()));
    assert!(status.success(), "exit status {status}:\n{}", gateway.log_text());
}

/// A refresh whose waiting request already gave up (`max_wait`) is still running when SIGTERM
/// arrives: the process waits for it, its tokens are stored, and the other instance serves
/// them without a second grant. Without the drain, the process would exit with the OP's answer
/// unread: the rotated refresh token lost, the next refresh refused, the session over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_a_refresh_in_flight_and_stores_its_tokens() {
    let refresh = "\n[refresh]\nmax_wait = \"1s\"\n";
    let mut pair = Pair::start(OpOptions { access_token_ttl: 3, ..OpOptions::default() }, refresh, refresh).await;
    // Past expiry, so the next request waits for a refresh (no background refresh meanwhile).
    tokio::time::sleep(Duration::from_millis(3300)).await;
    pair.op.configure(json!({ "token_delay_ms": 3000 })).await;
    let waiting = {
        let (url, cookie) = (pair.a.url(), pair.cookie.clone());
        tokio::spawn(async move {
            reqwest::Client::new().get(format!("{url}/api/during")).header("cookie", format!("portcullis={cookie}")).send().await
        })
    };
    pair.grant_sent().await;
    pair.a.terminate();
    // The request in flight gets its answer (503 at max_wait, session kept).
    let answered = waiting.await.unwrap().expect("the request in flight is answered");
    assert_eq!(answered.status(), 503);
    expect_clean_exit(&mut pair.a, Duration::from_secs(10)).await;
    pair.op.configure(json!({ "token_delay_ms": 0 })).await;
    let after = pair.call(&pair.b, "/api/after").await;
    assert_eq!(after.status(), 200, "{}", pair.b.log_text());
    let token = pair.upstream.last().and_then(|s| s.bearer).unwrap();
    assert_ne!(token, pair.first_token, "b serves the refreshed token");
    assert_eq!(pair.op.refresh_grants().await, 1, "one grant: a's, stored before it exited");
    let log = plain(&pair.a.log_text());
    assert!(log.contains("refreshes_waited_for=1") && log.contains("refreshes_abandoned=0"), "{log}");
}

/// A refresh still running at the drain deadline is abandoned and its lease released, so the
/// other instance takes over at once instead of waiting out `lease_ttl` (30 s here: without the
/// release, b's request would get 503 at its `max_wait`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_past_the_drain_deadline_is_abandoned_and_its_lease_released() {
    let a = "\n[server]\ndrain_timeout = \"1s\"\n[refresh]\nmax_wait = \"1s\"\nlease_ttl = \"30s\"\n";
    let b = "\n[refresh]\nmax_wait = \"10s\"\nlease_ttl = \"30s\"\n";
    // No rotation: a's grant, answered after it is gone, must not spoil b's.
    let op = OpOptions { access_token_ttl: 3, rotate_refresh_token: false, ..OpOptions::default() };
    let mut pair = Pair::start(op, a, b).await;
    tokio::time::sleep(Duration::from_millis(3300)).await;
    pair.op.configure(json!({ "token_delay_ms": 8000 })).await;
    let waiting = {
        let (url, cookie) = (pair.a.url(), pair.cookie.clone());
        tokio::spawn(async move {
            reqwest::Client::new().get(format!("{url}/api/during")).header("cookie", format!("portcullis={cookie}")).send().await
        })
    };
    pair.grant_sent().await;
    pair.a.terminate();
    let _ = waiting.await;
    expect_clean_exit(&mut pair.a, Duration::from_secs(5)).await;
    pair.op.configure(json!({ "token_delay_ms": 0 })).await;
    let started = Instant::now();
    let after = pair.call(&pair.b, "/api/after").await;
    assert_eq!(after.status(), 200, "{}", pair.b.log_text());
    assert!(started.elapsed() < Duration::from_secs(5), "b waited {:?} for the lease", started.elapsed());
    let log = plain(&pair.a.log_text());
    assert!(log.contains("refreshes_abandoned=1") && log.contains("leases_released=1"), "{log}");
}

/// A gateway with one `allow` route to `upstream`, and a real OP (so `/readyz` is 200 first).
async fn plain_gateway(op: &Op, upstream: &Upstream, server: &str) -> Gateway {
    let mut options = GatewayOptions::new(&op.issuer(), &upstream.url());
    options.routes = vec![("/".into(), upstream.url(), "allow".into())];
    options.extra = format!("\n[server]\n{server}\n");
    let gateway = Gateway::start(BIN, &options).await;
    gateway.wait_ready().await;
    gateway
}

/// SIGTERM: `/readyz` is 503 during `shutdown_delay` while requests are still served; then
/// new connections are refused; a slow request in flight gets its full answer; exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readyz_503_refuses_new_connections_and_answers_requests_in_flight() {
    let op = Op::start(OpOptions::default(), &["http://127.0.0.1:1".into()]).await;
    let upstream = Upstream::start(None).await;
    let mut gateway = plain_gateway(&op, &upstream, "shutdown_delay = \"1500ms\"").await;
    let http = reqwest::Client::new();
    let slow = tokio::spawn(http.get(format!("{}/slow?ms=3000", gateway.url())).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    gateway.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: not ready, still serving (fresh connections, so keep-alive plays no part).
    let fresh = || reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let ready = fresh().get(format!("{}/readyz", gateway.url())).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.json::<Value>().await.unwrap()["draining"], true);
    assert_eq!(fresh().get(format!("{}/other", gateway.url())).send().await.unwrap().status(), 200);
    // After the delay: the listener is closed.
    let addr = gateway.url().trim_start_matches("http://").to_string();
    while TcpStream::connect(&addr).await.is_ok() {
        assert!(signalled.elapsed() < Duration::from_secs(4), "still accepting connections after the shutdown delay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(signalled.elapsed() >= Duration::from_millis(1400), "the listener closed before the shutdown delay ended");
    let slow = slow.await.unwrap().expect("the request in flight is answered");
    assert_eq!(slow.status(), 200);
    assert_eq!(slow.json::<Value>().await.unwrap()["path"], "/slow?ms=3000");
    expect_clean_exit(&mut gateway, Duration::from_secs(5)).await;
}

/// One request on an open HTTP/1.1 keep-alive connection; the JSON body the upstream answered.
async fn get_on(tcp: &mut TcpStream, path: &str) -> (u16, String) {
    get_with(tcp, path, "").await
}

/// [`get_on`] with more header lines (each ending in CRLF).
async fn get_with(tcp: &mut TcpStream, path: &str, headers: &str) -> (u16, String) {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "the connection was closed");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("content-length");
    let mut body = vec![0u8; length];
    tcp.read_exact(&mut body).await.unwrap();
    (status, String::from_utf8(body).unwrap())
}

fn rewrite(gateway: &Gateway, edit: impl FnOnce(String) -> String) {
    let path = gateway.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
}

/// Sends SIGHUP and waits for the reload's `n`-th log line (applied or refused).
async fn reload(gateway: &Gateway, n: usize) -> String {
    gateway.signal("-HUP");
    assert!(gateway.wait_for_log("configuration reload", n, Duration::from_secs(5)).await, "no reload line:\n{}", gateway.log_text());
    let log = plain(&gateway.log_text());
    log.lines().filter(|l| l.contains("configuration reload")).nth(n - 1).unwrap().to_string()
}

/// `text` without its ANSI colour sequences (the log's fields are coloured: `key\e[0m=value`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// SIGHUP with a new upstream: the next request on the same keep-alive connection goes there.
/// A file that does not validate, or that changes what needs a restart, is refused with a
/// log line naming the key, and the running routes keep serving; `check-config` says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_routes_on_open_connections_and_refuses_bad_files() {
    let op = Op::start(OpOptions::default(), &["http://127.0.0.1:1".into()]).await;
    let (first, second) = (Upstream::start(None).await, Upstream::start(None).await);
    let gateway = plain_gateway(&op, &first, "").await;
    let mut tcp = TcpStream::connect(gateway.url().trim_start_matches("http://")).await.unwrap();
    assert_eq!(get_on(&mut tcp, "/one").await.0, 200);
    assert_eq!(first.seen().len(), 1);

    rewrite(&gateway, |t| t.replace(&first.url(), &second.url()));
    let line = reload(&gateway, 1).await;
    assert!(line.contains("configuration reloaded") && line.contains("routes"), "{line}");
    assert_eq!(get_on(&mut tcp, "/two").await.0, 200, "same connection, after the reload");
    assert_eq!(second.seen().iter().map(|s| s.path.clone()).collect::<Vec<_>>(), ["/two"]);
    assert_eq!(first.seen().len(), 1);

    // Invalid: refused naming the key, the running table kept.
    rewrite(&gateway, |t| t.replace(&second.url(), "ftp://127.0.0.1:1"));
    let line = reload(&gateway, 2).await;
    assert!(line.contains("refused") && line.contains("routes[0].upstream"), "{line}");
    let check = std::process::Command::new(BIN).arg("check-config").arg(gateway.config_path()).output().unwrap();
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains("routes[0].upstream"), "check-config agrees: {check:?}");
    assert_eq!(get_on(&mut tcp, "/three").await.0, 200);
    assert_eq!(second.seen().len(), 2, "still the reloaded route");

    // Valid, but the listen address needs a restart: refused, nothing applied (not even the
    // route change next to it).
    rewrite(&gateway, |t| t.replace("ftp://127.0.0.1:1", &first.url()).replace("listen = \"127.0.0.1:", "listen = \"127.0.0.2:"));
    let line = reload(&gateway, 3).await;
    assert!(line.contains("refused") && line.contains("restart") && line.contains("listen"), "{line}");
    assert_eq!(get_on(&mut tcp, "/four").await.0, 200);
    assert_eq!(second.seen().len(), 3, "nothing of the refused file applied");
    assert_eq!(first.seen().len(), 1);
}

/// SIGHUP with new global rules: a logged-in user they refuse gets 403 from then on, and 200
/// again once they admit her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_authorization_rules() {
    let setup = common::Setup::start(common::Store::Memory, OpOptions { access_token_ttl: 300, ..OpOptions::default() }).await;
    let (browser, _) = setup.logged_in("/", "alice").await;
    let get = || browser.http().get(setup.url("/api/x")).send();
    assert_eq!(get().await.unwrap().status(), 200);

    let gateway = &setup.gateway;
    rewrite(gateway, |t| format!("{t}\n[authorization]\nallowed_emails = [\"bob@example.test\"]\n"));
    let line = reload(gateway, 1).await;
    assert!(line.contains("authorization"), "{line}");
    assert_eq!(get().await.unwrap().status(), 403);

    rewrite(gateway, |t| t.replace("\"bob@example.test\"", "\"bob@example.test\", \"alice@example.test\""));
    reload(gateway, 2).await;
    assert_eq!(get().await.unwrap().status(), 200);
}

/// An instance started with a new secret does not know the cookies signed with the old one;
/// SIGHUP with the old one in `previous_secrets` makes them valid there (Redis holds the
/// session). A new current secret that drops the one in use without listing it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_previous_secrets_makes_old_cookies_valid() {
    let pair = Pair::start_with(OpOptions { access_token_ttl: 300, ..OpOptions::default() }, "", "", OTHER_SECRET).await;
    assert_eq!(pair.call(&pair.a, "/api/a").await.status(), 200);
    assert_eq!(pair.call(&pair.b, "/api/before").await.status(), 401, "b's secret is another");

    rewrite(&pair.b, |t| t.replace("[session]\n", &format!("[session]\nprevious_secrets = [\"{SECRET}\"]\n")));
    let line = reload(&pair.b, 1).await;
    assert!(line.contains("configuration reloaded") && line.contains("session.previous_secrets"), "{line}");
    let after = pair.call(&pair.b, "/api/after").await;
    assert_eq!(after.status(), 200, "{}", pair.b.log_text());
    assert_eq!(after.json::<Value>().await.unwrap()["user"], "alice");

    rewrite(&pair.b, |t| t.replace(OTHER_SECRET, THIRD_SECRET));
    let line = reload(&pair.b, 2).await;
    assert!(line.contains("refused") && line.contains("session.secret"), "{line}");
    assert_eq!(pair.call(&pair.b, "/api/still").await.status(), 200);
}

/// The gateway remembers the cookies it verified (no MAC check per request): a SIGHUP that
/// drops the secret a cookie was signed with must still refuse it from the next request on,
/// on the very keep-alive connection where it was verified and remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_dropping_a_previous_secret_refuses_its_cookies_on_open_connections() {
    let pair = Pair::start_with(OpOptions { access_token_ttl: 300, ..OpOptions::default() }, "", "", OTHER_SECRET).await;
    rewrite(&pair.b, |t| t.replace("[session]\n", &format!("[session]\nprevious_secrets = [\"{SECRET}\"]\n")));
    assert!(reload(&pair.b, 1).await.contains("configuration reloaded"));
    let mut tcp = TcpStream::connect(pair.b.url().trim_start_matches("http://")).await.unwrap();
    let cookie = format!("Cookie: portcullis={}\r\n", pair.cookie);
    for path in ["/api/one", "/api/two"] {
        let (status, body) = get_with(&mut tcp, path, &cookie).await;
        assert_eq!(status, 200, "{body}");
    }

    rewrite(&pair.b, |t| t.replace(&format!("previous_secrets = [\"{SECRET}\"]\n"), ""));
    let line = reload(&pair.b, 2).await;
    assert!(line.contains("configuration reloaded") && line.contains("session.previous_secrets"), "{line}");
    let (status, body) = get_with(&mut tcp, "/api/three", &cookie).await;
    assert_eq!(status, 401, "a cookie of a dropped secret served: {body}");
    assert_eq!(pair.call(&pair.b, "/api/new-connection").await.status(), 401);
    assert_eq!(pair.call(&pair.a, "/api/a").await.status(), 200, "the session itself lives on where its secret is known");
}
