//! The refresh coordinator: one token refresh per session at a time, its result shared.
//!
//! Life of a refresh (see ARCHITECTURE.md):
//! 1. A request finds its token expired (or due soon) and calls [`Refresher::refresh`].
//! 2. The first caller for a session becomes the leader: a task is spawned that performs the
//!    refresh, so a leader whose client disconnects does not cancel it for everyone else.
//!    Later callers subscribe to the same result (single-flight) instead of starting their own.
//! 3. The task re-reads the session: if its version moved, someone already refreshed — use it.
//! 4. It calls the token endpoint, writes the new tokens with compare-and-set on the version it
//!    read, and publishes the result to every waiter.
//! 5. `invalid_grant`: re-read once more; a newer version means another writer won. Otherwise
//!    the session is deleted: the refresh token is dead and must never be presented again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;

use super::{provider::ProviderHandle, stats::RefreshStats};
use crate::{
    oidc::TokenError,
    session::{CasOutcome, SessionKey, SessionRecord, SessionStore, StoreError, now_millis},
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
    /// The OP has not been discovered yet.
    #[error("the OpenID Provider is not reachable yet")]
    ProviderNotReady,
    /// The session store failed; the session is kept.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The refresh took longer than the configured maximum wait.
    #[error("the token refresh took longer than {0:?}")]
    TimedOut(Duration),
}

type Outcome = Result<Arc<SessionRecord>, RefreshError>;
type Flight = watch::Receiver<Option<Outcome>>;

/// Coordinates refreshes within this process.
pub(crate) struct Refresher {
    store: Arc<dyn SessionStore>,
    provider: ProviderHandle,
    max_wait: Duration,
    stats: Arc<RefreshStats>,
    // A std Mutex: held only to look up or insert a flight, never across an await.
    in_flight: Arc<Mutex<HashMap<SessionKey, Flight>>>,
}

impl Refresher {
    pub(crate) fn new(store: Arc<dyn SessionStore>, provider: ProviderHandle, max_wait: Duration, stats: Arc<RefreshStats>) -> Self {
        Self { store, provider, max_wait, stats, in_flight: Arc::default() }
    }

    /// Starts (or joins) the refresh of `key` and waits for its outcome, at most `max_wait`.
    /// `seen` is the record the caller loaded; it is only a hint: the refresh re-reads.
    pub(crate) async fn refresh(&self, key: &SessionKey, seen: Arc<SessionRecord>) -> Outcome {
        let (mut flight, joined) = self.flight(key, seen);
        if joined {
            self.stats.waited_locally();
        }
        let wait = flight.wait_for(Option::is_some);
        match tokio::time::timeout(self.max_wait, wait).await {
            Ok(Ok(outcome)) => outcome.clone().expect("waited for Some"),
            // The sender lives in the spawned task, which always sends before it ends.
            Ok(Err(_)) => Err(RefreshError::TimedOut(self.max_wait)),
            Err(_) => Err(RefreshError::TimedOut(self.max_wait)),
        }
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
        let task = RefreshTask { store: self.store.clone(), provider: self.provider.clone(), stats: self.stats.clone(), key: key.clone() };
        let registry = self.in_flight.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let outcome = task.run(seen).await;
            if let Err(e) = &outcome {
                tracing::warn!(session = %key, error = %e, "token refresh failed");
            }
            // Unregister before publishing: a request arriving after this point loads the
            // session anew (and sees the new version) instead of joining a finished flight.
            registry.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            let _ = tx.send(Some(outcome));
        });
        (rx, false)
    }
}

struct RefreshTask {
    store: Arc<dyn SessionStore>,
    provider: ProviderHandle,
    stats: Arc<RefreshStats>,
    key: SessionKey,
}

impl RefreshTask {
    async fn run(&self, seen: Arc<SessionRecord>) -> Outcome {
        let current = self.store.load(&self.key).await?.ok_or(RefreshError::SessionEnded)?;
        if current.version != seen.version && current.tokens.usable(now_millis()) {
            self.stats.reused_newer_version();
            return Ok(current);
        }
        let client = self.provider.get().ok_or(RefreshError::ProviderNotReady)?.clone();
        self.stats.grant_started();
        let result = client.refresh(&current.tokens, &current.identity.subject).await;
        self.stats.grant_finished(result.as_ref().map(|_| ()));
        match result {
            Ok(tokens) => {
                let mut next = (*current).clone();
                next.tokens = tokens;
                self.write(current.version, next).await
            }
            Err(TokenError::InvalidGrant) => self.end_unless_superseded(current.version).await,
            Err(e) => Err(e.into()),
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
                // Someone wrote a newer version while we refreshed: theirs stands.
                self.stats.cas_conflict();
                self.store.load(&self.key).await?.ok_or(RefreshError::SessionEnded)
            }
            CasOutcome::Gone => Err(RefreshError::SessionEnded),
        }
    }

    /// After `invalid_grant`: a newer version means another holder refreshed (and rotated the
    /// token we presented); otherwise the session is over.
    async fn end_unless_superseded(&self, based_on: u64) -> Outcome {
        if let Some(latest) = self.store.load(&self.key).await?
            && latest.version != based_on
        {
            self.stats.reused_newer_version();
            return Ok(latest);
        }
        self.store.delete(&self.key).await?;
        self.stats.session_ended();
        tracing::info!(session = %self.key, "refresh token rejected by the OP (invalid_grant): session ended");
        Err(RefreshError::SessionEnded)
    }
}
