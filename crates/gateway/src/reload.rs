//! Configuration loading, for startup, `portcullis check-config` and SIGHUP alike, and the
//! reload itself.
//!
//! [`load`] is the one validation: the schema, the environment overrides, the `*_file`
//! secrets, the library's checks and the route table's. Startup, `check-config` and a reload
//! all call it, so a file `check-config` passes is one a reload accepts (unless it changes a
//! setting that needs a restart, see below).
//!
//! A reload (SIGHUP) re-reads the file given at startup (and the environment), validates it,
//! and either applies all of it or none of it:
//!
//! - **Applied at once**, to requests that start from then on (connections stay open; a
//!   request in flight finishes with the settings it started with): `[[routes]]` (prefixes,
//!   upstreams, policies, timeouts, per-route rules and bearer settings), `[authorization]`,
//!   `session.previous_secrets`, the log level (`log.level`, once the logging settings have
//!   it), and `session.secret` *when the old secret is listed in the new
//!   `previous_secrets`* (a rotation: cookies made with either keep working).
//! - **Refused, naming the keys**: every other change (`listen`, `public_url`, `session.store`,
//!   `session.redis_url`, `[oidc]`, `[refresh]`, `[server]`, `trusted_proxies`, `[bearer]`,
//!   …), and a `session.secret` change that drops the old secret (it would log everyone out).
//!   These are copied into long-lived parts at startup (the bound socket, the store's
//!   connections, the OP client and its discovered metadata, the refresh coordinator, the
//!   connection limits, the boundary); a restart is the honest way to change them. Applying
//!   the reloadable part and ignoring the rest was the alternative: it leaves a process whose
//!   running settings match neither the old file nor the new one, which is what an operator
//!   debugging at 3 a.m. must never have to work out. Refused, nothing changes, and the log
//!   says what to do.
//! - **A file that does not validate** is refused with its error (the key named) and the
//!   running configuration kept.

use std::path::{Path, PathBuf};

use anyhow::Context;
use portcullis::{auth::Authenticator, config::Config};
use serde_json::Value;

use crate::routes::{LiveRoutes, RouteTable};

/// Reads and validates the configuration at `path`: what startup, `check-config` and a reload
/// all accept.
pub(crate) fn load(path: &Path) -> anyhow::Result<Config> {
    if !path.exists() {
        anyhow::bail!("configuration file {} not found (pass --config FILE)", path.display());
    }
    let config = Config::load(path).with_context(|| format!("invalid configuration in {}", path.display()))?;
    crate::routes::check_prefixes(&config.routes)
        .map_err(|e| anyhow::anyhow!(e))
        .with_context(|| format!("invalid configuration in {}", path.display()))?;
    crate::logging::check(&config.log).with_context(|| format!("invalid configuration in {}", path.display()))?;
    Ok(config)
}

/// The parts of a running gateway a reload replaces.
#[derive(Clone)]
pub(crate) struct Live {
    pub(crate) routes: LiveRoutes,
    /// The global rules and the session secrets live in the authenticator.
    pub(crate) auth: Authenticator,
    /// A new route table records into the same per-route metrics.
    pub(crate) http: crate::metrics::HttpMetrics,
}

/// Top-level keys (or dotted paths) a reload applies; every other difference needs a restart.
const RELOADABLE: &[&str] = &["routes", "authorization", "log.level"];

/// Keys compared by value elsewhere (secrets serialize as `<redacted>`: the session secrets in
/// `try_reload`, the client secret and the Redis URL in `needs_restart`) or not at all (a
/// secret's file path: what counts is the secret it holds).
const NOT_COMPARED: &[&str] =
    &["session.secret", "session.previous_secrets", "session.secret_file", "oidc.client_secret", "oidc.client_secret_file"];

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("{0:#}")]
    Invalid(anyhow::Error),
    #[error("these settings cannot change while running, restart to apply them: {}", .0.join(", "))]
    NeedsRestart(Vec<String>),
    #[error(
        "session.secret changed, and the old secret is not in session.previous_secrets: every session would end. \
         List the old secret in previous_secrets to rotate, or restart to end all sessions on purpose"
    )]
    SecretDropped,
}

/// Re-reads the config on SIGHUP and applies it.
pub(crate) struct Reloader {
    path: PathBuf,
    running: Config,
    live: Live,
}

impl Reloader {
    pub(crate) fn new(path: PathBuf, running: Config, live: Live) -> Self {
        Self { path, running, live }
    }

    /// Reloads at every SIGHUP until the task is aborted. `hangup` is registered by the caller
    /// before the gateway serves: SIGHUP's default action ends the process.
    #[cfg(unix)]
    pub(crate) async fn on_sighup(mut self, mut hangup: tokio::signal::unix::Signal) {
        while hangup.recv().await.is_some() {
            self.reload();
        }
    }

    /// One reload: logs what it applied, or why it applied nothing.
    pub(crate) fn reload(&mut self) {
        let path = self.path.display().to_string();
        match self.try_reload() {
            Ok(changed) if changed.is_empty() => tracing::info!(file = %path, "configuration reloaded: nothing changed"),
            Ok(changed) => tracing::info!(file = %path, changed = %changed.join(", "), "configuration reloaded"),
            Err(refused) => {
                tracing::error!(file = %path, reason = %refused, "configuration reload refused; the running configuration is kept");
            }
        }
    }

    fn try_reload(&mut self) -> Result<Vec<&'static str>, Refused> {
        let next = load(&self.path).map_err(Refused::Invalid)?;
        let (old, new) = (&self.running, &next);
        let restart = needs_restart(old, new);
        if !restart.is_empty() {
            return Err(Refused::NeedsRestart(restart));
        }
        let secret_changed = old.session.secret != new.session.secret;
        if secret_changed && !new.session.previous_secrets.iter().any(|s| Some(s) == old.session.secret.as_ref()) {
            return Err(Refused::SecretDropped);
        }
        // Everything below is infallible but the log level: validated, the new file applies.
        let mut changed = Vec::new();
        if json(&old.routes) != json(&new.routes) {
            self.live.routes.store(RouteTable::new(&new.routes, &self.live.http));
            changed.push("routes");
        }
        if old.authorization != new.authorization {
            self.live.auth.global_rules().store(new.authorization.clone());
            changed.push("authorization");
        }
        if secret_changed || old.session.previous_secrets != new.session.previous_secrets {
            let current = new.session.secret.as_deref().unwrap_or_default();
            self.live.auth.set_session_secrets(current, &new.session.previous_secrets);
            changed.push(if secret_changed { "session.secret" } else { "session.previous_secrets" });
        }
        let (old_level, new_level) = (log_level(old), log_level(new));
        if old_level != new_level
            && let Some(level) = new_level
        {
            match crate::logging::set_level(&level) {
                Ok(()) => changed.push("log.level"),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "configuration reload: cannot change the log level; the rest is applied")
                }
            }
        }
        self.running = next;
        Ok(changed)
    }
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// `log.level`, read from the serialized config so that this module does not depend on the
/// logging settings' type (it has none until they exist).
fn log_level(config: &Config) -> Option<String> {
    json(config).pointer("/log/level").and_then(Value::as_str).map(String::from)
}

/// The keys whose value differs between `old` and `new` and that a reload cannot apply, as
/// dotted paths (`listen`, `session.store`, `oidc.client_secret`).
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    diff("", &json(old), &json(new), &mut keys);
    keys.retain(|k| !RELOADABLE.iter().chain(NOT_COMPARED).any(|r| k == r || k.starts_with(&format!("{r}."))));
    // Serialized redacted (secrets, a Redis URL's password), so compared here.
    if old.oidc.client_secret != new.oidc.client_secret {
        keys.push("oidc.client_secret".to_string());
    }
    if old.session.redis_url != new.session.redis_url {
        keys.push("session.redis_url".to_string());
    }
    if old.session.redis_sentinel_password != new.session.redis_sentinel_password {
        keys.push("session.redis_sentinel_password".to_string());
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Collects the paths where `a` and `b` differ: into objects key by key, arrays and scalars
/// compared whole (a changed list is one key to name).
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let sub = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                diff(&sub, a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), out);
            }
        }
        (a, b) if a != b => out.push(path.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
public_url = "http://127.0.0.1:8080"
[oidc]
issuer = "http://127.0.0.1:9000"
client_id = "gw"
client_secret = "s"
[session]
secret = "or9UtaSFLwIWWCKa2M8yYFbdgSrKZIR1sOASg3as6p0xWE9bgkwx7YJudagrJOcd"
[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:9001"
"#;

    fn config(extra: &str, replace: (&str, &str)) -> Config {
        Config::from_toml_str(&format!("{}{extra}", BASE.replace(replace.0, replace.1))).unwrap()
    }

    /// Which keys a reload refuses: every non-reloadable one named, the reloadable ones and a
    /// secret's file path not.
    #[test]
    fn restart_keys_are_named() {
        let old = config("", ("", ""));
        let cases: &[(&str, (&str, &str), &[&str])] = &[
            ("", ("", ""), &[]),
            ("", ("9001", "9002"), &[]),
            ("[authorization]\nallowed_groups = [\"ops\"]\n", ("", ""), &[]),
            ("", ("public_url = \"http://127.0.0.1:8080\"", "listen = \"0.0.0.0:1\"\npublic_url = \"http://127.0.0.1:8080\""), &["listen"]),
            ("", ("issuer = \"http://127.0.0.1:9000\"", "issuer = \"http://127.0.0.1:9009\""), &["oidc.issuer"]),
            ("", ("client_secret = \"s\"", "client_secret = \"t\""), &["oidc.client_secret"]),
            ("[server]\ndrain_timeout = \"1s\"\n[refresh]\nmax_wait = \"1s\"\n", ("", ""), &["refresh.max_wait", "server.drain_timeout"]),
            (
                "",
                ("[session]", "[session]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:1\""),
                &["session.redis_url", "session.store"],
            ),
        ];
        for (extra, replace, expected) in cases {
            let new = config(extra, *replace);
            assert_eq!(needs_restart(&old, &new), expected.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{extra} {replace:?}");
        }
    }
}
