//! One canonical path (issue 7, item 1): hostile spellings of a path against a gateway with
//! `/app` (login), `/admin` (deny) and `/` (allow). Each row is sent as raw bytes over TCP (a
//! client library would normalize dot segments and escapes before they left), and the upstream
//! records exactly what reached it.
//!
//! Without canonicalization, every `Deny` row below that is not `/admin` itself reaches the
//! upstream through the `allow` route as it was spelled, and lenient upstreams read it as
//! `/admin/…`.

mod common;

use std::time::Duration;

use common::{Setup, Store};
use portcullis_testkit::{Browser, OpOptions};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// What the gateway must answer.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 400 from the canonicalizer, with its explanation; nothing forwarded.
    Refused,
    /// 400 from the HTTP parser itself (bytes that are not a request target); nothing forwarded.
    Malformed,
    /// The `/admin` route's `deny`: 401, nothing forwarded.
    Deny,
    /// The `/app` route's `login`: 302 to the OP, nothing forwarded.
    Login,
    /// The `/` route's `allow`: 200, and the upstream received exactly this path and query.
    Allow(&'static str),
}

use Expect::*;

/// Raw request target → what happens. Matching is case-sensitive: `/ADMIN` is not `/admin`.
const HOSTILE: &[(&str, Expect)] = &[
    // Controls: the spellings the policy is written for.
    ("/admin", Deny),
    ("/admin/x", Deny),
    ("/app", Login),
    ("/pub/x", Allow("/pub/x")),
    // Repeated slashes.
    ("//admin/x", Deny),
    ("///admin", Deny),
    ("/admin//x", Deny),
    ("//app", Login),
    // Dot segments, plain.
    ("/./admin", Deny),
    ("/public/../admin", Deny),
    ("/pub/./../admin/x", Deny),
    ("/admin/../app/x", Login),
    ("/admin/..", Allow("/")),
    ("/pub/x/.", Allow("/pub/x/")),
    ("/../admin", Refused),
    ("/pub/../../admin", Refused),
    // Dot segments, encoded: refused, not decoded into a climb.
    ("/%2e%2e/admin", Refused),
    ("/x/%2E./admin", Refused),
    ("/x/.%2e/admin", Refused),
    ("/%2e/admin", Refused),
    ("/x/%252e%252e/admin", Refused),
    ("/x/%C0%AE%C0%AE/admin", Refused),
    // Percent-encoded unreserved characters are the characters themselves.
    ("/%61dmin", Deny),
    ("/%61%64%6D%69%6E/x", Deny),
    ("/%61pp", Login),
    ("/admin/%7euser", Deny),
    ("/pub/%7euser", Allow("/pub/~user")),
    ("/pub/%2Ehidden", Allow("/pub/.hidden")),
    // Encoded slashes and backslashes, raw backslashes.
    ("/admin%2fx", Refused),
    ("/admin%2Fx", Refused),
    ("/..%2fadmin", Refused),
    ("/pub/..%2f..%2fadmin", Refused),
    ("/admin%5cx", Refused),
    ("/\\admin", Refused),
    ("/admin\\x", Refused),
    ("/pub\\..\\admin", Refused),
    // Path parameters (refused by default: Tomcat and Spring strip them before matching).
    ("/admin;x/", Refused),
    ("/..;/admin", Refused),
    ("/pub;jsessionid=1/x", Refused),
    ("/admin%3bx", Refused),
    // NUL and controls, encoded (ours) and raw (the HTTP parser's).
    ("/%00", Refused),
    ("/admin%00.html", Refused),
    ("/a%0d%0aX:1", Refused),
    ("/a%0AX:1", Refused),
    ("/a%7f", Refused),
    ("/a%09", Refused),
    ("/a\x7fb", Malformed),
    ("/a\x01b", Malformed),
    // Escapes that are not escapes, or that end the path for a decoding reader.
    ("/admin%", Refused),
    ("/admin%zz", Refused),
    ("/admin%2", Refused),
    ("/admin%3Fx", Refused),
    ("/admin%23x", Refused),
    // Prefixes match case-insensitively (Express, koa-router, IIS fold case): fail closed.
    ("/ADMIN", Deny),
    ("/%41DMIN", Deny),
    ("/Admin/x", Deny),
    ("/aPP/x", Login),
    // One spelling for everything else: upper-case hex, non-ASCII encoded.
    ("/pub/%c3%a9", Allow("/pub/%C3%A9")),
    ("/pub/\u{e9}", Allow("/pub/%C3%A9")),
    ("/pub/a%3ab%40c", Allow("/pub/a:b@c")),
    ("/pub/a\"b|c", Allow("/pub/a%22b%7Cc")),
    ("/pub/x/", Allow("/pub/x/")),
    // The query is carried over untouched and never read as path.
    ("/pub?next=/../admin&x=%2F%2e%2e", Allow("/pub?next=/../admin&x=%2F%2e%2e")),
    ("/pub/../pub2/?a=%61", Allow("/pub2/?a=%61")),
    ("/admin?/../pub", Deny),
    // Absolute-form targets: the path inside is what counts, canonicalized like any other.
    ("http://evil.example//admin/x", Deny),
    ("http://evil.example/pub/../admin", Deny),
    ("http://evil.example/pub/./x?q=1", Allow("/pub/x?q=1")),
    ("*", Refused),
];

/// One request as raw bytes; returns the status and the body.
async fn send_raw(port: u16, target: &str, accept_html: bool) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let kind = if accept_html { "Sec-Fetch-Mode: navigate\r\nAccept: text/html\r\n" } else { "Accept: application/json\r\n" };
    let head = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{kind}Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await.expect("the gateway answers").unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line: {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

async fn gateway(extra_env: &[(&str, &str)]) -> Setup {
    Setup::start_with(Store::Memory, OpOptions::default(), |options| {
        let upstream = options.routes[0].1.clone();
        options.routes = vec![
            ("/app".into(), upstream.clone(), "login".into()),
            ("/admin".into(), upstream.clone(), "deny".into()),
            ("/".into(), upstream, "allow".into()),
        ];
        options.env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    })
    .await
}

fn port_of(s: &Setup) -> u16 {
    s.gateway.url().rsplit(':').next().unwrap().parse().unwrap()
}

async fn check(s: &Setup, table: &[(&str, Expect)]) {
    let port = port_of(s);
    let mut failures = Vec::new();
    for &(target, expect) in table {
        s.upstream.clear();
        let (status, body) = send_raw(port, target, true).await;
        let seen: Vec<String> = s.upstream.seen().into_iter().map(|r| r.path).collect();
        let ok = match expect {
            Refused => status == 400 && body.contains("request path was refused") && seen.is_empty(),
            Malformed => status == 400 && seen.is_empty(),
            Deny => status == 401 && seen.is_empty(),
            Login => status == 302 && seen.is_empty(),
            Allow(path) => status == 200 && seen == [path],
        };
        if !ok {
            failures.push(format!("{target:?}: expected {expect:?}, got {status} with upstream seeing {seen:?}; body {body:.200}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), table.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_canonicalized_or_refused() {
    assert!(HOSTILE.len() >= 30);
    let s = gateway(&[]).await;
    check(&s, HOSTILE).await;
    assert!(s.gateway.log_text().contains("request path refused"), "refusals are logged");
}

/// `server.path_parameters = "pass"`: `;` stays part of its segment and reaches the upstream
/// as sent, but a dot segment hiding behind a parameter is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_parameters_pass_when_configured() {
    let s = gateway(&[("PORTCULLIS_SERVER__PATH_PARAMETERS", "pass")]).await;
    let table: &[(&str, Expect)] = &[
        ("/pub;jsessionid=1/x", Allow("/pub;jsessionid=1/x")),
        ("/pub/a%3bb", Allow("/pub/a%3Bb")),
        ("/pub;x/../admin", Deny),
        ("/..;/admin", Refused),
        ("/pub/.;x/admin", Refused),
        ("//admin;x/y", Allow("/admin;x/y")),
    ];
    check(&s, table).await;
}

/// The return path after login is the canonical path: the API 401's login URL carries it, and
/// a browser that logs in from a hostile spelling lands on the canonical one at the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_returns_to_the_canonical_path() {
    let s = gateway(&[]).await;
    let port = port_of(&s);

    let (status, body) = send_raw(port, "//app/x/./y/../z?q=%2F..", false).await;
    assert_eq!(status, 401, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let login_url: url::Url = body["login_url"].as_str().unwrap().parse().unwrap();
    let rd = login_url.query_pairs().find(|(k, _)| k == "rd").map(|(_, v)| v.into_owned());
    assert_eq!(rd.as_deref(), Some("/app/x/z?q=%2F.."));

    // A navigation: 302 to the OP, with the login-binding cookie; log in from there.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "GET /%61pp//x/./y/../z?q=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nSec-Fetch-Mode: navigate\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    assert!(response.starts_with("HTTP/1.1 302"), "{response}");
    let browser = Browser::new();
    let mut location = None;
    for line in response.split("\r\n\r\n").next().unwrap().lines() {
        let Some((name, value)) = line.split_once(": ") else { continue };
        match name.to_ascii_lowercase().as_str() {
            "set-cookie" => browser.set_cookie(&s.gateway.url(), value),
            "location" => location = Some(value.to_string()),
            _ => {}
        }
    }
    s.upstream.clear();
    let hops = browser.login(&location.expect("a Location to the OP"), "alice").await;
    assert_eq!(hops.last().unwrap().status, 200, "{hops:#?}");
    assert_eq!(hops.last().unwrap().url.as_str(), s.url("/app/x/z?q=1"));
    let seen: Vec<String> = s.upstream.seen().into_iter().map(|r| r.path).collect();
    assert_eq!(seen, ["/app/x/z?q=1"]);
}
