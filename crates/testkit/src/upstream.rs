//! An upstream application for tests: records every request that reaches it, and accepts a
//! bearer token only if the OP's introspection says it is active.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, lower-case names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The bearer token, if one came.
    pub bearer: Option<String>,
    /// Whether the OP called the bearer token active (when introspection is on).
    pub active: Option<bool>,
}

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    introspect: Option<(String, reqwest::Client)>,
}

/// A running upstream.
pub struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream; with `introspect_at = Some(issuer)` it checks bearer tokens at the OP
    /// and answers 401 for an inactive one.
    pub async fn start(introspect_at: Option<String>) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared =
            Shared { seen: seen.clone(), introspect: introspect_at.map(|i| (format!("{i}/token/introspection"), reqwest::Client::new())) };
        let app = Router::new()
            .route("/stream", any(stream))
            .route("/upload", any(upload))
            .route("/ws", any(echo_upgrade))
            .route("/slow", any(slow))
            .route("/first-chunk", any(first_chunk))
            .route("/big", any(big))
            .fallback(any(record))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, seen, _task: task }
    }

    /// An upstream that accepts connections, reads whatever comes and never answers: the
    /// response-head timeout's case.
    pub async fn silent() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                });
            }
        });
        Self { addr, seen: Arc::default(), _task: task }
    }

    /// An upstream whose connections never complete: a listening socket (backlog 0) that never
    /// accepts, its accept queue filled first, so the kernel drops every further SYN and a
    /// connect hangs until the caller gives up. The connect timeout's case, on 127.0.0.1.
    pub async fn unaccepting() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(e)) => panic!("connect to the unaccepting listener: {e}"),
                Err(_) => break,
            }
            assert!(queued.len() < 64, "the accept queue never filled");
        }
        let task = tokio::spawn(async move {
            let _held = (listener, queued);
            std::future::pending::<()>().await;
        });
        Self { addr, seen: Arc::default(), _task: task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

async fn record(State(shared): State<Shared>, req: Request) -> Response {
    let mut headers = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).to_string();
        headers.entry(name.as_str().to_string()).and_modify(|v: &mut String| *v = format!("{v}, {value}")).or_insert(value);
    }
    let bearer = headers.get("authorization").and_then(|a| a.strip_prefix("Bearer ")).map(String::from);
    let active = match (&shared.introspect, &bearer) {
        (Some((url, http)), Some(token)) => Some(crate::op::introspect(http, url, token).await),
        _ => None,
    };
    let seen = Seen {
        method: req.method().to_string(),
        path: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers,
        bearer,
        active,
    };
    let body = json!({ "path": seen.path, "user": seen.headers.get("x-forwarded-user"), "active": active });
    shared.seen.lock().unwrap().push(seen);
    let status = if active == Some(false) { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    (status, axum::Json(body)).into_response()
}

/// Sends one chunk, then another 1.5 s later: a buffering proxy would hold the first back.
async fn stream() -> Response {
    let chunks = futures_util::stream::iter(0..2).then(|i| async move {
        if i == 1 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        Ok::<_, std::io::Error>(bytes::Bytes::from(format!("chunk{i}\n")))
    });
    Response::new(Body::from_stream(chunks))
}

/// `/big?mb=N`: N MiB of zeros in 64 KiB chunks, with a `content-length` (a download).
async fn big(req: Request) -> Response {
    let mb: usize = req.uri().query().and_then(|q| q.strip_prefix("mb=")).and_then(|v| v.parse().ok()).unwrap_or(1);
    let chunk = bytes::Bytes::from(vec![0u8; 64 * 1024]);
    let chunks = futures_util::stream::iter(std::iter::repeat_n(chunk, mb * 16).map(Ok::<_, std::io::Error>));
    Response::builder().header(header::CONTENT_LENGTH, mb * 1024 * 1024).body(Body::from_stream(chunks)).unwrap()
}

/// `/slow?ms=N`: the response head comes after N ms (then the request is recorded).
async fn slow(State(shared): State<Shared>, req: Request) -> Response {
    let ms = req.uri().query().and_then(|q| q.strip_prefix("ms=")).and_then(|v| v.parse().ok()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    record(State(shared), req).await
}

/// Answers as soon as the first chunk of the request body has arrived, with its size: a proxy
/// that buffered the body would hold this answer back until the client finished.
async fn first_chunk(req: Request) -> String {
    let mut body = req.into_body().into_data_stream();
    match body.next().await {
        Some(Ok(chunk)) => chunk.len().to_string(),
        _ => "0".into(),
    }
}

/// Counts the bytes of the request body as they stream in.
async fn upload(req: Request) -> String {
    let mut body = req.into_body().into_data_stream();
    let mut total = 0usize;
    while let Some(Ok(chunk)) = body.next().await {
        total += chunk.len();
    }
    total.to_string()
}

/// `Upgrade: echo`: answers 101, then echoes every byte back.
async fn echo_upgrade(mut req: Request) -> Response {
    if req.headers().get(header::UPGRADE).is_none() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "echo")
        .body(Body::empty())
        .unwrap()
}
