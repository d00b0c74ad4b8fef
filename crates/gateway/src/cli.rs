//! Command line: `portcullis [--config FILE]`, `portcullis check-config FILE`,
//! `portcullis print-config [FILE]`, `portcullis healthcheck`, `portcullis demo [OPTIONS]`,
//! `portcullis dev-op [OPTIONS]`, `portcullis generate-secret`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis::config::Config;

/// The Portcullis OpenID Connect gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    /// Configuration file (TOML). Keys can be overridden by PORTCULLIS_<SECTION>__<KEY>.
    #[arg(long, short, global = true, env = "PORTCULLIS_CONFIG", default_value = "portcullis.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate a configuration file and exit; names the key and the problem on error. Checks
    /// exactly what startup and a reload (SIGHUP) check, environment overrides included.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Try it: the development OP, a demo app and the gateway in one process, on 127.0.0.1.
    Demo(crate::demo::DemoArgs),
    /// Run the development OpenID Provider alone (for testing any relying party). Development only.
    DevOp(Box<portcullis_dev_op::DevOpArgs>),
    /// Print a new `session.secret`: 48 random bytes, base64.
    GenerateSecret,
    /// Print the effective configuration as TOML: the file with environment overrides applied,
    /// defaults filled in, secrets shown as "<redacted>".
    PrintConfig {
        /// The file to read (default: --config).
        file: Option<PathBuf>,
    },
    /// GET /healthz on the running gateway (its `listen` address, or --url); exit 0 on 200.
    /// For container health checks in images without curl.
    Healthcheck {
        /// Probe this address instead of the configuration's `listen` (e.g. 127.0.0.1:8080).
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

impl Cli {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self.command.unwrap_or(Command::Run) {
            Command::Run => {
                let config = load(&self.config)?;
                crate::logging::configure(&config.log)?;
                runtime()?.block_on(crate::server::run(config, self.config))
            }
            Command::Demo(args) => runtime()?.block_on(crate::demo::run(args)),
            Command::DevOp(args) => runtime()?.block_on(dev_op(*args)),
            Command::GenerateSecret => {
                println!("{}", portcullis::config::generate_secret());
                Ok(())
            }
            Command::PrintConfig { file } => {
                let file = file.unwrap_or(self.config);
                let config = load(&file)?;
                let text = toml::to_string(&config).context("writing the configuration as TOML")?;
                println!("# {}: the effective configuration (environment overrides applied, secrets redacted)\n", file.display());
                print!("{text}");
                Ok(())
            }
            Command::Healthcheck { addr, timeout } => {
                let addr = match addr {
                    Some(addr) => addr,
                    None => load(&self.config)?.listen,
                };
                crate::healthcheck::probe(addr, timeout)
            }
            Command::CheckConfig { file } => {
                let config = load(&file)?;
                println!(
                    "{}: ok ({} route{}, {:?} store, issuer {})",
                    file.display(),
                    config.routes.len(),
                    if config.routes.len() == 1 { "" } else { "s" },
                    config.session.store,
                    config.oidc.issuer
                );
                Ok(())
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// The development OP until Ctrl-C/SIGTERM.
async fn dev_op(args: portcullis_dev_op::DevOpArgs) -> anyhow::Result<()> {
    let op = portcullis_dev_op::start(args.into_config()).await.context("starting the development OP")?;
    println!("DEV OP READY {}", op.issuer());
    println!("  discovery: {}/.well-known/openid-configuration", op.issuer().as_str().trim_end_matches('/'));
    println!("  Ctrl-C stops it.");
    crate::server::shutdown_signal().await;
    op.shutdown().await;
    Ok(())
}

/// The one validation of startup, `check-config` and SIGHUP (`reload::load`).
fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    crate::reload::load(path)
}
