//! The refresh coordinator driven from Rust over the memory store, with a store that can be
//! made to panic: what happens to a flight whose task dies.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::*;
use crate::session::{ChangeWatch, DeleteOutcome, Identity, Lifetimes, MemoryStore, SessionId, TokenSet};

/// The memory store, except that the first `load` after `arm` panics (a bug in a store, a
/// decoder, the OP client: anything inside the spawned refresh task).
struct PanicOnce {
    inner: MemoryStore,
    armed: AtomicBool,
}

#[async_trait]
impl SessionStore for PanicOnce {
    async fn load_for_request(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.load(key).await
    }
    /// Through `load`, where this store does its scripted work.
    fn load_for_request_now(&self, _key: &SessionKey) -> Option<Result<Option<Arc<SessionRecord>>, StoreError>> {
        None
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("injected panic inside the refresh task");
        }
        self.inner.load(key).await
    }
    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        self.inner.create(key, record).await
    }
    async fn compare_and_set(&self, key: &SessionKey, expected: u64, record: &SessionRecord) -> Result<CasOutcome, StoreError> {
        self.inner.compare_and_set(key, expected, record).await
    }
    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn delete_if_version(&self, key: &SessionKey, expected: u64) -> Result<DeleteOutcome, StoreError> {
        self.inner.delete_if_version(key, expected).await
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

fn expired_record() -> SessionRecord {
    let now = now_millis();
    SessionRecord {
        version: 0,
        created_at: now,
        identity: Identity { subject: "u".into(), user: "u".into(), email: None, groups: Vec::new(), claims: Default::default() },
        tokens: TokenSet {
            access_token: "at".into(),
            issued_at: now - 10_000,
            expires_at: Some(now - 1_000),
            refresh_token: Some("rt".into()),
            id_token: None,
        },
        unsettled_refresh: None,
        forward: Default::default(),
    }
}

/// Item 1 (server-side stores): a panic inside the refresh task must not leave its flight
/// registered. The requests of that flight get `Aborted` at once; the next request starts a
/// new refresh (here it reaches the OP handle, which is not discovered: `ProviderNotReady`)
/// instead of joining a dead flight and getting 503 until a restart.
#[tokio::test]
async fn a_panicking_refresh_task_leaves_no_dead_flight() {
    let lifetimes = Lifetimes { idle: Duration::from_secs(600), absolute: Duration::from_secs(3600) };
    let store = Arc::new(PanicOnce { inner: MemoryStore::new(lifetimes), armed: AtomicBool::new(false) });
    let key = SessionId::generate().key();
    store.create(&key, &expired_record()).await.unwrap();
    let seen = store.load(&key).await.unwrap().unwrap();
    let timing = Timing {
        max_wait: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(1),
        poll_interval: Duration::from_millis(50),
        settle_after_unknown: Duration::from_secs(1),
        op_answer_timeout: Duration::from_secs(5),
        clock_skew: Duration::from_secs(60),
    };
    let refresher = Refresher::new(store.clone(), ProviderHandle::default(), timing, Arc::default());
    store.armed.store(true, Ordering::SeqCst);
    let first = refresher.refresh(&key, seen.clone()).await;
    assert!(matches!(first, Err(RefreshError::Aborted)), "{first:?}");
    let second = refresher.refresh(&key, seen).await;
    assert!(matches!(second, Err(RefreshError::ProviderNotReady)), "a new refresh ran: {second:?}");
}

/// Item 10 (clocks): a version that appeared while this request waited was written after it
/// started, so its tokens are new, whatever the writer's clock said. Written by an instance
/// whose clock lags ours by up to `oidc.clock_skew`, its `expires_at` may already be past on
/// our clock: it is used, not refreshed a second time. Beyond the skew allowance it is
/// refreshed (here the OP handle is not ready, so "refreshed" shows as `ProviderNotReady`).
#[tokio::test]
async fn a_new_version_from_a_lagging_clock_is_used_within_the_skew_allowance() {
    let lifetimes = Lifetimes { idle: Duration::from_secs(600), absolute: Duration::from_secs(3600) };
    let skew = Duration::from_secs(60);
    // (how far the writer's clock lags ours, token lifetime, a second grant expected)
    let cases = [
        (Duration::ZERO, Duration::from_secs(10), false),
        (Duration::from_secs(20), Duration::from_secs(10), false), // expired 10 s ago on our clock
        (Duration::from_secs(59), Duration::from_secs(10), false),
        (Duration::from_secs(90), Duration::from_secs(10), true), // beyond oidc.clock_skew
    ];
    for (lag, lifetime, second_grant) in cases {
        let store = Arc::new(MemoryStore::new(lifetimes));
        let key = SessionId::generate().key();
        store.create(&key, &expired_record()).await.unwrap();
        let seen = store.load(&key).await.unwrap().unwrap();
        // Another instance refreshed meanwhile, stamping the tokens with its own clock.
        let mut theirs = (*seen).clone();
        let their_now = now_millis() - lag.as_millis() as u64;
        theirs.tokens.access_token = "at-theirs".into();
        theirs.tokens.refresh_token = Some("rt-theirs".into());
        theirs.tokens.issued_at = their_now;
        theirs.tokens.expires_at = Some(their_now + lifetime.as_millis() as u64);
        assert_eq!(store.compare_and_set(&key, 1, &theirs).await.unwrap(), CasOutcome::Written(2));
        let timing = Timing {
            max_wait: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(1),
            poll_interval: Duration::from_millis(50),
            settle_after_unknown: Duration::from_secs(1),
            op_answer_timeout: Duration::from_secs(5),
            clock_skew: skew,
        };
        let refresher = Refresher::new(store.clone(), ProviderHandle::default(), timing, Arc::default());
        let outcome = refresher.refresh(&key, seen).await;
        match (second_grant, outcome) {
            (false, Ok(record)) => assert_eq!(record.tokens.access_token, "at-theirs", "lag {lag:?}"),
            (true, Err(RefreshError::ProviderNotReady)) => {}
            (_, other) => panic!("writer's clock {lag:?} behind: {other:?}"),
        }
    }
}
