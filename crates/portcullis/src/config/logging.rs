//! `[log]`: the gateway's log output (format, filter, access lines).

use serde::{Deserialize, Serialize};

/// Where the gateway's log lines go and what they look like. The binary applies it once the
/// config is read; `PORTCULLIS_LOG` (or `RUST_LOG`), when set, overrides `level`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (one human-readable line per event) or `json` (one JSON object per line).
    #[serde(default)]
    pub format: LogFormat,
    /// Filter in `tracing` directive syntax: `info`, `info,portcullis=debug`. Access lines
    /// (one per request) are target `portcullis::access` at `info`: `warn,portcullis::access=info`
    /// keeps them alone, `info,portcullis::access=off` drops them. Changed by a reload (SIGHUP).
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::default(), level: default_level() }
    }
}

/// Shape of the log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines, as a terminal or `journalctl` shows them.
    #[default]
    Text,
    /// One JSON object per line, the fields at the top level (for Loki, Elasticsearch, …).
    Json,
}

fn default_level() -> String {
    "info".into()
}
