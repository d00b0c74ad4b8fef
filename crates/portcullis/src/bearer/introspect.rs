//! RFC 7662 introspection of opaque (or any) access tokens at the OP.

use std::{sync::Arc, time::Duration};

use serde_json::{Map, Value};

use super::{BearerError, BearerValidator, scopes_of};
use crate::{oidc::OidcClient, session::Identity};

/// What the OP's answer means to us; cached (see `cache.rs`), so it holds no route's view.
#[derive(Debug)]
pub(super) enum Introspected {
    /// Active and usable: who, which scopes, which audiences (empty: the OP named none).
    Active { identity: Arc<Identity>, scopes: Vec<String>, audiences: Vec<String> },
    /// Inactive, or active but not usable here (why, a fixed phrase).
    Refused(&'static str),
}

/// A cacheable answer and how long it may be believed: never past the token's `exp`.
pub(super) struct Answer {
    pub(super) value: Introspected,
    /// Seconds since the epoch, when the OP said.
    pub(super) exp: Option<u64>,
}

/// Asks the OP. Transport failures and non-2xx answers are [`BearerError::Unavailable`]
/// (503, not cached): an OP that is down says nothing about the token.
pub(super) async fn fetch(client: &OidcClient, token: &str, validator: &BearerValidator, skew: Duration) -> Result<Answer, BearerError> {
    let answer = match client.introspect(token).await {
        Ok(Some(answer)) => answer,
        Ok(None) => {
            tracing::error!("bearer = introspect, but the OP's discovery document has no introspection_endpoint");
            return Err(BearerError::Unavailable("the OP has no introspection endpoint".into()));
        }
        Err(e) => return Err(BearerError::Unavailable(e.to_string())),
    };
    Ok(interpret(answer, &client.metadata().issuer, now_secs(), skew, validator))
}

fn now_secs() -> u64 {
    crate::session::now_millis() / 1000
}

fn interpret(mut answer: Map<String, Value>, issuer: &str, now: u64, skew: Duration, validator: &BearerValidator) -> Answer {
    let exp = answer.get("exp").and_then(Value::as_f64).map(|e| e.max(0.0) as u64);
    let refused = |why| Answer { value: Introspected::Refused(why), exp };
    // Exactly `true`: a string "true" or a missing member is not an active token.
    if answer.get("active") != Some(&Value::Bool(true)) {
        return refused("the token is not active");
    }
    if exp.is_some_and(|exp| exp <= now) {
        return refused("the token has expired");
    }
    if answer.get("nbf").and_then(Value::as_f64).is_some_and(|nbf| nbf > (now + skew.as_secs()) as f64) {
        return refused("the token is not valid yet");
    }
    if let Some(iss) = answer.get("iss")
        && iss.as_str() != Some(issuer)
    {
        return refused("the token is from another issuer");
    }
    // A refresh token (oidc-provider names no token_type for those) or a DPoP-bound token
    // presented as a plain bearer token is not what this route accepts.
    if let Some(kind) = answer.get("token_type")
        && !kind.as_str().is_some_and(|k| k.eq_ignore_ascii_case("bearer"))
    {
        return refused("not a bearer access token");
    }
    if answer.contains_key("cnf") {
        return refused("the token is sender-constrained (cnf) and no proof was presented");
    }
    let audiences = match answer.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
        _ => Vec::new(),
    };
    let scopes = scopes_of(&answer);
    // RFC 7662 makes `sub` optional; for a client_credentials token the subject is the
    // client, as RFC 9068 §2.2 spells it for JWT access tokens.
    if !answer.contains_key("sub")
        && let Some(client_id) = answer.get("client_id").cloned()
    {
        answer.insert("sub".into(), client_id);
    }
    match validator.identity(answer) {
        Ok(identity) => Answer { value: Introspected::Active { identity: Arc::new(identity), scopes, audiences }, exp },
        Err(BearerError::Invalid(why)) => refused(why),
        Err(_) => refused("the token could not be verified"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn validator() -> BearerValidator {
        BearerValidator {
            user_claim: "sub".into(),
            groups_claim: "groups".into(),
            clock_skew: Duration::from_secs(60),
            allow_unverified_email: false,
            cache: super::super::cache::IntrospectionCache::new(1, Duration::from_secs(1)),
        }
    }

    #[test]
    fn answers_the_op_may_give() {
        let now = 1_000_000;
        // (answer, active?)
        let table = [
            (json!({"active": true, "sub": "a", "exp": now + 60}), true),
            (json!({"active": true, "client_id": "api", "exp": now + 60}), true),
            (json!({"active": false, "sub": "a"}), false),
            (json!({"active": "true", "sub": "a"}), false),
            (json!({"sub": "a"}), false),
            (json!({"active": true, "sub": "a", "exp": now}), false),
            (json!({"active": true, "sub": "a", "nbf": now + 3600}), false),
            (json!({"active": true, "sub": "a", "iss": "https://evil.example"}), false),
            (json!({"active": true, "sub": "a", "iss": "https://op.example"}), true),
            (json!({"active": true, "sub": "a", "token_type": "Bearer"}), true),
            (json!({"active": true, "sub": "a", "token_type": "refresh_token"}), false),
            (json!({"active": true, "sub": "a", "token_type": "DPoP"}), false),
            (json!({"active": true, "sub": "a", "cnf": {"jkt": "x"}}), false),
            (json!({"active": true}), false),
        ];
        for (answer, active) in table {
            let got = interpret(answer.as_object().unwrap().clone(), "https://op.example", now, Duration::from_secs(60), &validator());
            assert_eq!(matches!(got.value, Introspected::Active { .. }), active, "{answer}: {:?}", got.value);
        }
    }

    #[test]
    fn unverified_email_is_not_forwarded() {
        let answer = json!({"active": true, "sub": "a", "email": "a@x", "email_verified": false});
        let got = interpret(answer.as_object().unwrap().clone(), "i", 0, Duration::ZERO, &validator());
        let Introspected::Active { identity, .. } = got.value else { panic!("refused") };
        assert_eq!(identity.email, None);
    }
}
