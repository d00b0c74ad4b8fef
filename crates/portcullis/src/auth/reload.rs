//! What a configuration reload (SIGHUP) may replace in a running [`Authenticator`]: the global
//! authorization rules and the session secrets. Everything else it holds was built from the
//! config at startup and needs a restart (the gateway's `reload.rs` says which keys and why).

use super::{Authenticator, authorization::GlobalRules};

impl Authenticator {
    /// The global `[authorization]` rules in force: hand this to [`super::AuthorizeLayer::new`]
    /// and [`super::forward_auth_routes`] so that a reload reaches them.
    pub fn global_rules(&self) -> GlobalRules {
        self.0.authorization.clone()
    }

    /// Replaces the keys derived from the session secrets: session cookies (server-side
    /// stores), cookie-store seals and pending logins. New ones are made with `current`; those
    /// made with `current` or any of `previous` are accepted from now on.
    pub fn set_session_secrets(&self, current: &str, previous: &[String]) {
        let secrets = || std::iter::once(current.as_bytes()).chain(previous.iter().map(|s| s.as_bytes()));
        self.0.codec.set_secrets(secrets());
        self.0.login_sealer.set_secrets(secrets());
        if let Some(cookie_sessions) = &self.0.cookie_sessions {
            cookie_sessions.set_secrets(secrets());
        }
    }
}
