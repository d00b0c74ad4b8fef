//! The access log and the request id: the outermost wrapper of the gateway.
//!
//! - **Request id.** `X-Request-Id` from a peer in `trusted_proxies` is kept when it is
//!   1–128 visible ASCII characters (the front proxy's id, so one id follows the request through
//!   every hop); from anyone else, or when it is not such a value, the gateway makes its own.
//!   The id is the one `X-Request-Id` the upstream receives (the boundary removes any other
//!   spelling, `client_headers`) and the one the client gets back.
//! - **Access line.** One event per request, target `portcullis::access`, level `info`:
//!   method, route (its name, never the path: paths carry ids and, in queries, tokens), status,
//!   duration until the response head, user (the `oidc.user_claim` value, `-` when anonymous),
//!   request id, peer address. The route and the caller are learnt from the inner steps through
//!   a [`RequestNote`] in the request's extensions (the gateway's own endpoints are named by
//!   their fixed paths); when the filter turns the line off, no note
//!   is made and nothing is formatted.
//!
//! The duration stops when the response head is ready: bodies (and upgraded connections)
//! stream afterwards and may last as long as the client reads. A client that goes away before
//! the answer gets a line with status 499 (nginx's "client closed request").

use std::{
    future::Future,
    net::IpAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::response::Response;
use futures_util::FutureExt as _;
use http::{HeaderName, HeaderValue, Request};
use portcullis::{auth::Caller, config::Config, config::RouteConfig};

use crate::{boundary::Gateway, client_headers::Peer};

/// The request id header, in the spelling the gateway sets (the only one that passes).
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a trusted proxy (a UUID is 36, a W3C trace id 32).
const MAX_ID_LEN: usize = 128;

/// Target of the access lines: `level = "warn,portcullis::access=info"` keeps them alone.
pub(crate) const TARGET: &str = "portcullis::access";

/// The gateway with its access log and request ids.
#[derive(Clone)]
pub(crate) struct AccessLog {
    trusted_proxies: Arc<[ipnet::IpNet]>,
    gateway: Gateway,
}

impl AccessLog {
    pub(crate) fn new(config: &Config, gateway: Gateway) -> Self {
        Self { trusted_proxies: config.trusted_proxies.clone().into(), gateway }
    }

    /// Answers one request: the id decided and set, the gateway's answer, the id returned,
    /// the line logged. Not boxed: the gateway boxes the large part of its future itself (see
    /// [`Gateway::serve_unboxed`]), and what is left here is small enough to move.
    pub(crate) fn serve<B>(&self, mut req: Request<B>, peer_info: Option<&Peer>) -> impl Future<Output = Response> + Send + use<B>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let peer = peer_info.map(|p| p.ip);
        let id = RequestId::for_request(&req, peer.is_some_and(|ip| self.trusted_proxies.iter().any(|net| net.contains(&ip))));
        // One value for both messages: the response's copy is a reference-count increment,
        // not a second allocation and validation.
        let value = id.header_value();
        req.headers_mut().insert(X_REQUEST_ID, value.clone());
        // Only when the line will be written: the note costs an allocation per request, the
        // start a clock read.
        let mut line = tracing::enabled!(target: TARGET, tracing::Level::INFO).then(|| {
            let note = Arc::new(RequestNote::default());
            req.extensions_mut().insert(note.clone());
            let endpoint = endpoint_label(req.uri().path());
            Line { note, method: req.method().clone(), endpoint, id, peer, started: Instant::now(), status: None }
        });
        let answer = self.gateway.serve_unboxed(req, peer_info);
        // `map`, not an async block: see the service in `server/connections.rs`.
        answer.map(move |mut response| {
            response.headers_mut().insert(X_REQUEST_ID, value);
            if let Some(line) = &mut line {
                line.status = Some(response.status().as_u16());
            }
            response
        })
    }
}

/// One request's access line, written when it is dropped: after the answer, or when the client
/// went away first and the request's future was dropped (status 499, nginx's "client closed
/// request"), so an abandoned request is logged too.
struct Line {
    note: Arc<RequestNote>,
    method: http::Method,
    endpoint: &'static str,
    id: RequestId,
    peer: Option<IpAddr>,
    started: Instant,
    status: Option<u16>,
}

impl Drop for Line {
    fn drop(&mut self) {
        tracing::info!(
            target: TARGET,
            method = %self.method,
            route = self.note.route.get().map_or(self.endpoint, |r| r.label()),
            status = self.status.unwrap_or(499),
            duration_ms = (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            // A `&str` field: quoted and escaped by both formats (the claim is the OP's text
            // and may hold anything, a newline too).
            user = self.note.caller.get().map_or("-", |c| c.identity().user.as_str()),
            request_id = self.id.as_str(),
            peer = %DisplayPeer(self.peer),
            "request"
        );
    }
}

/// What the inner steps learn about a request, for its access line: the route (set by the
/// route selection) and the caller (set by the forward step, which runs after authentication
/// and authorization). First writer wins.
#[derive(Debug, Default)]
pub(crate) struct RequestNote {
    route: OnceLock<Arc<RouteConfig>>,
    caller: OnceLock<Caller>,
}

/// Tells the access log the request's route (route selection).
pub(crate) fn note_route<B>(req: &Request<B>, route: &Arc<RouteConfig>) {
    if let Some(note) = req.extensions().get::<Arc<RequestNote>>() {
        let _ = note.route.set(route.clone());
    }
}

/// The gateway's own endpoints, named by their path: a fixed set, so the label stays bounded.
/// Read from the path as the client sent it (the boundary has not run yet): a non-canonical
/// spelling of an endpoint is labelled `-`, never something the client made up.
fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/oauth2/start" => "/oauth2/start",
        "/oauth2/callback" => "/oauth2/callback",
        "/oauth2/sign_out" => "/oauth2/sign_out",
        "/oauth2/userinfo" => "/oauth2/userinfo",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        p if p == "/oauth2/auth" || p.starts_with("/oauth2/auth/") => "/oauth2/auth",
        // No route matched (404) or the path was refused (400).
        _ => "-",
    }
}

/// Tells the access log who the caller is (the forward step, where `Caller` is known).
pub(crate) fn note_caller<B>(req: &Request<B>, caller: &Caller) {
    if let Some(note) = req.extensions().get::<Arc<RequestNote>>() {
        let _ = note.caller.set(caller.clone());
    }
}

/// A request's id: the trusted proxy's, or one made here.
#[derive(Debug, Clone)]
pub(crate) enum RequestId {
    /// From a trusted proxy's `X-Request-Id`, checked by [`acceptable`].
    Forwarded(HeaderValue),
    /// Made here: see [`RequestId::generate`].
    Generated([u8; 32]),
}

impl RequestId {
    fn for_request<B>(req: &Request<B>, trusted: bool) -> Self {
        match req.headers().get(&X_REQUEST_ID) {
            Some(value) if trusted && acceptable(value.as_bytes()) => Self::Forwarded(value.clone()),
            _ => Self::generate(),
        }
    }

    /// 32 hex digits: a random per-process prefix (so ids from several instances and restarts
    /// do not collide) and a counter. Not a secret and not meant to be unguessable: an id says
    /// which log lines belong together, nothing more.
    pub(crate) fn generate() -> Self {
        // The prefix's digits, written once per process.
        static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = PREFIX.get_or_init(|| {
            let mut seed = [0u8; 8];
            // A failed draw only costs uniqueness across instances, never correctness here.
            let _ = aws_lc_rs::rand::fill(&mut seed);
            let mut digits = [0u8; 16];
            hex(u64::from_le_bytes(seed), &mut digits);
            digits
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 32];
        id[..16].copy_from_slice(prefix);
        hex(n, &mut id[16..]);
        Self::Generated(id)
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // `acceptable` let only visible ASCII through.
            Self::Forwarded(value) => value.to_str().unwrap_or("-"),
            Self::Generated(id) => std::str::from_utf8(id).expect("hex digits"),
        }
    }

    fn header_value(&self) -> HeaderValue {
        match self {
            Self::Forwarded(value) => value.clone(),
            Self::Generated(id) => HeaderValue::from_bytes(id).expect("hex digits are a header value"),
        }
    }
}

/// A request id worth keeping: 1 to [`MAX_ID_LEN`] visible ASCII characters (no space, no
/// control character, nothing a log line or a header could be split on).
pub(crate) fn acceptable(id: &[u8]) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && id.iter().all(|b| b.is_ascii_graphic())
}

fn hex(mut n: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

struct DisplayPeer(Option<IpAddr>);

impl std::fmt::Display for DisplayPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_visible_ascii_ids_are_kept() {
        for good in ["a", "0f8fad5b-d9cb-469f-a165-70867728950e", "req:1/2+3=", &"x".repeat(MAX_ID_LEN)] {
            assert!(acceptable(good.as_bytes()), "{good:?}");
        }
        for bad in ["", "a b", "a\tb", "caf\u{e9}", "a\u{7f}", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(!acceptable(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_distinct_hex_of_one_shape() {
        let (a, b) = (RequestId::generate(), RequestId::generate());
        assert_ne!(a.as_str(), b.as_str());
        for id in [&a, &b] {
            assert_eq!(id.as_str().len(), 32);
            assert!(id.as_str().bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            assert!(acceptable(id.as_str().as_bytes()));
        }
        assert_eq!(a.as_str()[..16], b.as_str()[..16], "one prefix per process");
    }
}
