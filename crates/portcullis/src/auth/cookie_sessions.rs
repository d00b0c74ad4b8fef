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
//! The refresh itself runs in a spawned task, so a client that drops the request leading it
//! (navigation away, `fetch` aborted, HTTP/2 reset) does not cancel it: the task finishes,
//! leaves its handoff, and the next request gets the new cookie. Its registration is removed
//! on every way out of the task, a panic included. Finding the handoff, checking the latest
//! version and joining or registering the flight happen under one lock, and the task leaves
//! its handoff and unregisters under one lock: no request can fall between the two and present
//! the consumed refresh token again.
//!
//! **Limit:** all of this state is in this process. Behind a load balancer, a superseded
//! cookie that reaches another instance is refused there (it never replays the token). Use the
//! Redis store for more than one instance.

use std::{
    collections::HashMap,
    ops::Deref,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{HeaderMap, HeaderValue};
use tokio::sync::watch;

use super::{
    CookieSettings, ProviderHandle, RefreshError, Session,
    refresh::Registration,
    stats::{EndReason, RefreshStats},
};
use crate::{
    config::Config,
    oidc::{Refreshed, TokenError},
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

type Outcome = Result<Arc<Handoff>, RefreshError>;
type Flight = watch::Receiver<Option<Outcome>>;

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

/// The cookie store. Cheap to share: the refresh tasks hold the same [`Inner`].
pub(crate) struct CookieSessions(Arc<Inner>);

pub(crate) struct Inner {
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
    op_answer_timeout: Duration,
    // A std Mutex: held for map lookups and inserts only, never across an await.
    state: Mutex<State>,
}

impl Deref for CookieSessions {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// What the request's critical section decided.
enum Next {
    Serve(Session),
    Refused,
    Wait { flight: Flight, joined: bool, freshness: Freshness, session: Session },
}

impl CookieSessions {
    /// Replaces the sealing keys (newest first): a reload changed `session.previous_secrets`.
    pub(crate) fn set_secrets<'a>(&self, secrets: impl IntoIterator<Item = &'a [u8]>) {
        self.0.sealer.set_secrets(secrets);
    }

    pub(crate) fn new(config: &Config, cookies: CookieSettings, provider: ProviderHandle, stats: Arc<RefreshStats>) -> Self {
        let current = config.session.secret.as_deref().unwrap_or_default().as_bytes();
        let secrets = std::iter::once(current).chain(config.session.previous_secrets.iter().map(|s| s.as_bytes()));
        Self(Arc::new(Inner {
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
            op_answer_timeout: config.refresh.op_answer_timeout,
            state: Mutex::default(),
        }))
    }

    /// The request's session, refreshed (and re-sealed) when due.
    pub(crate) async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Session>, RefreshError> {
        let Some(payload) = self.read(headers) else { return Ok(None) };
        let stale_chunks = chunks_present(headers, &self.cookies.session_name);
        let (flight, joined, freshness, session) = match self.decide(payload, stale_chunks) {
            Next::Serve(session) => return Ok(Some(session)),
            Next::Refused => return Ok(None),
            Next::Wait { flight, joined, freshness, session } => (flight, joined, freshness, session),
        };
        let started = tokio::time::Instant::now();
        let mut flight = flight;
        let outcome = match tokio::time::timeout(self.max_wait, flight.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().expect("waited for Some"),
            Ok(Err(_)) => Err(RefreshError::Aborted),
            Err(_) => Err(RefreshError::TimedOut(self.max_wait)),
        };
        if joined {
            self.stats.waited_locally(started.elapsed());
        }
        match outcome {
            Ok(handoff) => Ok(Some(Session { key: session.key, record: handoff.record.clone(), set_cookies: handoff.set_cookies.clone() })),
            Err(RefreshError::SessionEnded) => Ok(None),
            Err(e) if freshness == Freshness::DueSoon => {
                tracing::warn!(session = %session.key, error = %e, "refresh failed; forwarding the still-valid token");
                Ok(Some(session))
            }
            Err(e) => Err(e),
        }
    }

    /// One critical section: follow the handoffs, refuse a superseded cookie, and join or
    /// start the refresh. Nothing can change between "no handoff, no flight" and registering
    /// ours (the check-then-register race would present the consumed token twice).
    fn decide(&self, payload: CookiePayload, stale_chunks: usize) -> Next {
        let key = payload.key.clone();
        let now = now_millis();
        let (mut record, mut set_cookies) = (Arc::new(payload.record), Vec::new());
        let mut state = self.lock();
        // Follow the handoffs from the cookie's version to the newest one.
        while let Some(handoff) = state.handoffs.get(&(key.clone(), record.version)).filter(|h| h.until > now) {
            record = handoff.record.clone();
            set_cookies = handoff.set_cookies.clone();
        }
        if let Some((latest, _)) = state.latest.get(&key)
            && *latest > record.version
        {
            tracing::info!(session = %key, "superseded session cookie presented after the grace period; refused");
            return Next::Refused;
        }
        let freshness = record.tokens.freshness(now, self.leeway_fraction, self.leeway_max);
        let session = Session { key: key.clone(), record: record.clone(), set_cookies };
        if freshness == Freshness::Fresh {
            return Next::Serve(session);
        }
        if record.tokens.refresh_token.is_none() {
            return if freshness == Freshness::DueSoon { Next::Serve(session) } else { Next::Refused };
        }
        // Due soon or expired: the request waits for the refresh (up to max_wait), so the new
        // cookie rides on its response (a background refresh would have no response to carry it).
        if let Some(flight) = state.flights.get(&key) {
            return Next::Wait { flight: flight.clone(), joined: true, freshness, session };
        }
        let (tx, rx) = watch::channel(None);
        state.flights.insert(key.clone(), rx.clone());
        let inner = self.0.clone();
        let registration = Registration::new({
            let (inner, key, flight) = (self.0.clone(), key.clone(), rx.clone());
            move || {
                let mut state = inner.lock();
                if state.flights.get(&key).is_some_and(|f| f.same_channel(&flight)) {
                    state.flights.remove(&key);
                }
            }
        });
        // Spawned, not awaited in this request: a client going away must not cancel the
        // refresh (its answer holds the only copy of the rotated refresh token).
        tokio::spawn(async move {
            let registration = registration;
            let outcome = inner.run_refresh(&key, &record, stale_chunks).await;
            drop(registration);
            let _ = tx.send(Some(outcome));
        });
        Next::Wait { flight: rx, joined: false, freshness, session }
    }
}

impl Inner {
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
        let set_cookies = self.seal(&payload, chunks_present(headers, &self.cookies.session_name))?;
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

    /// The session's cookies; chunks beyond the new count that the browser holds (`stale`) are
    /// cleared.
    fn seal(&self, payload: &CookiePayload, stale: usize) -> Option<Vec<HeaderValue>> {
        let chunks = split_chunks(&self.cookies.session_name, &self.sealer.seal(payload));
        if chunks.len() > MAX_CHUNKS {
            tracing::warn!(chunks = chunks.len(), "session too large for cookies; use the redis store");
            return None;
        }
        let mut out: Vec<HeaderValue> = chunks.into_iter().map(|(name, value)| self.cookies.session_named(&name, value)).collect();
        for i in out.len()..stale {
            out.push(self.cookies.clear_named(&chunk_name(&self.cookies.session_name, i)));
        }
        Some(out)
    }

    fn end_session(&self, key: &SessionKey, reason: EndReason) -> Outcome {
        self.lock().latest.insert(key.clone(), (ENDED, now_millis() + self.lifetimes.absolute.as_millis() as u64));
        self.stats.session_ended(reason);
        Err(RefreshError::SessionEnded)
    }

    async fn run_refresh(&self, key: &SessionKey, record: &SessionRecord, stale_chunks: usize) -> Outcome {
        let slot = (key.clone(), record.version);
        if let Some(at) = self.lock().unsettled.get(&slot).copied() {
            let settles_at = at + self.settle.as_millis() as u64;
            if now_millis() < settles_at {
                return Err(RefreshError::Settling(Duration::from_millis(settles_at - now_millis())));
            }
        }
        let client = self.provider.get().ok_or(RefreshError::ProviderNotReady)?.clone();
        self.stats.grant_started();
        let result = client.refresh(&record.tokens, &record.identity.subject, self.op_answer_timeout).await;
        self.stats.grant_finished(result.as_ref().map(|_| ()));
        let Refreshed { tokens, identity } = match result {
            Ok(refreshed) => refreshed,
            Err(TokenError::InvalidGrant) => {
                tracing::info!(session = %key, "refresh token rejected by the OP (invalid_grant): session ended");
                return self.end_session(key, EndReason::InvalidGrant);
            }
            Err(TokenError::SubjectChanged) => {
                tracing::warn!(session = %key, "the OP refreshed the session for another subject; session ended");
                return self.end_session(key, EndReason::SubjectChanged);
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
        match identity {
            Some(identity) => next.identity = identity,
            None => self.stats.identity_kept(),
        }
        next.unsettled_refresh = None;
        let payload = CookiePayload { key: key.clone(), version: next.version, record: next };
        let Some(set_cookies) = self.seal(&payload, stale_chunks) else {
            // The consumed refresh token cannot be replaced in a cookie: never present it again.
            return self.end_session(key, EndReason::Unstorable);
        };
        let now = now_millis();
        let handoff = Arc::new(Handoff { record: Arc::new(payload.record), set_cookies, until: now + self.grace.as_millis() as u64 });
        let mut state = self.lock();
        state.handoffs.retain(|_, h| h.until > now);
        state.latest.retain(|_, (_, until)| *until > now);
        state.unsettled.remove(&slot);
        state.handoffs.insert(slot, handoff.clone());
        let forget_at = record.created_at + self.lifetimes.absolute.as_millis() as u64;
        state.latest.insert(key.clone(), (payload.version, forget_at));
        // Unregister in the same critical section that published the handoff: a request
        // arriving from now on follows the handoff; one that came before joined this flight.
        state.flights.remove(key);
        tracing::debug!(session = %key, version = payload.version, "tokens refreshed (cookie store)");
        Ok(handoff)
    }
}
