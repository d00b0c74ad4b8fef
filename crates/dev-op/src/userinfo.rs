//! `GET|POST /userinfo` (Core §5.3) with a bearer access token in the Authorization header
//! (RFC 6750 §2.1; the form and query variants are not supported).

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::provider::{Provider, now_millis};

pub(crate) async fn userinfo(State(op): State<Arc<Provider>>, headers: HeaderMap) -> Response {
    let Some(token) = bearer(&headers) else {
        // RFC 6750 §3.1: no credentials at all gets no error code, just the challenge.
        return challenge("Bearer realm=\"portcullis-dev-op\"");
    };
    let Some((_, grant)) = op.store().access_token(token, now_millis()) else {
        return challenge("Bearer realm=\"portcullis-dev-op\", error=\"invalid_token\", error_description=\"unknown, expired or revoked\"");
    };
    let mut response = Json(op.user_claims(&grant.username)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

fn challenge(value: &'static str) -> Response {
    let mut response = StatusCode::UNAUTHORIZED.into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
    response
}
