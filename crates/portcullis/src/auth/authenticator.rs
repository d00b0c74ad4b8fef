//! The Authenticator: from a request's headers to a live session, refreshing on the way.

use std::{sync::Arc, time::Duration};

use http::HeaderMap;
use url::Url;

use super::{
    CookieSettings, Failure, ProviderHandle, RequestKind,
    cookie_sessions::CookieSessions,
    login_state::LoginSealer,
    refresh::{RefreshError, Refresher, Timing},
    stats::{RefreshSnapshot, RefreshStats},
};
use crate::{
    bearer::{self, BearerError, BearerPolicy, BearerValidator},
    config::{BearerMode, Config, RefreshConfig, RouteConfig, StoreKind},
    metrics::Metrics,
    session::{CookieCodec, DeleteOutcome, Freshness, Identity, SessionKey, SessionRecord, SessionStore, StoreError, now_millis},
};

/// A request's live session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Store key (safe to log).
    pub key: SessionKey,
    /// The record, with tokens fresh enough to forward.
    pub record: Arc<SessionRecord>,
    /// `Set-Cookie` headers the response must carry: only with the cookie store, after a
    /// refresh re-sealed the session. Always empty with a server-side store (the cookie never
    /// changes there).
    pub set_cookies: Vec<http::HeaderValue>,
}

/// Why a request could not be authenticated. Never means "log out": see [`AuthError::failure`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The session store did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token needed refreshing and the refresh failed for a reason that may pass.
    #[error(transparent)]
    Refresh(RefreshError),
}

impl AuthError {
    /// The response for this error: always a 503, the session kept.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Store(_) => Failure::unavailable(
                "session_store_unavailable",
                "The session store is not answering. Your session is kept; please retry shortly.",
            ),
            Self::Refresh(RefreshError::Settling(_)) => Failure::unavailable(
                "identity_provider_unavailable",
                "The identity provider did not answer the last renewal of your access. Your session is kept; please retry shortly.",
            ),
            Self::Refresh(RefreshError::TimedOut(_)) => {
                Failure::unavailable("refresh_timeout", "Renewing your access took too long. Your session is kept; please retry shortly.")
            }
            Self::Refresh(_) => Failure::unavailable(
                "identity_provider_unavailable",
                "The identity provider is not answering, and your access needs renewing. Your session is kept; please retry shortly.",
            ),
        }
    }
}

/// Turns cookies into sessions; shared by the auth layer and the `/oauth2/*` endpoints.
#[derive(Clone)]
pub struct Authenticator(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    /// Server-side sessions, and the consumed-login markers in every mode.
    pub(crate) store: Arc<dyn SessionStore>,
    /// Set when sessions live in encrypted cookies instead of `store`.
    pub(crate) cookie_sessions: Option<CookieSessions>,
    pub(crate) codec: CookieCodec,
    /// Seals pending logins into the browser's login cookies (its own derived key).
    pub(crate) login_sealer: LoginSealer,
    pub(crate) cookies: CookieSettings,
    pub(crate) provider: ProviderHandle,
    pub(crate) refresher: Refresher,
    pub(crate) stats: Arc<RefreshStats>,
    pub(crate) public_url: Url,
    pub(crate) login_timeout: Duration,
    pub(crate) refresh: RefreshConfig,
    pub(crate) bearer: BearerValidator,
    /// `[authorization]`, replaceable by a reload (`reload.rs`).
    pub(crate) authorization: super::authorization::GlobalRules,
}

impl Authenticator {
    /// An authenticator over `store`, talking to the OP through `provider`. With
    /// `session.store = "cookie"`, sessions live in encrypted cookies and `store` only keeps
    /// pending logins.
    pub fn new(config: &Config, store: Arc<dyn SessionStore>, provider: ProviderHandle) -> Self {
        Self::with_metrics(config, store, provider, &Metrics::default())
    }

    /// [`Authenticator::new`], recording the refresh coordinator's metrics
    /// (`portcullis_refresh_*`) into `metrics`. Wrap `store` in an
    /// [`crate::session::InstrumentedStore`] for the store's.
    pub fn with_metrics(config: &Config, store: Arc<dyn SessionStore>, provider: ProviderHandle, metrics: &Metrics) -> Self {
        let secret = config.session.secret.as_deref().unwrap_or_default().as_bytes();
        let secrets = || std::iter::once(secret).chain(config.session.previous_secrets.iter().map(|s| s.as_bytes()));
        let stats: Arc<RefreshStats> = metrics.refresh.clone();
        let cookies = CookieSettings::new(&config.session.cookie_name, config.secure_cookies(), config.session.absolute_timeout);
        let cookie_sessions = (config.session.store == StoreKind::Cookie)
            .then(|| CookieSessions::new(config, cookies.clone(), provider.clone(), stats.clone()));
        Self(Arc::new(Inner {
            cookie_sessions,
            refresher: Refresher::new(
                store.clone(),
                provider.clone(),
                Timing {
                    max_wait: config.refresh.max_wait,
                    lease_ttl: config.refresh.lease_ttl,
                    poll_interval: config.refresh.poll_interval,
                    settle_after_unknown: config.refresh.settle_after_unknown.unwrap_or(config.oidc.http_timeout),
                    op_answer_timeout: config.refresh.op_answer_timeout,
                    clock_skew: config.oidc.clock_skew,
                },
                stats.clone(),
            ),
            store,
            codec: CookieCodec::with_secrets(secrets()),
            login_sealer: LoginSealer::new(secrets()),
            cookies,
            provider,
            stats,
            public_url: config.public_url.clone(),
            login_timeout: config.session.login_timeout,
            refresh: config.refresh.clone(),
            bearer: BearerValidator::new(config),
            authorization: config.authorization.clone().into(),
        }))
    }

    /// Cookie names and attributes.
    pub fn cookies(&self) -> &CookieSettings {
        &self.0.cookies
    }

    /// The session store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.0.store
    }

    /// The OP handle.
    pub fn provider(&self) -> &ProviderHandle {
        &self.0.provider
    }

    /// Refresh counters.
    pub fn refresh_stats(&self) -> RefreshSnapshot {
        self.0.stats.snapshot()
    }

    /// The request's session with a forwardable access token, `None` when there is no session
    /// (no cookie, a forged one, expired, or ended by the OP), or an error that must not end it.
    ///
    /// Hot path: one store read (perhaps from the read cache), no JWT parsing. A token inside the refresh leeway is refreshed
    /// in the background and the current one forwarded; an expired one waits for the refresh.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Session>, AuthError> {
        let inner = &self.0;
        if let Some(cookie_sessions) = &inner.cookie_sessions {
            return cookie_sessions.authenticate(headers).await.map_err(AuthError::Refresh);
        }
        let Some(value) = super::cookies::find(headers, &inner.cookies.session_name) else { return Ok(None) };
        let Some(key) = inner.codec.decode_key(value) else {
            tracing::info!("session cookie rejected: malformed or not signed by this gateway");
            return Ok(None);
        };
        let loaded = match inner.store.load_for_request_now(&key) {
            Some(loaded) => loaded,
            None => inner.store.load_for_request(&key).await,
        };
        let Some(record) = loaded? else { return Ok(None) };
        match record.tokens.freshness(now_millis(), inner.refresh.leeway_fraction, inner.refresh.leeway_max) {
            Freshness::Fresh => Ok(Some(Session { key, record, set_cookies: Vec::new() })),
            Freshness::DueSoon if record.tokens.refresh_token.is_some() => {
                inner.refresher.refresh_in_background(&key, record.clone());
                Ok(Some(Session { key, record, set_cookies: Vec::new() }))
            }
            Freshness::DueSoon => Ok(Some(Session { key, record, set_cookies: Vec::new() })),
            Freshness::Expired if record.tokens.refresh_token.is_none() => {
                // Nothing to refresh with: the session is over when its token is. Deleted only
                // at the version read: a newer version written meanwhile is not this copy's
                // to end. A failed delete changes nothing: the record expires by itself.
                match inner.store.delete_if_version(&key, record.version).await {
                    Ok(DeleteOutcome::Conflict) => match inner.store.load(&key).await? {
                        Some(newer) if newer.tokens.usable(now_millis()) => {
                            Ok(Some(Session { key, record: newer, set_cookies: Vec::new() }))
                        }
                        _ => Ok(None),
                    },
                    _ => Ok(None),
                }
            }
            Freshness::Expired => match inner.refresher.refresh(&key, record).await {
                Ok(record) => Ok(Some(Session { key, record, set_cookies: Vec::new() })),
                Err(RefreshError::SessionEnded) => Ok(None),
                Err(RefreshError::Store(e)) => Err(AuthError::Store(e)),
                Err(e) => Err(AuthError::Refresh(e)),
            },
        }
    }

    /// An API client's own bearer token, checked as `route` says (`bearer`, `audiences`,
    /// `required_scopes`): `Ok(None)` when the route does not take bearer tokens or the request
    /// carries none (no `Authorization: Bearer`); the identity from its claims when it is
    /// valid; else why not ([`BearerError::respond`] turns that into the 401, 403 or 503).
    ///
    /// For callers that established there is no session first: the auth layer (a session
    /// cookie wins over a bearer token) and forward-auth. The token itself is not returned:
    /// it is forwarded unchanged in the request's own `Authorization` header.
    pub async fn authenticate_bearer(&self, headers: &HeaderMap, route: &RouteConfig) -> Result<Option<Arc<Identity>>, BearerError> {
        self.authenticate_bearer_with(headers, &BearerPolicy::from(route)).await
    }

    /// [`Authenticator::authenticate_bearer`] with the policy given directly (library users
    /// without a route table).
    pub async fn authenticate_bearer_with(
        &self,
        headers: &HeaderMap,
        policy: &BearerPolicy<'_>,
    ) -> Result<Option<Arc<Identity>>, BearerError> {
        if policy.mode == BearerMode::Off {
            return Ok(None);
        }
        let Some(token) = bearer::bearer_token(headers)? else { return Ok(None) };
        match self.0.bearer.validate(self.0.provider.get(), token, policy).await {
            Ok(identity) => {
                tracing::debug!(token = %bearer::log_tag(token), user = %identity.user, mode = ?policy.mode, "bearer token accepted");
                Ok(Some(identity))
            }
            Err(e) => {
                match &e {
                    BearerError::Unavailable(why) => {
                        tracing::warn!(token = %bearer::log_tag(token), error = %why, "bearer token could not be checked")
                    }
                    e => tracing::info!(token = %bearer::log_tag(token), error = %e, "bearer token refused"),
                }
                Err(e)
            }
        }
    }

    /// The 401/302 for a request without a session, per `kind`. `return_to` is where the
    /// browser lands after logging in; `headers` are the request's (its login cookies).
    pub async fn login_required(&self, kind: RequestKind, return_to: &str, headers: &HeaderMap) -> axum::response::Response {
        match kind {
            RequestKind::Navigation => self.begin_login(return_to, headers).await,
            RequestKind::Api => Failure::unauthenticated(Some(self.login_url(return_to))).respond(kind),
        }
    }

    /// `<public_url>/oauth2/start?rd=<return_to>`.
    pub fn login_url(&self, return_to: &str) -> String {
        let mut url = self.0.public_url.join("/oauth2/start").expect("valid base");
        url.query_pairs_mut().append_pair("rd", return_to);
        url.into()
    }
}
