//! The `portcullis dev-op` command line. The gateway binary mounts [`DevOpArgs`] as a
//! subcommand; defaults match `examples/portcullis.toml` (client `gw` / `gw-secret`, gateway on
//! `127.0.0.1:8080`), so the two run together without flags.

use std::{net::SocketAddr, time::Duration};

use url::Url;

use crate::{ClientConfig, DevOpConfig, FailureRates, User};

/// Run a development OpenID Provider (in memory, loopback only, for testing relying parties).
#[derive(clap::Args, Debug, Clone)]
pub struct DevOpArgs {
    /// Address to listen on. Non-loopback addresses need --allow-non-loopback.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Listen on a non-loopback address anyway. Tokens of a development OP are not secure.
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// Issuer URL to announce [default: http://LISTEN_ADDRESS].
    #[arg(long)]
    pub issuer: Option<Url>,
    /// The registered client's id.
    #[arg(long, default_value = "gw")]
    pub client_id: String,
    /// The registered client's secret.
    #[arg(long, default_value = "gw-secret")]
    pub client_secret: String,
    /// A redirect URI of the client (repeatable; compared as exact strings).
    #[arg(long = "redirect-uri", value_name = "URI", default_value = "http://127.0.0.1:8080/oauth2/callback")]
    pub redirect_uris: Vec<String>,
    /// A post-logout redirect URI of the client (repeatable).
    #[arg(long = "post-logout-redirect-uri", value_name = "URI", default_value = "http://127.0.0.1:8080/")]
    pub post_logout_redirect_uris: Vec<String>,
    /// Where to POST a logout token when a session that logged into the client ends.
    #[arg(long, value_name = "URI")]
    pub backchannel_logout_uri: Option<String>,
    /// A user as NAME:PASSWORD (repeatable) [default: demo:demo].
    #[arg(long = "user", value_name = "NAME:PASSWORD", value_parser = parse_user)]
    pub users: Vec<User>,
    /// Access and ID token lifetime, e.g. 30s.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,
    /// Refresh token lifetime.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub refresh_token_ttl: Duration,
    /// Keep refresh tokens valid across uses instead of rotating them (no reuse detection).
    #[arg(long)]
    pub no_rotation: bool,
    /// Delay added to every token-endpoint request, e.g. 200ms.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub token_latency: Duration,
    /// Probability of answering a refresh with 500 server_error.
    #[arg(long = "fail-5xx", value_name = "RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_5xx: f64,
    /// Probability of holding a refresh request unanswered for a minute.
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_timeout: f64,
    /// Probability of answering a refresh with invalid_grant (the token stays valid).
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_invalid_grant: f64,
}

impl DevOpArgs {
    /// The configuration these arguments describe.
    pub fn into_config(self) -> DevOpConfig {
        let defaults = DevOpConfig::default();
        DevOpConfig {
            listen: self.listen,
            allow_non_loopback: self.allow_non_loopback,
            issuer: self.issuer,
            clients: vec![ClientConfig {
                client_id: self.client_id,
                client_secret: self.client_secret,
                redirect_uris: self.redirect_uris,
                post_logout_redirect_uris: self.post_logout_redirect_uris,
                backchannel_logout_uri: self.backchannel_logout_uri,
            }],
            users: if self.users.is_empty() { defaults.users } else { self.users },
            access_token_ttl: self.access_token_ttl,
            refresh_token_ttl: self.refresh_token_ttl,
            rotate_refresh_tokens: !self.no_rotation,
            token_latency: self.token_latency,
            failures: FailureRates { server_error: self.fail_5xx, timeout: self.fail_timeout, invalid_grant: self.fail_invalid_grant },
        }
    }
}

/// `alice:secret` → user `alice` (name `alice`, email `alice@example.test`, no groups).
fn parse_user(text: &str) -> Result<User, String> {
    let (username, password) = text.split_once(':').ok_or("expected NAME:PASSWORD")?;
    if username.is_empty() || password.is_empty() {
        return Err("expected NAME:PASSWORD, both non-empty".into());
    }
    Ok(User {
        username: username.into(),
        password: password.into(),
        name: username.into(),
        email: format!("{username}@example.test"),
        groups: Vec::new(),
    })
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 30s, 200ms, 5m, 24h)"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err("expected a probability between 0 and 1, e.g. 0.05".into()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DevOpArgs,
    }

    fn parse(args: &[&str]) -> Result<DevOpConfig, clap::Error> {
        Cli::try_parse_from(std::iter::once("dev-op").chain(args.iter().copied())).map(|c| c.args.into_config())
    }

    #[test]
    fn defaults_match_the_example_gateway_config() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.clients[0].client_id, "gw");
        assert_eq!(config.clients[0].redirect_uris, ["http://127.0.0.1:8080/oauth2/callback"]);
        assert_eq!(config.users[0].username, "demo");
        assert!(config.rotate_refresh_tokens);
        assert_eq!(config.access_token_ttl, Duration::from_secs(300));
        assert_eq!(config.failures, FailureRates::default());
    }

    #[test]
    fn every_knob_parses() {
        let config = parse(&[
            "--listen=127.0.0.1:0",
            "--redirect-uri=http://a/cb",
            "--redirect-uri=http://b/cb",
            "--user=alice:pw",
            "--user=bob:pw2",
            "--access-token-ttl=30s",
            "--refresh-token-ttl=1h",
            "--no-rotation",
            "--token-latency=200ms",
            "--fail-5xx=0.1",
            "--fail-timeout=0.05",
            "--fail-invalid-grant=0.01",
            "--backchannel-logout-uri=http://a/bc",
        ])
        .unwrap();
        assert_eq!(config.clients[0].redirect_uris, ["http://a/cb", "http://b/cb"]);
        assert_eq!(config.users.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
        assert_eq!(config.access_token_ttl, Duration::from_secs(30));
        assert_eq!(config.token_latency, Duration::from_millis(200));
        assert!(!config.rotate_refresh_tokens);
        assert_eq!(config.failures, FailureRates { server_error: 0.1, timeout: 0.05, invalid_grant: 0.01 });
        assert_eq!(config.clients[0].backchannel_logout_uri.as_deref(), Some("http://a/bc"));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--fail-5xx=1.5"]).is_err());
        assert!(parse(&["--user=nopassword"]).is_err());
        assert!(parse(&["--access-token-ttl=soon"]).is_err());
    }
}
