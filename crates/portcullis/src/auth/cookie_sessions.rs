//! Sessions that live in the browser: the cookie store (`session.store = "cookie"`).
//!
//! The session is sealed into the cookie, so a refresh changes the cookie, and parallel
//! requests carrying the old cookie are bound to arrive. Three things keep them all working
//! without a second refresh grant:
//!
//! - **Single flight** per session in this process: the first request refreshes, the others
//!   wait for its result and get the same new cookie.
//! - **Handoff**: the refresh leaves a record "version v → the new session and its cookie" for
//!   `refresh.grace_period`. A request still carrying version v (the browser kept an older
//!   `Set-Cookie`, or a request was already on its way) gets the new tokens and the new cookie
//!   instead of presenting the consumed refresh token.
//! - **Latest version** per session: a cookie older than the newest version whose handoff has
//!   expired is refused, never refreshed: presenting its refresh token to a rotating OP would
//!   trip reuse detection and revoke the live session too.
//!
//! **Limit:** all of this state is in this process. Behind a load balancer, a superseded
//! cookie that reaches another instance is refused there (it never replays the token). Use the
//! Redis store for more than one instance.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{HeaderMap, HeaderValue};
use tokio::sync::watch;

use super::{CookieSettings, ProviderHandle, RefreshError, Session, stats::RefreshStats};
use crate::{
    config::Config,
    oidc::TokenError,
    session::{
        CookiePayload, CookieSealer, Freshness, Lifetimes, MAX_CHUNKS, SessionId, SessionKey, SessionRecord, UnixMillis, chunk_name,
        chunks_present, join_chunks, now_millis, split_chunks,
    },
};

/// A refresh's result as every waiter and every late cookie gets it.
struct Handoff {
    record: Arc<SessionRecord>,
    set_cookies: Vec<HeaderValue>,
    until: UnixMillis,
}

type Flight = watch::Receiver<Option<Result<Arc<Handoff>, RefreshError>>>;

/// Version marking a session that ended: every cookie of it is refused.
const ENDED: u64 = u64::MAX;

#[derive(Default)]
struct State {
    /// Newest version per session and when to forget it (the absolute lifetime).
    latest: HashMap<SessionKey, (u64, UnixMillis)>,
    /// `(session, superseded version)` → what replaced it.
    handoffs: HashMap<(SessionKey, u64), Arc<Handoff>>,
    /// `(session, version)` whose last refresh got no answer, and when.
    unsettled: HashMap<(SessionKey, u64), UnixMillis>,
    flights: HashMap<SessionKey, Flight>,
}

/// The cookie store.
pub(crate) struct CookieSessions {
    sealer: CookieSealer,
    cookies: CookieSettings,
    provider: ProviderHandle,
    stats: Arc<RefreshStats>,
    lifetimes: Lifetimes,
    leeway_fraction: f64,
    leeway_max: Duration,
    max_wait: Duration,
    grace: Duration,
    settle: Duration,
    // A std Mutex: held for map lookups and inserts only, never across an await.
    state: Arc<Mutex<State>>,
}

impl CookieSessions {
    pub(crate) fn new(config: &Config, cookies: CookieSettings, provider: ProviderHandle, stats: Arc<RefreshStats>) -> Self {
        let current = config.session.secret.as_deref().unwrap_or_default().as_bytes();
        let secrets = std::iter::once(current).chain(config.session.previous_secrets.iter().map(|s| s.as_bytes()));
        Self {
            sealer: CookieSealer::new(secrets),
            cookies,
            provider,
            stats,
            lifetimes: Lifetimes { idle: config.session.idle_timeout, absolute: config.session.absolute_timeout },
            leeway_fraction: config.refresh.leeway_fraction,
            leeway_max: config.refresh.leeway_max,
            max_wait: config.refresh.max_wait,
            grace: config.refresh.grace_period,
            settle: config.refresh.settle_after_unknown.unwrap_or(config.oidc.http_timeout),
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session sealed in the request's cookies, as sent (no handoff applied).
    pub(crate) fn read(&self, headers: &HeaderMap) -> Option<CookiePayload> {
        let sealed = join_chunks(headers, &self.cookies.session_name)?;
        let payload = self.sealer.open(&sealed);
        if payload.is_none() {
            tracing::info!("session cookie rejected: not sealed by this gateway or incomplete");
        }
        payload.filter(|p| !self.lifetimes.ttl(p.record.created_at, now_millis()).is_zero())
    }

    /// `Set-Cookie` headers for a new session (login).
    pub(crate) fn issue(&self, record: SessionRecord, headers: &HeaderMap) -> Option<Vec<HeaderValue>> {
        let key = SessionId::generate().key();
        let payload = CookiePayload { key: key.clone(), version: 1, record };
        let set_cookies = self.seal(&payload, headers)?;
        self.lock().latest.insert(key, (1, payload.record.created_at + self.lifetimes.absolute.as_millis() as u64));
        Some(set_cookies)
    }

    /// Ends a session: its cookies are refused from now on; returns the `Set-Cookie`s that
    /// clear every chunk the browser sent.
    pub(crate) fn end(&self, key: &SessionKey, headers: &HeaderMap) -> Vec<HeaderValue> {
        self.lock().latest.insert(key.clone(), (ENDED, now_millis() + self.lifetimes.absolute.as_millis() as u64));
        (0..chunks_present(headers, &self.cookies.session_name).max(1))
            .map(|i| self.cookies.clear_named(&chunk_name(&self.cookies.session_name, i)))
            .collect()
    }

    fn seal(&self, payload: &CookiePayload, headers: &HeaderMap) -> Option<Vec<HeaderValue>> {
        let chunks = split_chunks(&self.cookies.session_name, &self.sealer.seal(payload));
        if chunks.len() > MAX_CHUNKS {
            tracing::warn!(chunks = chunks.len(), "session too large for cookies; use the redis store");
            return None;
        }
        let stale = chunks_present(headers, &self.cookies.session_name);
        let mut out: Vec<HeaderValue> = chunks.into_iter().map(|(name, value)| self.cookies.session_named(&name, value)).collect();
        for i in out.len()..stale {
            out.push(self.cookies.clear_named(&chunk_name(&self.cookies.session_name, i)));
        }
        Some(out)
    }

    /// The request's session, refreshed (and re-sealed) when due.
    pub(crate) async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Session>, RefreshError> {
        let Some(payload) = self.read(headers) else { return Ok(None) };
        let key = payload.key.clone();
        let now = now_millis();
        let (mut record, mut set_cookies) = (Arc::new(payload.record), Vec::new());
        {
            let state = self.lock();
            // Follow the handoffs from the cookie's version to the newest one.
            while let Some(handoff) = state.handoffs.get(&(key.clone(), record.version)).filter(|h| h.until > now) {
                record = handoff.record.clone();
                set_cookies = handoff.set_cookies.clone();
            }
            if let Some((latest, _)) = state.latest.get(&key)
                && *latest > record.version
            {
                tracing::info!(session = %key, "superseded session cookie presented after the grace period; refused");
                return Ok(None);
            }
        }
        let freshness = record.tokens.freshness(now, self.leeway_fraction, self.leeway_max);
        if freshness == Freshness::Fresh {
            return Ok(Some(Session { key, record, set_cookies }));
        }
        if record.tokens.refresh_token.is_none() {
            return Ok((freshness == Freshness::DueSoon).then(|| Session { key, record, set_cookies }));
        }
        // Due soon or expired: refresh inside this request, so the new cookie rides on its
        // response (a background refresh would have no response to carry it).
        match self.refresh(&key, record.clone(), headers).await {
            Ok(handoff) => Ok(Some(Session { key, record: handoff.record.clone(), set_cookies: handoff.set_cookies.clone() })),
            Err(RefreshError::SessionEnded) => Ok(None),
            Err(e) if freshness == Freshness::DueSoon => {
                tracing::warn!(session = %key, error = %e, "refresh failed; forwarding the still-valid token");
                Ok(Some(Session { key, record, set_cookies }))
            }
            Err(e) => Err(e),
        }
    }

    async fn refresh(&self, key: &SessionKey, record: Arc<SessionRecord>, headers: &HeaderMap) -> Result<Arc<Handoff>, RefreshError> {
        // Join the flight in progress, or register ours; the lock is released before awaiting.
        let joined = {
            let mut state = self.lock();
            match state.flights.get(key) {
                Some(flight) => Ok(flight.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    state.flights.insert(key.clone(), rx);
                    Err(tx)
                }
            }
        };
        let mut flight = match joined {
            Ok(flight) => {
                self.stats.waited_locally();
                flight
            }
            Err(tx) => {
                let outcome = self.run_refresh(key, &record, headers).await;
                self.lock().flights.remove(key);
                let _ = tx.send(Some(outcome.clone()));
                return outcome;
            }
        };
        match tokio::time::timeout(self.max_wait, flight.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().expect("waited for Some"),
            Ok(Err(_)) | Err(_) => Err(RefreshError::TimedOut(self.max_wait)),
        }
    }

    async fn run_refresh(&self, key: &SessionKey, record: &SessionRecord, headers: &HeaderMap) -> Result<Arc<Handoff>, RefreshError> {
        let slot = (key.clone(), record.version);
        if let Some(at) = self.lock().unsettled.get(&slot).copied() {
            let settles_at = at + self.settle.as_millis() as u64;
            if now_millis() < settles_at {
                return Err(RefreshError::Settling(Duration::from_millis(settles_at - now_millis())));
            }
        }
        let client = self.provider.get().ok_or(RefreshError::ProviderNotReady)?.clone();
        self.stats.grant_started();
        let result = client.refresh(&record.tokens, &record.identity.subject).await;
        self.stats.grant_finished(result.as_ref().map(|_| ()));
        let tokens = match result {
            Ok(tokens) => tokens,
            Err(TokenError::InvalidGrant) => {
                self.lock().latest.insert(key.clone(), (ENDED, now_millis() + self.lifetimes.absolute.as_millis() as u64));
                self.stats.session_ended();
                tracing::info!(session = %key, "refresh token rejected by the OP (invalid_grant): session ended");
                return Err(RefreshError::SessionEnded);
            }
            Err(e @ TokenError::OutcomeUnknown(_)) => {
                self.lock().unsettled.insert(slot, now_millis());
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let mut next = record.clone();
        next.version = record.version + 1;
        next.tokens = tokens;
        let payload = CookiePayload { key: key.clone(), version: next.version, record: next };
        let set_cookies = self.seal(&payload, headers).ok_or(RefreshError::SessionEnded)?;
        let now = now_millis();
        let handoff = Arc::new(Handoff { record: Arc::new(payload.record), set_cookies, until: now + self.grace.as_millis() as u64 });
        let mut state = self.lock();
        state.handoffs.retain(|_, h| h.until > now);
        state.latest.retain(|_, (_, until)| *until > now);
        state.unsettled.remove(&slot);
        state.handoffs.insert(slot, handoff.clone());
        let forget_at = record.created_at + self.lifetimes.absolute.as_millis() as u64;
        state.latest.insert(key.clone(), (payload.version, forget_at));
        tracing::debug!(session = %key, version = payload.version, "tokens refreshed (cookie store)");
        Ok(handoff)
    }
}
