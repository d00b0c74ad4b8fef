//! `[session.read_cache]`: the Redis store's in-process cache of hot sessions (see
//! `session::read_cache` for what it may serve and for how long).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The read cache in front of the Redis store. Ignored by the other stores.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReadCacheConfig {
    /// Serve hot sessions from process memory instead of one Redis round trip per request.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// At most this many sessions are kept (least recently used dropped first); about 4 KB each
    /// with typical tokens.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// The longest a session is served from memory without asking Redis: after this, the next
    /// request reads Redis again, which restarts the session's idle clock there. So a session
    /// in use is renewed at most once per interval, and one logged out on an instance whose
    /// change notifications are lost (a connection that died unnoticed) is refused within it.
    #[serde(default = "default_renew_interval", with = "humantime_serde")]
    pub renew_interval: Duration,
}

impl Default for ReadCacheConfig {
    fn default() -> Self {
        Self { enabled: default_enabled(), max_entries: default_max_entries(), renew_interval: default_renew_interval() }
    }
}

impl ReadCacheConfig {
    /// The key at fault and why, if any.
    pub(crate) fn validate(&self, idle_timeout: Duration) -> Result<(), (&'static str, String)> {
        if !self.enabled {
            return Ok(());
        }
        if self.max_entries == 0 {
            return Err(("session.read_cache.max_entries", "must be above zero (or set session.read_cache.enabled = false)".into()));
        }
        // A used session must be renewed in Redis before its idle TTL can lapse: at most one
        // interval passes between two renewals of a session in use, so the interval must be
        // well inside the idle timeout.
        if self.renew_interval.is_zero() || self.renew_interval * 2 > idle_timeout {
            return Err((
                "session.read_cache.renew_interval",
                format!("must be above zero and at most half of session.idle_timeout ({idle_timeout:?})"),
            ));
        }
        Ok(())
    }
}

fn default_enabled() -> bool {
    true
}
fn default_max_entries() -> usize {
    10_000
}
fn default_renew_interval() -> Duration {
    Duration::from_secs(5)
}
