//! Headers the gateway owns. Runs in the boundary, before routing, the auth layer and the
//! proxy, in one pass over the request's header map:
//!
//! 1. Removed, whatever their spelling (`_` for `-`, any case; the rule is the library's
//!    [`identity_headers::classify`], so the gateway and `AuthLayer` cannot drift apart):
//!    the identity headers and `X-Auth-Request-*`, the whole `X-Forwarded-*` family,
//!    `Forwarded`, `X-Real-IP` and the other client-address claims, `X-Original-*`,
//!    `X-Rewrite-URL`.
//! 2. Removed: hop-by-hop headers (RFC 9110 §7.6.1) and every header `Connection` names, also
//!    in their `_` spellings. This runs *before* anything sets the gateway's own headers, so
//!    `Connection: authorization, x-forwarded-user` can only remove the client's copies, never
//!    the token and identity the auth layer sets later (the proxy does not read `Connection`
//!    on requests any more).
//! 3. Set from the gateway's own knowledge: `X-Forwarded-Host`, `-Proto`, `-Port` from
//!    `public_url` (never from the client or its `Host`, which HTTP/1.0 may omit),
//!    `X-Forwarded-For` from the peer address (a peer in `trusted_proxies` has its list
//!    extended instead), and `X-Real-IP`: the client address as the gateway determined it.
//! 4. Upgrades: only the protocols in `server.allowed_upgrades` survive (re-added as
//!    `Connection: upgrade` + `Upgrade`); any other upgrade request is served as the plain
//!    request it also is (RFC 9110 §7.8 lets a server ignore `Upgrade`), so `h2c` smuggling
//!    never reaches an upstream that would honour it.
//!
//! A client's `X-Forwarded-Uri`/`-Method` (and `X-Original-*`) are removed like the rest. The
//! forward-auth endpoint needs them from the front proxy (nginx, Caddy, Traefik): for a peer in
//! `trusted_proxies`, and only for one, [`forwarded_request`] reads them *before* this pass,
//! into a request extension ([`ForwardedRequest`]), never a header, so they cannot reach an
//! upstream whatever route the request takes.

use std::{io::Write as _, net::IpAddr};

use http::{HeaderMap, HeaderName, HeaderValue, header, header::GetAll};
use portcullis::{
    auth::{
        ForwardedRequest,
        identity_headers::{self, same_name},
    },
    config::Config,
};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Hop-by-hop names (normalized). `proxy-connection` is not in the RFC but old clients send
/// it and some servers honour it.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Never removed because `Connection` names them: the message's own framing and target.
/// (`Transfer-Encoding` is hop-by-hop anyway; hyper re-frames the body it forwards.)
const NOT_NOMINATABLE: [&str; 2] = ["content-length", "host"];

/// What the sanitizer needs from the config, with the public-URL headers built once.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    allowed_upgrades: Vec<String>,
    forwarded_host: HeaderValue,
    forwarded_proto: HeaderValue,
    forwarded_port: HeaderValue,
}

impl Settings {
    pub(crate) fn new(config: &Config) -> Self {
        let url = &config.public_url;
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let port = url.port_or_known_default().unwrap_or(if url.scheme() == "https" { 443 } else { 80 });
        Self {
            trusted_proxies: config.trusted_proxies.clone(),
            allowed_upgrades: config.server.allowed_upgrades.clone(),
            forwarded_host: HeaderValue::from_str(&host).expect("a URL's host is a valid header value"),
            forwarded_proto: HeaderValue::from_str(url.scheme()).expect("a scheme is a valid header value"),
            forwarded_port: HeaderValue::from(port),
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// What a trusted front proxy says about the original request (forward-auth), or `None` for
/// any other peer: an untrusted client's `X-Forwarded-Uri` is never read. Call it before
/// [`sanitize`], which removes those headers.
pub(crate) fn forwarded_request(settings: &Settings, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<ForwardedRequest> {
    match peer {
        Some(ip) if settings.trusts(ip) => Some(ForwardedRequest::from_headers(headers)),
        _ => None,
    }
}

/// Removes the client's copies of gateway-owned and hop-by-hop headers and sets the gateway's
/// forwarding headers. The scan allocates nothing when the client sent no such header.
#[cfg(test)]
pub(crate) fn sanitize(settings: &Settings, headers: &mut HeaderMap, peer: Option<IpAddr>) {
    sanitize_from(settings, headers, peer.map(Peer::new).as_ref());
}

/// The peer of a connection, with its address already formatted as a header value: made once
/// per connection (`server/connections.rs`), not once per request.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) ip: IpAddr,
    value: HeaderValue,
}

impl Peer {
    pub(crate) fn new(ip: IpAddr) -> Self {
        Self { ip, value: ip_value(ip) }
    }
}

/// [`sanitize`] for a request from `peer`.
pub(crate) fn sanitize_from(settings: &Settings, headers: &mut HeaderMap, peer: Option<&Peer>) {
    let peer_value = peer.map(|p| p.value.clone());
    let peer = peer.map(|p| p.ip);
    // A trusted proxy's list is read before the family is removed below.
    let extended_for = match peer {
        Some(ip) if settings.trusts(ip) => Some(extended_forwarded_for(settings, headers, ip)),
        _ => None,
    };
    let upgrade = allowed_upgrade(settings, headers);

    let mut doomed: Vec<HeaderName> = Vec::new();
    let connection = headers.get_all(header::CONNECTION);
    // Most requests carry no `Connection` header (HTTP/1.1 keep-alive is the default, HTTP/2 has
    // none): skip re-reading its tokens for every name then.
    let any_nominated = connection.iter().next().is_some();
    for name in headers.keys() {
        let n = name.as_str();
        if identity_headers::classify(n).is_some()
            || HOP_BY_HOP.iter().any(|h| same_name(n, h))
            // The request id is the gateway's (`access_log` set `x-request-id` before the
            // boundary): a client's `x_request_id` must not reach the upstream beside it.
            || (n != "x-request-id" && same_name(n, "x-request-id"))
            || (any_nominated && nominated(&connection, n))
        {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }

    match (extended_for, peer) {
        (Some((list, real_ip)), _) => {
            headers.insert(X_FORWARDED_FOR, list);
            headers.insert(X_REAL_IP, real_ip);
        }
        (None, Some(ip)) => {
            let value = peer_value.unwrap_or_else(|| ip_value(ip));
            headers.insert(X_FORWARDED_FOR, value.clone());
            headers.insert(X_REAL_IP, value);
        }
        (None, None) => {}
    }
    headers.insert(X_FORWARDED_HOST, settings.forwarded_host.clone());
    headers.insert(X_FORWARDED_PROTO, settings.forwarded_proto.clone());
    headers.insert(X_FORWARDED_PORT, settings.forwarded_port.clone());
    if let Some(protocols) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocols);
    }
}

/// Tokens of every `Connection` header.
fn connection_tokens<'a>(connection: &'a GetAll<'a, HeaderValue>) -> impl Iterator<Item = &'a str> {
    connection.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// Whether `Connection` names `name` (in any spelling). An unreadable `Connection` names
/// nothing; it is removed as hop-by-hop all the same.
fn nominated(connection: &GetAll<'_, HeaderValue>, name: &str) -> bool {
    !NOT_NOMINATABLE.contains(&name) && connection_tokens(connection).any(|t| same_name(t, name))
}

/// The `Upgrade` value to pass on, when the client asks for an upgrade (`Connection: upgrade`)
/// to protocols that are all allowed. Others are logged and dropped.
fn allowed_upgrade(settings: &Settings, headers: &HeaderMap) -> Option<HeaderValue> {
    let value = headers.get(header::UPGRADE)?;
    if !connection_tokens(&headers.get_all(header::CONNECTION)).any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return None;
    }
    let allowed = value.to_str().ok().is_some_and(|v| {
        v.split(',').map(str::trim).all(|protocol| {
            let name = protocol.split('/').next().unwrap_or_default();
            settings.allowed_upgrades.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
    });
    if allowed {
        Some(value.clone())
    } else {
        tracing::info!(upgrade = ?value, "upgrade protocol not in server.allowed_upgrades; served without the upgrade");
        None
    }
}

/// The peer address as a header value, formatted on the stack (one allocation: the value).
fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 45];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    write!(cursor, "{ip}").expect("an IP address fits in 45 bytes");
    let len = cursor.position() as usize;
    HeaderValue::from_bytes(&buf[..len]).expect("an IP address is a valid header value")
}

/// For a trusted peer: its `X-Forwarded-For` with the peer appended, and the client address
/// (walking the list from the right, the first address not in `trusted_proxies`, as nginx's
/// `real_ip_recursive` does: anything left of it was written by the client and proves nothing).
fn extended_forwarded_for(settings: &Settings, headers: &HeaderMap, peer: IpAddr) -> (HeaderValue, HeaderValue) {
    let mut entries: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let peer_text = peer.to_string();
    entries.push(&peer_text);
    let mut real_ip = peer;
    for entry in entries.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if settings.trusts(ip) => real_ip = ip,
            Ok(ip) => {
                real_ip = ip;
                break;
            }
            // Not an address: the nearest address we can vouch for is the client.
            Err(_) => break,
        }
    }
    let list = HeaderValue::from_str(&entries.join(", ")).unwrap_or_else(|_| ip_value(peer));
    (list, ip_value(real_ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(trusted: &[&str], upgrades: &[&str]) -> Settings {
        Settings {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            allowed_upgrades: upgrades.iter().map(|u| u.to_string()).collect(),
            forwarded_host: HeaderValue::from_static("gw.example:8443"),
            forwarded_proto: HeaderValue::from_static("https"),
            forwarded_port: HeaderValue::from_static("8443"),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn get<'a>(h: &'a HeaderMap, n: &str) -> Option<&'a str> {
        h.get(n).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn removes_owned_and_hop_by_hop_in_every_spelling_and_sets_ours() {
        let mut h = map(&[
            ("x_forwarded_user", "mallory"),
            ("x-forwarded_host", "evil"),
            ("forwarded", "for=1.2.3.4;host=evil"),
            ("x-original-url", "/admin"),
            ("transfer_encoding", "chunked"),
            ("keep_alive", "1"),
            ("connection", "x-hop, host, content-length"),
            ("x_hop", "1"),
            ("host", "evil"),
            ("content-length", "0"),
            ("accept", "*/*"),
        ]);
        sanitize(&settings(&[], &["websocket"]), &mut h, Some("192.0.2.1".parse().unwrap()));
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "accept",
                "content-length",
                "host",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-port",
                "x-forwarded-proto",
                "x-real-ip"
            ]
        );
        assert_eq!(get(&h, "x-forwarded-host"), Some("gw.example:8443"));
        assert_eq!(get(&h, "x-forwarded-for"), Some("192.0.2.1"));
        assert_eq!(get(&h, "x-real-ip"), Some("192.0.2.1"));
    }

    #[test]
    fn forwarded_for_is_extended_only_for_trusted_peers() {
        // (trusted nets, peer, client's X-Forwarded-For, upstream's X-Forwarded-For, X-Real-IP)
        type Case<'a> = (&'a [&'a str], &'a str, Option<&'a str>, &'a str, &'a str);
        let cases: [Case<'_>; 6] = [
            (&[], "192.0.2.1", Some("6.6.6.6"), "192.0.2.1", "192.0.2.1"),
            (&["10.0.0.0/8"], "192.0.2.1", Some("6.6.6.6"), "192.0.2.1", "192.0.2.1"),
            (&["10.0.0.0/8"], "10.1.1.1", Some("6.6.6.6"), "6.6.6.6, 10.1.1.1", "6.6.6.6"),
            (&["10.0.0.0/8"], "10.1.1.1", None, "10.1.1.1", "10.1.1.1"),
            // The client wrote the leftmost entry; the trusted hops are skipped from the right.
            (&["10.0.0.0/8"], "10.1.1.1", Some("1.1.1.1, 7.7.7.7, 10.2.2.2"), "1.1.1.1, 7.7.7.7, 10.2.2.2, 10.1.1.1", "7.7.7.7"),
            (&["10.0.0.0/8"], "10.1.1.1", Some("garbage"), "garbage, 10.1.1.1", "10.1.1.1"),
        ];
        for (trusted, peer, xff, want_for, want_real) in cases {
            let mut h = match xff {
                Some(x) => map(&[("x-forwarded-for", x)]),
                None => HeaderMap::new(),
            };
            sanitize(&settings(trusted, &[]), &mut h, Some(peer.parse().unwrap()));
            assert_eq!(get(&h, "x-forwarded-for"), Some(want_for), "{trusted:?} {peer} {xff:?}");
            assert_eq!(get(&h, "x-real-ip"), Some(want_real), "{trusted:?} {peer} {xff:?}");
        }
    }

    #[test]
    fn forwarded_request_only_from_trusted_peers() {
        // (trusted nets, peer, expected uri)
        let cases: [(&[&str], Option<&str>, Option<&str>); 4] = [
            (&["10.0.0.0/8"], Some("10.1.1.1"), Some("/admin")),
            (&["10.0.0.0/8"], Some("192.0.2.1"), None),
            (&[], Some("10.1.1.1"), None),
            (&["10.0.0.0/8"], None, None),
        ];
        for (trusted, peer, want) in cases {
            let mut h = map(&[("x-forwarded-uri", "/admin"), ("x-forwarded-method", "POST")]);
            let s = settings(trusted, &[]);
            let peer = peer.map(|p| p.parse().unwrap());
            let got = forwarded_request(&s, &h, peer);
            assert_eq!(got.as_ref().and_then(|f| f.uri.as_deref()), want, "{trusted:?} {peer:?}");
            // Whoever sent them, the headers themselves never pass the boundary.
            sanitize(&s, &mut h, peer);
            assert!(!h.contains_key("x-forwarded-uri") && !h.contains_key("x-forwarded-method"));
        }
    }

    #[test]
    fn only_allowed_upgrades_pass() {
        let cases = [
            ("Upgrade", "websocket", Some("websocket")),
            ("keep-alive, Upgrade", "WebSocket", Some("WebSocket")),
            ("Upgrade, HTTP2-Settings", "h2c", None),
            ("Upgrade", "websocket, h2c", None),
            ("keep-alive", "websocket", None),
        ];
        for (connection, upgrade, want) in cases {
            let mut h = map(&[("connection", connection), ("upgrade", upgrade), ("http2-settings", "AAMAAABkAAQAAP__")]);
            sanitize(&settings(&[], &["websocket"]), &mut h, None);
            assert_eq!(get(&h, "upgrade"), want, "{connection} / {upgrade}");
            assert_eq!(get(&h, "connection"), want.map(|_| "upgrade"), "{connection} / {upgrade}");
            assert!(!h.contains_key("http2-settings"));
        }
    }
}
