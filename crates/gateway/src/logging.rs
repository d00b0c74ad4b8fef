//! Log output: where it goes (stderr), its format (`[log] format`) and its filter
//! (`[log] level`, overridden by `PORTCULLIS_LOG`, else `RUST_LOG`).
//!
//! [`init`] runs first thing, before the config is read, so that a failing start-up is logged:
//! text, the environment's filter or `info`. [`configure`] then applies the config's format
//! and level, and [`set_level`] replaces the level at run time (SIGHUP). Both swap parts of the
//! one subscriber through `tracing_subscriber::reload` handles rather than installing another:
//! a global subscriber can be set once per process.

use std::{io::IsTerminal as _, sync::OnceLock};

use anyhow::Context as _;
use portcullis::config::{LogConfig, LogFormat};
use tracing_subscriber::{EnvFilter, Layer, Registry, layer::SubscriberExt as _, reload, util::SubscriberInitExt as _};

/// The registry below the filter: what the output layer is stacked on.
type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
/// The output layer (text or JSON), boxed so that either fits the one reload slot.
type Output = Box<dyn Layer<Filtered> + Send + Sync>;

struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    output: reload::Handle<Output, Filtered>,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

/// The filter the environment asks for (`PORTCULLIS_LOG`, else `RUST_LOG`), which wins over
/// the config's `level`: an operator debugging a host sets it without editing the config.
fn environment_filter() -> Option<(&'static str, String)> {
    ["PORTCULLIS_LOG", "RUST_LOG"].into_iter().find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()).map(|v| (name, v)))
}

/// Installs the subscriber: text on stderr, the environment's filter or `info`.
pub(crate) fn init() {
    let mut refused = None;
    let filter = match environment_filter() {
        Some((name, value)) => EnvFilter::try_new(&value).unwrap_or_else(|e| {
            refused = Some((name, e));
            EnvFilter::new("info")
        }),
        None => EnvFilter::new("info"),
    };
    let (filter, filter_handle) = reload::Layer::new(filter);
    let (output, output_handle) = reload::Layer::new(output(LogFormat::Text));
    if tracing_subscriber::registry().with(filter).with(output).try_init().is_ok() {
        let _ = HANDLES.set(Handles { filter: filter_handle, output: output_handle });
    }
    if let Some((name, error)) = refused {
        tracing::warn!(variable = name, %error, "log filter from the environment refused; using info");
    }
}

/// Applies the config's `[log]`: its format, and its level unless the environment set one.
pub(crate) fn configure(config: &LogConfig) -> anyhow::Result<()> {
    let handles = HANDLES.get().context("logging::init did not run")?;
    handles.output.reload(output(config.format)).context("switching the log format")?;
    set_level(&config.level)
}

/// Replaces the log filter at run time (SIGHUP reload). A filter set by `PORTCULLIS_LOG` (or
/// `RUST_LOG`) stays in force: the environment of a running process does not change, so it
/// still means what it meant at start.
pub(crate) fn set_level(filter: &str) -> anyhow::Result<()> {
    let handles = HANDLES.get().context("logging::init did not run")?;
    if let Some((name, value)) = environment_filter() {
        tracing::info!(variable = name, filter = %value, configured = filter, "log filter kept: the environment overrides [log] level");
        return Ok(());
    }
    let parsed = parse(filter)?;
    handles.filter.reload(parsed).context("replacing the log filter")?;
    Ok(())
}

/// Checks `[log]` as start-up, `check-config` and reload do: the level must parse.
pub(crate) fn check(config: &LogConfig) -> anyhow::Result<()> {
    parse(&config.level).map(drop)
}

fn parse(filter: &str) -> anyhow::Result<EnvFilter> {
    EnvFilter::try_new(filter)
        .with_context(|| format!("log.level: {filter:?} is not a log filter (e.g. \"info\", \"warn,portcullis=debug\")"))
}

fn output(format: LogFormat) -> Output {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        // Colours only for a person at a terminal: escape codes in a file or a journal get in
        // the way of grep and of log shippers.
        LogFormat::Text => layer.with_ansi(std::io::stderr().is_terminal()).boxed(),
        // The event's fields at the top level (`"status":200`, not `"fields":{"status":200}`),
        // which is what Loki, Elasticsearch and `jq` queries expect.
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    /// One test for the whole global subscriber (a process has one): the filter follows
    /// `set_level`, a bad filter is refused and the one in force stays.
    #[test]
    fn the_filter_is_replaced_at_run_time_and_a_bad_one_refused() {
        init();
        assert!(check(&LogConfig { level: "warn,portcullis::access=info".into(), ..LogConfig::default() }).is_ok());
        let refused = check(&LogConfig { level: "info,portcullis=loud".into(), ..LogConfig::default() }).unwrap_err();
        assert!(format!("{refused:#}").contains("log.level"), "{refused:#}");
        if environment_filter().is_some() {
            // PORTCULLIS_LOG / RUST_LOG set for this test run: it wins, by design.
            set_level("error").unwrap();
            return;
        }
        set_level("warn").unwrap();
        assert!(tracing::enabled!(Level::WARN) && !tracing::enabled!(Level::INFO));
        set_level("debug").unwrap();
        assert!(tracing::enabled!(Level::DEBUG) && !tracing::enabled!(Level::TRACE));
        assert!(set_level("debug,x=loud").is_err());
        assert!(tracing::enabled!(Level::DEBUG), "the refused filter changed nothing");
        configure(&LogConfig { format: LogFormat::Json, level: "warn".into() }).unwrap();
        assert!(!tracing::enabled!(Level::INFO));
    }
}
