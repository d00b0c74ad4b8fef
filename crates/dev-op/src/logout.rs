//! `GET|POST /end_session` (OpenID Connect RP-Initiated Logout 1.0) and the back-channel logout
//! it triggers (OpenID Connect Back-Channel Logout 1.0).
//!
//! No confirmation prompt: a development OP signs out whoever asks. The session to end is the
//! browser's (cookie), or else the one named by the `sid` of a valid `id_token_hint`, so a
//! browser that lost the cookie can still be signed out by its relying party.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use serde_json::Value;
use url::Url;

use crate::{
    authorize::{SESSION_COOKIE, SESSION_COOKIE_PATHS, redirect, session_cookie},
    pages,
    params::Params,
    provider::Provider,
    store::BrowserSession,
};

pub(crate) async fn get(State(op): State<Arc<Provider>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    end_session(&op, &headers, query.unwrap_or_default().as_bytes())
}

/// RP-Initiated Logout §2: the endpoint must accept POST (form) as well as GET.
pub(crate) async fn post(State(op): State<Arc<Provider>>, headers: HeaderMap, body: Bytes) -> Response {
    end_session(&op, &headers, &body)
}

fn end_session(op: &Arc<Provider>, headers: &HeaderMap, input: &[u8]) -> Response {
    let bad = |detail: &str| pages::error(StatusCode::BAD_REQUEST, "Cannot sign out", detail);
    let params = match Params::parse(input) {
        Ok(params) => params,
        Err(e) => return bad(&e),
    };
    let hint = match params.get("id_token_hint") {
        Some(token) => match op.keys.verify_own(token, &op.issuer) {
            Some(claims) => Some(claims),
            None => return bad("The id_token_hint is not an ID token issued by this OP."),
        },
        None => None,
    };
    let hint_client = hint.as_ref().and_then(|c| match c.get("aud") {
        Some(Value::String(aud)) => Some(aud.clone()),
        Some(Value::Array(auds)) => auds.first().and_then(Value::as_str).map(String::from),
        _ => None,
    });
    let client_id = match (params.get("client_id"), hint_client.as_deref()) {
        (Some(a), Some(b)) if a != b => return bad("client_id does not match the audience of the id_token_hint."),
        (a, b) => a.or(b),
    };
    let post_logout_redirect_uri = params.get("post_logout_redirect_uri");
    if let Some(uri) = post_logout_redirect_uri {
        let registered = client_id.and_then(|id| op.clients.get(id)).is_some_and(|c| c.post_logout_redirect_uris.iter().any(|u| u == uri));
        if !registered {
            // Redirecting to an unregistered URI would make this an open redirect.
            return bad(
                "The post_logout_redirect_uri is not registered for this client (or no client_id / id_token_hint names the client).",
            );
        }
    }
    let sid = hint.as_ref().and_then(|c| c.get("sid")).and_then(Value::as_str);
    let ended = op.store().end_session(session_cookie(headers), sid);
    match &ended {
        Some(session) => {
            tracing::info!(username = ?session.username, clients = session.clients.len(), "browser session ended");
            notify_clients(op, session);
        }
        None => tracing::debug!("end_session: no browser session to end"),
    }
    let mut response = match post_logout_redirect_uri {
        Some(uri) => {
            let mut location = Url::parse(uri).expect("registered URIs are checked at start");
            if let Some(state) = params.get("state") {
                location.query_pairs_mut().append_pair("state", state);
            }
            redirect(location.as_str())
        }
        None => pages::signed_out(),
    };
    for path in SESSION_COOKIE_PATHS {
        let clear = format!("{SESSION_COOKIE}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Lax");
        response.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(&clear).expect("a valid header"));
    }
    response
}

/// Sends a logout token to every client the session logged into that registered a
/// `backchannel_logout_uri`. Fire and forget: the browser's logout must not wait for, or fail
/// because of, a slow or dead relying party. Delivered tokens (2xx) are counted.
fn notify_clients(op: &Arc<Provider>, session: &BrowserSession) {
    for client_id in &session.clients {
        let Some(uri) = op.clients.get(client_id).and_then(|c| c.backchannel_logout_uri.clone()) else { continue };
        let logout_token = op.logout_token(client_id, &session.username, &session.sid);
        let (op, client_id) = (op.clone(), client_id.clone());
        tokio::spawn(async move {
            match op.http.post(&uri).form(&[("logout_token", logout_token)]).send().await {
                Ok(response) if response.status().is_success() => {
                    op.count(|s| s.backchannel_logouts += 1);
                    tracing::info!(client_id = %client_id, "back-channel logout delivered");
                }
                Ok(response) => tracing::warn!(client_id = %client_id, status = %response.status(), "back-channel logout refused"),
                Err(e) => tracing::warn!(client_id = %client_id, error = %e.without_url(), "back-channel logout failed"),
            }
        });
    }
}
