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
                let html = page(self.status, &self.message, self.login_url.as_deref());
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

fn page(status: StatusCode, message: &str, login_url: Option<&str>) -> String {
    let title = status.canonical_reason().unwrap_or("Error");
    let action = match login_url {
        Some(url) => format!("<p><a class=\"button\" href=\"{}\">Log in</a></p>", escape(url)),
        None if status == StatusCode::SERVICE_UNAVAILABLE => {
            "<p>This page will work again shortly; try reloading in a few seconds.</p>".to_string()
        }
        None => "<p><a class=\"button\" href=\"/\">Back to the start page</a></p>".to_string(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{title}</title><style>body{{font:16px/1.5 system-ui,sans-serif;background:#f5f6f8;color:#1d2330;display:grid;place-items:center;min-height:90vh}}\
main{{background:#fff;padding:2rem 2.5rem;border-radius:12px;box-shadow:0 2px 12px #0001;max-width:32rem}}h1{{font-size:1.3rem;margin:0 0 .5rem}}\
.code{{color:#6b7280;font-size:.9rem}}.button{{display:inline-block;background:#2f5bea;color:#fff;padding:.5rem 1rem;border-radius:8px;text-decoration:none}}</style></head>\
<body><main><p class=\"code\">{code}</p><h1>{title}</h1><p>{message}</p>{action}</main></body></html>",
        code = status.as_u16(),
        message = escape(message),
    )
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
