//! Reading cookies out of request headers.
//!
//! `Cookie` headers are parsed as bytes, never through `HeaderValue::to_str`: one cookie with a
//! non-ASCII byte (an application's `name=José`, or one a sibling subdomain set) would otherwise
//! make the whole header unreadable, and the gateway blind to its own cookies in it: no session
//! found, and the session cookie forwarded upstream with the rest.

use http::{HeaderMap, header};

/// The `;`-separated parts of one `Cookie` header value, found with `memchr` (a byte-at-a-time
/// split cost ~1,000 instructions per request more than the `str` split it replaced).
pub(crate) fn parts(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let ends = memchr::memchr_iter(b';', value).chain(std::iter::once(value.len()));
    ends.map(move |end| {
        let part = &value[start..end];
        start = end + 1;
        part
    })
}

/// Every `name=value` pair of every `Cookie` header, as bytes, names and values trimmed of
/// spaces (values also of surrounding quotes). Pairs without `=` are skipped.
pub(crate) fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers.get_all(header::COOKIE).iter().flat_map(|v| parts(v.as_bytes())).filter_map(|pair| {
        let at = memchr::memchr(b'=', pair)?;
        let (name, value) = (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii());
        let value = value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value);
        Some((name, value))
    })
}

/// The value of cookie `name` in a request, from any `Cookie` header. When a cookie appears
/// twice (a stale one on a parent path), the first is taken, as browsers send the most
/// specific first. A value that is not UTF-8 is not one of ours: `None`.
pub(crate) fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    // Loops rather than `pairs().find(..)`: this runs on every request, and the flattened
    // iterator cost twice as many instructions.
    for value in headers.get_all(header::COOKIE) {
        for pair in parts(value.as_bytes()) {
            let pair = pair.trim_ascii_start();
            if pair.len() > name.len() && pair.starts_with(name.as_bytes()) {
                let rest = pair[name.len()..].trim_ascii_start();
                if let Some(found) = rest.strip_prefix(b"=") {
                    let found = found.trim_ascii();
                    let found = found.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(found);
                    return std::str::from_utf8(found).ok();
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn a_non_utf8_cookie_does_not_hide_ours() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_bytes(b"name=Jos\xc3\xa9; portcullis=v1.abc; x=\xff").unwrap());
        assert_eq!(find(&h, "portcullis"), Some("v1.abc"));
        assert_eq!(find(&h, "x"), None, "not UTF-8: not ours");
        assert_eq!(pairs(&h).count(), 3);
    }

    #[test]
    fn quotes_and_spaces_are_trimmed_and_the_first_wins() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static(" a = \"1\" ;b=2;noequals; a=3"));
        assert_eq!(find(&h, "a"), Some("1"));
        assert_eq!(find(&h, "b"), Some("2"));
        assert_eq!(find(&h, "noequals"), None);
    }
}
