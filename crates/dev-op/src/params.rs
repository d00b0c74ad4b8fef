//! Request parameters from a query string or a form body. RFC 6749 §3.1 and §3.2: parameters
//! must not repeat, and a repeated one is refused rather than resolved first- or last-wins,
//! because two components picking different copies is how parameter-pollution attacks work.
//! Parsed by hand rather than with axum's `Form`, so that a wrong content type or a bad body
//! gets an OAuth error instead of axum's plain-text rejection.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    /// Parses `application/x-www-form-urlencoded` text; `Err` names a repeated parameter.
    pub(crate) fn parse(text: &[u8]) -> Result<Self, String> {
        let mut map = HashMap::new();
        for (key, value) in url::form_urlencoded::parse(text) {
            // RFC 6749 §3.1: parameters sent without a value are treated as omitted.
            if value.is_empty() {
                continue;
            }
            if map.insert(key.to_string(), value.into_owned()).is_some() {
                return Err(format!("parameter {key:?} is repeated"));
            }
        }
        Ok(Self(map))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub(crate) fn take(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::Params;

    #[test]
    fn repeated_parameters_are_refused_and_empty_ones_ignored() {
        let p = Params::parse(b"a=1&b=&c=x%20y").unwrap();
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), None);
        assert_eq!(p.get("c"), Some("x y"));
        assert!(Params::parse(b"a=1&a=2").unwrap_err().contains("\"a\""));
    }
}
