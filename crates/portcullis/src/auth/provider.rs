//! The OP as the rest of the gateway sees it: maybe not discovered yet.

use std::{sync::Arc, time::Duration};

use tokio::sync::OnceCell;
use url::Url;

use crate::{config::OidcConfig, oidc::OidcClient};

/// Shared handle to the OP client, filled once discovery succeeds. Until then, requests with a
/// fresh session are served as usual; only logins and refreshes answer 503.
#[derive(Clone, Default)]
pub struct ProviderHandle(Arc<OnceCell<Arc<OidcClient>>>);

impl ProviderHandle {
    /// A handle that already holds a client.
    pub fn ready(client: OidcClient) -> Self {
        let cell = OnceCell::new_with(Some(Arc::new(client)));
        Self(Arc::new(cell))
    }

    /// The client, if discovery has succeeded.
    pub fn get(&self) -> Option<&Arc<OidcClient>> {
        self.0.get()
    }

    /// Runs discovery until it succeeds, backing off from 1 s to 30 s, logging every failure.
    /// The gateway starts listening at once: an OP that is down at boot must not take
    /// `/healthz` and already-logged-in users down with it.
    pub fn spawn_discovery(&self, config: OidcConfig, redirect_uri: Url, post_logout: Url) -> tokio::task::JoinHandle<()> {
        let cell = self.0.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            loop {
                match OidcClient::discover(&config, redirect_uri.clone(), post_logout.clone()).await {
                    Ok(client) => {
                        tracing::info!(issuer = %config.issuer, "OpenID Provider discovered");
                        let _ = cell.set(Arc::new(client));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(issuer = %config.issuer, error = %e, retry_in = ?delay, "OpenID Provider not reachable yet; logins wait for it");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        })
    }
}
