//! Identity headers towards the upstream: only the gateway sets them.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::session::SessionRecord;

/// Header carrying the user (the configured claim, `sub` by default).
pub const USER: HeaderName = HeaderName::from_static("x-forwarded-user");
/// Header carrying the user's email.
pub const EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");
/// Header carrying the user's groups, comma-separated.
pub const GROUPS: HeaderName = HeaderName::from_static("x-forwarded-groups");

/// Headers an upstream may take as the gateway's word about who is calling. A client that sends
/// any of them is trying to impersonate someone; they are removed on every route. The
/// `x-auth-request-*` family is oauth2-proxy's, stripped too so upstreams migrated from it
/// cannot be fooled either.
/// `HeaderName`s, not strings: removing by a static name skips parsing it on every request.
const SPOOFABLE: [HeaderName; 10] = [
    HeaderName::from_static("x-forwarded-user"),
    HeaderName::from_static("x-forwarded-email"),
    HeaderName::from_static("x-forwarded-groups"),
    HeaderName::from_static("x-forwarded-preferred-username"),
    HeaderName::from_static("x-forwarded-access-token"),
    HeaderName::from_static("x-auth-request-user"),
    HeaderName::from_static("x-auth-request-email"),
    HeaderName::from_static("x-auth-request-groups"),
    HeaderName::from_static("x-auth-request-preferred-username"),
    HeaderName::from_static("x-auth-request-access-token"),
];

/// Removes every identity header a client may have sent. `Authorization` too when
/// `strip_authorization` (routes that require login: only the gateway's token may pass).
pub fn strip_client_identity(headers: &mut HeaderMap, strip_authorization: bool) {
    for name in &SPOOFABLE {
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

/// Removes the gateway's own session cookie from the `Cookie` header: the upstream has no use
/// for it, and an upstream that logs or leaks cookies must not be able to leak sessions.
pub fn strip_cookie(headers: &mut HeaderMap, cookie_name: &str) {
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    if values.is_empty() {
        return;
    }
    headers.remove(header::COOKIE);
    for value in values {
        let Ok(text) = value.to_str() else {
            headers.append(header::COOKIE, value);
            continue;
        };
        let kept: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(name, _)| name.trim() != cookie_name))
            .collect();
        if !kept.is_empty()
            && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
        {
            headers.append(header::COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_our_cookie() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; portcullis=secret; b=2".parse().unwrap());
        h.append(header::COOKIE, "portcullis=again".parse().unwrap());
        strip_cookie(&mut h, "portcullis");
        let all: Vec<_> = h.get_all(header::COOKIE).iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert_eq!(all, vec!["a=1; b=2".to_string()]);
    }

    #[test]
    fn strips_spoofed_identity() {
        let mut h = HeaderMap::new();
        for name in SPOOFABLE {
            h.insert(name, "mallory".parse().unwrap());
        }
        h.insert(header::AUTHORIZATION, "Bearer forged".parse().unwrap());
        strip_client_identity(&mut h, false);
        assert_eq!(h.len(), 1, "only Authorization may stay on allow routes");
        strip_client_identity(&mut h, true);
        assert!(h.is_empty());
    }
}
