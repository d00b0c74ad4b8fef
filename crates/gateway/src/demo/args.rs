//! `portcullis demo` options, and the checks that turn them into a plan.

use std::time::Duration;

use clap::{Args, ValueEnum};

/// Options of `portcullis demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Port of the demo on 127.0.0.1 (the only address it uses).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Access-token lifetime at the development OP: short, so a refresh is easy to watch.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    token_ttl: Duration,
    /// Session store [default: memory; redis with --instances above 1, which must share one].
    #[arg(long, value_enum)]
    store: Option<StoreArg>,
    /// Redis for `--store redis`.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Gateway instances; above 1 they run behind a built-in round-robin front on `--port`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    instances: u16,
    /// Open the demo in the default browser once it is ready.
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    open_browser: bool,
}

/// `--store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StoreArg {
    /// In-process memory (one instance).
    Memory,
    /// Redis at `--redis-url` (any number of instances).
    Redis,
}

/// Where the demo's sessions live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Store {
    Memory,
    Redis(String),
}

impl Store {
    /// How the ready message names it.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Memory => "memory (in this process)".into(),
            Self::Redis(url) => format!("redis at {}", redact(url)),
        }
    }
}

/// A Redis URL without its password, for printing.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// The checked options.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) port: u16,
    pub(crate) token_ttl: Duration,
    pub(crate) store: Store,
    pub(crate) instances: u16,
    pub(crate) open_browser: bool,
}

impl DemoArgs {
    /// Checks the combination. Several instances only agree on sessions through a shared
    /// store, so they imply redis, and an explicit `--store memory` is refused rather than
    /// silently giving each instance its own sessions (every other request would log out).
    pub(crate) fn plan(self) -> anyhow::Result<Plan> {
        let n = self.instances;
        let store = match self.store {
            Some(StoreArg::Memory) if n > 1 => anyhow::bail!(
                "--instances {n} needs a store the instances share: use --store redis (and --redis-url), not --store memory; \
                 with the memory store each instance would have its own sessions"
            ),
            Some(StoreArg::Memory) => Store::Memory,
            None if n == 1 => Store::Memory,
            Some(StoreArg::Redis) | None => Store::Redis(self.redis_url),
        };
        if self.token_ttl < Duration::from_secs(1) {
            anyhow::bail!("--token-ttl must be at least 1s");
        }
        Ok(Plan { port: self.port, token_ttl: self.token_ttl, store, instances: self.instances, open_browser: self.open_browser })
    }
}

/// `30s`, `1500ms`, `1m30s`: humantime, as the development OP's own options.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (e.g. 30s, 1500ms, 2m)"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        Cli::try_parse_from(std::iter::once("demo").chain(args.iter().copied()))?.demo.plan()
    }

    #[test]
    fn durations() {
        for (text, expected) in [("30s", 30_000), ("1500ms", 1500), ("1m30s", 90_000)] {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(expected)), "{text}");
        }
        for bad in ["", "s", "-1s", "soon"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults() {
        let p = plan(&[]).unwrap();
        assert_eq!((p.port, p.token_ttl, p.store, p.instances, p.open_browser), (8080, Duration::from_secs(30), Store::Memory, 1, false));
        assert!(plan(&["--open-browser"]).unwrap().open_browser);
        assert!(!plan(&["--open-browser", "false"]).unwrap().open_browser);
    }

    #[test]
    fn several_instances_share_redis() {
        let redis = Store::Redis("redis://127.0.0.1:6379".into());
        assert_eq!(plan(&["--instances", "3"]).unwrap().store, redis);
        assert_eq!(plan(&["--instances", "3", "--store", "redis"]).unwrap().store, redis);
        let refused = plan(&["--instances", "3", "--store", "memory"]).unwrap_err().to_string();
        assert!(refused.contains("--store redis"), "{refused}");
        assert!(plan(&["--instances", "0"]).is_err());
    }

    #[test]
    fn printed_redis_urls_hide_the_password() {
        assert_eq!(Store::Redis("redis://:hunter2@127.0.0.1:6379/0".into()).describe(), "redis at redis://:***@127.0.0.1:6379/0");
        assert_eq!(Store::Redis("redis://127.0.0.1:6379".into()).describe(), "redis at redis://127.0.0.1:6379");
    }
}
