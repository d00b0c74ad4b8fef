//! What the OP is started with. Knobs that matter while it runs (TTLs, rotation, latency,
//! failures) can also be changed later through `POST /control`.

use std::{net::SocketAddr, time::Duration};

use url::Url;

use crate::DevOpError;

/// How to run the development OP.
#[derive(Clone, Debug)]
pub struct DevOpConfig {
    /// Where to listen; default `127.0.0.1:9000`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Off by default: [`start`](crate::start) refuses a non-loopback address, because anyone who
    /// can reach this OP can log in with the configured passwords.
    pub allow_non_loopback: bool,
    /// The issuer URL announced in discovery and in every token; default `http://<bound addr>`.
    /// A path is kept (for a path-stripping proxy in front); the OP itself serves at `/`.
    pub issuer: Option<Url>,
    /// Registered clients (relying parties).
    pub clients: Vec<ClientConfig>,
    /// Users who can sign in; default one user `demo` / `demo`.
    pub users: Vec<User>,
    /// Lifetime of access (and ID) tokens; default 5 minutes.
    pub access_token_ttl: Duration,
    /// Lifetime of refresh tokens; default 24 hours.
    pub refresh_token_ttl: Duration,
    /// Rotate refresh tokens on every use, with reuse detection; default on.
    pub rotate_refresh_tokens: bool,
    /// Added to every token-endpoint request; default none.
    pub token_latency: Duration,
    /// Injected failures of refresh-token requests; default none.
    pub failures: FailureRates,
}

impl Default for DevOpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            allow_non_loopback: false,
            issuer: None,
            clients: vec![ClientConfig::default()],
            users: vec![User::demo()],
            access_token_ttl: Duration::from_secs(300),
            refresh_token_ttl: Duration::from_secs(24 * 3600),
            rotate_refresh_tokens: true,
            token_latency: Duration::ZERO,
            failures: FailureRates::default(),
        }
    }
}

impl DevOpConfig {
    /// Checks what cannot be fixed at runtime; the message names the field.
    pub(crate) fn validate(&self) -> Result<(), DevOpError> {
        let invalid = |msg: String| Err(DevOpError::InvalidConfig(msg));
        if self.clients.is_empty() {
            return invalid("clients: at least one client must be registered".into());
        }
        for (i, client) in self.clients.iter().enumerate() {
            if client.client_id.is_empty() || client.client_secret.is_empty() {
                return invalid(format!("clients[{i}]: client_id and client_secret must not be empty"));
            }
            if self.clients[..i].iter().any(|c| c.client_id == client.client_id) {
                return invalid(format!("clients[{i}]: client_id {:?} is registered twice", client.client_id));
            }
            let uris = client.redirect_uris.iter().chain(&client.post_logout_redirect_uris).chain(&client.backchannel_logout_uri);
            for uri in uris {
                // Registered URIs must be absolute and carry no fragment (RFC 6749 §3.1.2).
                match Url::parse(uri) {
                    Ok(url) if url.fragment().is_none() && url.has_host() => {}
                    _ => return invalid(format!("clients[{i}]: {uri:?} is not an absolute URL without fragment")),
                }
            }
        }
        if self.users.is_empty() {
            return invalid("users: at least one user is needed".into());
        }
        for (i, user) in self.users.iter().enumerate() {
            if user.username.is_empty() {
                return invalid(format!("users[{i}]: empty username"));
            }
            if self.users[..i].iter().any(|u| u.username == user.username) {
                return invalid(format!("users[{i}]: username {:?} is configured twice", user.username));
            }
        }
        if self.access_token_ttl < Duration::from_secs(1) || self.refresh_token_ttl < Duration::from_secs(1) {
            return invalid("access_token_ttl and refresh_token_ttl must be at least 1 s (expires_in is whole seconds)".into());
        }
        self.failures.validate().map_err(DevOpError::InvalidConfig)
    }
}

/// A registered relying party. Redirect URIs are compared as exact strings (RFC 6749 §3.1.2.3),
/// so register them the way the client sends them (a `url::Url` serializes `http://host:8080`
/// as `http://host:8080/`).
#[derive(Clone)]
pub struct ClientConfig {
    /// The client identifier.
    pub client_id: String,
    /// The client secret (`client_secret_basic` or `client_secret_post`).
    pub client_secret: String,
    /// Where authorization responses may be sent.
    pub redirect_uris: Vec<String>,
    /// Where the browser may be sent after `/end_session`.
    pub post_logout_redirect_uris: Vec<String>,
    /// Receives a `logout_token` when a browser session that logged into this client ends.
    pub backchannel_logout_uri: Option<String>,
}

/// The client that `examples/portcullis.toml` expects: `gw` / `gw-secret` on `127.0.0.1:8080`.
impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            client_id: "gw".into(),
            client_secret: "gw-secret".into(),
            redirect_uris: vec!["http://127.0.0.1:8080/oauth2/callback".into()],
            post_logout_redirect_uris: vec!["http://127.0.0.1:8080/".into()],
            backchannel_logout_uri: None,
        }
    }
}

// The secret stays out of logs and panic messages.
impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("client_id", &self.client_id)
            .field("redirect_uris", &self.redirect_uris)
            .field("post_logout_redirect_uris", &self.post_logout_redirect_uris)
            .field("backchannel_logout_uri", &self.backchannel_logout_uri)
            .finish_non_exhaustive()
    }
}

/// Someone who can sign in. `username` becomes the `sub` claim.
#[derive(Clone)]
pub struct User {
    /// Login name and subject identifier.
    pub username: String,
    /// Password, compared in constant time.
    pub password: String,
    /// The `name` claim.
    pub name: String,
    /// The `email` claim.
    pub email: String,
    /// The `groups` claim.
    pub groups: Vec<String>,
}

impl User {
    /// The default user: `demo` / `demo`.
    pub(crate) fn demo() -> Self {
        Self {
            username: "demo".into(),
            password: "demo".into(),
            name: "Demo User".into(),
            email: "demo@example.test".into(),
            groups: vec!["demo".into()],
        }
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("name", &self.name)
            .field("email", &self.email)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// Probabilities, per refresh-token request, of an injected failure. They are disjoint: one
/// draw in `[0, 1)` picks server error, then timeout, then `invalid_grant`, so rates that add up
/// to more than 1 starve the later ones. An injected failure never touches the refresh token.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailureRates {
    /// `500 {"error":"server_error"}`.
    pub server_error: f64,
    /// No answer: the request is held for a minute (or until shutdown), as a hung OP would.
    pub timeout: f64,
    /// `400 {"error":"invalid_grant"}`, without consuming the token.
    pub invalid_grant: f64,
}

impl FailureRates {
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, rate) in [("server_error", self.server_error), ("timeout", self.timeout), ("invalid_grant", self.invalid_grant)] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("failures.{name}: {rate} is not a probability between 0 and 1"));
            }
        }
        Ok(())
    }
}
