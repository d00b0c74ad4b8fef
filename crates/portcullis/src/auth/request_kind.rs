//! Navigation or API call: decides between a redirect to login and a 401 with a JSON body.

use http::{HeaderMap, HeaderName, header};

// Static names: a lookup by `&str` parses the name on every call, and this runs on every request.
const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
const X_REQUESTED_WITH: HeaderName = HeaderName::from_static("x-requested-with");

/// What kind of client sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A browser loading a page: it can follow a redirect to the OP and render HTML.
    Navigation,
    /// `fetch`, XHR or an API client: a redirect would hand it the OP's login page as data.
    Api,
}

impl RequestKind {
    /// `Sec-Fetch-Mode` when the browser sends it (all current ones do), else `Accept: text/html`
    /// as older browsers send for page loads but not for XHR.
    pub fn of(headers: &HeaderMap) -> Self {
        if let Some(mode) = headers.get(SEC_FETCH_MODE) {
            return if mode.as_bytes() == b"navigate" { Self::Navigation } else { Self::Api };
        }
        if headers.get(X_REQUESTED_WITH).is_some() {
            return Self::Api;
        }
        let accepts_html = headers.get_all(header::ACCEPT).iter().any(|v| v.to_str().is_ok_and(|v| v.contains("text/html")));
        if accepts_html { Self::Navigation } else { Self::Api }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        let cases: &[(&[(&str, &str)], RequestKind)] = &[
            (&[("sec-fetch-mode", "navigate")], RequestKind::Navigation),
            (&[("sec-fetch-mode", "cors"), ("accept", "text/html")], RequestKind::Api),
            (&[("sec-fetch-mode", "no-cors")], RequestKind::Api),
            (&[("accept", "text/html,application/xhtml+xml")], RequestKind::Navigation),
            (&[("accept", "text/html"), ("x-requested-with", "XMLHttpRequest")], RequestKind::Api),
            (&[("accept", "application/json")], RequestKind::Api),
            (&[], RequestKind::Api),
        ];
        for (headers, expected) in cases {
            let mut map = HeaderMap::new();
            for (k, v) in *headers {
                map.append(*k, v.parse().unwrap());
            }
            assert_eq!(RequestKind::of(&map), *expected, "{headers:?}");
        }
    }
}
