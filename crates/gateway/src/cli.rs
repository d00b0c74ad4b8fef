//! Command line: `portcullis [--config FILE]`, `portcullis check-config FILE`,
//! `portcullis demo [OPTIONS]`, `portcullis dev-op [OPTIONS]`, `portcullis generate-secret`.

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
    /// Validate a configuration file and exit; names the key and the problem on error.
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
}

impl Cli {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self.command.unwrap_or(Command::Run) {
            Command::Run => {
                let config = load(&self.config)?;
                crate::logging::configure(&config.log)?;
                runtime()?.block_on(crate::server::run(config))
            }
            Command::Demo(args) => runtime()?.block_on(crate::demo::run(args)),
            Command::DevOp(args) => runtime()?.block_on(dev_op(*args)),
            Command::GenerateSecret => {
                println!("{}", portcullis::config::generate_secret());
                Ok(())
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

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
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
