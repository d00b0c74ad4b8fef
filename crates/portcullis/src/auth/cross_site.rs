//! Where a request came from, as far as the browser tells: this gateway's own origin, another
//! site, or nobody says (curl, an API client, a browser too old to send either header).
//!
//! The attack this answers is cross-site request forgery: a page on another site makes the
//! user's browser send a request that carries the session cookie (a top-level form POST, or
//! any request from a sibling subdomain, which `SameSite=Lax` does not stop). The browser marks
//! such requests itself, with headers no page script can set or remove:
//!
//! 1. `Sec-Fetch-Site` (every current browser since 2023): `same-origin` and `none` (the user
//!    typed the address or used a bookmark) pass; `same-site`, `cross-site` and any value we do
//!    not know are another site. `same-site` is refused too, as Go 1.25's
//!    `http.CrossOriginProtection` does: a sibling subdomain (user content, another tenant, a
//!    forgotten staging host) is exactly where `SameSite` cookies give no protection.
//! 2. Without it, `Origin`: equal to `public_url`'s origin passes; anything else, `null`
//!    included (sandboxed frames, `data:` pages, redirects across origins), is another site.
//! 3. Neither header: [`Site::Unknown`]. No browser since 2020 sends a cross-site POST without
//!    `Origin`, so for proxied routes this passes (API clients and scripts keep working); sign-out
//!    asks for a confirmation instead, since it needs positive evidence.
//!
//! Two copies of either header are another site: a browser sends one, and a proxy that
//! appended a second must not let the friendlier one win.

use http::{HeaderMap, HeaderName, Method, header};

const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// What the request's headers say about its initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Site {
    /// The gateway's own origin, or a user-initiated navigation.
    SameOrigin,
    /// Another site; the reason is for the log (it names a header, never a value of the user's).
    Other(&'static str),
    /// Neither `Sec-Fetch-Site` nor `Origin`: not a browser, or a very old one.
    Unknown,
}

/// Judges `headers` against `own_origin`, the ASCII serialization of `public_url`'s origin
/// (`https://app.example.com`, no trailing slash, default port omitted, as browsers send it).
pub(crate) fn judge(headers: &HeaderMap, own_origin: &str) -> Site {
    let mut fetch_site = headers.get_all(SEC_FETCH_SITE).iter();
    match (fetch_site.next(), fetch_site.next()) {
        (Some(_), Some(_)) => return Site::Other("several Sec-Fetch-Site headers"),
        (Some(value), None) => {
            return match value.as_bytes() {
                b"same-origin" | b"none" => Site::SameOrigin,
                b"same-site" => Site::Other("Sec-Fetch-Site: same-site"),
                b"cross-site" => Site::Other("Sec-Fetch-Site: cross-site"),
                _ => Site::Other("unrecognised Sec-Fetch-Site"),
            };
        }
        (None, _) => {}
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (None, _) => Site::Unknown,
        (Some(_), Some(_)) => Site::Other("several Origin headers"),
        // Scheme and host are case-insensitive; browsers send them lowercase anyway.
        (Some(origin), None) if origin.as_bytes().eq_ignore_ascii_case(own_origin.as_bytes()) => Site::SameOrigin,
        (Some(origin), None) if origin.as_bytes() == b"null" => Site::Other("Origin: null"),
        (Some(_), None) => Site::Other("Origin of another site"),
    }
}

/// Methods that may change state. Everything except `GET`, `HEAD` and `OPTIONS` (RFC 9110
/// §9.2.1's safe methods, as Go's `CrossOriginProtection` counts them): `TRACE`, `PROPFIND` and
/// methods we have never heard of are treated as unsafe, since the upstream decides what they do.
pub(crate) fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a request must come from the gateway's own site to use the session: an unsafe
/// method, or a protocol upgrade. A WebSocket handshake is a GET, but the socket it opens
/// carries the user's session both ways: a page on a sibling subdomain (same-site, so the
/// `SameSite=Lax` cookie is sent) must not get one (cross-site WebSocket hijacking).
pub(crate) fn needs_same_origin(method: &Method, headers: &HeaderMap) -> bool {
    is_unsafe(method) || headers.contains_key(http::header::UPGRADE)
}

/// The origin string [`judge`] compares with.
pub(crate) fn origin_of(public_url: &url::Url) -> String {
    public_url.origin().ascii_serialization()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "https://app.example.com";

    #[test]
    fn judges_every_combination() {
        use Site::*;
        #[rustfmt::skip]
        let cases: &[(&[(&str, &str)], Site)] = &[
            // Sec-Fetch-Site decides when present, whatever Origin says.
            (&[("sec-fetch-site", "same-origin")], SameOrigin),
            (&[("sec-fetch-site", "none")], SameOrigin),
            (&[("sec-fetch-site", "same-origin"), ("origin", "https://evil.example")], SameOrigin),
            (&[("sec-fetch-site", "cross-site")], Other("Sec-Fetch-Site: cross-site")),
            (&[("sec-fetch-site", "cross-site"), ("origin", OWN)], Other("Sec-Fetch-Site: cross-site")),
            (&[("sec-fetch-site", "same-site")], Other("Sec-Fetch-Site: same-site")),
            (&[("sec-fetch-site", "same-site"), ("origin", "https://user.example.com")], Other("Sec-Fetch-Site: same-site")),
            (&[("sec-fetch-site", "Same-Origin")], Other("unrecognised Sec-Fetch-Site")),
            (&[("sec-fetch-site", "")], Other("unrecognised Sec-Fetch-Site")),
            (&[("sec-fetch-site", "same-origin"), ("sec-fetch-site", "same-origin")], Other("several Sec-Fetch-Site headers")),
            (&[("sec-fetch-site", "cross-site"), ("sec-fetch-site", "same-origin")], Other("several Sec-Fetch-Site headers")),
            // Without it, Origin.
            (&[("origin", OWN)], SameOrigin),
            (&[("origin", "HTTPS://APP.EXAMPLE.COM")], SameOrigin),
            (&[("origin", "null")], Other("Origin: null")),
            (&[("origin", "https://evil.example")], Other("Origin of another site")),
            (&[("origin", "http://app.example.com")], Other("Origin of another site")),
            (&[("origin", "https://app.example.com:8443")], Other("Origin of another site")),
            (&[("origin", "https://app.example.com/")], Other("Origin of another site")),
            (&[("origin", "https://app.example.com.evil.example")], Other("Origin of another site")),
            (&[("origin", "https://sub.app.example.com")], Other("Origin of another site")),
            (&[("origin", "")], Other("Origin of another site")),
            (&[("origin", OWN), ("origin", OWN)], Other("several Origin headers")),
            (&[("origin", OWN), ("origin", "https://evil.example")], Other("several Origin headers")),
            // Neither: not a browser (or a very old one).
            (&[], Unknown),
            (&[("referer", "https://evil.example/")], Unknown),
        ];
        for (headers, expected) in cases {
            let mut map = HeaderMap::new();
            for (name, value) in *headers {
                map.append(*name, value.parse().unwrap());
            }
            assert_eq!(judge(&map, OWN), *expected, "{headers:?}");
        }
    }

    #[test]
    fn upgrades_need_the_same_origin_whatever_the_method() {
        let mut upgrade = HeaderMap::new();
        upgrade.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(needs_same_origin(&Method::GET, &upgrade));
        assert!(!needs_same_origin(&Method::GET, &HeaderMap::new()));
        assert!(needs_same_origin(&Method::POST, &HeaderMap::new()));
    }

    #[test]
    fn only_get_head_and_options_are_safe() {
        for (method, unsafe_) in [
            ("GET", false),
            ("HEAD", false),
            ("OPTIONS", false),
            ("POST", true),
            ("PUT", true),
            ("PATCH", true),
            ("DELETE", true),
            ("TRACE", true),
            ("CONNECT", true),
            ("PROPFIND", true),
            ("get", true),
        ] {
            assert_eq!(is_unsafe(&Method::from_bytes(method.as_bytes()).unwrap()), unsafe_, "{method}");
        }
    }

    #[test]
    fn origin_of_public_url_is_what_browsers_send() {
        for (public_url, origin) in [
            ("https://app.example.com", "https://app.example.com"),
            ("https://app.example.com:443/", "https://app.example.com"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("https://APP.Example.com", "https://app.example.com"),
            ("https://bücher.example", "https://xn--bcher-kva.example"),
        ] {
            assert_eq!(origin_of(&public_url.parse().unwrap()), origin, "{public_url}");
        }
    }
}
