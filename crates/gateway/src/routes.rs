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
    /// Every setting of the route as configured (timeouts, limits, CSRF protection, bearer,
    /// authorization rules). An `Arc`: the library's layers read it from the request's
    /// extensions, and a per-request clone must be a pointer copy.
    pub(crate) config: Arc<RouteConfig>,
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
        Self { prefix, upstream, unauthenticated, config: Arc::new(config), target }
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
            RouteTable::new(&[
                route("/", Unauthenticated::Allow),
                route("/app", Unauthenticated::Login),
                route("/admin", Unauthenticated::Deny),
                route("/admin/public", Unauthenticated::Allow),
            ])
        }

        fn route_of(table: &RouteTable, path: &str) -> String {
            table.lookup(path).map_or_else(|| "none".into(), |r| r.prefix.clone())
        }

        type Reader = fn(&str) -> String;
        const READERS: [(&str, Reader); 4] = [("go", go), ("servlet", servlet), ("wsgi", wsgi), ("double-decoding", double_decoding)];
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
