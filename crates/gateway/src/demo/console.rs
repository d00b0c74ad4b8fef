//! The demo app, "Acme Console": an ordinary upstream behind the gateway. It trusts the
//! gateway's identity headers, and checks the bearer token the gateway sends the way a
//! resource server would, by introspection at the OP (RFC 7662).
//!
//! - `GET /`: the page (`console.html`).
//! - `GET /api/me`: `{user, email, exp, now}`; `exp` from introspecting the bearer token.
//! - `GET /api/ping?i=N`: `{ok, i, user, token_suffix, instance}`: the last 6 characters of
//!   the token only (enough to see that parallel calls shared one token, useless to a thief),
//!   and the gateway instance the round-robin front chose (`x-portcullis-instance`).
//! - `GET /api/op-stats`: the development OP's counters (`/stats`), `refresh_grants` among them.

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use url::Url;

use super::{front::INSTANCE_HEADER, settings::OP_STATS_PATH};

const PAGE: &str = include_str!("console.html");

/// How the app reaches the OP.
pub(crate) struct OpLink {
    /// The OP's RFC 7662 endpoint.
    pub(crate) introspect: Url,
    /// The OP's counters.
    pub(crate) stats: Url,
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
}

impl OpLink {
    /// The endpoints of the development OP listening on `addr` (its own address, not the
    /// issuer: an issuer may carry a path for a proxy in front, the OP serves at `/`).
    pub(crate) fn dev_op(addr: SocketAddr, client_id: &str, client_secret: &str) -> anyhow::Result<Self> {
        let base = format!("http://{addr}");
        Ok(Self {
            introspect: format!("{base}/introspect").parse().context("introspection URL")?,
            stats: format!("{base}/stats").parse().context("stats URL")?,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
        })
    }
}

/// What the page's "Deployment" card says about the demo around the app.
pub(crate) struct Deployment {
    /// "1 instance", "3 instances, round robin".
    pub(crate) gateways: String,
    /// "memory", "Redis at …".
    pub(crate) store: String,
    /// "30 s".
    pub(crate) token_ttl: String,
    /// Where the development OP listens.
    pub(crate) op: String,
}

#[derive(Clone)]
struct App {
    op: Arc<OpLink>,
    http: reqwest::Client,
    /// The page with the deployment filled in; the user is filled in per request.
    page: Arc<str>,
}

/// Serves the app on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    op: OpLink,
    deployment: Deployment,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The OP is in this process; a call that takes seconds is a bug, not a slow network.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().context("HTTP client")?;
    let app = Router::new()
        .route("/", get(page))
        .route("/api/me", get(me))
        .route("/api/ping", get(ping))
        .route(OP_STATS_PATH, get(op_stats))
        .with_state(App { op: Arc::new(op), http, page: render_deployment(&deployment).into() });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("demo app")
}

fn render_deployment(d: &Deployment) -> String {
    [("{{gateways}}", &d.gateways), ("{{store}}", &d.store), ("{{token_ttl}}", &d.token_ttl), ("{{op}}", &d.op)]
        .into_iter()
        .fold(PAGE.to_string(), |page, (placeholder, value)| page.replace(placeholder, &escape(value)))
}

/// The page, with the user filled in so it reads right before its script runs.
async fn page(State(app): State<App>, headers: HeaderMap) -> Response {
    let page = app.page.replace("{{user}}", &escape(text(&headers, "x-forwarded-user").unwrap_or("—")));
    no_store(Html(page))
}

async fn me(State(app): State<App>, headers: HeaderMap) -> Response {
    let Some(token) = bearer(&headers) else {
        return no_store((StatusCode::UNAUTHORIZED, Json(json!({ "error": "no bearer token" }))));
    };
    let introspection = match introspect(&app, token).await {
        Ok(v) => v,
        Err(e) => return no_store((StatusCode::BAD_GATEWAY, Json(json!({ "error": format!("introspection failed: {e:#}") })))),
    };
    if introspection["active"] != json!(true) {
        return no_store((StatusCode::UNAUTHORIZED, Json(json!({ "error": "the OP says this token is not active" }))));
    }
    no_store(Json(json!({
        "user": text(&headers, "x-forwarded-user"),
        "email": text(&headers, "x-forwarded-email"),
        "exp": introspection["exp"],
        "now": unix_now(),
    })))
}

#[derive(Deserialize)]
struct PingQuery {
    i: Option<u32>,
}

async fn ping(headers: HeaderMap, Query(query): Query<PingQuery>) -> Response {
    let Some(token) = bearer(&headers) else {
        return no_store((StatusCode::UNAUTHORIZED, Json(json!({ "ok": false, "error": "no bearer token" }))));
    };
    let suffix: String = token.chars().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
    no_store(Json(json!({
        "ok": true,
        "i": query.i,
        "user": text(&headers, "x-forwarded-user"),
        "token_suffix": suffix,
        "instance": text(&headers, INSTANCE_HEADER),
    })))
}

async fn op_stats(State(app): State<App>) -> Response {
    let stats = async { app.http.get(app.op.stats.clone()).send().await?.error_for_status()?.json::<Value>().await };
    match stats.await {
        Ok(stats) => no_store(Json(stats)),
        Err(e) => no_store((StatusCode::BAD_GATEWAY, Json(json!({ "error": format!("the OP's /stats failed: {e}") })))),
    }
}

/// RFC 7662, client authentication by HTTP Basic.
async fn introspect(app: &App, token: &str) -> anyhow::Result<Value> {
    let response = app
        .http
        .post(app.op.introspect.clone())
        .basic_auth(&app.op.client_id, Some(&app.op.client_secret))
        .form(&[("token", token), ("token_type_hint", "access_token")])
        .send()
        .await?
        .error_for_status()?;
    Ok(response.json().await?)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    text(headers, header::AUTHORIZATION.as_str())?.strip_prefix("Bearer ").filter(|t| !t.is_empty())
}

fn text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Every answer depends on the session: never cached, by the browser or anyone between.
fn no_store(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        let d = Deployment { gateways: "3".into(), store: "<redis>".into(), token_ttl: "3 s".into(), op: "127.0.0.1:9000".into() };
        let page = render_deployment(&d).replace("{{user}}", "demo");
        assert!(!page.contains("{{"), "an unfilled placeholder");
        assert!(page.contains("&lt;redis&gt;"), "values are escaped");
    }

    #[test]
    fn escapes_html() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn bearer_needs_the_scheme_and_a_token() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc.def"));
        assert_eq!(bearer(&h), Some("abc.def"));
    }
}
