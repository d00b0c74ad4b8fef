//! `POST /revoke` (RFC 7009), authenticated as a client.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

use crate::provider::Provider;

/// Revoking a refresh token revokes its whole grant; an access token only itself. Unknown,
/// expired and foreign tokens get the same `200` (RFC 7009 §2.2): the client's goal, the token
/// being unusable, is met, and the answer reveals nothing about other clients' tokens.
pub(crate) async fn revoke(State(op): State<Arc<Provider>>, headers: HeaderMap, body: Bytes) -> Response {
    op.count(|s| s.revocations += 1);
    let (client, token) = match crate::client_auth::token_request(&op, &headers, &body) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let revoked = op.store().revoke_token(&token, &client.client_id);
    tracing::info!(client_id = %client.client_id, revoked, "revocation request");
    StatusCode::OK.into_response()
}
