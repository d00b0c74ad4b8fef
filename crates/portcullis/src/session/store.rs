//! The one trait every session store implements.

use std::{sync::Arc, time::Duration};

use super::{ChangeWatch, SessionKey, SessionRecord, record::UnixMillis};
use async_trait::async_trait;

/// A store could not answer. Never a reason to end a session: the request gets a 503 and the
/// session stays (DESIGN invariant 5).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Connection refused, reset, or the operation timed out.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be decoded (written by an incompatible version?).
    #[error("session store returned an undecodable record: {0}")]
    Corrupt(String),
    /// A record was to be read or written through a key without its sealing key (one parsed
    /// back from a notification): a bug in the caller, refused rather than written in clear.
    #[error("session key without its sealing key: the record cannot be read or written")]
    NoSealingKey,
}

/// Result of a compare-and-set write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// Written; the record now has this version.
    Written(u64),
    /// Someone wrote first: the stored version differs from the expected one. Re-read.
    Conflict,
    /// The session no longer exists (logged out or expired).
    Gone,
}

/// Result of a delete-if-version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The session was at the expected version and is now deleted (waiters notified).
    Deleted,
    /// The session has another version: someone wrote since it was read. Nothing deleted.
    Conflict,
    /// There was nothing to delete (logged out, expired, or deleted by someone else).
    Gone,
}

/// How long sessions live; stores derive their record TTLs from it.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Unused this long, a session ends.
    pub idle: Duration,
    /// This long after login, a session ends.
    pub absolute: Duration,
}

impl Lifetimes {
    /// Time left for a record created at `created_at`, given idle and absolute limits: the TTL
    /// a store gives the record when it is written or used. Zero means expired.
    pub fn ttl(&self, created_at: UnixMillis, now: UnixMillis) -> Duration {
        let age = Duration::from_millis(now.saturating_sub(created_at));
        self.idle.min(self.absolute.saturating_sub(age))
    }
}

/// Session storage. Every write of an existing session is a compare-and-set on its version.
///
/// **Invariant:** no implementation overwrites a session without checking the version it was
/// based on; `create` refuses an existing key.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The session, or `None` when it does not exist or has expired. Counts as use: the idle
    /// lifetime restarts. One round trip at most: this is on every request's path.
    async fn load(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError>;

    /// [`Self::load`] for a request about to be forwarded: may answer from an in-process copy
    /// (`read_cache`) that is only ever handed out while its access token is not yet due for
    /// refresh, and may renew the idle clock only every few seconds. Everything that decides on
    /// a write (the refresh coordinator, logout, the version checks) uses `load`. No default:
    /// a wrapper store that fell back to `load` would silently bypass an inner read cache (the
    /// metrics wrapper once did), so every store says what it does.
    async fn load_for_request(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError>;

    /// [`Self::load_for_request`]'s answer when it needs no waiting: `Some` from the memory
    /// store always and from the read cache on a hit; `None` when the answer takes I/O, and the
    /// caller then awaits `load_for_request` (which does the same again, so a `Some` must mean
    /// exactly what `load_for_request` would have answered). Every request asks this first:
    /// it spares the two boxed futures a wrapped `async_trait` call costs (~400 instructions).
    /// No default, for the reason `load_for_request` has none: a wrapper that forgot it would
    /// put every request on the slow path unseen.
    fn load_for_request_now(&self, key: &SessionKey) -> Option<Result<Option<Arc<SessionRecord>>, StoreError>>;

    /// Stores a new session at version 1.
    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError>;

    /// Replaces the session with `record` if its stored version is still `expected`.
    async fn compare_and_set(&self, key: &SessionKey, expected: u64, record: &SessionRecord) -> Result<CasOutcome, StoreError>;

    /// Removes the session whatever its version: the user's own logout, which must win over
    /// any refresh in flight.
    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError>;

    /// Removes the session only if its stored version is still `expected`, and notifies its
    /// waiters. Every delete that follows from what a *copy* of the session said (its refresh
    /// token is dead, its token expired with nothing to refresh it) goes through here: a holder
    /// whose lease lapsed must not delete the newer session another holder wrote meanwhile.
    async fn delete_if_version(&self, key: &SessionKey, expected: u64) -> Result<DeleteOutcome, StoreError>;

    /// Whether the login with this state hash has already completed (a read, no write: the
    /// callback asks before it contacts the OP, so a replayed callback never reaches the OP,
    /// which would revoke the tokens of the first use of the code).
    async fn state_consumed(&self, state_hash: &str) -> Result<bool, StoreError>;

    /// Marks the login with this state hash as completed for `ttl`, unless it already is:
    /// `true` when this call marked it, `false` when it was already consumed (a replayed
    /// callback). Atomic: of two concurrent callbacks with one state, one gets `true`.
    ///
    /// Called only after the code exchange succeeded, so no unauthenticated request ever
    /// writes server state; the pending login itself lives sealed in the browser's cookie.
    async fn consume_state(&self, state_hash: &str, ttl: Duration) -> Result<bool, StoreError>;

    // Refresh coordination across instances (DESIGN.md, refresh protocol steps 3–5).

    /// Takes the refresh lease of a session for `ttl` unless someone else holds it.
    async fn try_lease(&self, key: &SessionKey, owner: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Extends the lease if `owner` still holds it; `false` means it was lost.
    async fn renew_lease(&self, key: &SessionKey, owner: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Releases the lease if `owner` holds it (compare-and-delete: never someone else's).
    async fn release_lease(&self, key: &SessionKey, owner: &str) -> Result<(), StoreError>;

    /// Watches a session for new versions and deletion, on this instance and on others.
    fn watch(&self, key: &SessionKey) -> ChangeWatch;
}
