//! The route table: path prefix → upstream, and what unauthenticated requests get there.

use std::sync::Arc;

use portcullis::config::{RouteConfig, Unauthenticated};
use url::Url;

/// One route, as the proxy uses it.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) prefix: String,
    pub(crate) upstream: Url,
    pub(crate) unauthenticated: Unauthenticated,
    /// Every setting of the route as configured (timeouts, limits, CSRF protection).
    #[allow(dead_code)]
    pub(crate) config: RouteConfig,
    /// The upstream's scheme, authority and base path, parsed once here rather than on every
    /// request (the hot path only joins the request's path onto them).
    pub(crate) target: UpstreamTarget,
}

/// The parts of an upstream URL the proxy needs per request.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamTarget {
    pub(crate) scheme: http::uri::Scheme,
    pub(crate) authority: http::uri::Authority,
    /// Path prefix of the upstream URL without its trailing slash ("" for none).
    pub(crate) base_path: String,
}

impl Route {
    /// A route with every optional setting at its default.
    pub(crate) fn new(prefix: String, upstream: Url, unauthenticated: Unauthenticated) -> Self {
        Self::from_config(RouteConfig::new(prefix, upstream, unauthenticated))
    }

    pub(crate) fn from_config(config: RouteConfig) -> Self {
        let (prefix, upstream, unauthenticated) = (config.prefix.clone(), config.upstream.clone(), config.unauthenticated);
        let authority = match upstream.port() {
            Some(port) => format!("{}:{port}", upstream.host_str().unwrap_or_default()),
            None => upstream.host_str().unwrap_or_default().to_string(),
        };
        let target = UpstreamTarget {
            scheme: upstream.scheme().parse().expect("config validation allows http(s) only"),
            authority: authority.parse().expect("a URL's host and port form an authority"),
            base_path: upstream.path().trim_end_matches('/').to_string(),
        };
        Self { prefix, upstream, unauthenticated, config, target }
    }
}

/// Routes ordered longest prefix first, so the first match is the most specific.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub(crate) fn new(config: &[RouteConfig]) -> Self {
        let mut routes: Vec<Arc<Route>> = config.iter().map(|r| Arc::new(Route::from_config(r.clone()))).collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self { routes }
    }

    /// The route for `path`: prefixes match whole segments, so `/api` matches `/api` and
    /// `/api/x` but not `/apix`.
    pub(crate) fn lookup(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| matches(&r.prefix, path))
    }
}

fn matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let route = |prefix: &str, upstream: &str| RouteConfig::new(prefix, upstream.parse().unwrap(), Unauthenticated::Login);
        RouteTable::new(&[route("/", "http://root"), route("/api", "http://api"), route("/api/public/", "http://public")])
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = table();
        let cases = [
            ("/", "http://root/"),
            ("/index.html", "http://root/"),
            ("/api", "http://api/"),
            ("/api/", "http://api/"),
            ("/api/users", "http://api/"),
            ("/apix", "http://root/"),
            ("/api/public/x", "http://public/"),
            ("/api/public", "http://api/"),
        ];
        for (path, upstream) in cases {
            assert_eq!(t.lookup(path).unwrap().upstream.as_str(), upstream, "{path}");
        }
    }

    #[test]
    fn no_catch_all_means_no_match() {
        let t = RouteTable::new(&[RouteConfig::new("/app", "http://a".parse().unwrap(), Unauthenticated::Deny)]);
        assert!(t.lookup("/other").is_none());
    }
}
