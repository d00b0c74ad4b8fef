//! [`Config`] in code, for library users: no TOML, no JSON round trip, no environment
//! variables read behind the caller's back, and the same validation as a file gets.
//!
//! ```no_run
//! use portcullis::config::{Config, RouteConfig, StoreKind, Unauthenticated};
//! # fn main() -> Result<(), portcullis::config::ConfigError> {
//! let config = Config::builder(
//!     "https://app.example.com".parse().unwrap(),
//!     "https://login.example.com".parse().unwrap(),
//!     "my-app",
//! )
//! .client_secret(std::env::var("CLIENT_SECRET").unwrap_or_default())
//! .session_secret(std::env::var("SESSION_SECRET").unwrap_or_default())
//! .store(StoreKind::Memory)
//! .route(RouteConfig::new("/", "http://127.0.0.1:3000".parse().unwrap(), Unauthenticated::Login))
//! .build()?;
//! # Ok(()) }
//! ```

use std::{net::SocketAddr, time::Duration};

use url::Url;

use super::*;

/// Builds a [`Config`]; start with [`Config::builder`]. Every key not set keeps the default a
/// file without it would get.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl Config {
    /// A configuration for the gateway (or the library's layer) at `public_url`, logging in at
    /// the OP `issuer` as `client_id`. [`ConfigBuilder::build`] validates it.
    pub fn builder(public_url: Url, issuer: Url, client_id: impl Into<String>) -> ConfigBuilder {
        ConfigBuilder {
            config: Config {
                listen: default_listen(),
                public_url,
                oidc: OidcConfig {
                    issuer,
                    client_id: client_id.into(),
                    client_secret: None,
                    client_secret_file: None,
                    auth_method: ClientAuthMethod::default(),
                    scopes: default_scopes(),
                    user_claim: default_user_claim(),
                    id_token_algorithms: default_algorithms(),
                    clock_skew: default_clock_skew(),
                    http_timeout: default_http_timeout(),
                    extra_auth_params: BTreeMap::new(),
                    post_logout_redirect_url: None,
                    allow_unverified_email: false,
                    jwks_refresh_interval: default_jwks_refresh_interval(),
                    groups_claim: default_groups_claim(),
                    discovery_refresh_interval: default_discovery_refresh_interval(),
                },
                session: SessionConfig {
                    store: StoreKind::default(),
                    redis_url: None,
                    redis_ca_file: None,
                    redis_client_cert_file: None,
                    redis_client_key_file: None,
                    redis_sentinel_username: None,
                    redis_sentinel_password: None,
                    secret: None,
                    secret_file: None,
                    previous_secrets: Vec::new(),
                    cookie_name: default_cookie_name(),
                    idle_timeout: default_idle_timeout(),
                    absolute_timeout: default_absolute_timeout(),
                    login_timeout: default_login_timeout(),
                    store_timeout: default_store_timeout(),
                    read_cache: ReadCacheConfig::default(),
                },
                refresh: RefreshConfig::default(),
                routes: Vec::new(),
                trusted_proxies: Vec::new(),
                server: ServerConfig::default(),
                authorization: AuthorizationRules::default(),
                bearer: BearerConfig::default(),
                log: LogConfig::default(),
                metrics: Default::default(),
            },
        }
    }
}

impl ConfigBuilder {
    /// The client secret at the OP (required).
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.config.oidc.client_secret = Some(secret.into());
        self
    }

    /// The session key (required): random key material, e.g. from `portcullis generate-secret`
    /// or [`generate_secret`]; example values and low-entropy text are refused.
    pub fn session_secret(mut self, secret: impl Into<String>) -> Self {
        self.config.session.secret = Some(secret.into());
        self
    }

    /// Where sessions live (memory by default).
    pub fn store(mut self, store: StoreKind) -> Self {
        self.config.session.store = store;
        self
    }

    /// The Redis URL, with `store(StoreKind::Redis)`.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.config.session.redis_url = Some(url.into());
        self
    }

    /// Where the gateway listens (unused by the library's layer).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// Adds a route (gateway); longest prefix wins.
    pub fn route(mut self, route: RouteConfig) -> Self {
        self.config.routes.push(route);
        self
    }

    /// Scopes requested at login (`openid` required).
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.config.oidc.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The OP's access-token lifetime rules: [`RefreshConfig`].
    pub fn refresh(mut self, refresh: RefreshConfig) -> Self {
        self.config.refresh = refresh;
        self
    }

    /// Global authorization rules.
    pub fn authorization(mut self, rules: AuthorizationRules) -> Self {
        self.config.authorization = rules;
        self
    }

    /// Bearer-token settings shared by every route.
    pub fn bearer(mut self, bearer: BearerConfig) -> Self {
        self.config.bearer = bearer;
        self
    }

    /// Clock skew tolerated on token timestamps.
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.config.oidc.clock_skew = skew;
        self
    }

    /// Any other OP key (`auth_method`, `user_claim`, `groups_claim`, `extra_auth_params`, …).
    pub fn oidc(mut self, edit: impl FnOnce(&mut OidcConfig)) -> Self {
        edit(&mut self.config.oidc);
        self
    }

    /// Any other session key (`cookie_name`, timeouts, `previous_secrets`, …).
    pub fn session(mut self, edit: impl FnOnce(&mut SessionConfig)) -> Self {
        edit(&mut self.config.session);
        self
    }

    /// Any other key of the whole configuration (`server`, `trusted_proxies`, …).
    pub fn edit(mut self, edit: impl FnOnce(&mut Config)) -> Self {
        edit(&mut self.config);
        self
    }

    /// The configuration, validated exactly as [`Config::load`] validates a file.
    pub fn build(self) -> Result<Config, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ConfigBuilder {
        Config::builder("http://127.0.0.1:8080".parse().unwrap(), "http://127.0.0.1:9000".parse().unwrap(), "app")
            .client_secret("s")
            .session_secret(generate_secret())
    }

    fn upstream() -> Url {
        "http://127.0.0.1:3000".parse().unwrap()
    }

    #[test]
    fn builds_what_a_minimal_file_gives() {
        let built = base().route(RouteConfig::new("/", upstream(), Unauthenticated::Login)).build().unwrap();
        let secret = built.session.secret.clone().unwrap();
        let text = format!(
            "public_url = \"http://127.0.0.1:8080\"\n[oidc]\nissuer = \"http://127.0.0.1:9000\"\nclient_id = \"app\"\nclient_secret = \"s\"\n\
             [session]\nsecret = \"{secret}\"\n[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:3000\"\n"
        );
        let parsed: Config = figment::Figment::from(Toml::string(&text)).extract().unwrap();
        // Secrets are not serialized; everything else must be the same.
        assert_eq!(serde_json::to_value(&built).unwrap(), serde_json::to_value(&parsed).unwrap());
    }

    #[test]
    fn validation_runs() {
        // (what, builder, key named in the error)
        let table: Vec<(&str, ConfigBuilder, &str)> = vec![
            ("no client secret", base().edit(|c| c.oidc.client_secret = None), "oidc.client_secret"),
            ("weak session secret", base().session_secret("changeme"), "session.secret"),
            ("redis without url", base().store(StoreKind::Redis), "session.redis_url"),
            ("sentinel url without service", base().store(StoreKind::Redis).redis_url("redis+sentinel://s1:26379"), "session.redis_url"),
            (
                "redis CA file without TLS",
                base()
                    .store(StoreKind::Redis)
                    .redis_url("redis+cluster://n1:7000")
                    .edit(|c| c.session.redis_ca_file = Some("ca.pem".into())),
                "session.redis_ca_file",
            ),
            (
                "redis client certificate without its key",
                base()
                    .store(StoreKind::Redis)
                    .redis_url("rediss://n1:6380")
                    .edit(|c| c.session.redis_client_cert_file = Some("client.pem".into())),
                "session.redis_client_key_file",
            ),
            (
                "redis client key without its certificate",
                base()
                    .store(StoreKind::Redis)
                    .redis_url("rediss://n1:6380")
                    .edit(|c| c.session.redis_client_key_file = Some("client.key".into())),
                "session.redis_client_cert_file",
            ),
            (
                "redis client certificate without TLS",
                base().store(StoreKind::Redis).redis_url("redis://n1:6379").edit(|c| {
                    c.session.redis_client_cert_file = Some("client.pem".into());
                    c.session.redis_client_key_file = Some("client.key".into());
                }),
                "session.redis_client_cert_file",
            ),
            (
                "jwt without audiences",
                base().route(RouteConfig { bearer: BearerMode::Jwt, ..RouteConfig::new("/api", upstream(), Unauthenticated::Deny) }),
                "routes[0].audiences",
            ),
            (
                "scopes on a route without bearer tokens",
                base().route(RouteConfig {
                    required_scopes: vec!["api:read".into()],
                    ..RouteConfig::new("/api", upstream(), Unauthenticated::Deny)
                }),
                "routes[0].bearer",
            ),
            (
                "a scope that would break the challenge header",
                base().route(RouteConfig {
                    bearer: BearerMode::Introspect,
                    required_scopes: vec!["a\"b".into()],
                    ..RouteConfig::new("/api", upstream(), Unauthenticated::Deny)
                }),
                "routes[0].required_scopes",
            ),
        ];
        for (what, builder, key) in table {
            match builder.build() {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        let ok = base()
            .route(RouteConfig {
                bearer: BearerMode::Jwt,
                audiences: vec!["http://api.test".into()],
                required_scopes: vec!["api:read".into()],
                ..RouteConfig::new("/api", upstream(), Unauthenticated::Deny)
            })
            .build();
        assert!(ok.is_ok(), "{ok:?}");
    }
}
