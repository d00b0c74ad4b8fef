//! The gateway owns its headers. `HOSTILE` is one table of headers a client sends, and what the
//! upstream must see instead, checked on an `allow`, a `login` and a `deny` route, logged in and
//! not. Requests go over raw TCP, so every spelling (`X_Forwarded_User`, upper case, HTTP/1.0
//! without `Host`) reaches the gateway exactly as written.
//!
//! "Ours" means: exactly what the gateway sends in the same context for a clean request (the
//! user when logged in, nothing when not; `X-Forwarded-*` from `public_url` and the peer),
//! under every spelling of the name. For every row, no value the client sent reaches the
//! upstream under any header.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{BIN, Setup, Store};
use portcullis_testkit::{Gateway, GatewayOptions, OpOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sees {
    /// No header of that name, in any spelling.
    Absent,
    /// The gateway's own value (see the module comment), in one spelling.
    Ours,
}
use Sees::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Via {
    Http11,
    /// HTTP/1.0 without a `Host` header.
    Http10NoHost,
}
use Via::*;

type Row = (&'static [(&'static str, &'static str)], Via, &'static [(&'static str, Sees)]);

#[rustfmt::skip]
const HOSTILE: &[Row] = &[
    // headers the client sends                                   via           what the upstream sees
    // -- identity, in every spelling (oauth2-proxy CVE-2025-64484) --
    (&[("X-Forwarded-User", "mallory")],                            Http11,       &[("x-forwarded-user", Ours)]),
    (&[("X_Forwarded_User", "mallory")],                            Http11,       &[("x-forwarded-user", Ours)]),
    (&[("x-forwarded_user", "mallory")],                            Http11,       &[("x-forwarded-user", Ours)]),
    (&[("X_FORWARDED_EMAIL", "mallory@evil.example")],              Http11,       &[("x-forwarded-email", Ours)]),
    (&[("X-Forwarded-Groups", "admins")],                           Http11,       &[("x-forwarded-groups", Ours)]),
    (&[("X-Forwarded-Preferred-Username", "mallory")],              Http11,       &[("x-forwarded-preferred-username", Absent)]),
    (&[("X_Forwarded_Access_Token", "forged-token")],               Http11,       &[("x-forwarded-access-token", Absent)]),
    (&[("X-Auth-Request-Email", "mallory@evil.example")],           Http11,       &[("x-auth-request-email", Absent)]),
    (&[("X_AUTH_REQUEST_USER", "mallory")],                         Http11,       &[("x-auth-request-user", Absent)]),
    (&[("X-Auth-Request-Groups", "admins")],                        Http11,       &[("x-auth-request-groups", Absent)]),
    // -- where the request came from, what it asked for --
    (&[("Forwarded", "for=1.2.3.4;host=evil.example;proto=https")], Http11,       &[("forwarded", Absent)]),
    (&[("X-Real-IP", "6.6.6.6")],                                   Http11,       &[("x-real-ip", Ours)]),
    (&[("X_Real_IP", "6.6.6.7")],                                   Http11,       &[("x-real-ip", Ours)]),
    (&[("True-Client-IP", "6.6.6.8")],                              Http11,       &[("true-client-ip", Absent)]),
    (&[("X-Original-URL", "/admin")],                               Http11,       &[("x-original-url", Absent)]),
    (&[("X-Original-URI", "/admin/x")],                             Http11,       &[("x-original-uri", Absent)]),
    (&[("X-Rewrite-URL", "/admin/y")],                              Http11,       &[("x-rewrite-url", Absent)]),
    (&[("X-Forwarded-Uri", "/admin/z")],                            Http11,       &[("x-forwarded-uri", Absent)]),
    (&[("X-Forwarded-Prefix", "/evil")],                            Http11,       &[("x-forwarded-prefix", Absent)]),
    (&[("X-Forwarded-Host", "evil.example")],                       Http11,       &[("x-forwarded-host", Ours)]),
    (&[("X-Forwarded-Host", "evil10.example")],                     Http10NoHost, &[("x-forwarded-host", Ours)]),
    (&[("X_Forwarded_Host", "evil2.example")],                      Http11,       &[("x-forwarded-host", Ours)]),
    (&[("X-Forwarded-Proto", "https")],                             Http11,       &[("x-forwarded-proto", Ours)]),
    (&[("X-Forwarded-Port", "8443")],                               Http11,       &[("x-forwarded-port", Ours)]),
    (&[("X-Forwarded-For", "6.6.6.6")],                             Http11,       &[("x-forwarded-for", Ours)]),
    (&[("x_forwarded_for", "6.6.6.9")],                             Http11,       &[("x-forwarded-for", Ours)]),
    // -- hop-by-hop: removed before the gateway sets its own headers --
    (&[("Connection", "authorization, x-forwarded-user")],          Http11,       &[("authorization", Ours), ("x-forwarded-user", Ours)]),
    (&[("Connection", "x-forwarded-for, x-real-ip")],               Http11,       &[("x-forwarded-for", Ours), ("x-real-ip", Ours)]),
    (&[("Connection", "x-hop"), ("X-Hop", "hop1"), ("x_hop", "hop2")], Http11,    &[("x-hop", Absent)]),
    (&[("Connection", "x_other"), ("X-Other", "other1")],           Http11,       &[("x-other", Absent)]),
    (&[("Keep_Alive", "timeout=99")],                               Http11,       &[("keep-alive", Absent)]),
    (&[("Proxy_Authorization", "Basic bWFsbG9yeTp4")],              Http11,       &[("proxy-authorization", Absent)]),
    (&[("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQAAP__")],
                                                                    Http11,       &[("upgrade", Absent), ("http2-settings", Absent), ("connection", Ours)]),
];

/// Where a row is tried: `(route prefix, logged in)`. `/` requires login, `/public` allows
/// anonymous requests, `/internal` denies them.
const CONTEXTS: [(&str, bool); 6] =
    [("/public", false), ("/public", true), ("/", true), ("/internal", true), ("/", false), ("/internal", false)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_never_reach_the_upstream() {
    let s = Setup::start(Store::Memory, OpOptions { access_token_ttl: 3600, ..OpOptions::default() }).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let cookie = format!("portcullis={}", s.session_cookie(&browser).unwrap());
    let addr = s.gateway.url().trim_start_matches("http://").to_string();
    let port = addr.rsplit(':').next().unwrap().to_string();

    for (c, (prefix, logged_in)) in CONTEXTS.iter().enumerate() {
        let base = prefix.trim_end_matches('/');
        let cookie = logged_in.then_some(cookie.as_str());
        let forwarded = *logged_in || *prefix == "/public";

        // What the gateway itself sends in this context.
        let clean_path = format!("{base}/hh/{c}/clean");
        let status = raw_request(&addr, Http11, &clean_path, &[], cookie).await;
        let baseline = if forwarded {
            assert_eq!(status, 200, "{clean_path}");
            let seen = s.upstream.seen().into_iter().find(|r| r.path == clean_path).expect("clean request forwarded").headers;
            assert_eq!(seen["x-forwarded-host"], addr);
            assert_eq!(seen["x-forwarded-proto"], "http");
            assert_eq!(seen["x-forwarded-port"], port);
            assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
            assert_eq!(seen["x-real-ip"], "127.0.0.1");
            assert_eq!(seen.get("x-forwarded-user").map(String::as_str), logged_in.then_some("alice"));
            assert_eq!(seen.contains_key("authorization"), *logged_in);
            seen
        } else {
            assert_eq!(status, 401, "{clean_path}");
            BTreeMap::new()
        };

        for (i, (sent, via, expected)) in HOSTILE.iter().enumerate() {
            let path = format!("{base}/hh/{c}/{i}");
            let row = format!("row {i} {sent:?} via {via:?} on {prefix} (logged in: {logged_in})");
            let status = raw_request(&addr, *via, &path, sent, cookie).await;
            let seen = s.upstream.seen().into_iter().find(|r| r.path == path);
            if !forwarded {
                assert_eq!(status, 401, "{row}");
                assert!(seen.is_none(), "{row}: an unauthenticated request reached the upstream");
                continue;
            }
            assert_eq!(status, 200, "{row}");
            let seen = seen.unwrap_or_else(|| panic!("{row}: not forwarded")).headers;
            for (name, sees) in *expected {
                let got = spellings(&seen, name);
                let want = match sees {
                    Absent => vec![],
                    Ours => spellings(&baseline, name),
                };
                assert_eq!(got, want, "{row}: upstream's {name}");
            }
            for (name, value) in *sent {
                assert!(!seen.values().any(|v| v == value), "{row}: the client's {name}: {value} reached the upstream: {seen:#?}");
            }
        }
    }
}

/// Behind a trusted proxy (`trusted_proxies = ["127.0.0.1/32"]`, a second gateway), the
/// client's `X-Forwarded-For` is extended instead of replaced; nothing else changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_extended_only_behind_a_trusted_proxy() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let mut options = GatewayOptions::new(&s.op.issuer(), &s.upstream.url());
    options.routes = vec![("/public".into(), s.upstream.url(), "allow".into())];
    options.env = vec![("PORTCULLIS_TRUSTED_PROXIES".into(), "[\"127.0.0.1/32\"]".into())];
    let trusting = Gateway::start(BIN, &options).await;
    let addr = trusting.url().trim_start_matches("http://").to_string();

    let sent: &[(&str, &str)] =
        &[("X-Forwarded-For", "6.6.6.6"), ("x_forwarded_for", "7.7.7.7"), ("X-Real-IP", "8.8.8.8"), ("X-Forwarded-Host", "evil.example")];
    assert_eq!(raw_request(&addr, Http11, "/public/trusted", sent, None).await, 200);
    let seen = s.upstream.seen().into_iter().find(|r| r.path == "/public/trusted").unwrap().headers;
    assert_eq!(spellings(&seen, "x-forwarded-for"), [("x-forwarded-for".to_string(), "6.6.6.6, 127.0.0.1".to_string())]);
    assert_eq!(seen["x-real-ip"], "6.6.6.6", "the client address is the first untrusted hop from the right");
    assert_eq!(seen["x-forwarded-host"], addr);

    // The untrusting gateway of the same test replaces the list.
    let untrusting = s.gateway.url().trim_start_matches("http://").to_string();
    assert_eq!(raw_request(&untrusting, Http11, "/public/untrusted", sent, None).await, 200);
    let seen = s.upstream.seen().into_iter().find(|r| r.path == "/public/untrusted").unwrap().headers;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
}

/// `websocket` is allowed by default and still upgrades (the test upstream echoes); another
/// protocol is served as the plain request it also is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_upgrades_still_pass() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let cookie = s.session_cookie(&browser).unwrap();
    let addr = s.gateway.url().trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nCookie: portcullis={cookie}\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(&echoed, b"ping");

    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!("GET /ws HTTP/1.1\r\nHost: x\r\nCookie: portcullis={cookie}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 400"), "the upstream must see no upgrade request: {head}");
    assert!(s.gateway.log_text().contains("upgrade protocol not in server.allowed_upgrades"));
}

/// The cookie store's chunks and the login-binding cookies never reach the upstream; the
/// application's own cookies do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_cookies_never_reach_the_upstream() {
    let s =
        Setup::start_with(Store::Memory, OpOptions { access_token_ttl: 3600, ..OpOptions::default() }, |o| o.store = "cookie".into()).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let gateway = s.gateway.url();
    let real: Vec<String> = (0..8)
        .map(|i| if i == 0 { "portcullis".to_string() } else { format!("portcullis_{i}") })
        .filter_map(|name| browser.cookie(&gateway, &name).map(|v| format!("{name}={v}")))
        .collect();
    assert!(!real.is_empty(), "logged in with the cookie store");
    let fake = "theme=dark; portcullis_7=fake-chunk; __Host-portcullis_2=fake; portcullis_login_abc=binding; my_portcullis=kept";
    let addr = gateway.trim_start_matches("http://");
    for (path, cookies) in [("/app/c", format!("{}; {fake}", real.join("; "))), ("/public/c", fake.to_string())] {
        let header = [("Cookie", cookies.as_str())];
        assert_eq!(raw_request(addr, Http11, path, &header, None).await, 200, "{path}");
        let seen = s.upstream.seen().into_iter().find(|r| r.path == path).unwrap().headers;
        assert_eq!(seen["cookie"], "theme=dark; my_portcullis=kept", "{path}");
        if path == "/app/c" {
            assert_eq!(seen["x-forwarded-user"], "alice", "the session itself was read");
        }
    }
}

/// Every spelling of `name` in what the upstream saw, as `(name as received, value)`.
fn spellings(seen: &BTreeMap<String, String>, name: &str) -> Vec<(String, String)> {
    let normal = |n: &str| n.to_ascii_lowercase().replace('_', "-");
    seen.iter().filter(|(n, _)| normal(n) == normal(name)).map(|(n, v)| (n.clone(), v.clone())).collect()
}

/// Sends one request as raw bytes (`Connection: close`) and returns the status.
async fn raw_request(addr: &str, via: Via, path: &str, headers: &[(&str, &str)], cookie: Option<&str>) -> u16 {
    let mut text = match via {
        Http11 => format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n"),
        Http10NoHost => format!("GET {path} HTTP/1.0\r\n"),
    };
    text.push_str("Accept: application/json\r\n");
    if let Some(cookie) = cookie {
        text.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(text.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut response)).await.expect("answered and closed").unwrap();
    let response = String::from_utf8_lossy(&response);
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line: {response}"))
}

async fn read_head(tcp: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !head.ends_with(b"\r\n\r\n") {
            tcp.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
    })
    .await
    .expect("a response head");
    String::from_utf8(head).unwrap()
}
