//! The real OpenID Provider for tests: `oidc-provider` from npm, via `tests/op/provider.mjs`.

use std::time::Duration;

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::{
    Forwarder,
    process::{ensure_test_deps, free_port, repo_root},
};

/// How the OP is set up.
#[derive(Debug, Clone)]
pub struct OpOptions {
    /// Access-token lifetime in seconds.
    pub access_token_ttl: u64,
    /// Rotate refresh tokens on every use (replay then revokes the grant).
    pub rotate_refresh_token: bool,
    /// Delay of every token-endpoint request, in milliseconds.
    pub token_delay_ms: u64,
    /// Port to listen on; a free one when `None`.
    pub port: Option<u16>,
    /// Put a [`Forwarder`] in front: the issuer is the forwarder's address, and
    /// [`Op::set_reachable`] switches it.
    pub behind_forwarder: bool,
}

impl Default for OpOptions {
    fn default() -> Self {
        Self { access_token_ttl: 5, rotate_refresh_token: true, token_delay_ms: 0, port: None, behind_forwarder: false }
    }
}

/// Client registration the tests use.
pub const CLIENT_ID: &str = "gw";
/// Its secret.
pub const CLIENT_SECRET: &str = "gw-secret";

/// A running `oidc-provider`, killed when dropped.
pub struct Op {
    port: u16,
    _child: Child,
    http: reqwest::Client,
    forwarder: Option<Forwarder>,
}

impl Op {
    /// Starts the OP with the gateways at `gateway_urls` registered as redirect targets.
    pub async fn start(options: OpOptions, gateway_urls: &[String]) -> Self {
        ensure_test_deps();
        let port = options.port.unwrap_or_else(free_port);
        let forwarder =
            if options.behind_forwarder { Some(Forwarder::start(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await) } else { None };
        let issuer = match &forwarder {
            Some(f) => format!("http://127.0.0.1:{}", f.port()),
            None => format!("http://127.0.0.1:{port}"),
        };
        let redirects: Vec<String> = gateway_urls.iter().map(|g| format!("{g}/oauth2/callback")).collect();
        let root = repo_root();
        let mut child = Command::new("node")
            .arg(root.join("tests/op/provider.mjs"))
            .env("PORT", port.to_string())
            .env("ISSUER", &issuer)
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URIS", redirects.join(","))
            .env("POST_LOGOUT_REDIRECT_URIS", gateway_urls.iter().map(|g| format!("{g}/")).collect::<Vec<_>>().join(","))
            .env("ACCESS_TOKEN_TTL", options.access_token_ttl.to_string())
            .env("ROTATE_REFRESH_TOKEN", options.rotate_refresh_token.to_string())
            .env("TOKEN_DELAY_MS", options.token_delay_ms.to_string())
            .env("NODE_NO_WARNINGS", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start node tests/op/provider.mjs");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("READY ") {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(ready, Ok(true)), "the OP did not print READY");
        // Keep draining stdout so the OP never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { port, _child: child, http: reqwest::Client::new(), forwarder }
    }

    /// The issuer URL (the forwarder's address when there is one).
    pub fn issuer(&self) -> String {
        match &self.forwarder {
            Some(f) => format!("http://127.0.0.1:{}", f.port()),
            None => self.direct(),
        }
    }

    /// The OP's own address, bypassing any forwarder (for test control calls and for the
    /// upstream's introspection, which must work while the gateway cannot reach the OP).
    pub fn direct(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Makes the OP reachable or not (connection refused); needs `behind_forwarder`.
    pub async fn set_reachable(&self, reachable: bool) {
        let forwarder = self.forwarder.as_ref().expect("OpOptions::behind_forwarder");
        if reachable { forwarder.up().await } else { forwarder.down() }
    }

    /// Freezes the OP process (SIGSTOP): connections are still accepted by the kernel and
    /// requests queue in its sockets, but nothing is answered until [`Op::thaw`]. Calls to the
    /// OP's own test endpoints hang meanwhile: don't.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen OP (SIGCONT): it works through the queued requests.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self._child.id().expect("the OP is running");
        let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The OP's counters (`grants`, `grant_outcomes`, `introspections`, `revocations`).
    pub async fn stats(&self) -> Value {
        self.http.get(format!("{}/__test/stats", self.direct())).send().await.unwrap().json().await.unwrap()
    }

    /// Number of `refresh_token` grants the token endpoint received.
    pub async fn refresh_grants(&self) -> u64 {
        self.stats().await["grants"]["refresh_token"].as_u64().unwrap_or(0)
    }

    /// Changes behaviour at runtime (`rotate_refresh_token`, `token_delay_ms`, `token_fail`).
    pub async fn configure(&self, config: Value) {
        let r = self.http.post(format!("{}/__test/config", self.direct())).json(&config).send().await.unwrap();
        assert!(r.status().is_success(), "OP refused config {config}");
    }

    /// RFC 7662 introspection of `token` with the test client's credentials: is it active?
    pub async fn introspect(&self, token: &str) -> bool {
        introspect(&self.http, &format!("{}/token/introspection", self.direct()), token).await
    }
}

/// RFC 7662 introspection at `endpoint` with the test client's credentials: is `token` active?
pub(crate) async fn introspect(http: &reqwest::Client, endpoint: &str, token: &str) -> bool {
    let body: Value = http
        .post(endpoint)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["active"].as_bool().unwrap_or(false)
}
