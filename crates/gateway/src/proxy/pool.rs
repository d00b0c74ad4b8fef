//! Upstream connections: HTTP/1.1 keep-alive connections on `hyper::client::conn`, kept idle
//! per worker thread and driven by the request that uses them.
//!
//! hyper-util's pooled client ran every upstream connection as a task of its own: each request
//! went to it through a channel (often to the other worker thread) and its answer came back
//! through a oneshot, behind a pool mutex and a checkout future. Here the request's own task
//! polls the connection while it waits for the response head, and the response body polls it
//! while the body streams: no task per connection, no wakeup of another task per request. An
//! idle connection sits in the pool of the worker thread that finished with it; the next
//! request on that thread takes it (newest first), after one poll that notices an upstream
//! that closed it meanwhile.
//!
//! What the pool keeps of the legacy client's behaviour: keep-alive with at most
//! [`MAX_IDLE_PER_UPSTREAM`] idle connections per upstream and thread, [`IDLE_TIMEOUT`] idle at
//! most, a request that a reused connection could not send (closed under it) retried once on
//! a fresh connection. An upgrade (WebSocket) gets a connection of its own, never pooled,
//! driven by a task of its own that gives its socket to the 101's `OnUpgrade`.

use std::{
    cell::RefCell,
    future::{Future, poll_fn},
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use tokio::{sync::oneshot, time::Sleep};
use tower::ServiceExt;

use super::{BoxError, ConnectTimeout};

/// The socket to an upstream: TCP, or TLS over TCP.
type Io = hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
/// The connector: TCP and TLS under one deadline.
pub(super) type Connector = ConnectTimeout<hyper_rustls::HttpsConnector<HttpConnector>>;
type Driver = http1::Connection<Io, Body>;

/// Idle connections kept per upstream and worker thread.
const MAX_IDLE_PER_UPSTREAM: usize = 256;
/// How long a connection may stay idle before it is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The request body was sent whole (the connection may serve another request once the
/// response has ended too). Beside `FLOWING`/`EXCEEDED`/`STALLED` in the proxy's body state.
pub(super) const SENT: u8 = 3;

/// One connection: the handle requests are sent on, and the connection itself, which must be
/// polled for anything to move.
struct Conn {
    sender: SendRequest<Body>,
    driver: Driver,
    /// The response-head clock of the request in flight, kept with the connection and reset
    /// per request: a reset to a later deadline only moves the timer's due time (one atomic
    /// compare-and-swap, tokio's `extend_expiration`), where a fresh `Sleep` per request
    /// inserted into and removed from the timer wheel (~1,100 instructions per request).
    head_timer: Pin<Box<Sleep>>,
}

impl Conn {
    /// Polls the connection; `true` once it has ended (closed or failed).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.driver).poll(cx).is_ready()
    }
}

struct Idle {
    key: Arc<str>,
    /// Boxed: a connection (buffers, TLS state) is kilobytes, moved at every checkout, send
    /// and checkin; measured under callgrind, unboxed moves cost more than the pool saved.
    conn: Box<Conn>,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// The newest idle connection to `key` on this thread, dropping those past [`IDLE_TIMEOUT`].
///
/// The list is in checkin order, oldest first (connections are appended and removed without
/// reordering), so the expired ones are a prefix and the newest match is found from the back:
/// with one upstream that is the last entry. A scan of every idle connection (with a clock
/// difference each) cost ~3,000 instructions per request with 60 idle connections (callgrind).
fn checkout(key: &str) -> Option<Box<Conn>> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        if idle.is_empty() {
            return None;
        }
        let now = Instant::now();
        let expired = |i: &Idle| now.duration_since(i.since) >= IDLE_TIMEOUT;
        if expired(&idle[0]) {
            let n = idle.partition_point(expired);
            idle.drain(..n);
        }
        let at = idle.iter().rposition(|i| &*i.key == key)?;
        Some(idle.remove(at).conn)
    })
}

fn checkin(key: Arc<str>, conn: Box<Conn>) {
    if conn.sender.is_closed() {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        // Counted only when the list could hold the cap for this upstream.
        if idle.len() >= MAX_IDLE_PER_UPSTREAM && idle.iter().filter(|i| i.key == key).count() >= MAX_IDLE_PER_UPSTREAM {
            return;
        }
        idle.push(Idle { key, conn, since: Instant::now() });
    });
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    /// No connection could be made (TCP or TLS, or their deadline).
    #[error("connect: {0}")]
    Connect(BoxError),
    /// The connection failed while the request was sent or the response head read.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// No response head within the route's `response_header_timeout` (counted from the request
    /// handed to the pool, or from the end of its body).
    #[error("no response head in time")]
    HeadTimeout,
}

/// Where requests go: the pool key (scheme and authority) and how to connect when the pool
/// has no idle connection.
pub(super) struct Upstream<'a> {
    pub(super) key: &'a Arc<str>,
    /// `scheme://authority`, for the connector.
    pub(super) origin: &'a Uri,
    pub(super) proxy: &'a super::Proxy,
    pub(super) connect_timeout: Duration,
}

/// Sends `req` (origin-form URI, `Host` set) on a pooled connection to `upstream`, or a new
/// one. `body_state` is the request body's (its end lets the connection be reused); `upgrade`:
/// the client asked for one, the request gets a connection of its own. Resolves with the response head; the body
/// keeps the connection moving.
pub(super) async fn send(
    upstream: Upstream<'_>,
    mut req: Request<Body>,
    body_state: Option<Arc<AtomicU8>>,
    mut head: HeadClock,
    upgrade: bool,
) -> Result<Response<Body>, UpstreamError> {
    if upgrade {
        // Boxed, as the connect below: rare paths whose futures (the handshake holds the
        // socket and TLS state) would otherwise make every request's future that much larger,
        // and each move of it (hyper's dispatcher, the access log's box) that much dearer.
        return Box::pin(send_upgrade(&upstream, req, head)).await;
    }
    let mut reused = checkout(upstream.key);
    loop {
        let fresh = reused.is_none();
        let mut conn = match reused.take() {
            Some(conn) => conn,
            None => Box::pin(connect(&upstream)).await?,
        };
        // Ready: a reused connection that the upstream closed while it was idle ends here.
        let ready = poll_fn(|cx| {
            if conn.drive(cx) {
                return Poll::Ready(false);
            }
            conn.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await;
        if !ready {
            if fresh {
                return Err(UpstreamError::Connect("the upstream closed the new connection".into()));
            }
            reused = checkout(upstream.key);
            continue;
        }
        let mut sending = pin!(conn.sender.try_send_request(req));
        let mut ended = false;
        head.start(&mut conn.head_timer);
        let outcome = poll_fn(|cx| {
            if !ended {
                ended = conn.drive(cx);
            }
            match sending.as_mut().poll(cx) {
                Poll::Ready(outcome) => Poll::Ready(Some(outcome)),
                Poll::Pending => head.expired(&mut conn.head_timer, cx).map(|()| None),
            }
        })
        .await;
        // Past the deadline: the connection is dropped (closed), a late answer must not be
        // read as the next request's.
        let Some(outcome) = outcome else { return Err(UpstreamError::HeadTimeout) };
        let response = match outcome {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                // Never written: the connection was closed under it. Once more, on a fresh one.
                Some(unsent) if !fresh => {
                    req = unsent;
                    continue;
                }
                _ => return Err(e.into_error().into()),
            },
        };
        let keep = (!ended).then(|| (upstream.key.clone(), conn));
        return Ok(response.map(|body| Body::new(Pooled { body, conn: keep, request_body: body_state, done: false })));
    }
}

/// An upgrade (WebSocket) request, on a connection of its own.
async fn send_upgrade(upstream: &Upstream<'_>, req: Request<Body>, mut head: HeadClock) -> Result<Response<Body>, UpstreamError> {
    let io = connect_io(upstream).await?;
    let (mut sender, driver) = http1::Builder::new().handshake(io).await?;
    // Driven to its end by its own task: after a 101 it hands the socket to the
    // response's `OnUpgrade`; after any other answer it just closes.
    tokio::spawn(driver.with_upgrades());
    let mut sending = pin!(sender.send_request(req));
    let mut timer = Box::pin(tokio::time::sleep_until(head.started));
    head.start(&mut timer);
    let outcome = poll_fn(|cx| match sending.as_mut().poll(cx) {
        Poll::Ready(outcome) => Poll::Ready(Some(outcome)),
        Poll::Pending => head.expired(&mut timer, cx).map(|()| None),
    })
    .await;
    match outcome {
        Some(response) => Ok(response?.map(Body::new)),
        None => Err(UpstreamError::HeadTimeout),
    }
}

async fn connect_io(upstream: &Upstream<'_>) -> Result<Io, UpstreamError> {
    let connector = Connector::clone(&upstream.proxy.connector(upstream.connect_timeout));
    connector.oneshot(upstream.origin.clone()).await.map_err(UpstreamError::Connect)
}

async fn connect(upstream: &Upstream<'_>) -> Result<Box<Conn>, UpstreamError> {
    let io = connect_io(upstream).await?;
    let (sender, driver) = http1::Builder::new().handshake(io).await?;
    // Armed by the first request (`HeadClock::start`); a `Sleep` registers nothing until polled.
    let head_timer = Box::pin(tokio::time::sleep_until(tokio::time::Instant::now()));
    Ok(Box::new(Conn { sender, driver, head_timer }))
}

/// The response-head clock of one request: it starts when the proxy hands the request to the
/// pool (`started`: before a connection is checked out or made) or, for a request with a
/// body, when the body has been sent whole (`body_sent`, from the proxy's body watcher; an
/// error or a dropped body starts it too), as Go's `ResponseHeaderTimeout` does: a slow
/// upload is not a slow upstream.
pub(super) struct HeadClock {
    pub(super) timeout: Duration,
    /// When the request was handed over (the proxy's clock read for the metrics, reused).
    pub(super) started: tokio::time::Instant,
    pub(super) body_sent: Option<oneshot::Receiver<()>>,
}

impl HeadClock {
    /// Arms `timer` for a request without a body (one with a body arms it when the body ends).
    fn start(&mut self, timer: &mut Pin<Box<Sleep>>) {
        if self.body_sent.is_none() {
            let deadline = deadline(self.started, self.timeout);
            timer.as_mut().reset(deadline);
        }
    }

    /// Ready once the deadline has passed; arms `timer` when the request body ends.
    fn expired(&mut self, timer: &mut Pin<Box<Sleep>>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(sent) = &mut self.body_sent {
            if Pin::new(sent).poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.body_sent = None;
            timer.as_mut().reset(deadline(tokio::time::Instant::now(), self.timeout));
        }
        timer.as_mut().poll(cx)
    }
}

/// `from + timeout`, or about 30 years from now for a timeout too large to add (as
/// `tokio::time::sleep` does).
fn deadline(from: tokio::time::Instant, timeout: Duration) -> tokio::time::Instant {
    from.checked_add(timeout).unwrap_or_else(|| from + Duration::from_secs(86_400 * 365 * 30))
}

/// A response body from a pooled connection: polls the connection as it streams, and gives
/// the connection back to this thread's pool once the response (and the request body) ended.
struct Pooled {
    body: Incoming,
    conn: Option<(Arc<str>, Box<Conn>)>,
    request_body: Option<Arc<AtomicU8>>,
    /// The last frame was read.
    done: bool,
}

impl http_body::Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some((_, conn)) = &mut this.conn
            && conn.drive(cx)
        {
            this.conn = None;
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.done = true,
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        // Back to the pool as soon as the last frame is read, not when the server drops the
        // body after writing it: by then the client may have sent its next request, which
        // would find no idle connection and open another.
        if this.finished() {
            this.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Pooled {
    /// The exchange is over on both sides: the response read to its end, the request body sent.
    fn finished(&self) -> bool {
        (self.done || self.body.is_end_stream()) && self.request_body.as_ref().is_none_or(|s| s.load(Ordering::Relaxed) == SENT)
    }

    fn give_back(&mut self) {
        if let Some((key, conn)) = self.conn.take() {
            checkin(key, conn);
        }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // Reused only when the exchange is over on both sides; a body dropped half-read
        // closes its connection (the rest of it would be read as the next response).
        if self.finished() {
            self.give_back();
        }
    }
}
