//! The state every handler shares, and the claims the OP asserts about its users.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::{
    ClientConfig, User,
    keys::{Keys, SigningAlg},
    knobs::Knobs,
    stats::Stats,
    store::{Grant, Millis, Store},
};

/// One running OP. The three mutexes are `std::sync::Mutex`es: each is held for a few map
/// operations and never across an `.await` (the workspace denies `await_holding_lock`), so an
/// async mutex would only add cost. They are separate so that reading the knobs or bumping a
/// counter never waits for a store operation.
pub(crate) struct Provider {
    /// The issuer exactly as announced: no trailing slash for a bare origin, so that
    /// `iss` matches what relying parties configure (`http://127.0.0.1:9000`).
    pub(crate) issuer: String,
    pub(crate) keys: Keys,
    pub(crate) clients: BTreeMap<String, ClientConfig>,
    pub(crate) users: Vec<User>,
    pub(crate) store: Mutex<Store>,
    pub(crate) knobs: Mutex<Knobs>,
    pub(crate) stats: Mutex<Stats>,
    /// Flips to `true` at shutdown: held ("timeout") requests let go so the server can stop.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// For back-channel logout POSTs.
    pub(crate) http: reqwest::Client,
}

impl Provider {
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn knobs(&self) -> Knobs {
        self.knobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub(crate) fn count(&self, update: impl FnOnce(&mut Stats)) {
        update(&mut self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    }

    pub(crate) fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub(crate) fn user(&self, username: &str) -> Option<&User> {
        self.users.iter().find(|u| u.username == username)
    }

    /// `<issuer><path>`: endpoint URLs in discovery and the `iss` of redirects.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// The claims about a user, in ID tokens and at userinfo. Every claim regardless of scope:
    /// relying parties under test want them, and a development OP has no consent screen.
    pub(crate) fn user_claims(&self, username: &str) -> Map<String, Value> {
        let mut claims = Map::new();
        claims.insert("sub".into(), username.into());
        claims.insert("preferred_username".into(), username.into());
        if let Some(user) = self.user(username) {
            claims.insert("name".into(), user.name.clone().into());
            claims.insert("email".into(), user.email.clone().into());
            claims.insert("email_verified".into(), true.into());
            let groups = self.knobs().user_groups.get(username).cloned().unwrap_or_else(|| user.groups.clone());
            claims.insert("groups".into(), json!(groups));
        }
        claims
    }

    /// An ID token for a grant (Core §2): `nonce` only on the code grant, where it binds the
    /// token to the login; a refreshed ID token carries the same `auth_time` and `sid`.
    pub(crate) fn id_token(&self, grant: &Grant, nonce: Option<&str>, knobs: &Knobs) -> String {
        let now = now_secs();
        let mut claims = self.user_claims(&grant.username);
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), grant.client_id.clone().into());
        claims.insert("iat".into(), now.saturating_add_signed(knobs.id_token_iat_offset_secs).into());
        claims.insert("exp".into(), (now + knobs.access_token_ttl.as_secs().max(1)).into());
        claims.insert("auth_time".into(), grant.auth_time.into());
        claims.insert("sid".into(), grant.sid.clone().into());
        if let Some(nonce) = nonce {
            claims.insert("nonce".into(), nonce.into());
        }
        self.keys.sign(knobs.id_token_alg, "JWT", &claims)
    }

    /// A logout token (Back-Channel Logout §2.4). Always RS256: receivers are most likely to
    /// accept it, and it is short-lived (`exp` two minutes on).
    pub(crate) fn logout_token(&self, client_id: &str, username: &str, sid: &str) -> String {
        let now = now_secs();
        let claims = json!({
            "iss": self.issuer,
            "aud": client_id,
            "sub": username,
            "iat": now,
            "exp": now + 120,
            "jti": crate::crypto::random_token(),
            "sid": sid,
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        });
        let Value::Object(claims) = claims else { unreachable!("a JSON object literal") };
        self.keys.sign(SigningAlg::RS256, "logout+jwt", &claims)
    }
}

pub(crate) fn now_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

pub(crate) fn now_secs() -> u64 {
    now_millis() / 1000
}
