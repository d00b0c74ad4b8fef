//! The real `portcullis` binary, started with a generated config.

use std::{path::PathBuf, time::Duration};

use tokio::process::{Child, Command};

use crate::process::free_port;

/// What to put in the generated config.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Listen port (pick it first: the OP must know the redirect URI).
    pub port: u16,
    /// OP issuer URL.
    pub issuer: String,
    /// `memory` or `redis`.
    pub store: String,
    /// Redis URL for `store = "redis"`.
    pub redis_url: Option<String>,
    /// `(prefix, upstream, unauthenticated)` rows of the route table.
    pub routes: Vec<(String, String, String)>,
    /// Extra TOML appended verbatim (e.g. a `[refresh]` table).
    pub extra: String,
    /// `public_url` when not the gateway's own address (several instances behind one URL).
    pub public_url: Option<String>,
    /// Environment variables for the process (`PORTCULLIS_OIDC__HTTP_TIMEOUT`, …).
    pub env: Vec<(String, String)>,
    /// `session.secret`.
    pub secret: String,
}

impl GatewayOptions {
    /// A memory-store gateway on a free port with one catch-all route.
    pub fn new(issuer: &str, upstream: &str) -> Self {
        Self {
            port: free_port(),
            issuer: issuer.to_string(),
            store: "memory".into(),
            redis_url: None,
            routes: vec![("/".into(), upstream.into(), "login".into())],
            extra: String::new(),
            public_url: None,
            env: Vec::new(),
            secret: "or9UtaSFLwIWWCKa2M8yYFbdgSrKZIR1sOASg3as6p0xWE9bgkwx7YJudagrJOcd".into(),
        }
    }

    fn toml(&self) -> String {
        let mut text = format!(
            "listen = \"127.0.0.1:{port}\"\npublic_url = \"{public_url}\"\n\n[oidc]\nissuer = \"{issuer}\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\n\n[session]\nstore = \"{store}\"\nsecret = \"{session_secret}\"\n",
            port = self.port,
            public_url = self.public_url.clone().unwrap_or_else(|| format!("http://127.0.0.1:{}", self.port)),
            issuer = self.issuer,
            id = crate::op::CLIENT_ID,
            secret = crate::op::CLIENT_SECRET,
            store = self.store,
            session_secret = self.secret,
        );
        if let Some(url) = &self.redis_url {
            text.push_str(&format!("redis_url = \"{url}\"\n"));
        }
        text.push_str(&self.extra);
        text.push('\n');
        for (prefix, upstream, policy) in &self.routes {
            text.push_str(&format!("\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nunauthenticated = \"{policy}\"\n"));
        }
        text
    }
}

/// A running gateway process, killed when dropped.
pub struct Gateway {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    dir: PathBuf,
}

impl Gateway {
    /// Starts `binary` (pass `env!("CARGO_BIN_EXE_portcullis")`) and waits for `/healthz`.
    pub async fn start(binary: &str, options: &GatewayOptions) -> Self {
        let dir = std::env::temp_dir().join(format!("portcullis-test-{}-{}", std::process::id(), options.port));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("portcullis.toml");
        std::fs::write(&config, options.toml()).unwrap();
        let log = dir.join("gateway.log");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .env("PORTCULLIS_LOG", "info,portcullis=debug")
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start portcullis");
        let gateway = Self { port: options.port, child: Some(child), log, dir };
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if http.get(format!("{}/healthz", gateway.url())).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "gateway did not come up; log:\n{}", gateway.log_text());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        gateway
    }

    /// Waits until `/readyz` says ready (OP discovered, store answering).
    pub async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !http.get(format!("{}/readyz", self.url())).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(tokio::time::Instant::now() < deadline, "gateway never became ready; log:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything the gateway logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asks the process to stop (SIGTERM), as an orchestrator would: it drains and exits.
    pub fn terminate(&self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
            assert!(status.success());
        }
    }

    /// The generated config file: a test rewrites it, then sends SIGHUP.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("portcullis.toml")
    }

    /// Sends `signal` (as `kill` spells it: `-HUP`, `-TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
            assert!(status.success(), "kill {signal} {pid}");
        }
    }

    /// Waits for the process to exit, at most `timeout`; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        tokio::time::timeout(timeout, child.wait()).await.ok().map(|status| status.expect("wait for portcullis"))
    }

    /// Waits until the log holds `needle` `count` times or more, at most `timeout`.
    pub async fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.log_text().matches(needle).count() < count {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        true
    }

    /// Kills the process at once (SIGKILL), as a crash or an OOM kill would.
    pub fn kill(&self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
            assert!(status.success());
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
