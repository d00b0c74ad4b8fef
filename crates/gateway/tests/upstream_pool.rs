//! The upstream connection pool: keep-alive connections are reused (after bodies, empty
//! answers and HEAD alike), and an upstream that closes idle connections costs no request.
//! The upstream here is a raw HTTP/1.1 server that counts the connections it accepts.

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use common::{Setup, Store};
use portcullis_testkit::OpOptions;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// A raw upstream: answers `/raw/empty` with 204, anything else with a short body (none for
/// HEAD); with `close_after_answer`, closes each connection after its first answer without
/// saying so (an upstream whose keep-alive timeout fired), so the gateway's idle connection
/// is dead when the next request comes.
async fn raw_upstream(close_after_answer: bool) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let answer: &[u8] = if head.starts_with("GET /raw/empty ") {
                        b"HTTP/1.1 204 No Content\r\n\r\n"
                    } else if head.starts_with("HEAD ") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
                    };
                    if socket.write_all(answer).await.is_err() || close_after_answer {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

async fn gateway_to(upstream: &str) -> Setup {
    let upstream = upstream.to_string();
    Setup::start_with(Store::Memory, OpOptions::default(), move |o| {
        o.routes.push(("/raw".into(), upstream, "allow".into()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let (upstream, accepted) = raw_upstream(false).await;
    let s = gateway_to(&upstream).await;
    let http = reqwest::Client::new();
    for i in 0..30 {
        let (path, head) = match i % 3 {
            0 => ("/raw/body", false),
            1 => ("/raw/empty", false),
            _ => ("/raw/head", true),
        };
        let request = if head { http.head(s.url(path)) } else { http.get(s.url(path)) };
        let r = request.send().await.unwrap();
        let want = if path == "/raw/empty" { 204 } else { 200 };
        assert_eq!(r.status(), want, "request {i} to {path}");
        let body = r.text().await.unwrap();
        assert_eq!(body, if want == 200 && !head { "ok\n" } else { "" }, "request {i} to {path}");
    }
    // One request at a time. Idle connections are kept per worker thread, and a request runs
    // on whichever thread picks it up, so a few more than one per thread get opened (seen: 4
    // to 6 on 2 threads); without reuse it would be 30.
    let n = accepted.load(Ordering::SeqCst);
    assert!(n <= 10, "{n} upstream connections for 30 sequential requests: connections are not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_idle_connections_costs_no_request() {
    let (upstream, accepted) = raw_upstream(true).await;
    let s = gateway_to(&upstream).await;
    let http = reqwest::Client::new();
    for i in 0..10 {
        let r = http.get(s.url("/raw/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}: a closed idle connection was used");
        assert_eq!(r.text().await.unwrap(), "ok\n");
        // Let the upstream's close arrive, as it would between two users' requests.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 10, "one connection per request: the upstream closed each one");
}
