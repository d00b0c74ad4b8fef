//! Per-route upstream limits: connect timeout and response-head timeout (504 `upstream_timeout`),
//! request-body limit (413 `request_body_too_large`, by `Content-Length` and while a chunked body
//! streams), and bodies under the limit still streaming.

mod common;

use std::time::{Duration, Instant};

use common::{Setup, Store};
use futures_util::StreamExt;
use portcullis_testkit::{OpOptions, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JSON: &str = "application/json";

/// One gateway, these routes (all `allow`, so no login is needed to reach the limits):
/// `/dead` → an upstream that never completes a connection (connect timeout 1 s),
/// `/silent` → one that accepts and never answers (response-head timeout 1 s),
/// `/slow` → the test upstream with a 2 s response-head timeout,
/// `/upload` → body limit 1000 bytes and a 1 s response-head timeout,
/// `/first-chunk` → body limit 1 MB.
async fn setup() -> (Setup, Upstream, Upstream) {
    let unaccepting = Upstream::unaccepting().await;
    let silent = Upstream::silent().await;
    let (dead_url, silent_url) = (unaccepting.url(), silent.url());
    let s = Setup::start_with(Store::Memory, OpOptions::default(), move |o| {
        let upstream = o.routes[0].1.clone();
        o.routes = vec![];
        let route = |prefix: &str, url: &str, extra: &str| {
            format!("\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{url}\"\nunauthenticated = \"allow\"\n{extra}\n")
        };
        o.extra = [
            route("/dead", &dead_url, "connect_timeout = \"1s\""),
            route("/silent", &silent_url, "response_header_timeout = \"1s\""),
            route("/slow", &upstream, "response_header_timeout = \"2s\""),
            route("/upload", &upstream, "max_request_body_bytes = 1000\nresponse_header_timeout = \"1s\""),
            route("/first-chunk", &upstream, "max_request_body_bytes = 1000000"),
        ]
        .concat();
        o.env.push(("PORTCULLIS_SERVER__CLIENT_BODY_TIMEOUT".into(), "1s".into()));
    })
    .await;
    (s, unaccepting, silent)
}

/// A client that announces a body and stops sending it (slowloris for bodies) is answered 408
/// and its connection freed once `server.client_body_timeout` (1 s here) passes without a byte;
/// the upstream never gets a complete request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408() {
    let (s, _dead, _silent) = setup().await;
    let addr = s.gateway.url().trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    tcp.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nAccept: application/json\r\n\r\n0123456789").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    assert!(read.is_ok(), "the connection was never answered nor closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_body_timeout"), "{answer}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(15), "answered after {took:?}");
    assert!(s.gateway.log_text().contains("request body stalled"), "{}", s.gateway.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_gives_504() {
    let (s, _dead, _silent) = setup().await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let r = http.get(s.url("/dead/x")).header("accept", JSON).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(15), "answered after {took:?}");
    assert!(s.gateway.log_text().contains("upstream connect timed out"), "{}", s.gateway.log_text());

    // A page load gets the same refusal as a page.
    let r = http.get(s.url("/dead/x")).header("sec-fetch-mode", "navigate").send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_head_timeout_gives_504() {
    let (s, _dead, _silent) = setup().await;
    let http = reqwest::Client::new();

    let started = Instant::now();
    let r = http.get(s.url("/silent/x")).header("accept", JSON).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "upstream_timeout");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(15), "answered after {took:?}");
    assert!(s.gateway.log_text().contains("upstream response head timed out"));

    // Within the route's 2 s: served. Beyond it: 504, not a 60 s wait.
    let r = http.get(s.url("/slow?ms=200")).header("accept", JSON).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    let r = http.get(s.url("/slow?ms=8000")).header("accept", JSON).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(7), "answered after {:?}", started.elapsed());
}

/// The response-head clock is kept with the pooled upstream connection and reset for each
/// request: a request on a reused connection gets the route's whole timeout from its own start
/// (not what was left of the previous request's), also after the clock ran out while the
/// connection was idle, and a connection whose request timed out is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_clock_restarts_for_each_request_on_a_reused_connection() {
    let (s, _dead, _silent) = setup().await;
    let http = reqwest::Client::new();
    let get = |ms: u64| http.get(s.url(&format!("/slow?ms={ms}"))).header("accept", JSON).send();
    // Back to back, each 1.5 s of the route's 2 s: the second and third start before the first
    // one's deadline and end after it.
    for i in 0..3 {
        let r = get(1500).await.unwrap();
        assert_eq!(r.status(), 200, "request {i} was cut short by an earlier request's clock");
    }
    // Idle past the last deadline (the connection's timer fires with nobody waiting), then served.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(1500).await.unwrap().status(), 200, "after an idle spell");
    let started = Instant::now();
    assert_eq!(get(8000).await.unwrap().status(), 504);
    assert!(started.elapsed() < Duration::from_secs(7), "answered after {:?}", started.elapsed());
    // The late answer of the timed-out request is never read as the next one's.
    let r = get(100).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_clock_starts_when_the_body_is_sent() {
    let (s, _dead, _silent) = setup().await;
    // A 2.4 s upload on a route with a 1 s response-head timeout: a slow client is not a slow
    // upstream.
    let chunks = futures_util::stream::iter(0..4).then(|i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        Ok::<_, std::io::Error>(vec![1u8; 100])
    });
    let r = reqwest::Client::new().post(s.url("/upload")).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "400");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_gives_413() {
    let (s, _dead, _silent) = setup().await;
    let http = reqwest::Client::new();

    // Content-Length above the limit: refused before the upstream is asked.
    let r = http.post(s.url("/upload")).header("accept", JSON).body(vec![0u8; 2000]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "request_body_too_large");
    assert!(s.gateway.log_text().contains("(Content-Length)"), "refused on the announced length, before any upstream work");
    // At the limit and under it: forwarded whole.
    for size in [1000usize, 10] {
        let r = http.post(s.url("/upload")).body(vec![0u8; size]).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), size.to_string());
    }

    // Chunked, no length announced: refused once the stream passes the limit.
    let head = raw_chunked(&s, "/upload", &[3000]).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let head = raw_chunked(&s, "/upload", &[600, 600]).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // Chunked under the limit: forwarded.
    let chunks = futures_util::stream::iter((0..9).map(|_| Ok::<_, std::io::Error>(vec![2u8; 100])));
    let r = http.post(s.url("/upload")).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "900");
    assert!(s.gateway.log_text().contains("request body above the route's limit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_bodies_still_stream() {
    let (s, _dead, _silent) = setup().await;
    // The upstream answers on the first chunk; the client holds the rest back until it has the
    // answer. A proxy that buffered the body to count it would deadlock here.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tx.send(Ok(vec![3u8; 4096])).await.unwrap();
    let body = reqwest::Body::wrap_stream(tokio_stream(rx));
    let r = tokio::time::timeout(Duration::from_secs(10), reqwest::Client::new().post(s.url("/first-chunk")).body(body).send())
        .await
        .expect("the answer came before the body ended")
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "4096");
    drop(tx);
}

fn tokio_stream<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Sends a chunked POST of chunks of the given sizes over a raw connection, without the final
/// chunk, and returns the response head.
async fn raw_chunked(s: &Setup, path: &str, chunks: &[usize]) -> String {
    let mut tcp = tokio::net::TcpStream::connect(s.gateway.url().trim_start_matches("http://")).await.unwrap();
    let mut request =
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    for size in chunks {
        request.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b'a', *size));
        request.extend_from_slice(b"\r\n");
    }
    tcp.write_all(&request).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
    })
    .await
    .expect("an answer within 10 s");
    String::from_utf8_lossy(&head).to_string()
}
