//! The demo's configuration of its three parts, built in code: no files, random secrets,
//! everything on 127.0.0.1.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use portcullis::config::{Config, RouteConfig, StoreKind, Unauthenticated};
use portcullis_dev_op::{ClientConfig, DevOpConfig};
use url::Url;

use super::args::Store;

/// The client id the demo registers at its development OP.
pub(crate) const CLIENT_ID: &str = "portcullis-demo";

/// Route prefix of the OP's grant counters. Public (`allow`) so the page can read them
/// without its session cookie: a request with the cookie after expiry would itself refresh
/// the token, and the "before" count would already include the grant it is meant to precede.
pub(crate) const OP_STATS_PATH: &str = "/api/op-stats";

/// 32 random bytes, hex: the client secret and the session key (which needs ≥ 32 bytes).
pub(crate) fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The development OP: the demo client, the default user (demo / demo), short access tokens,
/// refresh tokens rotated on every use with reuse detection (as strict OPs do, so a race
/// in the gateway would show as a revoked grant, not pass unnoticed).
pub(crate) fn dev_op(public_url: &Url, client_secret: &str, token_ttl: Duration) -> DevOpConfig {
    let origin = public_url.as_str().trim_end_matches('/');
    DevOpConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        clients: vec![ClientConfig {
            client_id: CLIENT_ID.into(),
            client_secret: client_secret.into(),
            redirect_uris: vec![format!("{origin}/oauth2/callback")],
            post_logout_redirect_uris: vec![format!("{origin}/")],
            backchannel_logout_uri: None,
        }],
        access_token_ttl: token_ttl,
        rotate_refresh_tokens: true,
        ..DevOpConfig::default()
    }
}

/// The gateway: `/` and `/api` need a login (pages are redirected to the OP, API calls get
/// 401 JSON), the OP counters are public, `[refresh]` keeps its defaults.
///
/// Built with the library's `Config::builder`, so every key left out gets the library's own
/// default, and validated like a file would be. Unlike `Config::from_toml_str`, no
/// `PORTCULLIS_*` environment variable can change the demo behind the user's back.
pub(crate) fn gateway(public_url: &Url, issuer: &Url, client_secret: &str, app: &Url, store: &Store) -> anyhow::Result<Config> {
    let mut builder = Config::builder(public_url.clone(), issuer.clone(), CLIENT_ID)
        .client_secret(client_secret)
        .session_secret(random_secret())
        .route(RouteConfig::new("/", app.clone(), Unauthenticated::Login))
        .route(RouteConfig::new("/api", app.clone(), Unauthenticated::Login))
        .route(RouteConfig::new(OP_STATS_PATH, app.clone(), Unauthenticated::Allow));
    if let Store::Redis(url) = store {
        builder = builder.store(StoreKind::Redis).redis_url(url);
    }
    builder.build().context("the demo's gateway configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_config_is_valid_for_both_stores() {
        let public: Url = "http://127.0.0.1:8080".parse().unwrap();
        let issuer: Url = "http://127.0.0.1:9000".parse().unwrap();
        let app: Url = "http://127.0.0.1:9100".parse().unwrap();
        let memory = gateway(&public, &issuer, "s", &app, &Store::Memory).unwrap();
        assert_eq!(memory.session.store, StoreKind::Memory);
        assert_eq!(memory.redirect_uri().as_str(), "http://127.0.0.1:8080/oauth2/callback");
        assert_eq!(
            memory.routes.iter().map(|r| r.unauthenticated).collect::<Vec<_>>(),
            [Unauthenticated::Login, Unauthenticated::Login, Unauthenticated::Allow]
        );
        let redis = gateway(&public, &issuer, "s", &app, &Store::Redis("redis://127.0.0.1:1".into())).unwrap();
        assert_eq!((redis.session.store, redis.session.redis_url.as_deref()), (StoreKind::Redis, Some("redis://127.0.0.1:1")));
        assert_ne!(memory.session.secret, redis.session.secret);
    }

    #[test]
    fn dev_op_registers_the_gateway() {
        let op = dev_op(&"http://127.0.0.1:8080/".parse().unwrap(), "secret", Duration::from_secs(3));
        assert_eq!(op.clients[0].redirect_uris, ["http://127.0.0.1:8080/oauth2/callback"]);
        assert_eq!(op.clients[0].post_logout_redirect_uris, ["http://127.0.0.1:8080/"]);
        assert!(op.rotate_refresh_tokens);
        assert!(op.listen.ip().is_loopback());
    }
}
