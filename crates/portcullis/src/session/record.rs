//! What a session holds. Plain data: no I/O here.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: the one clock that means the same on every instance.
pub type UnixMillis = u64;

/// Wall-clock now, in milliseconds since the Unix epoch.
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One logged-in session.
#[derive(Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Bumped by every write; a write succeeds only against the version it was based on, so a
    /// slow or stale writer can never roll the session back (DESIGN invariant 4). Stored beside
    /// the body, not inside it, so the store can compare it without decoding the body.
    #[serde(skip)]
    pub version: u64,
    /// When the user logged in; the absolute lifetime counts from here.
    pub created_at: UnixMillis,
    /// Who is logged in.
    pub identity: Identity,
    /// The tokens the OP issued, the latest generation.
    pub tokens: TokenSet,
    /// Set when a refresh was sent but its answer never came: the OP may have consumed the
    /// refresh token. See ARCHITECTURE.md, "Token requests with an unknown outcome".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsettled_refresh: Option<UnsettledRefresh>,
    /// The header values requests are forwarded with, built from the fields above by the first
    /// request that forwards this record ([`SessionRecord::forward_values`]). Not data: never
    /// stored, and empty in a clone. `Default::default()` when making a record.
    #[serde(skip)]
    pub forward: super::ForwardHeaders,
}

/// A refresh whose outcome is unknown.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UnsettledRefresh {
    /// Hash of the refresh token that was presented (never the token itself).
    pub token_hash: String,
    /// When the answer was given up on.
    pub at: UnixMillis,
}

/// The user, as the ID token described them at login.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    /// `sub` claim.
    pub subject: String,
    /// Value of the configured user claim (defaults to `sub`), sent upstream as the user header.
    pub user: String,
    /// `email` claim, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// `groups` claim, when present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The user-describing claims of the ID token (no nonce, no timestamps), for `/oauth2/userinfo`.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Identity {
    /// The groups in claim `name`: an array of strings (other entries ignored), or none. One
    /// reading for ID tokens and bearer tokens alike, so a rule on groups means the same thing
    /// whichever way the caller authenticated.
    pub(crate) fn groups_in(claims: &serde_json::Map<String, serde_json::Value>, name: &str) -> Vec<String> {
        claims
            .get(name)
            .and_then(serde_json::Value::as_array)
            .map(|g| g.iter().filter_map(serde_json::Value::as_str).map(String::from).collect())
            .unwrap_or_default()
    }
}

/// Tokens from one grant.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenSet {
    /// Sent upstream as `Authorization: Bearer`.
    pub access_token: String,
    /// When the grant was answered; with `expires_at` it gives the token's lifetime.
    pub issued_at: UnixMillis,
    /// From `expires_in`; `None` when the OP did not say (then the token is never refreshed early).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<UnixMillis>,
    /// Absent when the OP issued none (no `offline_access`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The latest ID token, kept for `id_token_hint` at logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl fmt::Debug for TokenSet {
    // Tokens are secrets: a stray `{:?}` in a log line must not leak them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("has_id_token", &self.id_token.is_some())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRecord")
            .field("version", &self.version)
            .field("created_at", &self.created_at)
            .field("subject", &self.identity.subject)
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// How close an access token is to expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Forward as is.
    Fresh,
    /// Still valid, but inside the refresh leeway: refresh now, in the background.
    DueSoon,
    /// Expired, or too close to expiry to survive the trip upstream: refresh before forwarding.
    Expired,
}

/// A token with less than this left is treated as expired: it could lapse on the way upstream.
const IN_FLIGHT_MARGIN_MS: u64 = 1_000;

impl TokenSet {
    /// Where the token stands at `now`. The leeway is `fraction` of the token's lifetime, capped
    /// at `max`, so a 30-second token refreshes with ~7 s left and an hour-long one with 60 s.
    pub fn freshness(&self, now: UnixMillis, fraction: f64, max: Duration) -> Freshness {
        let Some(expires_at) = self.expires_at else { return Freshness::Fresh };
        let remaining = expires_at.saturating_sub(now);
        if remaining <= IN_FLIGHT_MARGIN_MS {
            return Freshness::Expired;
        }
        let lifetime = expires_at.saturating_sub(self.issued_at);
        let leeway = ((lifetime as f64 * fraction) as u64).min(max.as_millis() as u64);
        if remaining <= leeway { Freshness::DueSoon } else { Freshness::Fresh }
    }

    /// True while the access token can still be forwarded.
    pub fn usable(&self, now: UnixMillis) -> bool {
        self.expires_at.is_none_or(|e| e.saturating_sub(now) > IN_FLIGHT_MARGIN_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(issued_at: u64, lifetime_ms: u64) -> TokenSet {
        TokenSet {
            access_token: "at".into(),
            issued_at,
            expires_at: Some(issued_at + lifetime_ms),
            refresh_token: Some("rt".into()),
            id_token: None,
        }
    }

    #[test]
    fn freshness_scales_with_lifetime_and_is_capped() {
        let max = Duration::from_secs(60);
        // (lifetime, elapsed, expected)
        let cases = [
            (30_000, 0, Freshness::Fresh),
            (30_000, 22_000, Freshness::Fresh),
            (30_000, 23_000, Freshness::DueSoon), // 7 s left of a 30 s token: inside 25 %
            (30_000, 29_000, Freshness::Expired),
            (30_000, 40_000, Freshness::Expired),
            (3_600_000, 3_500_000, Freshness::Fresh), // 100 s left: the 60 s cap holds it back
            (3_600_000, 3_550_000, Freshness::DueSoon),
            (10_000, 8_000, Freshness::DueSoon), // short tokens still get a window
        ];
        for (lifetime, elapsed, expected) in cases {
            let t = tokens(1_000_000, lifetime);
            assert_eq!(t.freshness(1_000_000 + elapsed, 0.25, max), expected, "lifetime {lifetime} elapsed {elapsed}");
        }
    }

    #[test]
    fn unknown_lifetime_is_fresh() {
        let mut t = tokens(0, 1);
        t.expires_at = None;
        assert_eq!(t.freshness(u64::MAX / 2, 0.25, Duration::from_secs(60)), Freshness::Fresh);
        assert!(t.usable(u64::MAX / 2));
    }

    #[test]
    fn debug_hides_tokens() {
        let t = tokens(0, 1000);
        let shown = format!("{t:?}");
        assert!(!shown.contains("\"at\"") && !shown.contains("\"rt\""), "{shown}");
    }
}
