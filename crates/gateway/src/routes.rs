//! The route table: path prefix → upstream, and what unauthenticated requests get there.

use std::sync::Arc;

use portcullis::config::{RouteConfig, Unauthenticated};
use url::Url;

use crate::metrics::{HttpMetrics, RouteMetrics};

/// One route, as the proxy uses it.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) prefix: String,
    pub(crate) upstream: Url,
    /// Every setting of the route as configured (timeouts, limits, CSRF protection, bearer,
    /// authorization rules). An `Arc`: the library's layers read it from the request's
    /// extensions, and a per-request clone must be a pointer copy.
    pub(crate) config: Arc<RouteConfig>,
    /// The upstream's scheme, authority and base path, parsed once here rather than on every
    /// request (the hot path only joins the request's path onto them).
    pub(crate) target: UpstreamTarget,
    /// The route's metric handles (`route` = its name, else its prefix, as in the access log), resolved when the table is built.
    pub(crate) metrics: Arc<RouteMetrics>,
}

/// The parts of an upstream URL the proxy needs per request.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamTarget {
    /// `scheme://authority`: what the connector dials.
    pub(crate) origin: http::Uri,
    /// The pool key: the same upstream (scheme, host, port) shares idle connections whichever
    /// route uses it.
    pub(crate) key: Arc<str>,
    /// The `Host` the upstream receives: its host, and its port unless the scheme's default.
    pub(crate) host: http::HeaderValue,
    /// Path prefix of the upstream URL without its trailing slash ("" for none).
    pub(crate) base_path: String,
}

impl Route {
    /// A route with every optional setting at its default.
    /// Its metrics are recorded nowhere.
    pub(crate) fn new(prefix: String, upstream: Url, unauthenticated: Unauthenticated) -> Self {
        Self::from_config(RouteConfig::new(prefix, upstream, unauthenticated), &HttpMetrics::default())
    }

    pub(crate) fn from_config(config: RouteConfig, metrics: &HttpMetrics) -> Self {
        let (prefix, upstream) = (config.prefix.clone(), config.upstream.clone());
        // `Url::port` is `None` for the scheme's default port, as `Host` wants it.
        let authority = match upstream.port() {
            Some(port) => format!("{}:{port}", upstream.host_str().unwrap_or_default()),
            None => upstream.host_str().unwrap_or_default().to_string(),
        };
        let origin = format!("{}://{authority}", upstream.scheme());
        let target = UpstreamTarget {
            origin: origin.parse().expect("config validation allows http(s) URLs with a host only"),
            key: origin.into(),
            host: http::HeaderValue::from_str(&authority).expect("a URL's host and port form a header value"),
            base_path: upstream.path().trim_end_matches('/').to_string(),
        };
        let metrics = metrics.route(config.label());
        Self { prefix, upstream, config: Arc::new(config), target, metrics }
    }
}

/// The route table in force: read once per request, replaced whole by a reload (SIGHUP), so a
/// request sees either the old table or the new one, never a mix.
#[derive(Clone, Default)]
pub(crate) struct LiveRoutes(Arc<arc_swap::ArcSwap<RouteTable>>);

impl LiveRoutes {
    pub(crate) fn new(table: RouteTable) -> Self {
        Self(Arc::new(arc_swap::ArcSwap::from_pointee(table)))
    }

    /// The current table.
    pub(crate) fn load(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }

    /// Puts a new table in force for every request that starts from now on.
    #[allow(dead_code)]
    pub(crate) fn store(&self, table: RouteTable) {
        self.0.store(Arc::new(table));
    }
}

/// Routes ordered longest prefix first, so the first match is the most specific.
#[derive(Debug)]
pub(crate) struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Requests no route covers (404), counted as route `unmatched`.
    pub(crate) unmatched: Arc<RouteMetrics>,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new(&[], &HttpMetrics::default())
    }
}

impl RouteTable {
    /// The table of `config`, its routes recording into `metrics` (a reload passes the same
    /// `metrics`, so counts carry on across reloads).
    pub(crate) fn new(config: &[RouteConfig], metrics: &HttpMetrics) -> Self {
        let mut routes: Vec<Arc<Route>> = config.iter().map(|r| Arc::new(Route::from_config(r.clone(), metrics))).collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self { routes, unmatched: metrics.route("unmatched") }
    }

    /// The route for `path`: prefixes match whole segments, so `/api` matches `/api` and
    /// `/api/x` but not `/apix`.
    pub(crate) fn lookup(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| matches(&r.prefix, path))
    }
}

/// Whether `prefix` covers `path`. Fails closed against upstreams that read paths more loosely
/// than RFC 3986: letters compare case-insensitively (Express and koa-router route `/ADMIN` to
/// `/admin` by default, as do IIS and ASP.NET), and a prefix's trailing slash is optional
/// (`/admin/` also covers `/admin`, which Express and Spring serve alike). A route can only
/// cover more paths this way, never fewer.
fn matches(prefix: &str, path: &str) -> bool {
    let bare = prefix.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(prefix).as_bytes();
    let path = path.as_bytes();
    if path.len() < bare.len() || !path[..bare.len()].eq_ignore_ascii_case(bare) {
        return false;
    }
    let rest = &path[bare.len()..];
    bare == b"/" || rest.is_empty() || rest[0] == b'/' || rest[0] == b'?'
}

/// The prefix as the table compares it: a route table must not hold two that cover the same
/// paths.
fn comparable(prefix: &str) -> String {
    prefix.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(prefix).to_ascii_lowercase()
}

/// What the route table needs of the configured prefixes beyond the schema: each in canonical
/// form (a prefix such as `/%7Euser` or `/a//b` could never match a canonical path, and its
/// traffic would silently fall to a shorter route), and no two covering the same paths.
pub(crate) fn check_prefixes(routes: &[RouteConfig]) -> Result<(), String> {
    for (i, route) in routes.iter().enumerate() {
        match crate::canonical_path::canonicalize_path(&route.prefix, portcullis::config::PathParameters::Pass) {
            Ok(canonical) if canonical == route.prefix => {}
            Ok(canonical) => return Err(format!("routes[{i}].prefix: {:?} is not in canonical form; write {:?}", route.prefix, canonical)),
            Err(e) => return Err(format!("routes[{i}].prefix: {e}")),
        }
        if let Some(j) = routes[..i].iter().position(|r| comparable(&r.prefix) == comparable(&route.prefix)) {
            return Err(format!(
                "routes[{i}].prefix: {:?} covers the same paths as routes[{j}] ({:?}): prefixes match case-insensitively, with or without a trailing slash",
                route.prefix, routes[j].prefix
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let route = |prefix: &str, upstream: &str| RouteConfig::new(prefix, upstream.parse().unwrap(), Unauthenticated::Login);
        RouteTable::new(
            &[route("/", "http://root"), route("/api", "http://api"), route("/api/public/", "http://public")],
            &Default::default(),
        )
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
            ("/api/public", "http://public/"),
            ("/API/Users", "http://api/"),
            ("/Api/PUBLIC/x", "http://public/"),
            ("/apiX", "http://root/"),
        ];
        for (path, upstream) in cases {
            assert_eq!(t.lookup(path).unwrap().upstream.as_str(), upstream, "{path}");
        }
    }

    #[test]
    fn prefixes_must_be_canonical_and_distinct() {
        let route = |prefix: &str| RouteConfig::new(prefix, "http://u".parse().unwrap(), Unauthenticated::Login);
        let cases: [(&[&str], Option<&str>); 7] = [
            (&["/", "/api", "/api/v1/"], None),
            (&["/%7Euser"], Some("routes[0].prefix: \"/%7Euser\" is not in canonical form; write \"/~user\"")),
            (&["/a//b"], Some("routes[0].prefix")),
            (&["/a/../b"], Some("routes[0].prefix")),
            (&["/api", "/API"], Some("routes[1].prefix")),
            (&["/api", "/api/"], Some("routes[1].prefix")),
            (&["/a%2Fb"], Some("routes[0].prefix")),
        ];
        for (prefixes, error) in cases {
            let routes: Vec<RouteConfig> = prefixes.iter().map(|p| route(p)).collect();
            match (check_prefixes(&routes), error) {
                (Ok(()), None) => {}
                (Err(e), Some(expected)) => assert!(e.starts_with(expected), "{prefixes:?}: {e}"),
                (got, want) => panic!("{prefixes:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn no_catch_all_means_no_match() {
        let t = RouteTable::new(&[RouteConfig::new("/app", "http://a".parse().unwrap(), Unauthenticated::Deny)], &Default::default());
        assert!(t.lookup("/other").is_none());
    }

    /// How lenient upstreams read a path, to check that the route the gateway picks for the
    /// canonical path is the route the upstream's own reading of it falls under.
    mod lenient_readers {
        /// Decodes every valid `%XX` once (what servlet containers, WSGI and Go do).
        pub(super) fn decode(path: &str) -> String {
            let bytes = path.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                let hex = |b: u8| (b as char).to_digit(16);
                match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                    (b'%', Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    (b, _, _) => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }

        /// Dot segments removed with `..` clamped at the root, slashes merged (Go's
        /// `path.Clean`, which also drops a trailing slash, when `keep_trailing` is false).
        pub(super) fn clean(path: &str, keep_trailing: bool) -> String {
            let mut segments: Vec<&str> = Vec::new();
            for segment in path.split('/') {
                match segment {
                    "" | "." => {}
                    ".." => {
                        segments.pop();
                    }
                    s => segments.push(s),
                }
            }
            let mut out = format!("/{}", segments.join("/"));
            let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
            if keep_trailing && trailing && out != "/" {
                out.push('/');
            }
            out
        }

        /// Go `net/http` (`r.URL.Path` through `path.Clean`).
        pub(super) fn go(path: &str) -> String {
            clean(&decode(path), false)
        }

        /// Tomcat / Spring: `;…` stripped from each segment before decoding, `\` read as `/`,
        /// then normalized.
        pub(super) fn servlet(path: &str) -> String {
            let stripped: Vec<&str> = path.split('/').map(|s| s.split(';').next().unwrap_or("")).collect();
            clean(&decode(&stripped.join("/")).replace('\\', "/"), true)
        }

        /// A WSGI app routing on the decoded `PATH_INFO` as it is.
        pub(super) fn wsgi(path: &str) -> String {
            decode(path)
        }

        /// Express / koa-router / IIS: routes compared case-insensitively, trailing slash optional.
        pub(super) fn case_folding(path: &str) -> String {
            let lower = go(path).to_ascii_lowercase();
            match lower.strip_suffix('/') {
                Some(bare) if !bare.is_empty() => bare.to_string(),
                _ => lower,
            }
        }

        /// A stack that decodes twice (a decoding proxy in front of a decoding app).
        pub(super) fn double_decoding(path: &str) -> String {
            clean(&decode(&decode(path)), true)
        }
    }

    mod canonical_paths_stay_in_their_route {
        use std::borrow::Cow;

        use portcullis::config::{PathParameters, RouteConfig, Unauthenticated};
        use proptest::prelude::*;

        use super::{RouteTable, lenient_readers::*};
        use crate::canonical_path::{canonicalize_path, tests::hostile_path};

        fn table() -> RouteTable {
            let route = |prefix: &str, policy| RouteConfig::new(prefix, "http://up".parse().unwrap(), policy);
            RouteTable::new(
                &[
                    route("/", Unauthenticated::Allow),
                    route("/app", Unauthenticated::Login),
                    route("/admin", Unauthenticated::Deny),
                    route("/admin/public", Unauthenticated::Allow),
                    route("/v1/items:purge", Unauthenticated::Deny),
                ],
                &Default::default(),
            )
        }

        fn route_of(table: &RouteTable, path: &str) -> String {
            table.lookup(path).map_or_else(|| "none".into(), |r| r.prefix.clone())
        }

        type Reader = fn(&str) -> String;
        const READERS: [(&str, Reader); 5] =
            [("go", go), ("servlet", servlet), ("wsgi", wsgi), ("double-decoding", double_decoding), ("case-folding", case_folding)];
        const NORMALIZING_READERS: [(&str, Reader); 3] = [("go", go), ("servlet", servlet), ("double-decoding", double_decoding)];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// The route matched for the canonical path is the route every lenient reader
            /// puts it in, and the route it puts the raw path in: canonicalization never
            /// yields a path outside the route it was matched to.
            #[test]
            fn every_reader_agrees_with_the_matched_route(path in prop_oneof![hostile_path(), "/[ -~]{0,24}"]) {
                let table = table();
                if let Ok(canonical) = canonicalize_path(&path, PathParameters::Refuse) {
                    let matched = route_of(&table, &canonical);
                    for (name, read) in READERS {
                        prop_assert_eq!(&route_of(&table, &read(&canonical)), &matched, "{} reads canonical {:?} (from {:?})", name, canonical, path);
                    }
                    // And the gateway reads the raw path as every normalizing reader would.
                    for (name, read) in NORMALIZING_READERS {
                        prop_assert_eq!(&route_of(&table, &read(&path)), &matched, "{} reads raw {:?} (canonical {:?})", name, path, canonical);
                    }
                }
            }

            /// With `path_parameters = "pass"`, readers that keep `;` in the segment agree too
            /// (readers that strip it are why "refuse" is the default).
            #[test]
            fn with_parameters_passed_non_stripping_readers_agree(path in prop_oneof![hostile_path(), "/[ -~]{0,24}"]) {
                let table = table();
                if let Ok(canonical) = canonicalize_path(&path, PathParameters::Pass) {
                    let matched = route_of(&table, &canonical);
                    for (name, read) in [("go", go as Reader), ("wsgi", wsgi), ("double-decoding", double_decoding)] {
                        prop_assert_eq!(&route_of(&table, &read(&canonical)), &matched, "{} reads {:?} (from {:?})", name, canonical, path);
                    }
                }
            }
        }

        /// The model itself: without canonicalization these readers do disagree with the
        /// gateway's match, so the properties above are not vacuous.
        #[test]
        fn raw_paths_would_escape_their_route() {
            // (`//admin` is `/admin` to Go and the servlet reader, but `//admin` to WSGI: which
            // is why the upstream must get the canonical path, not merely be matched on it.)
            let table = table();
            for raw in ["//admin", "/public/../admin", "/%61dmin", "/admin;x/", "/%2e%2e/admin", "/x/..%2fadmin", "/%252e%252e/admin"] {
                assert_eq!(route_of(&table, raw), "/", "{raw}");
                let escapes = READERS.iter().any(|(_, read)| route_of(&table, &read(raw)) == "/admin");
                assert!(escapes, "no reader reads {raw} as /admin");
                assert!(!matches!(canonicalize_path(raw, PathParameters::Refuse), Ok(Cow::Borrowed(_))), "{raw} passed as it is");
            }
        }
    }
}
