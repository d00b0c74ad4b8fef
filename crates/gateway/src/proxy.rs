//! The reverse proxy: streams requests to the route's upstream over pooled keep-alive
//! connections and streams the answer back. Nothing is buffered whole.

use std::{net::SocketAddr, time::Duration};

use axum::{
    body::Body,
    extract::ConnectInfo,
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header, uri::PathAndQuery};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use portcullis::auth::{Failure, RequestKind};

use crate::routes::{Route, UpstreamTarget};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Forwards requests to upstreams.
#[derive(Clone)]
pub(crate) struct Proxy {
    client: HttpsClient,
    forwarded_proto: HeaderValue,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and must not be
/// forwarded. `upgrade` and `connection` are re-added for protocol upgrades.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

impl Proxy {
    /// `public_scheme` is what `X-Forwarded-Proto` says: the scheme browsers use.
    pub(crate) fn new(public_scheme: &str) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = hyper_rustls::HttpsConnectorBuilder::new().with_platform_verifier().https_or_http().enable_http1().wrap_connector(http);
        let client =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).pool_max_idle_per_host(256).build(https);
        Self { client, forwarded_proto: HeaderValue::from_str(public_scheme).expect("scheme is a valid header value") }
    }

    /// Forwards `req` to `route`'s upstream.
    pub(crate) async fn forward(&self, route: &Route, mut req: Request<Body>) -> Response {
        let kind = RequestKind::of(req.headers());
        let uri = match upstream_uri(&route.target, req.uri()) {
            Some(uri) => uri,
            None => return Failure::bad_request("bad_request_target", "The request path cannot be forwarded.").respond(kind),
        };
        let client_addr = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let upgrade = upgrade_protocol(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(protocol) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        if let Some(host) = headers.remove(header::HOST) {
            headers.insert(X_FORWARDED_HOST, host);
        }
        if let Some(ip) = client_addr {
            append_forwarded_for(headers, ip);
        }
        headers.insert(X_FORWARDED_PROTO, self.forwarded_proto.clone());
        *req.uri_mut() = uri;
        // HTTP/2 from the browser, HTTP/1.1 to the upstream: the client picks the version.
        *req.version_mut() = http::Version::HTTP_11;

        let mut response = match self.client.request(req).await {
            Ok(response) => response,
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
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, Body::new(body))
    }
}

/// The upstream URI: the upstream's scheme and authority, its base path joined with the
/// request's path, and the request's query.
fn upstream_uri(target: &UpstreamTarget, original: &Uri) -> Option<Uri> {
    let path_and_query = match (target.base_path.as_str(), original.path_and_query()) {
        ("", Some(pq)) => pq.clone(),
        ("", None) => PathAndQuery::from_static("/"),
        (base, pq) => format!("{base}{}", pq.map_or("/", |p| p.as_str())).parse().ok()?,
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(target.scheme.clone());
    parts.authority = Some(target.authority.clone());
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
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

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too (rare: skip the scan without one).
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::try_from(t.trim()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, ip: std::net::IpAddr) {
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// Answers 101 to the client and splices the two upgraded connections together.
fn tunnel(
    upstream_response: http::Response<hyper::body::Incoming>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    upstream_upgrade: hyper::upgrade::OnUpgrade,
) -> Response {
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
        let cases = [
            ("http://u:9000", "/a/b?x=1", "http://u:9000/a/b?x=1"),
            ("http://u:9000/base/", "/a?x", "http://u:9000/base/a?x"),
            ("https://u", "/", "https://u/"),
        ];
        for (upstream, path, expected) in cases {
            let route = Route::new("/".into(), upstream.parse().unwrap(), portcullis::config::Unauthenticated::Login);
            let got = upstream_uri(&route.target, &path.parse().unwrap()).unwrap();
            assert_eq!(got.to_string(), expected);
        }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["x-kept"]);
    }
}
