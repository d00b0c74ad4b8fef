//! `portcullis`: the OpenID Connect gateway.

mod access_log;
mod app;
mod boundary;
mod canonical_path;
mod cli;
mod client_headers;
mod demo;
mod health;
mod healthcheck;
mod logging;
mod metrics;
mod proxy;
mod reload;
mod routes;
mod server;

use clap::Parser;

/// jemalloc instead of glibc malloc: see BENCHMARKS.md (allocator contention on the hot path).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    logging::init();
    match cli.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
