//! `POST /introspect` (RFC 7662), for access and refresh tokens, authenticated as a client.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::provider::{Provider, now_millis};

pub(crate) async fn introspect(State(op): State<Arc<Provider>>, headers: HeaderMap, body: Bytes) -> Response {
    op.count(|s| s.introspections += 1);
    let (client, token) = match crate::client_auth::token_request(&op, &headers, &body) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let answer = describe(&op, &token, &client.client_id).unwrap_or_else(|| json!({ "active": false }));
    let mut response = Json(answer).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An active token's description. `token_type_hint` is not needed: the two kinds live in
/// separate maps and cannot collide. A token of another client is reported inactive, so one
/// client cannot learn about another's tokens (RFC 7662 §4).
fn describe(op: &Provider, token: &str, client_id: &str) -> Option<Value> {
    let now = now_millis();
    let store = op.store();
    let (mut answer, grant) = if let Some((at, grant)) = store.access_token(token, now) {
        let answer = json!({ "scope": at.scope, "iat": at.issued_at / 1000, "exp": at.expires_at / 1000, "token_type": "Bearer" });
        (answer, grant)
    } else {
        let (rt, grant) = store.refresh_token(token, now)?;
        // No `token_type`: RFC 7662 defines it as an access-token type (RFC 6749 §7.1).
        (json!({ "scope": grant.scope, "iat": rt.issued_at / 1000, "exp": rt.expires_at / 1000 }), grant)
    };
    if grant.client_id != client_id {
        return None;
    }
    let fields = answer.as_object_mut()?;
    fields.insert("active".into(), true.into());
    fields.insert("sub".into(), grant.username.clone().into());
    fields.insert("username".into(), grant.username.into());
    fields.insert("client_id".into(), grant.client_id.into());
    fields.insert("iss".into(), op.issuer.clone().into());
    fields.insert("sid".into(), grant.sid.into());
    Some(answer)
}
