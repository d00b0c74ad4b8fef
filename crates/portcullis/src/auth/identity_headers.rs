//! Identity headers towards the upstream: only the gateway sets them.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::session::SessionRecord;

/// Header carrying the user (the configured claim, `sub` by default).
pub const USER: HeaderName = HeaderName::from_static("x-forwarded-user");
/// Header carrying the user's email.
pub const EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");
/// Header carrying the user's groups, comma-separated.
pub const GROUPS: HeaderName = HeaderName::from_static("x-forwarded-groups");

/// What a header name is to the gateway. Names are compared the way the most lenient
/// upstream reads them: WSGI (`HTTP_X_FORWARDED_USER`), Rack and PHP map `-` and `_` to the
/// same thing, so `X_Forwarded_User` *is* `X-Forwarded-User` to them (oauth2-proxy's
/// CVE-2025-64484). One rule for every spelling, rather than a list of spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnedHeader {
    /// Who is calling, as the gateway vouches for it: `X-Forwarded-User`, `-Email`,
    /// `-Groups`, `-Preferred-Username`, `-Access-Token`, and oauth2-proxy's whole
    /// `X-Auth-Request-*` family (so upstreams migrated from it cannot be fooled either).
    /// Removed by [`AuthLayer`](super::AuthLayer) too, on every route.
    Identity,
    /// Where the request came from and what it asked for, as a proxy in front states it: the
    /// whole `X-Forwarded-*` family (`-For`, `-Host`, `-Proto`, `-Port`, `-Prefix`, `-Uri`,
    /// `-Method`, …), `Forwarded` (RFC 7239), `X-Real-IP`, `X-Client-IP`, `True-Client-IP`,
    /// the `X-Original-*` family (`-URL`, `-URI`, `-Method`: IIS, Symfony, nginx
    /// `auth_request`) and `X-Rewrite-URL`. Frameworks rebuild the client address, the
    /// scheme, the host and even the routed path from these. The gateway binary removes them
    /// and sets its own; the library leaves them to whatever proxy its user runs in front.
    Forwarding,
}

/// What follows `x-forwarded-` in the identity names (normalized: lower case, `-`); every
/// other `x-forwarded-*` name is forwarding.
const IDENTITY_SUFFIXES: [&str; 5] = ["user", "email", "groups", "preferred-username", "access-token"];
/// Client-address and scheme headers that frameworks read, outside the `x-forwarded-` and
/// `x-original-` families: Rails' `RemoteIp` reads `Client-IP`, PHP idioms `X-Cluster-Client-IP`,
/// CDNs send `CF-Connecting-IP` and `Fastly-Client-IP`, IIS `Front-End-Https`, Rack
/// `X-Url-Scheme`.
const FORWARDING_NAMES: [&str; 11] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-rewrite-url",
    "client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "front-end-https",
    "x-url-scheme",
];

/// Classifies a header name (as `http` stores it: lower case) by its normalized spelling.
/// Allocation-free: a byte comparison in which `_` equals `-`. Every request pays it for each
/// of its headers (the gateway sets five `x-` headers itself before the auth layer looks), so
/// the families are recognized by their prefix once, not name by name.
pub fn classify(name: &str) -> Option<OwnedHeader> {
    if !matches!(name.as_bytes().first()? | 0x20, b'x' | b'f' | b't' | b'c') {
        return None;
    }
    if has_prefix(name, "x-forwarded-") {
        let rest = &name["x-forwarded-".len()..];
        return Some(if IDENTITY_SUFFIXES.iter().any(|s| same_name(rest, s)) { OwnedHeader::Identity } else { OwnedHeader::Forwarding });
    }
    if has_prefix(name, "x-auth-request-") {
        return Some(OwnedHeader::Identity);
    }
    if has_prefix(name, "x-original-") || FORWARDING_NAMES.iter().any(|n| same_name(name, n)) {
        return Some(OwnedHeader::Forwarding);
    }
    None
}

/// Whether two header names are the same to a lenient upstream: ASCII case-insensitive, with
/// `_` and `-` equal.
pub fn same_name(a: &str, b: &str) -> bool {
    // Equal bytes first: names as `http` stores them are lower case, and the gateway's own
    // `x-forwarded-*` headers (set before the auth layer looks) match a prefix exactly; the
    // byte-by-byte normalized comparison then runs only for a mismatch, which it ends early.
    a.len() == b.len() && (a == b || a.bytes().zip(b.bytes()).all(|(x, y)| normalize(x) == normalize(y)))
}

fn has_prefix(name: &str, prefix: &str) -> bool {
    name.len() > prefix.len() && same_name(&name[..prefix.len()], prefix)
}

fn normalize(b: u8) -> u8 {
    if b == b'_' { b'-' } else { b.to_ascii_lowercase() }
}

/// Removes every identity header a client may have sent, in any spelling ([`OwnedHeader::Identity`]).
/// `Authorization` too when `strip_authorization` (routes that require login: only the
/// gateway's token may pass). One pass over the names; nothing is allocated unless a client
/// sent one.
pub fn strip_client_identity(headers: &mut HeaderMap, strip_authorization: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if classify(name.as_str()) == Some(OwnedHeader::Identity) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
    if strip_authorization {
        headers.remove(header::AUTHORIZATION);
    }
}

/// Sets `Authorization: Bearer` and the user headers from the session. Whatever
/// `Authorization` the client sent is replaced, or removed when the session's token cannot be
/// a header value: only the gateway's token may pass. The values are the record's own, built
/// once for all its requests (`SessionRecord::forward_values`).
pub fn set_identity(headers: &mut HeaderMap, session: &SessionRecord) {
    let values = session.forward_values();
    match &values.bearer {
        Some(bearer) => {
            headers.insert(header::AUTHORIZATION, bearer.clone());
        }
        None => {
            headers.remove(header::AUTHORIZATION);
        }
    }
    for (name, value) in [(USER, &values.user), (EMAIL, &values.email), (GROUPS, &values.groups)] {
        if let Some(value) = value {
            headers.insert(name, value.clone());
        }
    }
}

/// Removes the gateway's cookies from the `Cookie` header: the upstream has no use for them,
/// and an upstream that logs or leaks cookies must not be able to leak sessions. `cookie_name`
/// is the session cookie's name (`portcullis`, or `__Host-portcullis` on https); the gateway's
/// cookie namespace is that base name and everything under `<base>_`, with or without the
/// `__Host-`/`__Secure-` prefix: the cookie store's chunks (`portcullis_1`, …, see
/// `sealed_cookie::chunk_name`) and the login-binding cookies (`portcullis_login_*`), whose
/// `Path=/oauth2/callback` still matches proxied paths such as `/oauth2/callback/x`.
/// A request without any of them is left untouched, and one carrying nothing else loses its
/// `Cookie` header outright: neither allocates (the second is every request of a client that
/// only holds the gateway's cookie; rebuilding its header cost ~1,400 instructions).
pub fn strip_cookie(headers: &mut HeaderMap, cookie_name: &str) {
    let base = unprefixed(cookie_name).as_bytes();
    let ours = |pair: &[u8]| {
        let name = memchr::memchr(b'=', pair).map_or(pair, |at| &pair[..at]);
        in_namespace(name.trim_ascii(), base)
    };
    // Bytes throughout: a header with another cookie's non-ASCII byte in it must still lose ours.
    // One scan over every value says what there is: ours, others', or both.
    let (mut any_ours, mut any_other) = (false, false);
    for value in headers.get_all(header::COOKIE) {
        for pair in crate::cookie_header::parts(value.as_bytes()).map(<[u8]>::trim_ascii) {
            if pair.is_empty() {
                continue;
            }
            if ours(pair) { any_ours = true } else { any_other = true }
        }
    }
    if !any_ours {
        return;
    }
    if !any_other {
        headers.remove(header::COOKIE);
        return;
    }
    // Both: each value holding one of ours is rebuilt without it (one buffer, which the new
    // header value then owns); values holding only ours go.
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    headers.remove(header::COOKIE);
    for value in values {
        if !crate::cookie_header::parts(value.as_bytes()).any(|pair| ours(pair.trim_ascii())) {
            headers.append(header::COOKIE, value);
            continue;
        }
        let mut kept: Vec<u8> = Vec::with_capacity(value.len());
        for pair in crate::cookie_header::parts(value.as_bytes()).map(<[u8]>::trim_ascii) {
            if pair.is_empty() || ours(pair) {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair);
        }
        if !kept.is_empty()
            && let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(kept))
        {
            headers.append(header::COOKIE, v);
        }
    }
}

fn unprefixed(name: &str) -> &str {
    name.strip_prefix("__Host-").or_else(|| name.strip_prefix("__Secure-")).unwrap_or(name)
}

/// `base`, or `base_<anything>`, optionally `__Host-`/`__Secure-` prefixed.
fn in_namespace(name: &[u8], base: &[u8]) -> bool {
    let name = name.strip_prefix(b"__Host-").or_else(|| name.strip_prefix(b"__Secure-")).unwrap_or(name);
    match name.strip_prefix(base) {
        Some(rest) => rest.is_empty() || rest.starts_with(b"_"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_our_cookies() {
        let cases = [
            ("portcullis", "a=1; portcullis=secret; b=2", Some("a=1; b=2")),
            ("portcullis", "portcullis_1=c1; portcullis_2=c2; theme=dark", Some("theme=dark")),
            ("portcullis", "portcullis_login_abc=l; x=1", Some("x=1")),
            ("portcullis", "__Host-portcullis_1=c; portcullisx=keep; my_portcullis=keep", Some("portcullisx=keep; my_portcullis=keep")),
            ("__Host-portcullis", "__Host-portcullis=s; __Host-portcullis_3=c; portcullis_login_z=l", None),
            ("portcullis", "Portcullis=case-differs", Some("Portcullis=case-differs")),
        ];
        for (name, cookie, kept) in cases {
            let mut h = HeaderMap::new();
            h.append(header::COOKIE, cookie.parse().unwrap());
            strip_cookie(&mut h, name);
            assert_eq!(h.get(header::COOKIE).map(|v| v.to_str().unwrap()), kept, "{name}: {cookie}");
        }
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; portcullis=secret; b=2".parse().unwrap());
        h.append(header::COOKIE, "portcullis=again".parse().unwrap());
        strip_cookie(&mut h, "portcullis");
        let all: Vec<_> = h.get_all(header::COOKIE).iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert_eq!(all, vec!["a=1; b=2".to_string()]);

        // Several headers: one without ours is kept as sent; only ours everywhere: no header.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "theme=dark;lang=en".parse().unwrap());
        h.append(header::COOKIE, "portcullis=s; x=1".parse().unwrap());
        strip_cookie(&mut h, "portcullis");
        let all: Vec<_> = h.get_all(header::COOKIE).iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert_eq!(all, ["theme=dark;lang=en", "x=1"]);
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "portcullis=s".parse().unwrap());
        h.append(header::COOKIE, " portcullis_1=c ; ;portcullis_login_q=l".parse().unwrap());
        h.insert(header::ACCEPT, "*/*".parse().unwrap());
        strip_cookie(&mut h, "portcullis");
        assert!(h.get(header::COOKIE).is_none() && h.len() == 1, "{h:?}");
    }

    #[test]
    fn a_non_ascii_cookie_does_not_shield_ours() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_bytes(b"name=Jos\xc3\xa9; portcullis=secret; portcullis_1=c").unwrap());
        strip_cookie(&mut h, "portcullis");
        assert_eq!(h.get(header::COOKIE).unwrap().as_bytes(), b"name=Jos\xc3\xa9", "ours removed, the app's kept as sent");
    }

    #[test]
    fn strips_spoofed_identity_in_every_spelling() {
        let mut h = HeaderMap::new();
        for name in [
            "x-forwarded-user",
            "x_forwarded_user",
            "x-forwarded_email",
            "x_forwarded-groups",
            "x-forwarded-preferred-username",
            "x_forwarded_access_token",
            "x-auth-request-user",
            "x_auth_request_email",
            "x-auth-request-anything-new",
        ] {
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), "mallory".parse().unwrap());
        }
        h.insert(header::AUTHORIZATION, "Bearer forged".parse().unwrap());
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        strip_client_identity(&mut h, false);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "x-forwarded-for"], "the library leaves forwarding headers to the proxy in front");
        strip_client_identity(&mut h, true);
        assert_eq!(h.len(), 1);
    }

    /// The session's token replaces the client's `Authorization`, or removes it when it cannot
    /// be a header value; the identity headers come from the record, a bad claim is left out.
    #[test]
    fn set_identity_replaces_the_clients_authorization() {
        use crate::session::{Identity, TokenSet};
        let mut record = SessionRecord {
            version: 1,
            created_at: 0,
            identity: Identity {
                subject: "s".into(),
                user: "alice".into(),
                email: Some("a@example.test\r\nx: y".into()),
                groups: vec!["g1".into(), "g2".into()],
                claims: Default::default(),
            },
            tokens: TokenSet { access_token: "good".into(), issued_at: 0, expires_at: None, refresh_token: None, id_token: None },
            unsettled_refresh: None,
            forward: Default::default(),
        };
        let client = || {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, "Bearer forged".parse().unwrap());
            h
        };
        let mut h = client();
        set_identity(&mut h, &record);
        assert_eq!(h.get(header::AUTHORIZATION).unwrap(), "Bearer good");
        assert!(h.get(header::AUTHORIZATION).unwrap().is_sensitive());
        assert_eq!(h.get(USER).unwrap(), "alice");
        assert_eq!(h.get(GROUPS).unwrap(), "g1,g2");
        assert!(h.get(EMAIL).is_none(), "a claim that would split headers is left out");
        record.tokens.access_token = "bad\ntoken".into();
        let mut h = client();
        set_identity(&mut h, &record);
        assert!(h.get(header::AUTHORIZATION).is_none(), "the client's token passed: {h:?}");
    }

    #[test]
    fn classifies_by_normalized_name() {
        use OwnedHeader::*;
        let cases = [
            ("X_Forwarded_User", Some(Identity)),
            ("X_AUTH_REQUEST_USER", Some(Identity)),
            ("x-forwarded-for", Some(Forwarding)),
            ("x_forwarded_host", Some(Forwarding)),
            ("x-forwarded-uri", Some(Forwarding)),
            ("forwarded", Some(Forwarding)),
            ("Forwarded", Some(Forwarding)),
            ("x_real_ip", Some(Forwarding)),
            ("true-client-ip", Some(Forwarding)),
            ("x-original-url", Some(Forwarding)),
            ("x-original-uri", Some(Forwarding)),
            ("x_rewrite_url", Some(Forwarding)),
            ("x-forwarded", None),
            ("x-forwardedfor", None),
            ("forwarded-x", None),
            ("accept", None),
            ("x-request-id", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(classify(name), want, "{name}");
        }
    }
}
