//! The introspection cache: bounded, least recently used dropped first, keyed by a hash of
//! the token (a dump of the process memory shows no usable token), and single-flight per
//! token (a burst of requests with one new token costs the OP one introspection).
//!
//! An entry is believed for `bearer.introspection_cache_ttl`, never past the token's `exp`:
//! an expired token is refused even while its "active" answer would still be cached. A
//! revoked token is refused once its entry expires: the TTL is the revocation delay the
//! operator accepts for not asking the OP on every request. Inactive answers are kept for
//! at most [`NEGATIVE_TTL`]: a client retrying a dead token in a loop costs the OP one
//! call per few seconds, not one per request, and a token the OP did not know yet (replica
//! lag) is not refused for long. OP failures are never cached.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::OnceCell, time::Instant};

use super::{
    BearerError,
    introspect::{Answer, Introspected},
};

/// Longest an inactive answer is reused.
pub(super) const NEGATIVE_TTL: Duration = Duration::from_secs(5);

type Key = [u8; 32];
type Flight = Arc<OnceCell<Result<Arc<Introspected>, BearerError>>>;

pub(super) struct IntrospectionCache {
    capacity: usize,
    ttl: Duration,
    lru: Mutex<Lru>,
    flights: Mutex<HashMap<Key, Flight>>,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<Key, (u64, Entry)>,
    /// Use tick → key; the first is the least recently used.
    order: BTreeMap<u64, Key>,
    tick: u64,
}

struct Entry {
    value: Arc<Introspected>,
    until: Instant,
}

impl IntrospectionCache {
    pub(super) fn new(capacity: usize, ttl: Duration) -> Self {
        Self { capacity, ttl, lru: Mutex::new(Lru::default()), flights: Mutex::new(HashMap::new()) }
    }

    fn key(token: &str) -> Key {
        crate::crypto::labelled_sha256(b"portcullis introspection cache", token.as_bytes())
    }

    /// The cached answer for `token`, or `fetch`'s (shared with concurrent callers).
    pub(super) async fn get_or_fetch<F, Fut>(&self, token: &str, fetch: F) -> Result<Arc<Introspected>, BearerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Answer, BearerError>>,
    {
        let key = Self::key(token);
        if let Some(hit) = self.get(&key) {
            return Ok(hit);
        }
        let flight = self.flights.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone();
        let result = flight
            .get_or_init(|| async {
                // A flight that finished between our miss and our joining has filled the cache.
                if let Some(hit) = self.get(&key) {
                    return Ok(hit);
                }
                let answer = fetch().await?;
                let value = Arc::new(answer.value);
                self.put(key, value.clone(), answer.exp);
                Ok(value)
            })
            .await
            .clone();
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            flights.remove(&key);
        }
        result
    }

    fn get(&self, key: &Key) -> Option<Arc<Introspected>> {
        let mut lru = self.lru.lock().unwrap_or_else(|e| e.into_inner());
        let lru = &mut *lru;
        let (tick, entry) = lru.entries.get(key)?;
        let tick = *tick;
        if entry.until <= Instant::now() {
            lru.entries.remove(key);
            lru.order.remove(&tick);
            return None;
        }
        let value = entry.value.clone();
        lru.tick += 1;
        let now_tick = lru.tick;
        lru.order.remove(&tick);
        lru.order.insert(now_tick, *key);
        if let Some(slot) = lru.entries.get_mut(key) {
            slot.0 = now_tick;
        }
        Some(value)
    }

    fn put(&self, key: Key, value: Arc<Introspected>, exp: Option<u64>) {
        let ttl = match &*value {
            Introspected::Active { .. } => self.ttl,
            Introspected::Refused(_) => self.ttl.min(NEGATIVE_TTL),
        };
        // Never past `exp` (a clock reading in seconds; the remainder is rounded down).
        let ttl = match exp {
            Some(exp) => ttl.min(Duration::from_millis((exp * 1000).saturating_sub(crate::session::now_millis()))),
            None => ttl,
        };
        if self.capacity == 0 || ttl.is_zero() {
            return;
        }
        let mut lru = self.lru.lock().unwrap_or_else(|e| e.into_inner());
        let lru = &mut *lru;
        if let Some((old_tick, _)) = lru.entries.remove(&key) {
            lru.order.remove(&old_tick);
        }
        while lru.entries.len() >= self.capacity {
            let Some((_, oldest)) = lru.order.pop_first() else { break };
            lru.entries.remove(&oldest);
        }
        lru.tick += 1;
        lru.order.insert(lru.tick, key);
        lru.entries.insert(key, (lru.tick, Entry { value, until: Instant::now() + ttl }));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lru.lock().unwrap().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn active() -> Answer {
        Answer { value: Introspected::Refused("stand-in"), exp: None }
    }

    async fn fetch_counting(cache: &IntrospectionCache, token: &str, calls: &AtomicUsize) {
        cache
            .get_or_fetch(token, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(active())
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn bounded_least_recently_used_dropped() {
        let cache = IntrospectionCache::new(2, Duration::from_secs(60));
        let calls = AtomicUsize::new(0);
        fetch_counting(&cache, "a", &calls).await;
        fetch_counting(&cache, "b", &calls).await;
        fetch_counting(&cache, "a", &calls).await; // hit; "b" is now the least recent
        fetch_counting(&cache, "c", &calls).await; // evicts "b"
        assert_eq!(cache.len(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        fetch_counting(&cache, "a", &calls).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "a was kept");
        fetch_counting(&cache, "b", &calls).await;
        assert_eq!(calls.load(Ordering::SeqCst), 4, "b was dropped");
    }

    #[tokio::test]
    async fn never_past_exp_and_failures_not_cached() {
        let cache = IntrospectionCache::new(10, Duration::from_secs(3600));
        let now = crate::session::now_millis() / 1000;
        let calls = AtomicUsize::new(0);
        for _ in 0..2 {
            cache
                .get_or_fetch("t", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(Answer { value: Introspected::Refused("x"), exp: Some(now) })
                })
                .await
                .unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "an answer for a token at its exp is not kept");
        for _ in 0..2 {
            let r = cache
                .get_or_fetch("u", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(BearerError::Unavailable("down".into()))
                })
                .await;
            assert!(r.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4, "OP failures are not cached");
    }

    #[tokio::test]
    async fn single_flight_per_token() {
        let cache = Arc::new(IntrospectionCache::new(10, Duration::from_secs(60)));
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_fetch("t", || async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Ok(active())
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_key_is_not_the_token() {
        let key = IntrospectionCache::key("secret-token");
        assert!(!key.windows(6).any(|w| w == b"secret"));
        assert_ne!(key, IntrospectionCache::key("secret-token2"));
    }
}
