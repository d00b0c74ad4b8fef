//! The cookies the gateway sets: the session cookie and the short-lived login-state cookies.

use std::time::Duration;

use cookie::{Cookie, SameSite};
use http::HeaderValue;

/// Names and attributes of the gateway's cookies.
#[derive(Debug, Clone)]
pub struct CookieSettings {
    /// Session cookie name, `__Host-`-prefixed on https so no subdomain or path can shadow it.
    pub session_name: String,
    /// Prefix of login-state cookie names (one cookie per login in progress, so two tabs
    /// logging in at once do not overwrite each other's), `__Host-`-prefixed on https.
    pub login_prefix: String,
    /// `Secure` on every cookie (public URL is https).
    pub secure: bool,
    /// Session cookie lifetime in the browser (the absolute session lifetime).
    pub max_age: Duration,
}

impl CookieSettings {
    /// Settings for a base name and scheme.
    pub fn new(base_name: &str, secure: bool, max_age: Duration) -> Self {
        let host = if secure { "__Host-" } else { "" };
        Self { session_name: format!("{host}{base_name}"), login_prefix: format!("{host}{base_name}_login_"), secure, max_age }
    }

    /// `Set-Cookie` for a session.
    pub fn session(&self, value: String) -> HeaderValue {
        self.session_named(&self.session_name, value)
    }

    /// `Set-Cookie` for a session cookie (or one chunk of a cookie-store session) named `name`.
    pub fn session_named(&self, name: &str, value: String) -> HeaderValue {
        let cookie = Cookie::build((name.to_string(), value))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure)
            .max_age(cookie::time::Duration::seconds(self.max_age.as_secs() as i64));
        header_value(cookie.build())
    }

    /// `Set-Cookie` that removes the session cookie.
    pub fn clear_session(&self) -> HeaderValue {
        self.clear_named(&self.session_name)
    }

    /// `Set-Cookie` that removes the session cookie (or chunk) named `name`.
    pub fn clear_named(&self, name: &str) -> HeaderValue {
        let cookie = Cookie::build((name.to_string(), ""))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure)
            .max_age(cookie::time::Duration::ZERO);
        header_value(cookie.build())
    }

    /// `Set-Cookie` carrying a sealed login in progress (`auth::login_state`); `name` is
    /// [`Self::login_prefix`] plus the login's id. `Path=/` because `__Host-` requires it (the
    /// prefix is what stops a sibling subdomain or a plain-http response from planting or
    /// shadowing a login cookie); the value is sealed, so the extra requests that carry it learn
    /// nothing. `SameSite=Lax` still sends it on the OP's top-level redirect to the callback.
    pub fn login_state(&self, name: &str, value: String, lifetime: Duration) -> HeaderValue {
        let cookie = Cookie::build((name.to_string(), value))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure)
            .max_age(cookie::time::Duration::seconds(lifetime.as_secs().max(1) as i64));
        header_value(cookie.build())
    }

    /// `Set-Cookie` that removes a login-state cookie.
    pub fn clear_login_state(&self, name: &str) -> HeaderValue {
        self.clear_named(name)
    }
}

fn header_value(cookie: Cookie<'_>) -> HeaderValue {
    HeaderValue::try_from(cookie.to_string()).expect("cookie names and values are header-safe")
}

pub(crate) use crate::cookie_header::find;

#[cfg(test)]
mod tests {
    use http::{HeaderMap, header};

    use super::*;

    #[test]
    fn https_gets_host_prefix_and_secure() {
        let s = CookieSettings::new("portcullis", true, Duration::from_secs(60));
        let c = s.session("v".into());
        let c = c.to_str().unwrap();
        assert!(c.starts_with("__Host-portcullis=v"), "{c}");
        for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Secure", "Max-Age=60"] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
        assert!(!c.contains("Domain"), "__Host- cookies must not carry Domain");
    }

    #[test]
    fn login_state_cookie_on_https_is_host_prefixed_and_strict() {
        let s = CookieSettings::new("portcullis", true, Duration::from_secs(3600));
        assert_eq!(s.login_prefix, "__Host-portcullis_login_");
        let name = format!("{}abc", s.login_prefix);
        for c in [s.login_state(&name, "sealed".into(), Duration::from_secs(600)), s.clear_login_state(&name)] {
            let c = c.to_str().unwrap();
            assert!(c.starts_with("__Host-portcullis_login_abc="), "{c}");
            let attrs: Vec<&str> = c.split("; ").skip(1).collect();
            for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Secure"] {
                assert!(attrs.contains(&attr), "{c} lacks {attr}");
            }
            assert!(!c.contains("Domain"), "__Host- cookies must not carry Domain: {c}");
        }
        let set = s.login_state(&name, "sealed".into(), Duration::from_secs(600));
        assert!(set.to_str().unwrap().split("; ").any(|a| a == "Max-Age=600"), "lives as long as a login may take");
        let clear = s.clear_login_state(&name);
        assert!(clear.to_str().unwrap().split("; ").any(|a| a == "Max-Age=0"));
    }

    #[test]
    fn login_state_cookie_on_http_has_no_prefix_and_no_secure() {
        let s = CookieSettings::new("portcullis", false, Duration::from_secs(3600));
        assert_eq!(s.login_prefix, "portcullis_login_");
        let c = s.login_state("portcullis_login_abc", "v".into(), Duration::from_secs(600));
        let c = c.to_str().unwrap();
        assert!(!c.contains("Secure") && c.split("; ").any(|a| a == "Path=/") && c.contains("HttpOnly"), "{c}");
    }

    #[test]
    fn http_has_no_prefix_and_no_secure() {
        let s = CookieSettings::new("portcullis", false, Duration::from_secs(60));
        let c = s.session("v".into());
        let c = c.to_str().unwrap();
        assert!(c.starts_with("portcullis=v") && !c.contains("Secure"), "{c}");
    }

    #[test]
    fn finds_cookie_across_headers() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; b=2".parse().unwrap());
        h.append(header::COOKIE, "portcullis=xyz".parse().unwrap());
        assert_eq!(find(&h, "portcullis"), Some("xyz"));
        assert_eq!(find(&h, "b"), Some("2"));
        assert_eq!(find(&h, "c"), None);
    }
}
