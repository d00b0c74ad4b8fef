//! The read cache in front of the Redis store: hot sessions served from process memory, so a
//! request costs no `GETEX` and no AES-GCM open, invalidated by the change feed the store's
//! pub/sub listener already fills, with the idle clock renewed in Redis at most once per
//! `session.read_cache.renew_interval` per session.
//!
//! A wrapper ([`CachedStore`]) rather than code inside `redis.rs`: the cache is a policy over
//! any store with a change feed (the contract is the trait's), it keeps the Redis plumbing free
//! of it, and the only thing it needs from Redis is the feed with its liveness.
//!
//! # What a cached copy may be used for
//!
//! Only [`SessionStore::load_for_request`] (the authenticator's one read per request) ever
//! answers from the cache. Every read that decides on a write (the refresh coordinator, sign-out,
//! version checks) goes through [`SessionStore::load`], straight to Redis. A copy is handed out
//! only while all of these hold, else the request reads Redis (and refills the copy):
//!
//! 1. **Its access token is not yet due for refresh, by this instance's clock plus
//!    `oidc.clock_skew`.** This is what makes the cache safe against a refresh committed on another
//!    instance whose notification has not arrived (pub/sub is asynchronous; a connection can die
//!    without anyone noticing for up to 5 s). A refresh is only ever started for a token that is
//!    due (inside the `refresh.leeway_*` window) or expired by the clock of the instance that
//!    starts it, and that clock is at most `clock_skew` ahead of ours (the bound the refresh
//!    coordinator already assumes). So once any instance may have committed a refresh of this
//!    token, it is due by `now + clock_skew` here too, and the copy is no longer served: **the
//!    cache never serves a token older than a committed refresh**, notification or not. Claims
//!    change only with a refresh (same record, same write). A write that keeps the tokens
//!    (`unsettled_refresh`) changes nothing a request forwards. (Assumes every instance runs
//!    the same `refresh.leeway_*`.)
//! 2. **It is younger than `renew_interval`.** The copy was filled by a `GETEX` that restarted the
//!    idle clock in Redis; the first request after the interval reads Redis again and so renews it.
//!    A session in use is therefore renewed at least once per interval, which validation keeps
//!    under half the idle timeout, so its TTL never lapses while it is used; the idle timeout
//!    ends an unused session between `idle_timeout - renew_interval` and `idle_timeout` after its
//!    last request (never later), and no copy outlives the key it was read from.
//! 3. **The absolute lifetime has not passed** (checked on every hit, as Redis' load does).
//! 4. **The change feed is live and has stayed live since the copy was filled** (the feed's
//!    epoch, see `changes.rs`): while the listener is down or restarting, every request reads
//!    Redis, and copies filled before a disconnection are never served again.
//!
//! Deletes (logout on any instance, a dead refresh token, a replaced login) and every other write
//! publish a notification; its arrival removes the copy. A write through this instance removes
//! it at once. **Remaining window:** a session deleted on another instance may still be served
//! here until the notification arrives (milliseconds), or, if this instance's pub/sub connection
//! died without its listener noticing yet, until the copy is `renew_interval` old or the listener
//! notices (ping every 3 s, 2 s to answer), whichever comes first.
//!
//! A fill racing a notification: the shard's generation is read before the `GETEX` and checked
//! under the write lock before inserting; an invalidation bumps it, so a copy read before a
//! write whose notification was processed meanwhile is dropped instead of cached.
//!
//! Memory: at most `max_entries` copies (16 shards, clock eviction). The plaintext record of a
//! hot session lives in process memory, as it does with the memory store; the cache's keys are
//! the store keys' text only (no session id).

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokio::{sync::broadcast, time::Instant};

use super::{
    CasOutcome, ChangeFeed, ChangeWatch, DeleteOutcome, Freshness, Lifetimes, SessionKey, SessionRecord, SessionStore, StoreError,
    changes::Change, now_millis,
};
use crate::config::Config;

/// Shards of the map: requests for different sessions rarely meet on one lock.
const SHARDS: usize = 16;

/// What a copy may be served for (from the config).
#[derive(Debug, Clone, Copy)]
pub struct ReadCacheSettings {
    /// Most copies kept.
    pub max_entries: usize,
    /// Longest a copy is served without reading Redis (which renews the idle clock).
    pub renew_interval: Duration,
    /// Session lifetimes (the absolute one is checked on every hit).
    pub lifetimes: Lifetimes,
    /// `refresh.leeway_fraction`, `refresh.leeway_max`: when a token becomes due.
    pub leeway_fraction: f64,
    /// See `leeway_fraction`.
    pub leeway_max: Duration,
    /// `oidc.clock_skew`: how far ahead another instance's clock may run.
    pub clock_skew: Duration,
}

impl ReadCacheSettings {
    /// The settings `config` gives (`session.read_cache`, `session.*_timeout`, `refresh.leeway_*`,
    /// `oidc.clock_skew`).
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_entries: config.session.read_cache.max_entries,
            renew_interval: config.session.read_cache.renew_interval,
            lifetimes: Lifetimes { idle: config.session.idle_timeout, absolute: config.session.absolute_timeout },
            leeway_fraction: config.refresh.leeway_fraction,
            leeway_max: config.refresh.leeway_max,
            clock_skew: config.oidc.clock_skew,
        }
    }

    /// Whether `record` may be handed out from memory at `now` (rules 1 and 3 above).
    fn servable(&self, record: &SessionRecord, now: u64) -> bool {
        let ahead = now.saturating_add(self.clock_skew.as_millis() as u64);
        !self.lifetimes.ttl(record.created_at, now).is_zero()
            && record.tokens.freshness(ahead, self.leeway_fraction, self.leeway_max) == Freshness::Fresh
    }
}

/// Counters since start (tests, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCacheStats {
    /// Requests answered from memory.
    pub hits: u64,
    /// Requests that read Redis with the feed live (no copy, or one no longer servable).
    pub misses: u64,
    /// Requests that read Redis because the change feed was not live.
    pub bypassed: u64,
    /// Copies removed by a notification or a write through this instance.
    pub invalidations: u64,
    /// Whole-cache flushes (listener resubscribed, notifications lagged).
    pub flushes: u64,
    /// Copies dropped to stay within `max_entries`.
    pub evictions: u64,
    /// Copies held now.
    pub entries: u64,
}

/// A session store with a read cache in front (see the module documentation).
pub struct CachedStore<S> {
    inner: S,
    state: Arc<State>,
}

struct State {
    shards: Vec<Shard>,
    feed: ChangeFeed,
    settings: ReadCacheSettings,
    per_shard: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
    evictions: AtomicU64,
}

struct Shard {
    // A std RwLock: no critical section awaits, and a hit takes only the read side.
    map: RwLock<HashMap<SessionKey, Entry>>,
    /// Bumped (under the write lock) by every invalidation in this shard; a fill that read it
    /// before its `GETEX` inserts only if it is unchanged.
    generation: AtomicU64,
}

struct Entry {
    record: Arc<SessionRecord>,
    /// Taken before the `GETEX` that renewed the idle clock: the key lives at least
    /// `idle_timeout` past it.
    fetched_at: Instant,
    /// The feed's live epoch when the fill started.
    epoch: u64,
    /// Clock bit: used since the last eviction sweep.
    used: AtomicBool,
}

impl<S: SessionStore> CachedStore<S> {
    /// `inner` with a read cache invalidated by `feed` (the feed `inner`'s writes, and those of
    /// every other instance, are announced on). Spawns the invalidation task: call it inside a
    /// Tokio runtime.
    pub fn new(inner: S, feed: ChangeFeed, settings: ReadCacheSettings) -> Self {
        let per_shard = settings.max_entries.div_ceil(SHARDS).max(1);
        let state = Arc::new(State {
            shards: (0..SHARDS).map(|_| Shard { map: RwLock::default(), generation: AtomicU64::new(0) }).collect(),
            settings,
            per_shard,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bypassed: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            feed: feed.clone(),
        });
        // Subscribed here, before any fill can happen, so no notification after construction
        // is missed.
        let changes = feed.subscribe_all();
        tokio::spawn(invalidate_on_changes(Arc::downgrade(&state), changes));
        Self { inner, state }
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Counters since start.
    pub fn stats(&self) -> ReadCacheStats {
        let s = &self.state;
        ReadCacheStats {
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            bypassed: s.bypassed.load(Ordering::Relaxed),
            invalidations: s.invalidations.load(Ordering::Relaxed),
            flushes: s.flushes.load(Ordering::Relaxed),
            evictions: s.evictions.load(Ordering::Relaxed),
            entries: s.shards.iter().map(|sh| read(&sh.map).len() as u64).sum(),
        }
    }
}

impl State {
    fn shard(&self, key: &SessionKey) -> &Shard {
        // Store keys are base64 of a SHA-256: their first character is already uniform.
        let first = key.as_str().as_bytes().first().copied().unwrap_or(0);
        &self.shards[first as usize % SHARDS]
    }

    fn hit(&self, key: &SessionKey, epoch: u64) -> Option<Arc<SessionRecord>> {
        let map = read(&self.shard(key).map);
        let entry = map.get(key)?;
        if entry.epoch != epoch || entry.fetched_at.elapsed() >= self.settings.renew_interval {
            return None;
        }
        if !self.settings.servable(&entry.record, now_millis()) {
            return None;
        }
        if !entry.used.load(Ordering::Relaxed) {
            entry.used.store(true, Ordering::Relaxed);
        }
        Some(entry.record.clone())
    }

    fn fill(&self, key: &SessionKey, record: &Arc<SessionRecord>, generation: u64, epoch: u64, fetched_at: Instant) {
        let shard = self.shard(key);
        let mut map = write(&shard.map);
        // Both checked under the write lock an invalidation takes: a notification processed
        // since the read began means the copy may be older than what Redis holds now.
        if shard.generation.load(Ordering::Acquire) != generation || self.feed.live_epoch() != Some(epoch) {
            return;
        }
        if map.len() >= self.per_shard && !map.contains_key(key) {
            self.evict(&mut map, epoch);
        }
        // The key's text only: the cache holds no session id.
        map.insert(
            SessionKey::from_stored(key.as_str()),
            Entry { record: record.clone(), fetched_at, epoch, used: AtomicBool::new(false) },
        );
    }

    /// Makes room in a full shard: a clock sweep that drops an eighth of it, amortized over
    /// the fills it makes room for. Copies no longer servable go first, then those unused since
    /// the sweep last passed them (the others passed lose their bit); if every copy was used, an
    /// arbitrary one.
    fn evict(&self, map: &mut HashMap<SessionKey, Entry>, epoch: u64) {
        let before = map.len();
        let target = (before / 8).max(1);
        let renew = self.settings.renew_interval;
        let mut removed = 0;
        map.retain(|_, e| {
            if removed >= target {
                return true;
            }
            let stale = e.epoch != epoch || e.fetched_at.elapsed() >= renew;
            if stale || !e.used.swap(false, Ordering::Relaxed) {
                removed += 1;
                return false;
            }
            true
        });
        if removed == 0
            && let Some(victim) = map.keys().next().cloned()
        {
            map.remove(&victim);
        }
        self.evictions.fetch_add((before - map.len()) as u64, Ordering::Relaxed);
    }

    fn remove(&self, key: &SessionKey) {
        write(&self.shard(key).map).remove(key);
    }

    /// A change of `key` was announced (or written here): drop its copy and refuse fills that
    /// read before it.
    fn invalidate(&self, key: &SessionKey) {
        let shard = self.shard(key);
        let mut map = write(&shard.map);
        shard.generation.fetch_add(1, Ordering::AcqRel);
        if map.remove(key).is_some() {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Anything may have changed: drop every copy, refuse every fill in flight.
    fn flush(&self) {
        for shard in &self.shards {
            let mut map = write(&shard.map);
            shard.generation.fetch_add(1, Ordering::AcqRel);
            map.clear();
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Applies the feed to the cache until the cache is dropped.
async fn invalidate_on_changes(state: Weak<State>, mut changes: broadcast::Receiver<Change>) {
    loop {
        let change = changes.recv().await;
        let Some(state) = state.upgrade() else { return };
        match change {
            Ok(Change::Session(key)) => state.invalidate(&key),
            // `Any`: the listener resubscribed after notifications may have been lost. `Lagged`:
            // this task fell behind the fan-out and missed some. Either way nothing cached can
            // be trusted.
            Ok(Change::Any) | Err(broadcast::error::RecvError::Lagged(_)) => state.flush(),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl<S: SessionStore> SessionStore for CachedStore<S> {
    /// Always Redis (the refresh coordinator, sign-out and version checks read here).
    async fn load(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.inner.load(key).await
    }

    async fn load_for_request(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let state = &self.state;
        let Some(epoch) = state.feed.live_epoch() else {
            state.bypassed.fetch_add(1, Ordering::Relaxed);
            return self.inner.load(key).await;
        };
        if let Some(record) = state.hit(key, epoch) {
            state.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(record));
        }
        state.misses.fetch_add(1, Ordering::Relaxed);
        let generation = state.shard(key).generation.load(Ordering::Acquire);
        let fetched_at = Instant::now();
        // `load`, not a read without renewal: this is the batched renewal of the idle clock.
        let loaded = self.inner.load(key).await?;
        match &loaded {
            Some(record) if state.settings.servable(record, now_millis()) => state.fill(key, record, generation, epoch, fetched_at),
            _ => state.remove(key),
        }
        Ok(loaded)
    }

    /// A hit, counted as one; anything else (no live feed, a miss) is left to
    /// `load_for_request`, which checks and counts again.
    fn load_for_request_now(&self, key: &SessionKey) -> Option<Result<Option<Arc<SessionRecord>>, StoreError>> {
        let state = &self.state;
        let record = state.hit(key, state.feed.live_epoch()?)?;
        state.hits.fetch_add(1, Ordering::Relaxed);
        Some(Ok(Some(record)))
    }

    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        let result = self.inner.create(key, record).await;
        self.state.invalidate(key);
        result
    }

    // Every write invalidates after it returned, whatever its outcome (an error may still have
    // landed): a fill that read before the write is refused, one after it reads the write.
    async fn compare_and_set(&self, key: &SessionKey, expected: u64, record: &SessionRecord) -> Result<CasOutcome, StoreError> {
        let result = self.inner.compare_and_set(key, expected, record).await;
        self.state.invalidate(key);
        result
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        let result = self.inner.delete(key).await;
        self.state.invalidate(key);
        result
    }

    async fn delete_if_version(&self, key: &SessionKey, expected: u64) -> Result<DeleteOutcome, StoreError> {
        let result = self.inner.delete_if_version(key, expected).await;
        self.state.invalidate(key);
        result
    }

    async fn state_consumed(&self, state_hash: &str) -> Result<bool, StoreError> {
        self.inner.state_consumed(state_hash).await
    }

    async fn consume_state(&self, state_hash: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.consume_state(state_hash, ttl).await
    }

    async fn try_lease(&self, key: &SessionKey, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.try_lease(key, owner, ttl).await
    }

    async fn renew_lease(&self, key: &SessionKey, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.renew_lease(key, owner, ttl).await
    }

    async fn release_lease(&self, key: &SessionKey, owner: &str) -> Result<(), StoreError> {
        self.inner.release_lease(key, owner).await
    }

    fn watch(&self, key: &SessionKey) -> ChangeWatch {
        self.inner.watch(key)
    }
}
