//! Slow and abusive clients at the connection level (issue 7, item 4): the real gateway binary,
//! raw TCP clients. Timings are generous: the machine may be loaded.
//!
//! | client behaviour                                   | expected                                       |
//! |----------------------------------------------------|------------------------------------------------|
//! | connects, sends nothing                            | closed after `header_read_timeout`             |
//! | sends half a request head                          | closed after `header_read_timeout`             |
//! | trickles a head, one byte every 150 ms             | closed after `header_read_timeout` (total)     |
//! | idle after a response (keep-alive)                 | closed after `keep_alive_timeout`, not before  |
//! | a response slower than `keep_alive_timeout`        | completes (in flight is not idle)              |
//! | stops reading a large response                     | closed after `send_timeout` (upstream dropped) |
//! | reads a large response slowly but steadily         | gets all of it                                 |
//! | request head above `max_header_bytes`              | `431` (HTTP/1: and closed; HTTP/2: the stream) |
//! | connection `max_connections + 1`                   | not served until another closes                |
//! | HTTP/2 prior knowledge                             | served; SETTINGS advertise the stream limit    |
//! | SIGTERM with a response in flight                  | it completes; new connections are refused      |

use std::time::{Duration, Instant};

use portcullis_testkit::{Gateway, GatewayOptions, Upstream};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A gateway with one `allow` route to a real upstream; the OP is never needed (the routes
/// and `/healthz` work without it).
async fn gateway(server: &str) -> (Gateway, Upstream) {
    let upstream = Upstream::start(None).await;
    let mut options = GatewayOptions::new("http://127.0.0.1:9", &upstream.url());
    options.routes = vec![("/".into(), upstream.url(), "allow".into())];
    options.extra = format!("\n[server]\n{server}\n");
    (Gateway::start(BIN, &options).await, upstream)
}

async fn connect(gateway: &Gateway) -> TcpStream {
    TcpStream::connect(gateway.url().trim_start_matches("http://")).await.unwrap()
}

/// Reads one response head and its `content-length` body; `None` if the connection closed.
async fn read_response(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(head).unwrap();
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    tcp.read_exact(&mut body).await.ok()?;
    Some(head)
}

/// Waits (at most `limit`) for the server to close: EOF or reset, and no bytes before it.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> Result<(), String> {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(limit, tcp.read(&mut buf)).await {
        Err(_) => Err(format!("still open after {limit:?}")),
        Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(n)) => Err(format!("got bytes instead of a close: {:?}", String::from_utf8_lossy(&buf[..n]))),
    }
}

async fn get_ok(tcp: &mut TcpStream, path: &str) {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(10), read_response(tcp)).await.expect("a response in time").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_are_dropped_after_header_read_timeout() {
    let (gateway, _upstream) = gateway("header_read_timeout = \"1s\"").await;
    for (name, sends) in [
        ("nothing sent", &[][..]),
        ("half a head", &[&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]][..]),
        (
            "a byte every 150 ms",
            &[
                &b"G"[..],
                b"E",
                b"T",
                b" ",
                b"/",
                b" ",
                b"H",
                b"T",
                b"T",
                b"P",
                b"/",
                b"1",
                b".",
                b"1",
                b"\r",
                b"\n",
                b"H",
                b"o",
                b"s",
                b"t",
                b":",
                b" ",
                b"x",
                b"\r",
                b"\n",
                b"X",
                b":",
                b" ",
                b"y",
            ][..],
        ),
    ] {
        let started = Instant::now();
        let mut slow = connect(&gateway).await;
        let trickle = async {
            for chunk in sends {
                if slow.write_all(chunk).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            closed_within(&mut slow, Duration::from_secs(6)).await
        };
        // Meanwhile a well-behaved client on a fresh connection is served.
        let normal = async {
            let mut tcp = connect(&gateway).await;
            get_ok(&mut tcp, "/healthz").await;
            get_ok(&mut tcp, "/anything").await;
        };
        let (closed, ()) = tokio::join!(trickle, normal);
        let elapsed = started.elapsed();
        closed.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5), "{name}: closed after {elapsed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_after_keep_alive_timeout() {
    // Keep-alive longer than the head clock: an idle connection must live past the head
    // timeout (hyper's own header timer would close it at 1 s) and close at the idle one.
    let (gateway, _upstream) = gateway("header_read_timeout = \"1s\"\nkeep_alive_timeout = \"3s\"").await;
    let mut tcp = connect(&gateway).await;
    get_ok(&mut tcp, "/healthz").await;
    let idle_since = Instant::now();
    closed_within(&mut tcp, Duration::from_secs(10)).await.unwrap();
    let idle = idle_since.elapsed();
    assert!(idle >= Duration::from_millis(2700) && idle < Duration::from_secs(8), "closed after {idle:?} idle");

    // Still usable just before the idle limit: the next request is served.
    let mut tcp = connect(&gateway).await;
    get_ok(&mut tcp, "/healthz").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    get_ok(&mut tcp, "/healthz").await;
}

/// Sends `GET /big?mb=<mb>` and returns the stream, nothing read yet.
async fn download(gateway: &Gateway, mb: usize) -> TcpStream {
    let mut tcp = connect(gateway).await;
    tcp.write_all(format!("GET /big?mb={mb} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    tcp
}

/// Reads until EOF or reset, at most `limit`; the bytes read, and whether the end came.
async fn read_to_end(tcp: &mut TcpStream, limit: Duration) -> (usize, bool) {
    let mut total = 0;
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return (total, false),
            Ok(Ok(0) | Err(_)) => return (total, true),
            Ok(Ok(n)) => total += n,
        }
    }
}

/// A client that asks for 64 MiB and reads nothing: once the socket buffers are full the
/// gateway's write makes no progress, and after `send_timeout` the connection is closed. Read
/// afterwards, the stream ends early (what was buffered, then EOF or reset). Without the send
/// clock the whole body would still come, and the keep-alive connection would stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_send_timeout() {
    let (gateway, _upstream) = gateway("send_timeout = \"1s\"").await;
    let mut tcp = download(&gateway, 64).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (read, ended) = read_to_end(&mut tcp, Duration::from_secs(20)).await;
    assert!(ended, "the connection ended ({read} bytes read)");
    assert!(read < 64 * 1024 * 1024, "the body was cut off: {read} bytes read");
    assert!(gateway.log_text().contains("expiry=Send"), "the close is logged with its reason:\n{}", gateway.log_text());
}

/// A client that reads a large response slowly but without stopping (64 KiB every 100 ms,
/// slower than the socket buffers fill, each pause shorter than `send_timeout`) gets all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_gets_the_whole_response() {
    let (gateway, _upstream) = gateway("send_timeout = \"1s\"").await;
    let mut tcp = download(&gateway, 2).await;
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let want = 2 * 1024 * 1024;
    while total < want + 64 && started.elapsed() < Duration::from_secs(30) {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(n)) => total += n,
        }
        // Stop once the head and the whole body are in.
        if total >= want {
            let (rest, _) = read_to_end(&mut tcp, Duration::from_millis(200)).await;
            total += rest;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(total > want, "the whole body came: {total} bytes of {want} + head in {:?}", started.elapsed());
    assert!(started.elapsed() > Duration::from_secs(1), "the read took longer than send_timeout: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_in_flight_is_not_idle() {
    // The upstream's /stream pauses 1.5 s between its two chunks: far longer than the idle
    // limit (plus the second of grace a closing connection gets).
    let (gateway, _upstream) = gateway("header_read_timeout = \"1s\"\nkeep_alive_timeout = \"100ms\"").await;
    let response = reqwest::get(format!("{}/stream", gateway.url())).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "chunk0\nchunk1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused() {
    let (gateway, _upstream) = gateway("max_header_bytes = 16384").await;
    let normal = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n", "a".repeat(8000));
    let mut tcp = connect(&gateway).await;
    tcp.write_all(normal.as_bytes()).await.unwrap();
    let head = read_response(&mut tcp).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let huge = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n", "a".repeat(20_000));
    let mut tcp = connect(&gateway).await;
    // The server may close before it has read everything: a write error is a refusal too.
    let _ = tcp.write_all(huge.as_bytes()).await;
    // Closed without an answer would be a refusal as well; hyper answers 431 first.
    if let Some(head) = read_response(&mut tcp).await {
        assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    }
    closed_within(&mut tcp, Duration::from_secs(5)).await.unwrap();

    // HTTP/2: the header list limit refuses that stream with 431; the connection lives on.
    let http = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let url = format!("{}/healthz", gateway.url());
    let refused = http.get(&url).header("x-filler", "a".repeat(20_000)).send().await.unwrap();
    assert_eq!((refused.version(), refused.status().as_u16()), (http::Version::HTTP_2, 431));
    assert_eq!(http.get(&url).header("x-filler", "a".repeat(8000)).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_wait_for_a_free_slot() {
    let (gateway, _upstream) = gateway("max_connections = 2").await;
    // Gateway::start's probe client may still hold a connection for a moment: retry until two
    // of ours are served.
    let mut first = connect(&gateway).await;
    get_ok(&mut first, "/healthz").await;
    let mut second = connect(&gateway).await;
    get_ok(&mut second, "/healthz").await;

    // The third completes the TCP handshake (the kernel's backlog) but is not served.
    let mut third = connect(&gateway).await;
    third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(1500), read_response(&mut third)).await;
    assert!(waited.is_err(), "connection 3 was served while 2 were open: {waited:?}");

    drop(first);
    let head = tokio::time::timeout(Duration::from_secs(10), read_response(&mut third))
        .await
        .expect("served once a slot was free")
        .expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    get_ok(&mut second, "/healthz").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_served_and_advertises_its_limits() {
    let (gateway, _upstream) = gateway("h2_max_concurrent_streams = 7\nmax_header_bytes = 20000").await;
    let http = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = http.get(format!("{}/anything", gateway.url())).send().await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);

    // The server's first frame is its SETTINGS: MAX_CONCURRENT_STREAMS (0x3), MAX_HEADER_LIST_SIZE (0x6).
    let mut tcp = connect(&gateway).await;
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let mut header = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut header)).await.unwrap().unwrap();
    assert_eq!(header[3], 0x4, "first frame is SETTINGS");
    let length = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0u8; length];
    tcp.read_exact(&mut payload).await.unwrap();
    let settings: Vec<(u16, u32)> =
        payload.chunks_exact(6).map(|s| (u16::from_be_bytes([s[0], s[1]]), u32::from_be_bytes([s[2], s[3], s[4], s[5]]))).collect();
    assert!(settings.contains(&(0x3, 7)), "{settings:?}");
    assert!(settings.contains(&(0x6, 20000)), "{settings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_response_in_flight_finish() {
    let (gateway, _upstream) = gateway("").await;
    let mut tcp = connect(&gateway).await;
    // /stream answers its first chunk, then the second 1.5 s later.
    tcp.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("chunk0") {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    gateway.terminate();
    // Stopped accepting…
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(gateway.url().trim_start_matches("http://")).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // …and the response in flight completes.
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(rest.is_ok(), "the connection was not closed after the response");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("chunk1"), "the response in flight was cut: {text}");
}
