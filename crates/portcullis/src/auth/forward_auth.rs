//! Forward-auth: `/oauth2/auth`, oauth2-proxy's contract for a front proxy that asks "may this
//! request pass?" (nginx `auth_request`, Caddy `forward_auth`, Traefik `forwardAuth`), and
//! `/oauth2/auth/<original path>` for Envoy's HTTP `ext_authz` (`path_prefix = "/oauth2/auth"`).
//!
//! | contract | original request | allowed | no session | refused |
//! |---|---|---|---|---|
//! | `/oauth2/auth` | `X-Forwarded-Uri` / `X-Original-URI`, `X-Forwarded-Method` / `X-Original-Method` | `202` | `401` | `403` |
//! | `/oauth2/auth/<path>` (Envoy) | the path after the prefix, the request's own method | `200` | `302` to login (navigation on a `login` route), else `401` | `403` |
//!
//! The allowed answer carries `Authorization: Bearer <fresh access token>`,
//! `X-Auth-Request-User`, `-Email`, `-Groups`, `-Preferred-Username`, `-Access-Token` for the
//! proxy to copy onto the upstream request, and any `Set-Cookie` a cookie-store refresh made.
//! Refresh goes through [`Authenticator::authenticate`]: the same single flight and lease as a
//! proxied request, so a page's parallel calls through nginx cost one grant.
//!
//! Trust: the endpoint answers only a peer that someone vouched for, i.e. a request carrying a
//! [`ForwardedRequest`] extension (the gateway's boundary inserts it for peers in
//! `trusted_proxies` only, read from their headers before the boundary removes every client
//! copy). Anyone else gets `403`: a browser calling `/oauth2/auth` itself learns nothing and is
//! never handed its access token (which a BFF keeps away from page scripts), and a deployment
//! that forgot `trusted_proxies` fails closed and says so in the log, rather than silently
//! judging every request without its route's rules.
//!
//! What the proxy says about the original request is read in every spelling a lenient reader
//! accepts (`X_Forwarded_Uri` = `X-Forwarded-Uri`, as `identity_headers::same_name` compares),
//! from both families (`X-Forwarded-*`, `X-Original-*`): if the values disagree the request is
//! refused (400). nginx's `auth_request` passes the *client's* headers to the subrequest, so a
//! client could otherwise send its own `X-Original-URI: /public` next to the one nginx set
//! (`X-Forwarded-Uri: /admin`) and have the laxer route's rules applied to `/admin`.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

use super::{
    Authenticator, Caller, Failure, RequestKind,
    authorization::{self, Verdict},
    cross_site::{self, Site},
    identity_headers::same_name,
};
use crate::config::{AuthorizationRules, RouteConfig, Unauthenticated};

/// Path of the oauth2-proxy contract; Envoy's `path_prefix`.
pub const FORWARD_AUTH_PATH: &str = "/oauth2/auth";

const AUTH_REQUEST_USER: HeaderName = HeaderName::from_static("x-auth-request-user");
const AUTH_REQUEST_EMAIL: HeaderName = HeaderName::from_static("x-auth-request-email");
const AUTH_REQUEST_GROUPS: HeaderName = HeaderName::from_static("x-auth-request-groups");
const AUTH_REQUEST_PREFERRED_USERNAME: HeaderName = HeaderName::from_static("x-auth-request-preferred-username");
const AUTH_REQUEST_ACCESS_TOKEN: HeaderName = HeaderName::from_static("x-auth-request-access-token");

/// What a *trusted* front proxy says about the request it asks about. Its presence as a
/// request extension is the statement "this peer is a front proxy we trust"; whoever inserts
/// it vouches for the peer (the gateway's boundary, for `trusted_proxies` only; a library
/// user, behind its own proxy). Never built from an untrusted peer's headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedRequest {
    /// `X-Forwarded-Uri` / `X-Original-URI` (path and query as the client sent them).
    pub uri: Option<String>,
    /// `X-Forwarded-Method` / `X-Original-Method`.
    pub method: Option<String>,
    /// Set when the headers of one kind disagree (several values, spellings or families),
    /// or cannot be read: names the kind. Such a request is refused, never guessed at.
    pub ambiguous: Option<&'static str>,
}

impl ForwardedRequest {
    /// Reads the proxy's statement from `headers` (call it only for a trusted peer, before the
    /// boundary removes the forwarding headers).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut uri: Claim<'_> = Claim::Absent;
        let mut method: Claim<'_> = Claim::Absent;
        for (name, value) in headers {
            let n = name.as_str();
            let slot = if same_name(n, "x-forwarded-uri") || same_name(n, "x-original-uri") {
                &mut uri
            } else if same_name(n, "x-forwarded-method") || same_name(n, "x-original-method") {
                &mut method
            } else {
                continue;
            };
            slot.add(value);
        }
        let mut out = Self::default();
        match uri {
            Claim::One(v) => out.uri = Some(v.to_string()),
            Claim::Conflict => out.ambiguous = Some("X-Forwarded-Uri / X-Original-URI"),
            Claim::Absent => {}
        }
        match method {
            Claim::One(v) => out.method = Some(v.to_string()),
            Claim::Conflict => out.ambiguous = out.ambiguous.or(Some("X-Forwarded-Method / X-Original-Method")),
            Claim::Absent => {}
        }
        out
    }
}

enum Claim<'a> {
    Absent,
    One(&'a str),
    Conflict,
}

impl<'a> Claim<'a> {
    fn add(&mut self, value: &'a HeaderValue) {
        *self = match (std::mem::replace(self, Claim::Absent), value.to_str()) {
            (_, Err(_)) | (Claim::Conflict, _) => Claim::Conflict,
            (Claim::Absent, Ok(v)) => Claim::One(v),
            (Claim::One(a), Ok(b)) if a == b => Claim::One(a),
            (Claim::One(_), Ok(_)) => Claim::Conflict,
        }
    }
}

/// Which contract a forward-auth request follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `/oauth2/auth` (nginx, Caddy, Traefik): `202` allows, `401` without a session.
    AuthRequest,
    /// `/oauth2/auth/<path>` (Envoy `ext_authz`): `200` allows; anything else is passed to
    /// the client as it is, so a navigation without a session gets the login redirect.
    ExtAuthz,
}

/// The request a forward-auth call asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalRequest {
    /// Which contract to answer by.
    pub contract: Contract,
    /// Path and query of the original request. The gateway replaces it with its canonical form
    /// (and picks the route by it) before the endpoint runs.
    pub uri: String,
    /// The original method (`GET` when the proxy did not say).
    pub method: Method,
}

impl OriginalRequest {
    /// The original request of a forward-auth call, or the refusal: `403` when no trusted
    /// proxy vouches for the peer, `400` when what it says is ambiguous or missing.
    pub fn of<B>(req: &Request<B>) -> Result<Self, Failure> {
        let Some(forwarded) = req.extensions().get::<ForwardedRequest>() else {
            return Err(Failure {
                status: StatusCode::FORBIDDEN,
                code: "forward_auth_untrusted_peer",
                message: "This endpoint answers the front proxy only. If you run one, list its address in trusted_proxies.".into(),
                login_url: None,
            });
        };
        if let Some(kind) = forwarded.ambiguous {
            return Err(Failure::bad_request(
                "forward_auth_ambiguous",
                format!("The front proxy's {kind} headers disagree or cannot be read; the request is refused rather than guessed at."),
            ));
        }
        let path = req.uri().path();
        if let Some(rest) = path.strip_prefix(FORWARD_AUTH_PATH).filter(|r| r.starts_with('/')) {
            let uri = match req.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_string(),
            };
            return Ok(Self { contract: Contract::ExtAuthz, uri, method: req.method().clone() });
        }
        let Some(uri) = forwarded.uri.clone() else {
            return Err(Failure::bad_request(
                "forward_auth_without_uri",
                "The front proxy did not say which request it asks about: set X-Forwarded-Uri (nginx: proxy_set_header X-Forwarded-Uri $request_uri).",
            ));
        };
        if !uri.starts_with('/') || uri.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(Failure::bad_request("forward_auth_bad_uri", "X-Forwarded-Uri must be the request's path and query."));
        }
        let method = match forwarded.method.as_deref() {
            None => Method::GET,
            Some(m) => Method::from_bytes(m.as_bytes())
                .map_err(|_| Failure::bad_request("forward_auth_bad_method", "X-Forwarded-Method is not an HTTP method."))?,
        };
        Ok(Self { contract: Contract::AuthRequest, uri, method })
    }
}

/// Rules given by the front proxy in the `/oauth2/auth` query, as oauth2-proxy reads them:
/// `allowed_groups=a,b`, `allowed_email_domains=`, `allowed_emails=` (comma-separated; an
/// empty value sets no rule). They apply after the global and the route's rules: a request can
/// narrow, never widen. Other parameters are ignored.
pub fn query_rules(query: Option<&str>) -> AuthorizationRules {
    let mut rules = AuthorizationRules::default();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let list = match key.as_ref() {
            "allowed_groups" => &mut rules.allowed_groups,
            "allowed_email_domains" => &mut rules.allowed_email_domains,
            "allowed_emails" => &mut rules.allowed_emails,
            _ => continue,
        };
        list.extend(value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(String::from));
    }
    rules
}

/// State of the forward-auth endpoint.
#[derive(Clone)]
pub(crate) struct ForwardAuth {
    pub(crate) auth: Authenticator,
    pub(crate) global: authorization::GlobalRules,
    pub(crate) own_origin: Arc<str>,
}

impl ForwardAuth {
    pub(crate) fn new(auth: Authenticator, global: authorization::GlobalRules) -> Self {
        let own_origin = cross_site::origin_of(&auth.0.public_url).into();
        Self { auth, global, own_origin }
    }
}

/// The handler of `/oauth2/auth` and `/oauth2/auth/*`.
pub(crate) async fn handle(State(state): State<ForwardAuth>, req: Request<Body>) -> Response {
    let kind = RequestKind::of(req.headers());
    let original = match req.extensions().get::<OriginalRequest>() {
        Some(original) => original.clone(),
        None => match OriginalRequest::of(&req) {
            Ok(original) => original,
            Err(failure) => {
                tracing::warn!(code = failure.code, "forward-auth refused");
                return failure.respond(kind);
            }
        },
    };
    let route = req.extensions().get::<Arc<RouteConfig>>().cloned();
    let route = route.as_deref();
    let extra = match original.contract {
        Contract::AuthRequest => Some(query_rules(req.uri().query())),
        // The query is the original request's own.
        Contract::ExtAuthz => None,
    };
    let headers = req.headers();
    let auth = &state.auth;
    let (caller, set_cookies, from_cookie) = match auth.authenticate(headers).await {
        Ok(Some(session)) => (Some(Caller::Session(session.record.clone())), session.set_cookies, true),
        // No session: an API client's own bearer token, on a route that accepts one (the cookie
        // wins when both are present, as on proxied routes).
        Ok(None) => match route {
            Some(route) => match auth.authenticate_bearer(headers, route).await {
                Ok(identity) => (identity.map(Caller::Bearer), Vec::new(), false),
                Err(e) => {
                    tracing::info!(error = %e, uri = %path_of(&original.uri), "forward-auth: bearer token refused");
                    return e.respond(&route.required_scopes);
                }
            },
            None => (None, Vec::new(), false),
        },
        Err(e) => {
            tracing::warn!(error = %e, uri = %path_of(&original.uri), "forward-auth: request refused; session kept");
            return e.failure().respond(kind);
        }
    };
    let policy = route.map_or(Unauthenticated::Login, |r| r.unauthenticated);
    let response = match &caller {
        None if policy == Unauthenticated::Allow => granted(original.contract, None, headers),
        None => match (original.contract, policy) {
            (Contract::ExtAuthz, Unauthenticated::Login) => auth.login_required(kind, &original.uri, headers).await,
            _ => Failure::unauthenticated(Some(auth.login_url(&original.uri))).respond(kind),
        },
        Some(caller) => {
            let csrf = route.is_none_or(|r| r.csrf_protection);
            let forged = from_cookie
                && csrf
                && cross_site::is_unsafe(&original.method)
                && matches!(cross_site::judge(headers, &state.own_origin), Site::Other(_));
            if forged {
                tracing::warn!(user = %caller.identity().user, method = %original.method, uri = %path_of(&original.uri), "forward-auth: cross-site request refused");
                Failure::cross_site().respond(kind)
            } else {
                match authorization::decide(Some(caller), &state.global.current(), route, extra.as_ref(), policy) {
                    Verdict::Pass => granted(original.contract, Some(caller), headers),
                    Verdict::Anonymous(refusal) => {
                        authorization::log_refusal(caller, route, &refusal, true);
                        granted(original.contract, None, headers)
                    }
                    Verdict::Refuse(refusal) => {
                        authorization::log_refusal(caller, route, &refusal, false);
                        refusal.failure(caller.identity()).respond(kind)
                    }
                }
            }
        }
    };
    let mut response = response;
    for cookie in set_cookies {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The path of a URI, for logs (the query may carry tokens).
fn path_of(uri: &str) -> &str {
    uri.split('?').next().unwrap_or_default()
}

/// The allowing answer: `202` (or `200` for Envoy) with the caller's token and identity, or
/// without them for an anonymous visitor of a public route.
fn granted(contract: Contract, caller: Option<&Caller>, request_headers: &HeaderMap) -> Response {
    let status = match contract {
        Contract::AuthRequest => StatusCode::ACCEPTED,
        Contract::ExtAuthz => StatusCode::OK,
    };
    let mut response = status.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Every header is sent, empty when there is nothing to say (an anonymous visitor, a user
    // without groups): a proxy copying a header the answer lacks may leave the client's copy
    // in place, or (Caddy 2.6's copy_headers) set the unexpanded placeholder text. nginx
    // sends no header for an empty value; Caddy and Envoy send it empty.
    for name in [
        header::AUTHORIZATION,
        AUTH_REQUEST_ACCESS_TOKEN,
        AUTH_REQUEST_USER,
        AUTH_REQUEST_EMAIL,
        AUTH_REQUEST_GROUPS,
        AUTH_REQUEST_PREFERRED_USERNAME,
    ] {
        headers.insert(name, HeaderValue::from_static(""));
    }
    let Some(caller) = caller else { return response };
    let token = match caller {
        Caller::Session(record) => HeaderValue::from_str(&record.tokens.access_token).ok(),
        // A validated bearer token is forwarded unchanged.
        Caller::Bearer(_) => request_headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| HeaderValue::from_str(t).ok()),
    };
    match token {
        Some(mut token) => {
            token.set_sensitive(true);
            if let Ok(mut bearer) = HeaderValue::from_str(&format!("Bearer {}", token.to_str().unwrap_or_default())) {
                bearer.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, bearer);
            }
            headers.insert(AUTH_REQUEST_ACCESS_TOKEN, token);
        }
        None => tracing::warn!("forward-auth: the access token is not a valid header value; not sent"),
    }
    let identity = caller.identity();
    let mut set = |name: HeaderName, value: &str| match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => tracing::warn!(header = %name, "claim value is not a valid header value; header omitted"),
    };
    set(AUTH_REQUEST_USER, &identity.user);
    if let Some(email) = &identity.email {
        set(AUTH_REQUEST_EMAIL, email);
    }
    if !identity.groups.is_empty() {
        set(AUTH_REQUEST_GROUPS, &identity.groups.join(","));
    }
    if let Some(name) = identity.claims.get("preferred_username").and_then(|v| v.as_str()) {
        set(AUTH_REQUEST_PREFERRED_USERNAME, name);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    /// What a trusted proxy's headers say, in every spelling and family.
    #[test]
    fn forwarded_request_table() {
        let amb_uri = Some("X-Forwarded-Uri / X-Original-URI");
        let amb_method = Some("X-Forwarded-Method / X-Original-Method");
        // (headers, uri, method, ambiguous)
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, Option<&'a str>, Option<&'a str>);
        let cases: Vec<Case<'_>> = vec![
            (&[], None, None, None),
            (&[("x-forwarded-uri", "/a?b=c")], Some("/a?b=c"), None, None),
            (&[("x-original-uri", "/a")], Some("/a"), None, None),
            (&[("x-forwarded-uri", "/a"), ("x-original-uri", "/a")], Some("/a"), None, None),
            // The client's own X-Original-URI next to the one nginx set.
            (&[("x-forwarded-uri", "/admin"), ("x-original-uri", "/public")], None, None, amb_uri),
            (&[("x-forwarded-uri", "/admin"), ("x_forwarded_uri", "/public")], None, None, amb_uri),
            (&[("x-forwarded-uri", "/admin"), ("x-forwarded-uri", "/public")], None, None, amb_uri),
            (&[("x-forwarded-method", "POST"), ("x-original-method", "GET")], None, None, amb_method),
            (&[("x-forwarded-method", "POST"), ("x-forwarded-uri", "/a")], Some("/a"), Some("POST"), None),
            (&[("x-forwarded-prefix", "/a"), ("x-forwarded-for", "1.2.3.4")], None, None, None),
        ];
        for (pairs, uri, method, ambiguous) in cases {
            let got = ForwardedRequest::from_headers(&headers(pairs));
            assert_eq!(got.ambiguous, ambiguous, "{pairs:?}");
            if ambiguous.is_none() {
                assert_eq!((got.uri.as_deref(), got.method.as_deref()), (uri, method), "{pairs:?}");
            }
        }
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-uri", HeaderValue::from_bytes(b"/\xff").unwrap());
        assert!(ForwardedRequest::from_headers(&h).ambiguous.is_some(), "an unreadable value is not guessed at");
    }

    #[test]
    fn original_request_needs_a_vouched_peer() {
        let req = |path: &str, forwarded: Option<ForwardedRequest>| {
            let mut r = Request::builder().method("POST").uri(path).body(()).unwrap();
            if let Some(f) = forwarded {
                r.extensions_mut().insert(f);
            }
            r
        };
        let with_uri = |u: &str| ForwardedRequest { uri: Some(u.into()), ..Default::default() };
        assert_eq!(OriginalRequest::of(&req("/oauth2/auth", None)).unwrap_err().code, "forward_auth_untrusted_peer");
        assert_eq!(OriginalRequest::of(&req("/oauth2/auth/app", None)).unwrap_err().code, "forward_auth_untrusted_peer");
        assert_eq!(
            OriginalRequest::of(&req("/oauth2/auth", Some(ForwardedRequest::default()))).unwrap_err().code,
            "forward_auth_without_uri"
        );
        assert_eq!(OriginalRequest::of(&req("/oauth2/auth", Some(with_uri("http://evil/x")))).unwrap_err().code, "forward_auth_bad_uri");
        let ok = OriginalRequest::of(&req("/oauth2/auth?allowed_groups=a", Some(with_uri("/app?x=1")))).unwrap();
        assert_eq!((ok.contract, ok.uri.as_str(), ok.method), (Contract::AuthRequest, "/app?x=1", Method::GET));
        // Envoy: the path after the prefix and the request's own method; headers not consulted.
        let envoy = OriginalRequest::of(&req("/oauth2/auth/app/x?y=1", Some(with_uri("/other")))).unwrap();
        assert_eq!((envoy.contract, envoy.uri.as_str(), envoy.method), (Contract::ExtAuthz, "/app/x?y=1", Method::POST));
        assert_eq!(
            OriginalRequest::of(&req("/oauth2/authx", Some(ForwardedRequest::default()))).unwrap_err().code,
            "forward_auth_without_uri"
        );
    }

    #[test]
    fn query_rules_like_oauth2_proxy() {
        let r = query_rules(Some("allowed_groups=admins,%20ops&allowed_email_domains=&allowed_emails=a%40b.c&rd=/x"));
        assert_eq!(r.allowed_groups, ["admins", "ops"]);
        assert!(r.allowed_email_domains.is_empty());
        assert_eq!(r.allowed_emails, ["a@b.c"]);
        assert!(query_rules(None).is_empty());
    }
}
