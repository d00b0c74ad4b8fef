//! Return targets after login and logout: same-origin paths only, so `/oauth2/start?rd=…` can
//! never be used to bounce a user to another site (open redirect).

/// The path to return to, or `None` when `target` could leave the origin.
///
/// Accepts an absolute path (`/a/b?c#d`) and nothing else: no scheme, no authority, no
/// `//host` or `/\host` (browsers treat a backslash as a slash), no control characters or
/// whitespace, which browsers strip before parsing.
pub fn safe_return_path(target: &str) -> Option<&str> {
    let bytes = target.as_bytes();
    let ok = bytes.first() == Some(&b'/')
        && !matches!(bytes.get(1), Some(b'/' | b'\\'))
        && !bytes.iter().any(|&b| b == b'\\' || b.is_ascii_control() || b == b' ')
        && target.len() <= 2048;
    ok.then_some(target)
}

#[cfg(test)]
mod tests {
    use super::safe_return_path;

    #[test]
    fn refuses_everything_that_can_leave_the_origin() {
        let refused = [
            "//evil.example",
            "//evil.example/path",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example",
            "http:evil.example",
            "javascript:alert(1)",
            "evil.example",
            "",
            "/\t/evil.example",
            "/\n/evil.example",
            " //evil.example",
            "/ /evil.example",
            "/\r\nLocation: x",
        ];
        for target in refused {
            assert_eq!(safe_return_path(target), None, "accepted {target:?}");
        }
    }

    #[test]
    fn accepts_same_origin_paths() {
        for target in ["/", "/app", "/app/page?x=1&y=%2F%2Fz#frag", "/a//b", "/%2F%2Fevil.example"] {
            assert_eq!(safe_return_path(target), Some(target));
        }
    }
}
