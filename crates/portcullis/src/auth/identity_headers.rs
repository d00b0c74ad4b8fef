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

/// Exact identity names (normalized: lower case, `-`).
const IDENTITY_NAMES: [&str; 5] =
    ["x-forwarded-user", "x-forwarded-email", "x-forwarded-groups", "x-forwarded-preferred-username", "x-forwarded-access-token"];
const IDENTITY_PREFIXES: [&str; 1] = ["x-auth-request-"];
const FORWARDING_NAMES: [&str; 5] = ["forwarded", "x-real-ip", "x-client-ip", "true-client-ip", "x-rewrite-url"];
const FORWARDING_PREFIXES: [&str; 2] = ["x-forwarded-", "x-original-"];

/// Classifies a header name (as `http` stores it: lower case) by its normalized spelling.
/// Allocation-free: a byte comparison in which `_` equals `-`. Every request pays it for each
/// of its headers, so the common names are turned away by their first byte.
pub fn classify(name: &str) -> Option<OwnedHeader> {
    let first = *name.as_bytes().first()?;
    if !matches!(first, b'x' | b'X' | b'f' | b'F' | b't' | b'T') {
        return None;
    }
    if IDENTITY_NAMES.iter().any(|n| same_name(name, n)) || IDENTITY_PREFIXES.iter().any(|p| has_prefix(name, p)) {
        return Some(OwnedHeader::Identity);
    }
    if FORWARDING_NAMES.iter().any(|n| same_name(name, n)) || FORWARDING_PREFIXES.iter().any(|p| has_prefix(name, p)) {
        return Some(OwnedHeader::Forwarding);
    }
    None
}

/// Whether two header names are the same to a lenient upstream: ASCII case-insensitive, with
/// `_` and `-` equal.
pub fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| normalize(x) == normalize(y))
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

/// Sets `Authorization: Bearer` and the user headers from the session.
pub fn set_identity(headers: &mut HeaderMap, session: &SessionRecord) {
    if let Ok(mut bearer) = HeaderValue::try_from(format!("Bearer {}", session.tokens.access_token)) {
        bearer.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, bearer);
    } else {
        tracing::warn!("the access token is not a valid header value; not forwarded");
    }
    let identity = &session.identity;
    insert_text(headers, USER, &identity.user);
    if let Some(email) = &identity.email {
        insert_text(headers, EMAIL, email);
    }
    if !identity.groups.is_empty() {
        insert_text(headers, GROUPS, &identity.groups.join(","));
    }
}

fn insert_text(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        // A claim with control characters could split headers; better absent than mangled.
        Err(_) => tracing::warn!(header = %name, "claim value is not a valid header value; header omitted"),
    }
}

/// Removes the gateway's cookies from the `Cookie` header: the upstream has no use for them,
/// and an upstream that logs or leaks cookies must not be able to leak sessions. `cookie_name`
/// is the session cookie's name (`portcullis`, or `__Host-portcullis` on https); the gateway's
/// cookie namespace is that base name and everything under `<base>_`, with or without the
/// `__Host-`/`__Secure-` prefix: the cookie store's chunks (`portcullis_1`, …, see
/// `sealed_cookie::chunk_name`) and the login-binding cookies (`portcullis_login_*`), whose
/// `Path=/oauth2/callback` still matches proxied paths such as `/oauth2/callback/x`.
/// A request without any of them is left untouched (no allocation).
pub fn strip_cookie(headers: &mut HeaderMap, cookie_name: &str) {
    let base = unprefixed(cookie_name).as_bytes();
    // Bytes throughout: a header with another cookie's non-ASCII byte in it must still lose ours.
    if !crate::cookie_header::pairs(headers).any(|(name, _)| in_namespace(name, base)) {
        return;
    }
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    headers.remove(header::COOKIE);
    for value in values {
        let kept: Vec<&[u8]> = value
            .as_bytes()
            .split(|&b| b == b';')
            .map(<[u8]>::trim_ascii)
            .filter(|pair| {
                let name = pair.iter().position(|&b| b == b'=').map_or(*pair, |at| pair[..at].trim_ascii());
                !pair.is_empty() && !in_namespace(name, base)
            })
            .collect();
        if !kept.is_empty()
            && let Ok(v) = HeaderValue::from_bytes(&kept.join(&b"; "[..]))
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
