//! Sessions at rest in Redis, end to end: after a real login and a real refresh through the
//! gateway, a dump of Redis (what a replica, a backup or `redis-cli` on the network yields)
//! holds no token and nothing that says who the user is.

mod common;

use std::time::Duration;

use common::{Setup, Store};
use portcullis_testkit::OpOptions;

/// Every key and value, as `redis-cli --scan` and `redis-cli --raw GET` give them.
fn redis_dump(url: &str) -> Vec<(String, Vec<u8>)> {
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli").arg("-u").arg(url).args(args).output().expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let keys = String::from_utf8(cli(&["--scan"])).unwrap();
    keys.lines().filter(|k| !k.is_empty()).map(|k| (k.to_string(), cli(&["--raw", "GET", k]))).collect()
}

/// Base64 (standard or URL-safe alphabet, no padding), enough to look for encoded secrets.
fn base64(data: &[u8], url_safe: bool) -> String {
    let alphabet: &[u8; 64] = if url_safe {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// `secret` in clear, and inside base64 at each alignment (edges trimmed) when long enough.
fn spellings(secret: &str) -> Vec<Vec<u8>> {
    let mut out = vec![secret.as_bytes().to_vec()];
    if secret.len() >= 12 {
        for url_safe in [false, true] {
            for skew in 0..3 {
                let data = [vec![0u8; skew], secret.as_bytes().to_vec()].concat();
                let encoded = base64(&data, url_safe);
                out.push(encoded.as_bytes()[4..encoded.len() - 4].to_vec());
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_no_token_nor_identity_after_login_and_refresh() {
    let s = Setup::start(Store::Redis, OpOptions { access_token_ttl: 2, ..OpOptions::default() }).await;
    let (browser, _) = s.logged_in("/api/first", "alice").await;
    let first = s.upstream.last().and_then(|seen| seen.bearer).expect("the upstream got a token");
    let info: serde_json::Value = browser.http().get(s.url("/oauth2/userinfo")).send().await.unwrap().json().await.unwrap();

    // Past the token's lifetime: the next request refreshes (a CAS of the record).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let r = browser.http().get(s.url("/api/second")).header("accept", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", s.gateway.log_text());
    let second = s.upstream.last().and_then(|seen| seen.bearer).expect("the upstream got a token");
    assert_ne!(first, second, "the token was refreshed");
    assert!(s.op.refresh_grants().await >= 1);

    let mut secrets = vec![("first access token", first), ("refreshed access token", second)];
    for claim in ["sub", "email", "user"] {
        if let Some(value) = info[claim].as_str() {
            secrets.push((claim, value.to_string()));
        }
    }
    // Whatever the values, a record in clear (or merely encoded) would spell its field names.
    secrets.extend(["access_token", "refresh_token", "id_token", "identity"].map(|f| ("a record field name", f.to_string())));

    let dump = redis_dump(&s.redis.as_ref().unwrap().url());
    let records: Vec<_> = dump.iter().filter(|(k, _)| k.ends_with(":session")).collect();
    assert_eq!(records.len(), 1, "one session record: {:?}", dump.iter().map(|(k, _)| k).collect::<Vec<_>>());
    let (_, record) = records[0];
    let sep = record.iter().position(|&b| b == b'|').expect("version prefix");
    assert!(record[..sep].iter().all(u8::is_ascii_digit) && record[sep + 1..].starts_with(b"s1:"), "a sealed record");
    for (name, value) in &dump {
        for (what, secret) in &secrets {
            for spelling in spellings(secret) {
                assert!(!contains(value, &spelling), "{name} gives away the {what}");
            }
        }
    }
}

/// A record altered in Redis (or copied there from another session) never serves a request:
/// the browser is sent to log in again (not trapped in `503`s, which would repeat forever on
/// the same bytes), and the gateway says why in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_record_sends_the_browser_to_log_in_again() {
    let s = Setup::start(Store::Redis, OpOptions::default()).await;
    let (browser, _) = s.logged_in("/api/first", "alice").await;
    let url = s.redis.as_ref().unwrap().url();
    let (key, mut value) = redis_dump(&url).into_iter().find(|(k, _)| k.ends_with(":session")).expect("a session record");
    value.pop(); // the newline `redis-cli --raw` adds
    let at = value.len() - 20;
    value[at] ^= 1;
    let mut set = std::process::Command::new("redis-cli")
        .args(["-u", &url, "-x", "SET", &key])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut set.stdin.take().unwrap(), &value).unwrap();
    assert!(set.wait().unwrap().success());

    s.upstream.clear();
    let r = browser.http().get(s.url("/api/after")).header("accept", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 401, "treated as no session: {}", s.gateway.log_text());
    assert!(s.upstream.seen().is_empty(), "nothing reached the upstream");
    assert!(s.gateway.log_text().contains("session record refused"), "{}", s.gateway.log_text());
    // The OP still knows the browser (single sign-on): usually no login form this time.
    let mut hops = browser.follow(&s.url("/api/again")).await;
    if hops.last().unwrap().body.contains("<form") {
        hops = browser.login(&s.url("/api/again"), "alice").await;
    }
    assert_eq!(hops.last().unwrap().status, 200, "logging in again works: {hops:#?}");
    let records: Vec<_> = redis_dump(&url).into_iter().filter(|(k, _)| k.ends_with(":session")).map(|(k, _)| k).collect();
    assert!(records.len() == 1 && records[0] != key, "the new login replaced the altered record: {records:?}");
}
