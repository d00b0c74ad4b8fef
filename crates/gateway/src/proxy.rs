//! The reverse proxy: streams requests to the route's upstream over pooled keep-alive
//! connections (`pool`: per worker thread, driven by the request using them) and streams the
//! answer back. Nothing is buffered whole.
//!
//! Per route: a connect timeout (TCP and TLS), a response-head timeout and an optional
//! request-body limit. The connect timeout lives in the connector, so there is one connector
//! per distinct connect timeout (routes with the same one, the usual case, share it); idle
//! connections are pooled per upstream whatever the timeout they were made with. Wrapping the
//! whole request in one timeout instead could not tell a dead upstream (connect) from a slow
//! one (response head), and would charge a pooled connection's request for a connect it never
//! made.

mod pool;

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header, uri::PathAndQuery};
use http_body::{Frame, SizeHint};
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use portcullis::auth::{Failure, RequestKind};
use tokio::sync::oneshot;

use self::pool::{Connector, HeadClock, Upstream, UpstreamError};
use crate::routes::{Route, UpstreamTarget};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Connectors by connect timeout.
type Connectors = Vec<(Duration, Arc<Connector>)>;

/// Forwards requests to upstreams.
#[derive(Clone)]
pub(crate) struct Proxy {
    /// One connector per connect timeout, created on first use (a handful at most).
    connectors: Arc<RwLock<Connectors>>,
    /// Longest a request body may go without a byte (`server.client_body_timeout`).
    body_idle: Duration,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and must not be
/// forwarded. `upgrade` and `connection` are re-added for protocol upgrades. On requests the
/// boundary (`client_headers`) has already removed these and every header `Connection` named,
/// before the gateway set its own; the proxy does not read `Connection` on requests, so a
/// client can never make it remove what the auth layer set.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    // Not in RFC 9110's list, but old clients and proxies send it as `Connection`'s twin; the
    // boundary already drops it from requests, and a response must not pass it on either.
    HeaderName::from_static("proxy-connection"),
];

impl Proxy {
    /// `body_idle`: how long a request body may stall (`X-Forwarded-*` come from the boundary).
    pub(crate) fn new(body_idle: Duration) -> Self {
        Self { connectors: Arc::default(), body_idle }
    }

    fn connector(&self, connect_timeout: Duration) -> Arc<Connector> {
        let found = |connectors: &Connectors| connectors.iter().find(|(t, _)| *t == connect_timeout).map(|(_, c)| c.clone());
        if let Some(connector) = found(&self.connectors.read().unwrap_or_else(|e| e.into_inner())) {
            return connector;
        }
        let mut connectors = self.connectors.write().unwrap_or_else(|e| e.into_inner());
        if let Some(connector) = found(&connectors) {
            return connector;
        }
        let connector = Arc::new(build_connector(connect_timeout));
        connectors.push((connect_timeout, connector.clone()));
        connector
    }

    /// Forwards `req` to `route`'s upstream.
    pub(crate) async fn forward(&self, route: &Route, mut req: Request<Body>) -> Response {
        // For the refusals; the headers it reads are not edited below.
        let kind = |req: &Request<Body>| RequestKind::of(req.headers());
        let settings = &route.config;
        let uri = match upstream_uri(&route.target, req.uri()) {
            Some(uri) => uri,
            None => return Failure::bad_request("bad_request_target", "The request path cannot be forwarded.").respond(kind(&req)),
        };
        if let Some(limit) = settings.max_request_body_bytes
            && content_length(req.headers()).is_some_and(|len| len > limit)
        {
            tracing::info!(route = %route.prefix, limit, "request body above the route's limit (Content-Length)");
            return too_large(limit).respond(kind(&req));
        }
        let kind = kind(&req);
        let upgrade = upgrade_protocol(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let headers = req.headers_mut();
        // The boundary removed them already (and re-adds the upgrade pair below): one scan
        // instead of eight removals (each a hash and a probe) on every request.
        if headers.keys().any(is_hop_by_hop) {
            for name in &HOP_BY_HOP {
                headers.remove(name);
            }
        }
        if let Some(protocol) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        // The upstream's own name, as hyper-util's client set it; the URI in origin form.
        headers.insert(header::HOST, route.target.host.clone());
        *req.uri_mut() = uri;
        // HTTP/2 from the browser, HTTP/1.1 to the upstream: the client picks the version.
        *req.version_mut() = http::Version::HTTP_11;

        // A request without a body is sent at once; one with a body is watched: its end starts
        // the response-head clock, and its size is held to the route's limit as it streams.
        let (body_sent, too_big) = if http_body::Body::is_end_stream(req.body()) {
            (None, None)
        } else {
            let (sent_tx, sent_rx) = oneshot::channel();
            let exceeded = Arc::new(AtomicU8::new(FLOWING));
            let body = std::mem::take(req.body_mut());
            let watched = Watched {
                inner: body,
                limit: settings.max_request_body_bytes,
                seen: 0,
                exceeded: exceeded.clone(),
                sent: Some(sent_tx),
                idle: Box::pin(tokio::time::sleep(self.body_idle)),
                idle_timeout: self.body_idle,
            };
            *req.body_mut() = Body::new(watched);
            (Some(sent_rx), Some(exceeded))
        };
        let upstream =
            Upstream { key: &route.target.key, origin: &route.target.origin, proxy: self, connect_timeout: settings.connect_timeout };
        let sent_at = tokio::time::Instant::now();
        let head = HeadClock { timeout: settings.response_header_timeout, started: sent_at, body_sent };
        let outcome = pool::send(upstream, req, too_big.clone(), head, client_upgrade.is_some()).await;
        let mut response = match outcome {
            Ok(response) => {
                route.metrics.upstream_answered(sent_at.elapsed());
                response
            }
            Err(UpstreamError::HeadTimeout) => {
                let timeout = settings.response_header_timeout;
                tracing::warn!(upstream = %route.upstream, route = %route.prefix, ?timeout, "upstream response head timed out");
                return timeout_failure("The application behind the gateway did not answer in time.").respond(kind);
            }
            Err(_) if too_big.as_ref().is_some_and(|e| e.load(Ordering::Relaxed) == EXCEEDED) => {
                let limit = settings.max_request_body_bytes.unwrap_or_default();
                tracing::info!(route = %route.prefix, limit, "request body above the route's limit (streamed)");
                return too_large(limit).respond(kind);
            }
            Err(_) if too_big.as_ref().is_some_and(|e| e.load(Ordering::Relaxed) == STALLED) => {
                tracing::info!(route = %route.prefix, timeout = ?self.body_idle, "request body stalled; request aborted");
                let mut failure = Failure::bad_request("request_body_timeout", "The request body stopped arriving.");
                failure.status = StatusCode::REQUEST_TIMEOUT;
                return failure.respond(kind);
            }
            Err(e) if is_connect_timeout(&e) => {
                tracing::warn!(upstream = %route.upstream, route = %route.prefix, timeout = ?settings.connect_timeout, "upstream connect timed out");
                return timeout_failure("The application behind the gateway could not be reached in time.").respond(kind);
            }
            Err(e) => {
                tracing::warn!(upstream = %route.upstream, error = %e, "upstream request failed");
                let mut failure = Failure::unavailable("upstream_unavailable", "The application behind the gateway did not answer.");
                failure.status = StatusCode::BAD_GATEWAY;
                return failure.respond(kind);
            }
        };

        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            return tunnel(response, client_upgrade, upstream_upgrade);
        }
        strip_hop_by_hop(response.headers_mut());
        response
    }
}

fn build_connector(connect_timeout: Duration) -> Connector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_platform_verifier().https_or_http().enable_http1().wrap_connector(http);
    ConnectTimeout { inner: https, timeout: connect_timeout }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn too_large(limit: u64) -> Failure {
    let mut failure =
        Failure::bad_request("request_body_too_large", format!("The request body is larger than this address accepts ({limit} bytes)."));
    failure.status = StatusCode::PAYLOAD_TOO_LARGE;
    failure
}

fn timeout_failure(message: &str) -> Failure {
    let mut failure = Failure::unavailable("upstream_timeout", message);
    failure.status = StatusCode::GATEWAY_TIMEOUT;
    failure
}

/// The connect phase (TCP, then TLS) took longer than the route allows.
#[derive(Debug, thiserror::Error)]
#[error("connecting to the upstream took longer than {0:?}")]
struct ConnectTimedOut(Duration);

fn is_connect_timeout(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::Connect(e) if e.downcast_ref::<ConnectTimedOut>().is_some())
}

/// A connector with a deadline on the whole connect (TCP and TLS); hyper-util's own
/// `set_connect_timeout` covers TCP only.
#[derive(Clone)]
struct ConnectTimeout<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower::Service<Uri> for ConnectTimeout<C>
where
    C: tower::Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimedOut(timeout)) as BoxError),
            }
        })
    }
}

/// The request body on its way to the upstream: streamed frame by frame (never buffered),
/// failed once it passes the route's limit (a chunked body announces no length), and telling
/// when it has been sent completely (the response-head clock starts then, as Go's
/// `ResponseHeaderTimeout` does: a slow upload is not a slow upstream).
///
/// It also holds the client to progress: a body that goes `server.client_body_timeout` without a
/// byte fails (408), so a client trickling a body (or announcing one and sending nothing) cannot
/// hold a connection, an upstream request and a connection permit forever.
struct Watched {
    inner: Body,
    limit: Option<u64>,
    seen: u64,
    /// How the body ended, for the answer: `FLOWING`, `EXCEEDED`, `STALLED`, or
    /// `pool::SENT` (whole: the connection may be reused).
    exceeded: Arc<AtomicU8>,
    sent: Option<oneshot::Sender<()>>,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
}

const FLOWING: u8 = 0;
const EXCEEDED: u8 = 1;
const STALLED: u8 = 2;

/// The client stopped sending its request body.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled")]
struct BodyStalled;

/// The stream passed the route's body limit.
#[derive(Debug, thiserror::Error)]
#[error("request body above the route's limit")]
struct BodyTooLarge;

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(deadline) = tokio::time::Instant::now().checked_add(this.idle_timeout) {
                    this.idle.as_mut().reset(deadline);
                }
                frame
            }
            Poll::Pending => {
                if this.idle.as_mut().poll(cx).is_ready() {
                    this.exceeded.store(STALLED, Ordering::Relaxed);
                    this.sent = None;
                    return Poll::Ready(Some(Err(axum::Error::new(BodyStalled))));
                }
                return Poll::Pending;
            }
        };
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.limit.is_some_and(|limit| this.seen > limit) {
                        this.exceeded.store(EXCEEDED, Ordering::Relaxed);
                        this.sent = None;
                        return Poll::Ready(Some(Err(axum::Error::new(BodyTooLarge))));
                    }
                }
                if this.inner.is_end_stream()
                    && let Some(sent) = this.sent.take()
                {
                    this.exceeded.store(pool::SENT, Ordering::Relaxed);
                    let _ = sent.send(());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                if let Some(sent) = this.sent.take() {
                    this.exceeded.store(pool::SENT, Ordering::Relaxed);
                    let _ = sent.send(());
                }
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                this.sent = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream request's URI, in origin form (the connection is already the upstream's):
/// the upstream's base path joined with the request's path, and the request's query.
fn upstream_uri(target: &UpstreamTarget, original: &Uri) -> Option<Uri> {
    let path_and_query = match (target.base_path.as_str(), original.path_and_query()) {
        ("", Some(pq)) => pq.clone(),
        ("", None) => PathAndQuery::from_static("/"),
        (base, pq) => format!("{base}{}", pq.map_or("/", |p| p.as_str())).parse().ok()?,
    };
    Some(Uri::from(path_and_query))
}

/// The protocol a client asks to upgrade to (`Connection: upgrade` + `Upgrade: websocket`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    wants_upgrade.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// One of [`HOP_BY_HOP`], by a match on the name (the array is a `const` of `HeaderName`s:
/// each use builds and drops it, which per header cost more than the check).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name.as_str()).is_some()
}

/// [`HOP_BY_HOP`] as text.
const HOP_BY_HOP_NAMES: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// The position of a (lowercase) name in [`HOP_BY_HOP`].
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-authenticate" => 2,
        "proxy-authorization" => 3,
        "te" => 4,
        "trailer" => 5,
        "transfer-encoding" => 6,
        "upgrade" => 7,
        "proxy-connection" => 8,
        _ => return None,
    })
}

/// Removes the hop-by-hop headers of an upstream response and those its `Connection` names.
/// Most upstreams send `Connection: keep-alive` and nothing else of the kind: one scan of the
/// names finds which hop-by-hop headers are there, the `Connection` tokens are read once, and
/// only what is present is removed (a removal per hop-by-hop name, and a token tested against
/// every header, cost ~2,000 instructions per response).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        // No `Connection` header either, so nothing is named.
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    if present & 1 != 0 {
        let tokens = headers.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim);
        for token in tokens {
            // Hop-by-hop names are removed below anyway; `close` and the like name no header.
            if token.is_empty() || HOP_BY_HOP_NAMES.iter().any(|h| h.eq_ignore_ascii_case(token)) {
                continue;
            }
            if let Some(name) = headers.keys().find(|k| k.as_str().eq_ignore_ascii_case(token)) {
                named.push(name.clone());
            }
        }
    }
    for name in &named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Answers 101 to the client and splices the two upgraded connections together.
fn tunnel(upstream_response: Response, client_upgrade: hyper::upgrade::OnUpgrade, upstream_upgrade: hyper::upgrade::OnUpgrade) -> Response {
    let (parts, _) = upstream_response.into_parts();
    tokio::spawn(async move {
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, upstream)) => {
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(upstream)).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    Response::from_parts(parts, Body::empty()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_base_path_and_keeps_query() {
        let cases = [("http://u:9000", "/a/b?x=1", "/a/b?x=1"), ("http://u:9000/base/", "/a?x", "/base/a?x"), ("https://u", "/", "/")];
        for (upstream, path, expected) in cases {
            let route = Route::new("/".into(), upstream.parse().unwrap(), portcullis::config::Unauthenticated::Login);
            let got = upstream_uri(&route.target, &path.parse().unwrap()).unwrap();
            assert_eq!(got.to_string(), expected);
        }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret-Hop, , close".parse().unwrap());
        h.append(header::CONNECTION, "x-other-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("x-other-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["x-kept"]);
    }

    #[test]
    fn the_hop_by_hop_match_is_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
            assert_eq!(HOP_BY_HOP_NAMES[i], name.as_str());
        }
        for name in [header::HOST, header::CONTENT_LENGTH, header::COOKIE, HeaderName::from_static("x-te")] {
            assert!(!is_hop_by_hop(&name), "{name}");
        }
    }
}
