//! The refresh coordinator: one token refresh per session, however many requests and instances.
//!
//! Life of a refresh (ARCHITECTURE.md draws it):
//! 1. A request finds its token expired (or due soon) and calls [`Refresher::refresh`].
//! 2. In this process, the first caller for a session starts a [`RefreshTask`]; later callers
//!    subscribe to its result (single flight). The task is spawned, so a leader whose client
//!    disconnects does not cancel the refresh everyone else waits for.
//! 3. The task takes the session's lease in the store. Held by another instance? It waits for
//!    that instance's write (a change notification, or a bounded poll), then uses it; if the
//!    holder died, the lease lapses and the task takes it.
//! 4. Lease held: re-read. A newer version with a usable token means someone else refreshed.
//! 5. Token endpoint. Success: compare-and-set on the version read in 4, which notifies waiters.
//! 6. `invalid_grant`: re-read; a newer version means another holder won. Otherwise the refresh
//!    token is dead: the session is deleted (and waiters notified).
//! 7. A transient failure keeps the session; a request whose token is still valid is served
//!    with it, one whose token expired gets a 503.
//!
//! Two waits, deliberately different: a request waits at most `refresh.max_wait` (then 503,
//! session kept); the task waits for the OP's answer up to `refresh.op_answer_timeout`, its
//! lease renewed all along, because once sent that answer may be the only copy of a rotated
//! refresh token. And a 2xx is never thrown away: its tokens are written (the CAS retried on a
//! store error), or the token is recorded as possibly consumed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use super::{
    drain::{RefreshTasks, Ticket},
    provider::ProviderHandle,
    stats::{EndReason, RefreshStats},
};
use crate::{
    crypto,
    oidc::{Refreshed, TokenError},
    session::{CasOutcome, DeleteOutcome, SessionKey, SessionRecord, SessionStore, StoreError, UnsettledRefresh, now_millis},
};

/// Why a refresh produced no usable session.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    /// The refresh token is definitively invalid, or the session is gone: log in again.
    #[error("the session has ended")]
    SessionEnded,
    /// The OP could not refresh now (down, slow, 5xx, refused); the session is kept.
    #[error(transparent)]
    Provider(#[from] TokenError),
    /// An earlier refresh got no answer; the refresh token is not presented again until the
    /// settle time has passed.
    #[error("an earlier refresh got no answer; retrying in {0:?}")]
    Settling(Duration),
    /// The OP has not been discovered yet.
    #[error("the OpenID Provider is not reachable yet")]
    ProviderNotReady,
    /// The session store failed; the session is kept.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The refresh took longer than the configured maximum wait.
    #[error("the token refresh took longer than {0:?}")]
    TimedOut(Duration),
    /// The refresh task ended without an answer (it panicked); the next request starts anew.
    #[error("the token refresh stopped without an answer")]
    Aborted,
    /// While this refresh ended, another holder wrote a newer generation of the session whose
    /// access token is already spent: the session is kept, the next request refreshes it.
    #[error("the session changed while it was being refreshed")]
    Superseded,
}

/// Timing of the refresh protocol (from `[refresh]` in the config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) max_wait: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) settle_after_unknown: Duration,
    /// The refresh task's wait for the OP's answer (`refresh.op_answer_timeout`).
    pub(crate) op_answer_timeout: Duration,
    /// How far apart two instances' clocks may be (`oidc.clock_skew`); see `superseded`.
    pub(crate) clock_skew: Duration,
}

type Outcome = Result<Arc<SessionRecord>, RefreshError>;

/// How long a failed refresh's answer is reused for the same session before the next attempt.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
type Flight = watch::Receiver<Option<Outcome>>;

/// Coordinates refreshes: single flight in this process, a lease across processes.
pub(crate) struct Refresher {
    store: Arc<dyn SessionStore>,
    provider: ProviderHandle,
    timing: Timing,
    stats: Arc<RefreshStats>,
    // A std Mutex: held only to look up or insert a flight, never across an await.
    in_flight: Arc<Mutex<HashMap<SessionKey, Flight>>>,
    /// The tasks running and the leases they hold: what a graceful shutdown waits for.
    tasks: Arc<RefreshTasks>,
}

impl Refresher {
    pub(crate) fn new(store: Arc<dyn SessionStore>, provider: ProviderHandle, timing: Timing, stats: Arc<RefreshStats>) -> Self {
        Self { store, provider, timing, stats, in_flight: Arc::default(), tasks: Arc::default() }
    }

    /// The refresh tasks running in this process.
    pub(crate) fn tasks(&self) -> &Arc<RefreshTasks> {
        &self.tasks
    }

    /// Starts (or joins) the refresh of `key` and waits for its outcome, at most `max_wait`.
    /// `seen` is the record the caller loaded; the refresh re-reads, and a waiter only ever gets
    /// the record the refresh produced, never its own stale copy.
    pub(crate) async fn refresh(&self, key: &SessionKey, seen: Arc<SessionRecord>) -> Outcome {
        let started = Instant::now();
        let (mut flight, joined) = self.flight(key, seen);
        let outcome = match tokio::time::timeout(self.timing.max_wait, flight.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().expect("waited for Some"),
            // The sender was dropped unsent: the task panicked (its registration is gone too).
            Ok(Err(_)) => Err(RefreshError::Aborted),
            Err(_) => Err(RefreshError::TimedOut(self.timing.max_wait)),
        };
        if joined {
            self.stats.waited_locally(started.elapsed());
        }
        outcome
    }

    /// Starts the refresh of `key` in the background unless one is running; does not wait.
    pub(crate) fn refresh_in_background(&self, key: &SessionKey, seen: Arc<SessionRecord>) {
        let _ = self.flight(key, seen);
    }

    /// The flight for `key`, and whether it already existed.
    fn flight(&self, key: &SessionKey, seen: Arc<SessionRecord>) -> (Flight, bool) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = in_flight.get(key) {
            return (flight.clone(), true);
        }
        let (tx, rx) = watch::channel(None);
        in_flight.insert(key.clone(), rx.clone());
        let task = RefreshTask {
            store: self.store.clone(),
            provider: self.provider.clone(),
            stats: self.stats.clone(),
            timing: self.timing,
            key: key.clone(),
        };
        let registration = Registration::new({
            let (registry, key, flight) = (self.in_flight.clone(), key.clone(), rx.clone());
            move || unregister(&registry, &key, &flight)
        });
        let ticket = self.tasks.start(key);
        let id = ticket.id();
        let handle = tokio::spawn(async move {
            // Dropped however this task ends, a panic included: a flight left registered would
            // hand every later request of the session a dead channel until a restart.
            let registration = registration;
            let outcome = task.run(seen, &ticket).await;
            // Done with the OP and the lease: a shutdown need not wait through the backoff below.
            drop(ticket);
            match outcome {
                Err(e) if !matches!(e, RefreshError::SessionEnded) => {
                    tracing::warn!(session = %task.key, error = %e, "token refresh failed; session kept");
                    // A failed flight stays registered for a moment: requests arriving in that
                    // time get its answer at once instead of each starting a token call against
                    // an OP that just failed (a flood during an outage, a herd at recovery).
                    let _ = tx.send(Some(Err(e)));
                    tokio::time::sleep(RETRY_BACKOFF).await;
                    drop(registration);
                }
                outcome => {
                    // Unregister before publishing: a request arriving after this point loads
                    // the session anew (and sees the new version) instead of joining a
                    // finished flight.
                    drop(registration);
                    let _ = tx.send(Some(outcome));
                }
            }
        });
        self.tasks.set_abort(id, handle.abort_handle());
        (rx, false)
    }
}

/// Removes `key`'s flight from `registry` if it is still `flight` (a newer one is left alone).
fn unregister(registry: &Mutex<HashMap<SessionKey, Flight>>, key: &SessionKey, flight: &Flight) {
    let mut flights = registry.lock().unwrap_or_else(|e| e.into_inner());
    if flights.get(key).is_some_and(|f| f.same_channel(flight)) {
        flights.remove(key);
    }
}

/// Runs its closure once when dropped: how a flight is unregistered on every path out of its
/// task, unwinding from a panic included. Shared with the cookie store's coordinator.
pub(crate) struct Registration(Option<Box<dyn FnOnce() + Send>>);

impl Registration {
    pub(crate) fn new(on_drop: impl FnOnce() + Send + 'static) -> Self {
        Self(Some(Box::new(on_drop)))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Delays between attempts of the final compare-and-set after a store error. The OP has
/// answered and consumed the old refresh token: the new one exists only in this task until it
/// is written, so a store hiccup must not drop it. About 1.5 s in all, inside the lease (the
/// watchdog keeps renewing it meanwhile).
const CAS_RETRY_DELAYS: [Duration; 4] =
    [Duration::from_millis(50), Duration::from_millis(200), Duration::from_millis(500), Duration::from_millis(800)];

/// One refresh of one session, run by the process-local leader.
struct RefreshTask {
    store: Arc<dyn SessionStore>,
    provider: ProviderHandle,
    stats: Arc<RefreshStats>,
    timing: Timing,
    key: SessionKey,
}

/// Hash of a refresh token, to recognise it later without storing it twice.
fn token_hash(token: &str) -> String {
    crypto::b64(&crypto::sha256(token.as_bytes())[..12])
}

/// A lease owner token: unique per attempt, so a lapsed holder can never release or renew the
/// lease a newcomer took.
fn new_owner() -> String {
    crypto::random_token::<16>()
}

impl RefreshTask {
    async fn run(&self, seen: Arc<SessionRecord>, ticket: &Ticket) -> Outcome {
        let deadline = Instant::now() + self.timing.max_wait;
        // Watch before reading, so a write landing between the read and the wait wakes us.
        let mut changes = self.store.watch(&self.key);
        // Set while this task waits for another instance's refresh; the wait ends when that
        // instance's tokens are used, the lease is taken, or max_wait passes.
        let mut waiting_since: Option<Instant> = None;
        let end_wait = |since: &mut Option<Instant>| {
            if let Some(since) = since.take() {
                self.stats.waited_remotely(since.elapsed());
            }
        };
        loop {
            let current = self.store.load(&self.key).await?.ok_or(RefreshError::SessionEnded)?;
            if let Some(newer) = self.superseded(&seen, &current) {
                end_wait(&mut waiting_since);
                return Ok(newer);
            }
            let owner = new_owner();
            if self.store.try_lease(&self.key, &owner, self.timing.lease_ttl).await? {
                ticket.holding(&owner);
                end_wait(&mut waiting_since);
                let outcome = self.refresh_under_lease(&seen, &owner).await;
                if let Err(e) = self.store.release_lease(&self.key, &owner).await {
                    // It lapses by itself within lease_ttl.
                    tracing::debug!(session = %self.key, error = %e, "lease release failed");
                }
                ticket.released();
                return outcome;
            }
            self.stats.lease_contended();
            waiting_since.get_or_insert_with(Instant::now);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                end_wait(&mut waiting_since);
                return Err(RefreshError::TimedOut(self.timing.max_wait));
            }
            changes.changed(left.min(self.timing.poll_interval)).await;
        }
    }

    /// `current` when someone else refreshed since the caller loaded `seen`.
    ///
    /// Clocks: `current`'s `expires_at` was computed on the instance that wrote it. Its tokens
    /// differ from the ones the caller saw, so they were written after the caller started:
    /// they are new whatever the clocks say. An instance whose clock runs up to
    /// `oidc.clock_skew` ahead of the writer's would see them as (nearly) expired and send a
    /// second grant; they are therefore judged allowing that skew.
    fn superseded(&self, seen: &SessionRecord, current: &Arc<SessionRecord>) -> Option<Arc<SessionRecord>> {
        let now_allowing_skew = now_millis().saturating_sub(self.timing.clock_skew.as_millis() as u64);
        let newer = current.version != seen.version && current.tokens != seen.tokens && current.tokens.usable(now_allowing_skew);
        if newer {
            self.stats.reused_newer_version();
        }
        newer.then(|| current.clone())
    }

    async fn refresh_under_lease(&self, seen: &SessionRecord, owner: &str) -> Outcome {
        let _watchdog = Watchdog::start(self.store.clone(), self.key.clone(), owner.to_string(), self.timing.lease_ttl, self.stats.clone());
        // Re-read with the lease held: the previous holder may have written just before
        // releasing.
        let current = self.store.load(&self.key).await?.ok_or(RefreshError::SessionEnded)?;
        if let Some(newer) = self.superseded(seen, &current) {
            return Ok(newer);
        }
        let Some(refresh_token) = current.tokens.refresh_token.as_deref() else {
            return Err(RefreshError::SessionEnded);
        };
        if let Some(unsettled) = &current.unsettled_refresh {
            let settles_at = unsettled.at + self.timing.settle_after_unknown.as_millis() as u64;
            let now = now_millis();
            if unsettled.token_hash == token_hash(refresh_token) && now < settles_at {
                return Err(RefreshError::Settling(Duration::from_millis(settles_at - now)));
            }
        }
        let client = self.provider.get().ok_or(RefreshError::ProviderNotReady)?.clone();
        self.stats.grant_started();
        let result = client.refresh(&current.tokens, &current.identity.subject, self.timing.op_answer_timeout).await;
        self.stats.grant_finished(result.as_ref().map(|_| ()));
        match result {
            Ok(Refreshed { tokens, identity }) => {
                let mut next = (*current).clone();
                next.tokens = tokens;
                match identity {
                    // Claims follow the refresh (email, groups, name as the OP now says).
                    Some(identity) => next.identity = identity,
                    None => self.stats.identity_kept(),
                }
                next.unsettled_refresh = None;
                self.write_answer(&current, refresh_token, next).await
            }
            Err(TokenError::InvalidGrant) => {
                tracing::info!(session = %self.key, "refresh token rejected by the OP (invalid_grant): session ended unless another holder refreshed it");
                self.end(current.version, refresh_token, EndReason::InvalidGrant).await
            }
            Err(TokenError::SubjectChanged) => {
                tracing::warn!(session = %self.key, "the OP refreshed the session for another subject; session ended");
                self.end(current.version, refresh_token, EndReason::SubjectChanged).await
            }
            Err(e @ TokenError::OutcomeUnknown(_)) => {
                self.mark_unsettled(&current, refresh_token).await;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the tokens of a 2xx answer. A store error is retried with the same expected
    /// version (a retry of a write that did land meets `Conflict` and reads it back); when the
    /// store stays down, the presented token is recorded as possibly consumed, as for an
    /// unknown outcome, so nobody re-presents it before the settle time.
    async fn write_answer(&self, current: &SessionRecord, presented: &str, next: SessionRecord) -> Outcome {
        let mut delays = CAS_RETRY_DELAYS.iter();
        loop {
            match self.write(current.version, next.clone()).await {
                Err(RefreshError::Store(e)) => match delays.next() {
                    Some(delay) => {
                        self.stats.cas_retried();
                        tracing::warn!(session = %self.key, error = %e, retry_in = ?delay, "could not write the refreshed tokens; retrying");
                        tokio::time::sleep(*delay).await;
                    }
                    None => {
                        tracing::error!(session = %self.key, error = %e, "could not write the refreshed tokens; the refresh token is recorded as possibly consumed");
                        self.mark_unsettled(current, presented).await;
                        return Err(RefreshError::Store(e));
                    }
                },
                outcome => return outcome,
            }
        }
    }

    async fn write(&self, based_on: u64, mut next: SessionRecord) -> Outcome {
        match self.store.compare_and_set(&self.key, based_on, &next).await? {
            CasOutcome::Written(version) => {
                next.version = version;
                tracing::debug!(session = %self.key, version, "tokens refreshed");
                Ok(Arc::new(next))
            }
            CasOutcome::Conflict => {
                // A newer version exists although we held the lease (ours lapsed, or a logout
                // and a new login raced us): theirs stands; ours is dropped, never written back.
                self.stats.cas_conflict();
                tracing::warn!(session = %self.key, "refresh lost a compare-and-set race; using the newer session version");
                self.store.load(&self.key).await?.ok_or(RefreshError::SessionEnded)
            }
            CasOutcome::Gone => Err(RefreshError::SessionEnded),
        }
    }

    /// The refresh token `presented` is definitively dead (`invalid_grant`, or the OP answered
    /// for another subject): the session ends, unless another holder refreshed meanwhile.
    ///
    /// The delete is conditional on the version this task read under its lease. If our lease
    /// lapsed (a stalled process, a long GC pause) another holder may have refreshed and
    /// written a newer version with a live token, and an unconditional delete would end the
    /// session it just saved (the "lost lease" race). On a version conflict the session is
    /// re-read: another generation of the refresh token means another holder won (and our
    /// `invalid_grant` was about the token it rotated) and its version is used; the same dead
    /// token with other fields changed is deleted at its new version.
    async fn end(&self, mut based_on: u64, presented: &str, reason: EndReason) -> Outcome {
        for _ in 0..3 {
            match self.store.delete_if_version(&self.key, based_on).await? {
                DeleteOutcome::Deleted => {
                    self.stats.session_ended(reason);
                    return Err(RefreshError::SessionEnded);
                }
                DeleteOutcome::Gone => return Err(RefreshError::SessionEnded),
                DeleteOutcome::Conflict => {
                    let latest = self.store.load(&self.key).await?.ok_or(RefreshError::SessionEnded)?;
                    if latest.tokens.refresh_token.as_deref() == Some(presented) {
                        based_on = latest.version;
                        continue;
                    }
                    // Another holder won: its version is newer by construction (written after
                    // the one we read under the lease), so it is judged allowing clock skew.
                    if latest.tokens.usable(now_millis().saturating_sub(self.timing.clock_skew.as_millis() as u64)) {
                        self.stats.reused_newer_version();
                        tracing::info!(session = %self.key, "refresh token rejected, but another holder already refreshed the session; using its version");
                        return Ok(latest);
                    }
                    // A newer generation whose access token is already spent: not ours to end,
                    // and nothing to forward; the next request refreshes it with its own token.
                    return Err(RefreshError::Superseded);
                }
            }
        }
        Err(RefreshError::Superseded)
    }

    /// Records that the current refresh token's last presentation got no answer, so no instance
    /// presents it again before the settle time (see ARCHITECTURE.md).
    async fn mark_unsettled(&self, current: &SessionRecord, refresh_token: &str) {
        let mut next = current.clone();
        next.unsettled_refresh = Some(UnsettledRefresh { token_hash: token_hash(refresh_token), at: now_millis() });
        match self.store.compare_and_set(&self.key, current.version, &next).await {
            Ok(CasOutcome::Written(_)) => {}
            Ok(other) => tracing::debug!(session = %self.key, ?other, "could not record the unsettled refresh"),
            Err(e) => tracing::warn!(session = %self.key, error = %e, "could not record the unsettled refresh"),
        }
    }
}

/// Renews the lease every third of its TTL while the token call runs, so a slow OP never lets
/// it lapse under a live holder (oauth2-proxy's fixed-TTL lock does, and a second instance then
/// replays the rotated refresh token). Stops when dropped.
struct Watchdog(tokio::task::JoinHandle<()>);

impl Watchdog {
    fn start(store: Arc<dyn SessionStore>, key: SessionKey, owner: String, ttl: Duration, stats: Arc<RefreshStats>) -> Self {
        Self(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + ttl / 3, ttl / 3);
            loop {
                tick.tick().await;
                match store.renew_lease(&key, &owner, ttl).await {
                    Ok(true) => stats.lease_renewed(),
                    Ok(false) => {
                        stats.lease_lost();
                        tracing::warn!(session = %key, "refresh lease lost while refreshing; the version check still guards the write");
                        return;
                    }
                    Err(e) => tracing::warn!(session = %key, error = %e, "cannot renew the refresh lease"),
                }
            }
        }))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
#[path = "refresh_tests.rs"]
mod tests;
