//! Reading cookies out of request headers.

use http::{HeaderMap, header};

/// The value of cookie `name` in a request, from any `Cookie` header. When a cookie appears
/// twice (a stale one on a parent path), the first is taken, as browsers send the most
/// specific first.
pub(crate) fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}
