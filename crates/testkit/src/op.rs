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

/// The API client registered at the test OP: only the `client_credentials` grant.
pub const API_CLIENT_ID: &str = "api-client";
/// Its secret.
pub const API_CLIENT_SECRET: &str = "api-client-secret";
/// The resource indicator (RFC 8707) for which the OP issues JWT access tokens
/// (`typ: at+jwt`, `aud` = this); tokens requested without it are opaque.
pub const API_RESOURCE: &str = "http://api.test";

/// A fixed PKCE pair for [`Op::id_token`] (S256 of the verifier, precomputed).
const PKCE_VERIFIER: &str = "portcullis-testkit-pkce-verifier-0123456789abcdef";
const PKCE_CHALLENGE: &str = "sIUIOe2oEa7XI0I-CBYA0l5u8sWX-alEg2weCrqwmeA";

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

// API clients (issue 9): tokens from the client_credentials grant, and an ID token to present
// where an access token is expected.
impl Op {
    /// An access token for the API client (`client_credentials`): a JWT for `resource`
    /// (pass [`API_RESOURCE`]), opaque without one. `scope` is space-separated (`api:read`).
    pub async fn api_token(&self, resource: Option<&str>, scope: &str) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        let r = self
            .http
            .post(format!("{}/token", self.direct()))
            .basic_auth(API_CLIENT_ID, Some(API_CLIENT_SECRET))
            .form(&form)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert!(status.is_success(), "client_credentials grant refused: {body}");
        body["access_token"].as_str().expect("access_token").to_string()
    }

    /// Revokes an API client's token (RFC 7009).
    pub async fn revoke_api_token(&self, token: &str) {
        let r = self
            .http
            .post(format!("{}/token/revocation", self.direct()))
            .basic_auth(API_CLIENT_ID, Some(API_CLIENT_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "revocation refused: {}", r.status());
    }

    /// A real ID token for `user`, issued to the gateway's client: a code flow straight at the
    /// OP (login form, PKCE), stopped before the browser reaches `redirect_uri` (the
    /// gateway's callback, which is never called), and the code exchanged here.
    pub async fn id_token(&self, user: &str, redirect_uri: &str) -> String {
        let mut auth: url::Url = format!("{}/auth", self.issuer()).parse().unwrap();
        auth.query_pairs_mut()
            .append_pair("client_id", CLIENT_ID)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid email")
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", "testkit-state")
            .append_pair("nonce", "testkit-nonce")
            .append_pair("code_challenge", PKCE_CHALLENGE)
            .append_pair("code_challenge_method", "S256");
        let browser = crate::Browser::new();
        let hops = browser.login_until(auth.as_str(), user, &|l| l.as_str().starts_with(redirect_uri)).await;
        let callback = hops.last().and_then(|h| h.location.clone()).expect("the OP redirects to the callback");
        let code = callback.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).expect("a code");
        let body: Value = self
            .http
            .post(format!("{}/token", self.direct()))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", PKCE_VERIFIER),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["id_token"].as_str().unwrap_or_else(|| panic!("no id_token: {body}")).to_string()
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
