//! The reverse proxy: streaming both ways, upgrades, forwarding headers, upstream failures.

mod common;

use std::time::{Duration, Instant};

use common::{Setup, Store};
use futures_util::StreamExt;
use portcullis_testkit::OpOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_stream_without_buffering() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let started = Instant::now();
    let r = browser.http().get(s.url("/stream")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"chunk0\n");
    assert!(first_at < Duration::from_millis(1000), "first chunk after {first_at:?}: the proxy buffered the body");
    let second = body.next().await.unwrap().unwrap();
    assert_eq!(&second[..], b"chunk1\n");
    assert!(started.elapsed() >= Duration::from_millis(1400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_to_the_upstream() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let size = 16 * 1024 * 1024;
    let chunks = futures_util::stream::iter((0..size / 65536).map(|_| Ok::<_, std::io::Error>(vec![7u8; 65536])));
    let r = browser.http().post(s.url("/upload")).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), size.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_through() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let cookie = s.session_cookie(&browser).unwrap();
    let mut tcp = tokio::net::TcpStream::connect(s.gateway.url().trim_start_matches("http://")).await.unwrap();
    let request =
        format!("GET /ws HTTP/1.1\r\nHost: x\r\nCookie: portcullis={cookie}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: echo"), "{head}");
    for message in ["hello", "through the gateway"] {
        tcp.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echoed)).await.unwrap().unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
    let seen = s.upstream.seen();
    assert!(seen.is_empty() || seen.iter().all(|r| r.path != "/ws"), "the upgrade handler records nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_set_and_hop_by_hop_dropped() {
    let s = Setup::start(Store::Memory, OpOptions::default()).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let r = browser
        .http()
        .get(s.url("/headers"))
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = s.upstream.last().unwrap();
    // An untrusted peer (trusted_proxies is empty) cannot extend the list: it is replaced.
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], s.gateway.url().trim_start_matches("http://"));
    assert_eq!(seen.headers["x-custom"], "kept");
    assert!(!seen.headers.contains_key("x-hop") && !seen.headers.contains_key("te"), "{:?}", seen.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_paths_and_dead_upstreams() {
    let s = Setup::start_with(Store::Memory, OpOptions::default(), |o| {
        o.routes =
            vec![("/app".into(), o.routes[0].1.clone(), "login".into()), ("/dead".into(), "http://127.0.0.1:9".into(), "allow".into())];
    })
    .await;
    let http = reqwest::Client::new();
    let r = http.get(s.url("/elsewhere")).header("accept", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http.get(s.url("/dead/x")).header("accept", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable");
    assert!(s.gateway.log_text().contains("upstream request failed"));
}
