//! The cookies the gateway sets: the session cookie and the short-lived login-binding cookie.

use std::time::Duration;

use cookie::{Cookie, SameSite};
use http::HeaderValue;

/// Names and attributes of the gateway's cookies.
#[derive(Debug, Clone)]
pub struct CookieSettings {
    /// Session cookie name, `__Host-`-prefixed on https so no subdomain or path can shadow it.
    pub session_name: String,
    /// Prefix of login-binding cookie names (one cookie per login in progress, so two tabs
    /// logging in at once do not overwrite each other's binding).
    pub login_prefix: String,
    /// `Secure` on every cookie (public URL is https).
    pub secure: bool,
    /// Session cookie lifetime in the browser (the absolute session lifetime).
    pub max_age: Duration,
}

impl CookieSettings {
    /// Settings for a base name and scheme.
    pub fn new(base_name: &str, secure: bool, max_age: Duration) -> Self {
        let session_name = if secure { format!("__Host-{base_name}") } else { base_name.to_string() };
        Self { session_name, login_prefix: format!("{base_name}_login_"), secure, max_age }
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

    /// `Set-Cookie` binding a login in progress to this browser. Scoped to the callback path:
    /// no other request carries it. SameSite=Lax still sends it on the OP's top-level redirect.
    pub fn login_binding(&self, login_id: &str, value: &str, lifetime: Duration) -> HeaderValue {
        let cookie = Cookie::build((format!("{}{login_id}", self.login_prefix), value.to_string()))
            .path("/oauth2/callback")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure)
            .max_age(cookie::time::Duration::seconds(lifetime.as_secs() as i64));
        header_value(cookie.build())
    }

    /// `Set-Cookie` that removes a login-binding cookie.
    pub fn clear_login_binding(&self, login_id: &str) -> HeaderValue {
        let cookie = Cookie::build((format!("{}{login_id}", self.login_prefix), ""))
            .path("/oauth2/callback")
            .http_only(true)
            .secure(self.secure)
            .max_age(cookie::time::Duration::ZERO);
        header_value(cookie.build())
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
