//! In-process store: the embedded default for one instance. Sessions die with the process.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;

use super::{
    CasOutcome, ChangeFeed, ChangeWatch, DeleteOutcome, Lifetimes, SessionKey, SessionRecord, SessionStore, StoreError,
    record::{UnixMillis, now_millis},
};

/// How often expired entries are swept out; between sweeps they are merely invisible.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Sessions (and the consumed-login markers) in process memory.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    lifetimes: Lifetimes,
    // A std RwLock, not a Tokio one: no critical section awaits, and the hot path (load) only
    // takes the read side and bumps an atomic, so concurrent requests never queue behind it.
    sessions: RwLock<HashMap<SessionKey, Entry>>,
    /// Hashes of the states of completed logins, with their expiry: a replayed callback is
    /// refused. Written only after a successful code exchange, so it grows with logins, never
    /// with unauthenticated requests.
    consumed_states: RwLock<HashMap<String, UnixMillis>>,
    /// Refresh leases: owner and expiry. In one process the refresh coordinator's single flight
    /// already serializes refreshes; the lease is kept so the store honours the whole contract.
    leases: RwLock<HashMap<SessionKey, (String, UnixMillis)>>,
    changes: ChangeFeed,
}

struct Entry {
    record: Arc<SessionRecord>,
    /// Moved forward by every load (idle lifetime), under the read lock.
    expires_at: AtomicU64,
}

impl MemoryStore {
    /// An empty store; spawns a sweeper on the current Tokio runtime when there is one.
    pub fn new(lifetimes: Lifetimes) -> Self {
        let inner = Arc::new(Inner {
            lifetimes,
            sessions: RwLock::default(),
            consumed_states: RwLock::default(),
            leases: RwLock::default(),
            changes: ChangeFeed::default(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&inner)));
        }
        Self { inner }
    }

    /// Number of live sessions (for tests and metrics).
    pub fn len(&self) -> usize {
        let now = now_millis();
        read(&self.inner.sessions).values().filter(|e| e.expires_at.load(Ordering::Relaxed) > now).count()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `load` without the future: nothing here waits.
    fn load_now(&self, key: &SessionKey) -> Option<Arc<SessionRecord>> {
        let now = now_millis();
        let sessions = read(&self.inner.sessions);
        let entry = sessions.get(key)?;
        if entry.expires_at.load(Ordering::Relaxed) <= now {
            return None;
        }
        let ttl = self.inner.lifetimes.ttl(entry.record.created_at, now);
        if ttl.is_zero() {
            return None;
        }
        entry.expires_at.store(now + ttl.as_millis() as u64, Ordering::Relaxed);
        Some(entry.record.clone())
    }
}

async fn sweep(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = now_millis();
        write(&inner.sessions).retain(|_, e| e.expires_at.load(Ordering::Relaxed) > now);
        write(&inner.consumed_states).retain(|_, expires| *expires > now);
        write(&inner.leases).retain(|_, (_, expires)| *expires > now);
    }
}

// A poisoned lock means a panic elsewhere mid-update of a HashMap insert/remove, which cannot
// leave the map half-written; carrying on beats turning one panic into a dead gateway.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load_for_request(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.load(key).await
    }

    fn load_for_request_now(&self, key: &SessionKey) -> Option<Result<Option<Arc<SessionRecord>>, StoreError>> {
        Some(Ok(self.load_now(key)))
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        Ok(self.load_now(key))
    }

    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        let now = now_millis();
        let mut record = record.clone();
        record.version = 1;
        let expires_at = now + self.inner.lifetimes.ttl(record.created_at, now).as_millis() as u64;
        let mut sessions = write(&self.inner.sessions);
        if sessions.get(key).is_some_and(|e| e.expires_at.load(Ordering::Relaxed) > now) {
            return Err(StoreError::Corrupt("session id collision".into()));
        }
        sessions.insert(key.clone(), Entry { record: Arc::new(record), expires_at: AtomicU64::new(expires_at) });
        Ok(())
    }

    async fn compare_and_set(&self, key: &SessionKey, expected: u64, record: &SessionRecord) -> Result<CasOutcome, StoreError> {
        let now = now_millis();
        let mut sessions = write(&self.inner.sessions);
        let Some(entry) = sessions.get_mut(key).filter(|e| e.expires_at.load(Ordering::Relaxed) > now) else {
            return Ok(CasOutcome::Gone);
        };
        if entry.record.version != expected {
            return Ok(CasOutcome::Conflict);
        }
        let mut record = record.clone();
        record.version = expected + 1;
        entry.record = Arc::new(record);
        drop(sessions);
        self.inner.changes.publish(key.clone());
        Ok(CasOutcome::Written(expected + 1))
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        write(&self.inner.sessions).remove(key);
        self.inner.changes.publish(key.clone());
        Ok(())
    }

    async fn delete_if_version(&self, key: &SessionKey, expected: u64) -> Result<DeleteOutcome, StoreError> {
        let now = now_millis();
        let mut sessions = write(&self.inner.sessions);
        // Same visibility as `load`: an entry past its expiry is already gone.
        let outcome = match sessions.get(key) {
            Some(e) if e.expires_at.load(Ordering::Relaxed) <= now => DeleteOutcome::Gone,
            Some(e) if e.record.version != expected => DeleteOutcome::Conflict,
            Some(_) => {
                sessions.remove(key);
                DeleteOutcome::Deleted
            }
            None => DeleteOutcome::Gone,
        };
        drop(sessions);
        if outcome == DeleteOutcome::Deleted {
            self.inner.changes.publish(key.clone());
        }
        Ok(outcome)
    }

    async fn state_consumed(&self, state_hash: &str) -> Result<bool, StoreError> {
        Ok(read(&self.inner.consumed_states).get(state_hash).is_some_and(|expires| *expires > now_millis()))
    }

    async fn consume_state(&self, state_hash: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_millis();
        let mut consumed = write(&self.inner.consumed_states);
        if consumed.get(state_hash).is_some_and(|expires| *expires > now) {
            return Ok(false);
        }
        consumed.insert(state_hash.to_string(), now + ttl.as_millis() as u64);
        Ok(true)
    }

    async fn try_lease(&self, key: &SessionKey, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_millis();
        let mut leases = write(&self.inner.leases);
        if leases.get(key).is_some_and(|(_, expires)| *expires > now) {
            return Ok(false);
        }
        leases.insert(key.clone(), (owner.to_string(), now + ttl.as_millis() as u64));
        Ok(true)
    }

    async fn renew_lease(&self, key: &SessionKey, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_millis();
        let mut leases = write(&self.inner.leases);
        match leases.get_mut(key) {
            Some((holder, expires)) if holder == owner && *expires > now => {
                *expires = now + ttl.as_millis() as u64;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, key: &SessionKey, owner: &str) -> Result<(), StoreError> {
        let mut leases = write(&self.inner.leases);
        if leases.get(key).is_some_and(|(holder, _)| holder == owner) {
            leases.remove(key);
        }
        Ok(())
    }

    fn watch(&self, key: &SessionKey) -> ChangeWatch {
        self.inner.changes.watch(key)
    }
}
