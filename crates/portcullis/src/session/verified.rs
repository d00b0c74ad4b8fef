//! Session cookie values whose MAC has already been verified, with the store key each names:
//! a browser sends the same cookie on every request, and checking its MAC and hashing its id
//! again (base64, HMAC-SHA256, SHA-256: ~7,800 instructions) bought nothing the first check had
//! not already proved.
//!
//! The cache memoizes a pure function of (MAC keys, cookie value): a value that verified under
//! a set of keys verifies under them forever (the cookie carries no expiry; liveness is the
//! store's to decide, and a logged-out or expired session is refused there whatever this
//! cache holds). So the one thing that invalidates it is a change of keys: each cache belongs
//! to one set of keys (`CookieCodec` swaps both together, `set_secrets`), and a new set starts
//! empty.
//!
//! Against an attacker:
//! - only values whose MAC verified go in, so a flood of forged cookies costs the HMAC it always
//!   cost and never a byte of memory here; the cache is bounded ([`SHARDS`] × [`PER_SHARD`]
//!   entries, ~1 MB at most), and filling it takes as many real logins;
//! - slots are found by a keyed hash (SipHash with a per-process random key) of the whole
//!   value, and a slot's value is compared with the presented one in constant time: a lookup
//!   tells nothing about the cached values beyond "this exact value was verified", which only
//!   the holder of that value can ask;
//! - eviction (an arbitrary entry of a full shard) can only cost a session one more MAC check.

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState},
    sync::{Mutex, MutexGuard},
};

use super::SessionKey;

/// Shards, each behind its own lock, so that worker threads serving different sessions seldom
/// meet on one.
pub(super) const SHARDS: usize = 16;
/// Entries per shard: 4,096 sessions in all stay verified.
pub(super) const PER_SHARD: usize = 256;

/// One verified value and the key it names.
struct Entry {
    value: Box<[u8]>,
    key: SessionKey,
}

/// The slots are already a keyed hash of the value: the inner maps use it as it is.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are hashed here; this keeps the hasher total rather than panicking.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, Entry, BuildHasherDefault<Prehashed>>;

/// See the module documentation.
pub(super) struct VerifiedCookies {
    hasher: RandomState,
    shards: [Mutex<Shard>; SHARDS],
}

impl VerifiedCookies {
    pub(super) fn new() -> Self {
        Self { hasher: RandomState::new(), shards: std::array::from_fn(|_| Mutex::default()) }
    }

    /// The key of `value` if it was verified (with this cache's keys).
    pub(super) fn get(&self, value: &str) -> Option<SessionKey> {
        let hash = self.hasher.hash_one(value.as_bytes());
        let shard = self.shard(hash);
        let entry = shard.get(&hash)?;
        // Constant time: the presented value is the attacker's, the cached one a live cookie.
        aws_lc_rs::constant_time::verify_slices_are_equal(&entry.value, value.as_bytes()).ok()?;
        Some(entry.key.clone())
    }

    /// Records that `value` verified and names `key`. Callers check the MAC first: nothing
    /// else may come in.
    pub(super) fn insert(&self, value: &str, key: &SessionKey) {
        let hash = self.hasher.hash_one(value.as_bytes());
        let mut shard = self.shard(hash);
        if shard.len() >= PER_SHARD
            && !shard.contains_key(&hash)
            && let Some(&victim) = shard.keys().next()
        {
            shard.remove(&victim);
        }
        shard.insert(hash, Entry { value: value.as_bytes().into(), key: key.clone() });
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // Bits the inner map does not use for its buckets (the low ones) or its tags (the top 7).
        let shard = &self.shards[(hash >> 32) as usize % SHARDS];
        // A panic while holding the lock cannot leave a HashMap half-written: carry on.
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries held, for tests.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionId;

    /// Only the exact value comes back out; a value one byte off, or a prefix of it, misses.
    #[test]
    fn only_the_exact_value_hits() {
        let cache = VerifiedCookies::new();
        let key = SessionId::generate().key();
        let value = "v1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
        assert!(cache.get(value).is_none());
        cache.insert(value, &key);
        let hit = cache.get(value).expect("remembered");
        assert!(hit == key && hit.can_seal(), "the key comes back whole, sealing key included");
        let off_by_one = format!("{}C", &value[..value.len() - 1]);
        for miss in [off_by_one.as_str(), &value[..value.len() - 1], "", &format!("{value}B")] {
            assert!(cache.get(miss).is_none(), "{miss:?} hit");
        }
    }

    /// However many sessions verify, the cache holds at most its bound, and the newest entry.
    #[test]
    fn bounded() {
        let cache = VerifiedCookies::new();
        let key = SessionId::generate().key();
        let total = SHARDS * PER_SHARD * 3;
        for i in 0..total {
            cache.insert(&format!("v1.{i}"), &key);
        }
        assert!(cache.len() <= SHARDS * PER_SHARD, "{} entries", cache.len());
        assert!(cache.len() >= SHARDS * PER_SHARD / 2, "{} entries: evicting far more than needed", cache.len());
        assert!(cache.get(&format!("v1.{}", total - 1)).is_some());
    }
}
