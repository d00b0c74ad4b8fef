//! The accept loop and the life of one client connection: what `axum::serve` did, plus the
//! limits it has no knobs for (issue 7, slow and abusive clients).
//!
//! - **Connection limit** (`server.max_connections`): a semaphore permit is taken *before*
//!   `accept`, so connection number N+1 waits in the kernel's listen backlog instead of being
//!   accepted and then starved. The permit lives inside the socket wrapper, so an upgraded
//!   (WebSocket) connection keeps holding it until the socket closes.
//! - **Head and idle clocks** (`server.header_read_timeout`, `server.keep_alive_timeout`): see
//!   [`Clock`]. hyper 1.x has one HTTP/1 timer, `header_read_timeout`, armed both when a
//!   connection opens and whenever it goes idle after a response, so it cannot tell "slow head"
//!   from "idle keep-alive": with it, idle connections would close after the (short) head
//!   timeout. It is switched off here and both clocks are kept per connection instead.
//! - **Head size** (`server.max_header_bytes`): HTTP/1 `max_buf_size` (hyper answers `431` and
//!   closes when the read buffer fills before the head is complete); HTTP/2
//!   `max_header_list_size` (advertised in SETTINGS; the h2 crate refuses a larger header
//!   list on that stream).
//! - **HTTP/2 limits**: `max_concurrent_streams` (`server.h2_max_concurrent_streams`, advertised
//!   in SETTINGS), `max_pending_accept_reset_streams` and `max_local_error_reset_streams` (a
//!   client that opens and resets streams faster than they are served, CVE-2023-44487 "rapid
//!   reset", or provokes resets, gets GOAWAY), and PING keep-alive on busy connections so a
//!   dead peer does not pin its streams forever.
//! - Errors on one connection are logged at debug and end that connection only; an `accept`
//!   error such as EMFILE backs off (50 ms doubling to 1 s) instead of spinning.
//! - Shutdown: stop accepting (the listener is closed), ask every connection to finish
//!   gracefully (HTTP/1: after the response in flight; HTTP/2: GOAWAY), wait for them at most
//!   `server.drain_timeout`, then close what is left.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{FutureExt as _, task::AtomicWaker};
use http::{Request, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
};
use portcullis::config::ServerConfig;

use crate::access_log::AccessLog as Gateway;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::JoinSet,
    time::Instant,
};

/// After the gateway asked a connection to close (idle, or HTTP/2 past its head clock), it
/// gets this long to say GOAWAY and finish before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Accepts and serves connections on `listener` until `shutdown` resolves, then waits for the
/// connections in flight to finish, at most `server.drain_timeout`.
pub(super) async fn serve(
    listener: TcpListener,
    router: Gateway,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let builder = Arc::new(builder(limits));
    let clocks =
        ClockSettings { header_read: limits.header_read_timeout, keep_alive: limits.keep_alive_timeout, send: limits.send_timeout };
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    let mut backoff = Duration::ZERO;
    loop {
        // The permit first: past the limit, connections stay in the backlog, not accepted.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::ZERO;
                accepted
            }
            // The client gave up between SYN and accept: nothing wrong with us.
            Err(e) if is_connection_error(&e) => continue,
            // EMFILE, ENFILE, ENOMEM…: accepting again at once would spin on the same error.
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot accept connections");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        // TCP_NODELAY: responses are written whole, and Nagle would hold back the last segment
        // of each one until the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(builder.clone(), stream, peer, permit, router.clone(), clocks, stop_rx.clone()));
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let in_flight = connections.len();
    tracing::info!(connections = in_flight, drain_timeout = ?limits.drain_timeout, "not accepting; waiting for connections in flight");
    let drained = tokio::time::timeout(limits.drain_timeout, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        // Past the drain timeout: whatever is still open (a long download, a WebSocket, a
        // request waiting on a slow upstream) is cut, so the process exits before the
        // orchestrator's SIGKILL would cut it anyway, and after the leases are released.
        tracing::warn!(connections = connections.len(), "drain timeout: closing the connections still open");
        connections.shutdown().await;
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

/// HTTP/1 and HTTP/2 (prior knowledge), with the limits of `server.*`.
fn builder(limits: &ServerConfig) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        // Our own clocks (see the module doc); hyper's would close idle connections early.
        .header_read_timeout(None)
        // One buffer per write (head and body copied together) rather than a vectored write of
        // queued buffers: for the usual small answer, one `write` of one slice, without building
        // an array of 64 `IoSlice`s per flush (~640 instructions per request, callgrind). A
        // download pays one copy of each body chunk into the buffer, small next to the syscall.
        .writev(false)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(limits.keep_alive_timeout)
        .keep_alive_timeout(Duration::from_secs(20));
    // Extended CONNECT (RFC 8441, WebSocket over HTTP/2) is not advertised: the proxy speaks
    // HTTP/1.1 upstream, where hyper-util turns a CONNECT into `CONNECT host:port` and drops the
    // path the route table matched. Browsers fall back to WebSocket over HTTP/1.1.
    builder
}

/// Serves one connection until it ends, its clock runs out, or the gateway stops.
async fn connection(
    builder: Arc<Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    router: Gateway,
    settings: ClockSettings,
    mut stop: watch::Receiver<bool>,
) {
    let clock = Arc::new(Clock::new(settings));
    let io = TokioIo::new(Metered { inner: stream, clock: clock.clone(), _permit: permit });
    let service_clock = clock.clone();
    let peer_info = crate::client_headers::Peer::new(peer.ip());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_flight = service_clock.request_started(req.version() == Version::HTTP_2);
        // The peer, for the boundary (`X-Forwarded-For`, `trusted_proxies`), formatted once per
        // connection, passed by reference (an extension would cost two allocations per request).
        let response = router.serve(req, Some(&peer_info));
        // `map`, not `async move { response.await … }`: an async block keeps the future it awaits
        // twice (captured, then moved to the await), which doubles what hyper copies when it
        // takes the request's future into its dispatcher.
        response.map(move |response| Ok::<_, Infallible>(response.map(|body| Tracked { body, in_flight: Some(in_flight) })))
    });
    let mut conn = pin!(builder.serve_connection_with_upgrades(io, service));
    let mut closing = false;
    let mut grace: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = Gated::new(stop.changed()), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            expiry = Gated::new(clock.expired()), if grace.is_none() => {
                // HTTP/1 past its head clock: a slow or stalled client, dropped at once (hyper's
                // graceful shutdown would wait for the head it is still reading).
                // A client that stopped reading gets no goodbye it would not read either.
                if closing || expiry == Expiry::Send || (expiry == Expiry::Head && !clock.is_h2()) {
                    tracing::debug!(%peer, ?expiry, "closing the connection: its clock ran out");
                    break;
                }
                // Idle, or HTTP/2 without a request in time: GOAWAY, so a client that raced a
                // new request knows it was not processed and may retry it.
                tracing::debug!(%peer, ?expiry, "asking the connection to close: its clock ran out");
                closing = true;
                conn.as_mut().graceful_shutdown();
                grace = Some(Instant::now() + CLOSE_GRACE);
            }
            () = tokio::time::sleep_until(grace.unwrap_or_else(Instant::now)), if grace.is_some() => {
                if clock.is_idle() {
                    break;
                }
                // A request made it in before GOAWAY: let it finish; the clock ends the
                // connection once it is idle again.
                grace = None;
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ClockSettings {
    header_read: Duration,
    keep_alive: Duration,
    send: Duration,
}

impl ClockSettings {
    /// How often an idle or busy connection looks at its clock: a limit is enforced at most
    /// this late. 10 ms at least, so a tiny test timeout does not spin.
    fn tick(&self) -> Duration {
        (self.header_read.min(self.keep_alive).min(self.send) / 4).max(Duration::from_millis(10))
    }
}

/// Which limit a connection ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request head was not complete within `header_read_timeout` (counted from the
    /// connection's start, or from the first byte after an idle period).
    Head,
    /// No request for `keep_alive_timeout` after the last response.
    Idle,
    /// A write to the client made no progress for `send_timeout`: the client stopped reading.
    Send,
}

/// The per-connection clock: in flight (no limit here: bodies and upstream time have their own),
/// reading a head (since when), or idle (since when).
///
/// - A new connection must deliver a complete request head within `header_read_timeout`, as
///   nginx's `client_header_timeout` (a client that connects and sends nothing, or half a head,
///   is dropped: slowloris).
/// - Between requests, an idle connection is closed after `keep_alive_timeout`; the first
///   byte of a next HTTP/1 request starts the head clock again.
/// - HTTP/2 carries frames other than heads on an idle connection (WINDOW_UPDATE, PING
///   acknowledgements), so there only the idle clock runs between requests; head size and
///   stream abuse are the h2 limits' job.
///
/// "In flight" lasts from the request head until the response body has ended or been
/// dropped, so a long download or event stream is not idle. Pipelined HTTP/1 requests read
/// ahead while one is in flight start their head clock only once the connection is idle.
///
/// The clock is read, not pushed: the connection's task checks it every `tick` (a quarter of the
/// shorter limit) instead of being notified of every request start and end. A notification per
/// request woke the connection's own task once more per request, and re-armed a timer each
/// idle spell: measured under callgrind, that was a large share of the hot path's added cost
/// (BENCHMARKS.md). The price is precision: a limit is enforced up to one tick late.
struct Clock {
    settings: ClockSettings,
    state: Mutex<ClockState>,
    /// Since when a write to the client has been blocked (the socket's buffer full: the client
    /// does not read), in milliseconds after `epoch` plus one; 0 while writes get through. An
    /// atomic beside the mutex: every write touches it, and only a blocked one writes it.
    write_blocked_since: AtomicU64,
    epoch: Instant,
}

struct ClockState {
    in_flight: usize,
    h2: bool,
    head_since: Option<Instant>,
    idle_since: Instant,
}

impl Clock {
    fn new(settings: ClockSettings) -> Self {
        let now = Instant::now();
        Self {
            settings,
            state: Mutex::new(ClockState { in_flight: 0, h2: false, head_since: Some(now), idle_since: now }),
            write_blocked_since: AtomicU64::new(0),
            epoch: now,
        }
    }

    /// A write to the client could not take a byte.
    fn write_blocked(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) == 0 {
            let since = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
            self.write_blocked_since.store(since, Ordering::Relaxed);
        }
    }

    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Pending => self.write_blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.write_progressed(),
            Poll::Ready(_) => {}
        }
    }

    /// A write to the client took bytes.
    fn write_progressed(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) != 0 {
            self.write_blocked_since.store(0, Ordering::Relaxed);
        }
    }

    /// When the blocked write, if any, runs out of `send_timeout`.
    fn send_deadline(&self) -> Option<Instant> {
        match self.write_blocked_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(self.epoch + Duration::from_millis(since - 1) + self.settings.send),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_h2(&self) -> bool {
        self.state().h2
    }

    fn is_idle(&self) -> bool {
        self.state().in_flight == 0
    }

    /// Bytes arrived from the client.
    fn bytes_read(&self) {
        let mut state = self.state();
        if state.in_flight == 0 && state.head_since.is_none() && !state.h2 {
            state.head_since = Some(Instant::now());
        }
    }

    /// A request head was parsed; the returned guard ends the request when dropped.
    fn request_started(self: &Arc<Self>, h2: bool) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.head_since = None;
        state.h2 |= h2;
        drop(state);
        InFlight(self.clone())
    }

    fn request_ended(&self) {
        let mut state = self.state();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
        }
    }

    fn deadline(&self) -> Option<(Instant, Expiry)> {
        // A blocked write counts in flight and idle alike: the last bytes of a response may
        // still sit in the connection's buffer after its body ended.
        let send = self.send_deadline().map(|at| (at, Expiry::Send));
        let state = self.state();
        let other = if state.in_flight > 0 {
            None
        } else {
            Some(match state.head_since {
                Some(since) => (since + self.settings.header_read, Expiry::Head),
                None => (state.idle_since + self.settings.keep_alive, Expiry::Idle),
            })
        };
        match (send, other) {
            (Some(send), Some(other)) => Some(if send.0 <= other.0 { send } else { other }),
            (send, other) => send.or(other),
        }
    }

    /// Resolves once the connection has passed its current deadline, checked every tick.
    /// Cancel-safe: it holds no state of its own.
    async fn expired(&self) -> Expiry {
        let tick = self.settings.tick();
        loop {
            match self.deadline() {
                Some((at, expiry)) if at <= Instant::now() => return expiry,
                // Sleep to the deadline when it is near, else one tick: a head may start (or a
                // request begin or end) meanwhile, and the next check sees it.
                Some((at, _)) => tokio::time::sleep_until(at.min(Instant::now() + tick)).await,
                None => tokio::time::sleep(tick).await,
            }
        }
    }
}

/// A future polled only when its own waker fired (and once at the start), for the branches of
/// the connection's `select!` beside the connection itself. `select!` polls every branch each
/// time the task wakes, and the task wakes several times per request for the connection's
/// sockets: re-polling the stop signal (a `Notify` waiter list behind a mutex) and the clock's
/// timer on each of those wakes cost ~800 instructions per request (callgrind). Gated, a wake
/// that was not theirs costs one atomic swap.
struct Gated<F> {
    inner: Pin<Box<F>>,
    flag: Arc<WakeFlag>,
    waker: Waker,
}

/// Set when the gated future's waker fires; the task's own waker is woken with it.
struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Gated<F> {
    fn new(inner: F) -> Self {
        let flag = Arc::new(WakeFlag { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        Self { inner: Box::pin(inner), waker: Waker::from(flag.clone()), flag }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the flag is read: a wake between the two is not lost.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        this.inner.as_mut().poll(&mut Context::from_waker(&this.waker))
    }
}

/// One request in flight on a connection.
struct InFlight(Arc<Clock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that ends its request (on the clock) when it ends or is dropped.
struct Tracked<B> {
    body: B,
    in_flight: Option<InFlight>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client socket, telling the clock when bytes arrive; holds the connection's permit for
/// as long as the socket lives (including after an upgrade).
struct Metered {
    inner: TcpStream,
    clock: Arc<Clock>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Metered {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.clock.wrote(&polled);
        polled
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.clock.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
