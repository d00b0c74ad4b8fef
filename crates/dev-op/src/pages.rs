//! The OP's HTML: the login form, the signed-out page, and errors that cannot be redirected.
//! One inline stylesheet, no scripts, no external assets (nothing leaves loopback). Every
//! value that came from a request goes through [`escape`].

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};

/// What the login page shows.
pub(crate) struct LoginPage<'a> {
    /// Shown as the application being signed into (the client id: clients have no display name).
    pub(crate) app: &'a str,
    /// The authorization request, carried through the form so `POST /authorize` can re-check it.
    pub(crate) hidden: Vec<(&'a str, &'a str)>,
    pub(crate) username: &'a str,
    /// Pre-filled credentials and the hint, when the default demo user exists.
    pub(crate) demo: Option<(&'a str, &'a str)>,
    pub(crate) error: Option<&'a str>,
}

pub(crate) fn login(page: &LoginPage<'_>, status: StatusCode) -> Response {
    let hidden: String =
        page.hidden.iter().map(|(k, v)| format!(r#"<input type="hidden" name="{}" value="{}">"#, escape(k), escape(v))).collect();
    let error = page.error.map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e))).unwrap_or_default();
    let (username, password) = match page.demo {
        Some((user, pass)) if page.error.is_none() => (user, pass),
        _ => (page.username, ""),
    };
    let hint = page
        .demo
        .map(|(user, pass)| format!(r#"<p class="hint">Demo account: <code>{}</code> / <code>{}</code></p>"#, escape(user), escape(pass)))
        .unwrap_or_default();
    let body = format!(
        r#"<h1>Sign in</h1>
<p class="sub">to continue to <strong>{app}</strong></p>
{error}
<form method="post" action="/authorize">
{hidden}
<label for="username">Username</label>
<input id="username" name="username" autocomplete="username" required autofocus value="{username}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required value="{password}">
<button type="submit">Sign in</button>
</form>
{hint}"#,
        app = escape(page.app),
        username = escape(username),
        password = escape(password),
    );
    respond(status, "Sign in", &body)
}

pub(crate) fn signed_out() -> Response {
    respond(StatusCode::OK, "Signed out", "<h1>You are signed out</h1>\n<p class=\"sub\">You can close this window.</p>")
}

/// An error shown to the user, for requests that cannot be answered with a redirect (an unknown
/// client or an unregistered redirect URI: redirecting there would be an open redirect).
pub(crate) fn error(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = format!("<h1>{}</h1>\n<p class=\"error\">{}</p>", escape(title), escape(detail));
    respond(status, title, &body)
}

fn respond(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Portcullis Dev OP</title>
<style>{STYLE}</style>
</head>
<body>
<main class="card">
<div class="brand"><span class="logo" aria-hidden="true"></span>Portcullis Dev OP<span class="badge">development only</span></div>
{body}
</main>
</body>
</html>
"#,
        title = escape(title),
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    // The page carries the authorization request and may carry a pre-filled password.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // No script, no frames: the login form cannot be framed for clickjacking. (No `form-action`:
    // browsers apply it to the redirect that follows the form post, which goes to the client.)
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
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

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;padding:24px;
font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2937;
background:linear-gradient(135deg,#eef2ff 0%,#f8fafc 55%,#ecfeff 100%)}
.card{width:100%;max-width:380px;background:#fff;border-radius:16px;padding:32px 32px 24px;
box-shadow:0 1px 2px rgba(15,23,42,.06),0 12px 32px rgba(15,23,42,.10)}
.brand{display:flex;align-items:center;gap:8px;font-weight:600;font-size:14px;color:#334155;margin-bottom:24px;white-space:nowrap}
.logo{width:22px;height:22px;border-radius:6px;background:linear-gradient(135deg,#4f46e5,#0891b2)}
.badge{margin-left:auto;font-size:11px;font-weight:600;text-transform:uppercase;letter-spacing:.04em;
color:#92400e;background:#fef3c7;border-radius:999px;padding:2px 8px}
h1{font-size:24px;margin:0 0 4px;color:#0f172a}
.sub{margin:0 0 20px;color:#64748b}
label{display:block;font-size:14px;font-weight:500;margin:14px 0 6px}
input{width:100%;padding:10px 12px;font:inherit;border:1px solid #cbd5e1;border-radius:8px;background:#fff}
input:focus{outline:none;border-color:#4f46e5;box-shadow:0 0 0 3px rgba(79,70,229,.18)}
button{width:100%;margin-top:22px;padding:11px 12px;font:inherit;font-weight:600;color:#fff;border:0;
border-radius:8px;background:#4f46e5;cursor:pointer}
button:hover{background:#4338ca}
.error{color:#b91c1c;background:#fef2f2;border:1px solid #fecaca;border-radius:8px;padding:10px 12px;margin:0 0 8px}
.hint{margin:20px 0 0;padding-top:16px;border-top:1px solid #e2e8f0;font-size:13px;color:#64748b;text-align:center}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;background:#f1f5f9;border-radius:4px;padding:1px 5px;color:#0f172a}
"#;

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(escape(r#"<a href="x" onclick='y'>&</a>"#), "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;");
    }
}
