//! `portcullis demo`: the development OP, the demo app and the gateway in one process, on
//! 127.0.0.1 only, with no files.
//!
//! - `args`: the options and the checks between them (several instances need redis).
//! - `settings`: the OP's client registration and the gateway's `Config`, built in code.
//! - `console`: the demo app ("Acme Console") and its page.
//! - `front`: the round-robin front for `--instances N`.
//!
//! Start order: the public port is bound first (a busy port fails before anything starts),
//! then the OP, the app, the gateway instances (and the front); `DEMO READY <url>` is printed
//! once every instance answers `/readyz` (OP discovered, store answering). Ctrl-C or SIGTERM
//! stops the servers (in-flight requests drain), then the OP.

mod args;
mod console;
mod front;
mod settings;

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context;
pub(crate) use args::DemoArgs;
use portcullis::config::Config;
use tokio::{
    net::TcpListener,
    sync::watch,
    task::{JoinError, JoinSet},
};
use url::Url;

use crate::server;

/// How long the instances get to become ready (discovery at the in-process OP, a Redis ping).
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How long in-flight requests get to finish after Ctrl-C before the demo exits anyway.
const DRAIN_WITHIN: Duration = Duration::from_secs(5);

/// Runs the demo until Ctrl-C/SIGTERM.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let plan = args.plan()?;
    let public_addr = SocketAddr::from(([127, 0, 0, 1], plan.port));
    let public_listener = server::bind(public_addr).await.context("pick another port with --port")?;
    let public_url: Url = format!("http://{public_addr}").parse()?;

    let client_secret = settings::random_secret();
    let op = portcullis_dev_op::start(settings::dev_op(&public_url, &client_secret, plan.token_ttl))
        .await
        .context("starting the development OP")?;
    let issuer = op.issuer();
    let stop = Stop::default();
    let mut servers = JoinSet::new();

    let app_listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let app_url: Url = format!("http://{}", app_listener.local_addr()?).parse()?;
    let op_link = console::OpLink::dev_op(op.addr(), settings::CLIENT_ID, &client_secret)?;
    servers.spawn(console::serve(app_listener, op_link, deployment(&plan, op.addr()), stop.signal()));

    let config = settings::gateway(&public_url, &issuer, &client_secret, &app_url, &plan.store)?;
    let (instances, metrics) = spawn_gateways(&mut servers, &stop, config, public_listener, plan.instances).await?;

    // A server that fails to start (a bad Redis URL) ends its task early: report that rather
    // than waiting for a readiness that will not come.
    let started = tokio::select! {
        ready = wait_ready(&instances, &plan.store) => ready,
        Some(ended) = servers.join_next() => Err(ended_early(ended)),
    };
    let outcome = match started {
        Ok(()) => {
            announce(&public_url, &issuer, &plan, &metrics);
            if plan.open_browser {
                open_browser(&public_url);
            }
            tokio::select! {
                () = server::shutdown_signal() => Ok(()),
                Some(ended) = servers.join_next() => Err(ended_early(ended)),
            }
        }
        Err(e) => Err(e),
    };

    tracing::info!("portcullis demo stopping");
    stop.now();
    if tokio::time::timeout(DRAIN_WITHIN, drain(&mut servers)).await.is_err() {
        tracing::warn!("some connections were still open after {DRAIN_WITHIN:?}; closing them");
        servers.abort_all();
    }
    op.shutdown().await;
    outcome
}

/// Tells every server to stop: each holds a [`Stop::signal`] as its graceful-shutdown future.
struct Stop(watch::Sender<bool>);

impl Default for Stop {
    fn default() -> Self {
        Self(watch::channel(false).0)
    }
}

impl Stop {
    fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.0.subscribe();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    }

    fn now(&self) {
        self.0.send_replace(true);
    }
}

/// One gateway on the public listener, or `instances` gateways on free ports behind the
/// round-robin front on it; each with `/metrics` on a free loopback port of its own. Returns
/// the gateways' addresses and their metrics addresses.
async fn spawn_gateways(
    servers: &mut JoinSet<anyhow::Result<()>>,
    stop: &Stop,
    config: Config,
    public_listener: TcpListener,
    instances: u16,
) -> anyhow::Result<(Vec<SocketAddr>, Vec<SocketAddr>)> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    if instances == 1 {
        let addr = public_listener.local_addr()?;
        let metrics = server::bind(loopback).await?;
        let metrics_addr = metrics.local_addr()?;
        servers.spawn(server::serve_with_metrics(config, public_listener, Some(metrics), stop.signal()));
        return Ok((vec![addr], vec![metrics_addr]));
    }
    let (mut addrs, mut metrics_addrs) = (Vec::new(), Vec::new());
    for _ in 0..instances {
        let listener = server::bind(loopback).await?;
        let metrics = server::bind(loopback).await?;
        addrs.push(listener.local_addr()?);
        metrics_addrs.push(metrics.local_addr()?);
        servers.spawn(server::serve_with_metrics(config.clone(), listener, Some(metrics), stop.signal()));
    }
    let (front_addrs, shutdown) = (addrs.clone(), stop.signal());
    servers.spawn(async move { front::serve(public_listener, &front_addrs, shutdown).await });
    Ok((addrs, metrics_addrs))
}

/// What the page's "Deployment" card shows.
fn deployment(plan: &args::Plan, op: SocketAddr) -> console::Deployment {
    console::Deployment {
        gateways: match plan.instances {
            1 => "1 instance".into(),
            n => format!("{n} instances, round robin"),
        },
        store: match &plan.store {
            args::Store::Memory => "in memory".into(),
            args::Store::Redis(_) => "shared in Redis".into(),
        },
        token_ttl: format!("live {}", humanize(plan.token_ttl)),
        op: op.to_string(),
    }
}

/// Why a server task ended before it was told to stop.
fn ended_early(ended: Result<anyhow::Result<()>, JoinError>) -> anyhow::Error {
    match ended {
        Ok(Err(e)) => e.context("a demo server failed"),
        Ok(Ok(())) => anyhow::anyhow!("a demo server stopped unexpectedly"),
        Err(e) => anyhow::Error::new(e).context("a demo server panicked"),
    }
}

async fn drain(servers: &mut JoinSet<anyhow::Result<()>>) {
    while let Some(ended) = servers.join_next().await {
        if let Ok(Err(e)) = ended {
            tracing::warn!(error = format!("{e:#}"), "demo server stopped with an error");
        }
    }
}

/// Waits until every gateway instance answers `/readyz` with 200. A store that keeps
/// failing (Redis not running) is reported at once, with what the instance said.
async fn wait_ready(instances: &[SocketAddr], store: &args::Store) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?;
    for (i, addr) in instances.iter().enumerate() {
        let url = format!("http://{addr}/readyz");
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        let mut store_failures = 0;
        loop {
            let answer = async { http.get(&url).send().await?.json::<serde_json::Value>().await }.await;
            let last = match answer {
                Ok(body) if body["ready"] == true => break,
                Ok(body) => body,
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            if last["session_store"].as_str().is_some_and(|s| s != "ok") {
                store_failures += 1;
            }
            if store_failures >= 3 {
                anyhow::bail!(
                    "the session store, {}, does not answer ({}): start it, or leave out --store redis and --instances",
                    store.describe(),
                    last["session_store"].as_str().unwrap_or_default()
                );
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("gateway instance {} was not ready within {READY_WITHIN:?}: {last}", i + 1);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The ready line (exactly one, first, for scripts and tests), then lines for people.
fn announce(public_url: &Url, issuer: &Url, plan: &args::Plan, metrics: &[SocketAddr]) {
    println!("DEMO READY {public_url}");
    println!();
    println!("  Portcullis demo    {public_url}");
    println!("  Log in as          demo / demo");
    println!("  Access tokens live {}", humanize(plan.token_ttl));
    println!("  Session store      {}", plan.store.describe());
    println!("  Instances          {}", gateways(plan.instances));
    println!("  Development OP     {issuer}");
    for (i, addr) in metrics.iter().enumerate() {
        let label = if i == 0 { "Metrics" } else { "" };
        println!("  {label:<18} http://{addr}/metrics");
    }
    println!();
    println!("  Ctrl-C stops everything.");
}

fn gateways(instances: u16) -> String {
    match instances {
        1 => "1 gateway".to_string(),
        n => format!("{n} gateways behind a round-robin front (per request)"),
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{} s", d.as_secs()) } else { format!("{} ms", d.as_millis()) }
}

/// Best effort: the URL is printed anyway.
fn open_browser(url: &Url) {
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    let spawned = std::process::Command::new(opener)
        .arg(url.as_str())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match spawned {
        // Reaped on a thread so the opener does not linger as a zombie.
        Ok(mut child) => drop(std::thread::spawn(move || child.wait())),
        Err(e) => eprintln!("portcullis demo: could not open a browser ({opener}: {e}); open {url} yourself"),
    }
}
