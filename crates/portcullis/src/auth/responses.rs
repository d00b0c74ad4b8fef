//! Every way a request can be turned away, and what each kind of client gets for it: HTML for
//! a browser's page load, JSON for fetch/XHR and API clients. One place, so the table in the
//! README stays true.

use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

use super::RequestKind;

/// Seconds a client is told to wait after a 503.
pub(crate) const RETRY_AFTER_SECS: u64 = 5;

/// A failure with a status, a machine-readable code and a human message.
#[derive(Debug, Clone)]
pub struct Failure {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable error code for API clients (`unauthenticated`, `session_store_unavailable`, …).
    pub code: &'static str,
    /// Sentence for people. Never contains tokens or secrets.
    pub message: String,
    /// Where to go next (login URL), when there is somewhere.
    pub login_url: Option<String>,
}

impl Failure {
    /// 401, with the login URL for the client to follow.
    pub fn unauthenticated(login_url: Option<String>) -> Self {
        Self { status: StatusCode::UNAUTHORIZED, code: "unauthenticated", message: "You need to log in to see this.".into(), login_url }
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, code, message: message.into(), login_url: None }
    }

    /// 400 for a request the gateway cannot act on (bad callback, expired login).
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code, message: message.into(), login_url: None }
    }

    /// 403 for a cookie-authenticated request that another site made the browser send
    /// (cross-site request forgery); nothing was forwarded.
    pub fn cross_site() -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: "cross_site_request",
            message: "This request came from another site, so it was refused: a page elsewhere cannot act with your session here. \
                      Nothing was changed. Go back to the application and try again from there."
                .into(),
            login_url: None,
        }
    }

    /// A refused bearer token (RFC 6750 §3.1): 401 `invalid_token` or 403
    /// `insufficient_scope`. `bearer::BearerError::respond` replaces the generic
    /// `WWW-Authenticate` with the challenge naming the error.
    pub fn bearer_token(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), login_url: None }
    }

    /// 403 for a signed-in caller whom the authorization rules do not admit (`code`
    /// `forbidden`). The page offers signing out (to sign in with another account), never a
    /// login: logging in again as the same user would only come back here.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self { status: StatusCode::FORBIDDEN, code: "forbidden", message: message.into(), login_url: None }
    }

    /// With a login link.
    pub fn with_login_url(mut self, url: String) -> Self {
        self.login_url = Some(url);
        self
    }

    /// The response for a client of `kind`.
    pub fn respond(&self, kind: RequestKind) -> Response {
        let mut response = match kind {
            RequestKind::Api => {
                let body = json!({ "error": self.code, "message": self.message, "login_url": self.login_url });
                (self.status, axum::Json(body)).into_response()
            }
            RequestKind::Navigation => {
                let html = page(self.status, self.code, &self.message, self.login_url.as_deref());
                (self.status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], Body::from(html)).into_response()
            }
        };
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"portcullis\""));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

fn page(status: StatusCode, code: &str, message: &str, login_url: Option<&str>) -> String {
    let title = status.canonical_reason().unwrap_or("Error");
    let action = match login_url {
        Some(url) => format!("<p><a class=\"button\" href=\"{}\">Log in</a></p>", escape(url)),
        // Not "back to the start page" (it may refuse too) and not a login (same user, same
        // answer): the sign-out confirmation, after which another account can sign in.
        None if code == "forbidden" => {
            "<p><a class=\"button\" href=\"/oauth2/sign_out\">Sign out</a><a class=\"quiet\" href=\"/\">Start page</a></p>".to_string()
        }
        None if status == StatusCode::SERVICE_UNAVAILABLE => {
            "<p>This page will work again shortly; try reloading in a few seconds.</p>".to_string()
        }
        None => "<p><a class=\"button\" href=\"/\">Back to the start page</a></p>".to_string(),
    };
    document(title, &format!("<p class=\"code\">{}</p><h1>{title}</h1><p>{}</p>{action}", status.as_u16(), escape(message)))
}

/// The style of every page the gateway renders; one constant so the confirmation page's CSP
/// can allow exactly it by hash instead of `'unsafe-inline'`.
const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;background:#f5f6f8;color:#1d2330;display:grid;place-items:center;min-height:90vh}\
main{background:#fff;padding:2rem 2.5rem;border-radius:12px;box-shadow:0 2px 12px #0001;max-width:32rem}h1{font-size:1.3rem;margin:0 0 .5rem}\
.code{color:#6b7280;font-size:.9rem}.button{display:inline-block;background:#2f5bea;color:#fff;padding:.5rem 1rem;border-radius:8px;text-decoration:none;\
border:0;font:inherit;cursor:pointer}form{display:inline}.quiet{margin-left:1rem;color:#2f5bea}";

fn document(title: &str, main: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{title}</title><style>{STYLE}</style></head><body><main>{main}</main></body></html>"
    )
}

/// The sign-out confirmation: a page with one button that POSTs to `/oauth2/sign_out`, sent
/// for every `GET /oauth2/sign_out` and for a POST that carries no evidence of its origin. A
/// link or image on another site can show it, but only the user's click on it (a same-origin
/// form submission, which the browser marks as such) ends the session.
///
/// `status` is 200 for the confirmation, 403 when a cross-site POST was refused (the page then
/// says so and offers the same button). `return_to` must already be a safe local path.
pub(crate) fn sign_out_page(status: StatusCode, notice: Option<&str>, return_to: Option<&str>) -> Response {
    let action = match return_to {
        Some(rd) => format!("/oauth2/sign_out?rd={}", url::form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>()),
        None => "/oauth2/sign_out".to_string(),
    };
    let notice = notice.map(|n| format!("<p>{}</p>", escape(n))).unwrap_or_default();
    let html = document(
        "Sign out",
        &format!(
            "<h1>Sign out?</h1>{notice}<p>This ends your session here and at the identity provider.</p>\
<form method=\"post\" action=\"{action}\"><button class=\"button\" type=\"submit\">Sign out</button></form>\
<a class=\"quiet\" href=\"{back}\">Cancel</a>",
            action = escape(&action),
            back = escape(return_to.unwrap_or("/")),
        ),
    );
    let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], Body::from(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, sign_out_csp().clone());
    // The button must not be clickable inside someone else's frame (clickjacking into a
    // logout); `frame-ancestors` covers current browsers, `X-Frame-Options` older ones.
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under that policy a browser sends `Origin: null` on the form's POST,
    // and one without `Sec-Fetch-Site` would then be refused as cross-site.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// No scripts, no loads, no framing, no `<base>`; the one inline style allowed by its hash.
/// No `form-action`: it does not fall back to `default-src`, and Chrome and Safari apply it to
/// the redirects that follow a submission, so `form-action 'self'` would block the POST's
/// redirect to the OP's end-session endpoint (and wherever the OP sends the browser next).
fn sign_out_csp() -> &'static HeaderValue {
    static CSP: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::{Engine, engine::general_purpose::STANDARD};
        let hash = STANDARD.encode(crate::crypto::sha256(STYLE.as_bytes()));
        let policy = format!("default-src 'none'; style-src 'sha256-{hash}'; frame-ancestors 'none'; base-uri 'none'");
        HeaderValue::from_str(&policy).expect("base64 is a valid header value")
    })
}

/// HTML-escapes text for element content and double-quoted attributes.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
