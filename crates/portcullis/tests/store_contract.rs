//! One contract, every store: the memory store and a real `redis-server` must behave alike.

use std::{sync::Arc, time::Duration};

use portcullis::session::{
    CasOutcome, Identity, Lifetimes, MemoryStore, RedisStore, SessionId, SessionRecord, SessionStore, StoreError, TokenSet, now_millis,
};
use portcullis_testkit::Redis;

fn record(access_token: &str) -> SessionRecord {
    SessionRecord {
        version: 0,
        created_at: now_millis(),
        identity: Identity { subject: "alice".into(), user: "alice".into(), email: None, groups: vec![], claims: Default::default() },
        tokens: TokenSet {
            access_token: access_token.into(),
            issued_at: now_millis(),
            expires_at: Some(now_millis() + 60_000),
            refresh_token: Some("rt".into()),
            id_token: None,
        },
        unsettled_refresh: None,
    }
}

const LONG: Lifetimes = Lifetimes { idle: Duration::from_secs(3600), absolute: Duration::from_secs(7200) };

async fn versioned_writes(store: Arc<dyn SessionStore>) {
    let key = SessionId::generate().key();
    assert!(store.load(&key).await.unwrap().is_none());
    assert_eq!(store.compare_and_set(&key, 1, &record("x")).await.unwrap(), CasOutcome::Gone);

    store.create(&key, &record("at-1")).await.unwrap();
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.tokens.access_token.as_str()), (1, "at-1"));

    assert_eq!(store.compare_and_set(&key, 1, &record("at-2")).await.unwrap(), CasOutcome::Written(2));
    // A writer still based on version 1 must not roll the session back.
    assert_eq!(store.compare_and_set(&key, 1, &record("stale")).await.unwrap(), CasOutcome::Conflict);
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.tokens.access_token.as_str()), (2, "at-2"));

    store.delete(&key).await.unwrap();
    assert!(store.load(&key).await.unwrap().is_none());
    assert_eq!(store.compare_and_set(&key, 2, &record("late")).await.unwrap(), CasOutcome::Gone);
}

/// Two writers from the same base version, at the same time: exactly one wins.
async fn concurrent_writers_one_wins(store: Arc<dyn SessionStore>) {
    for round in 0..50 {
        let key = SessionId::generate().key();
        store.create(&key, &record("base")).await.unwrap();
        let (ra, rb) = (record("a"), record("b"));
        let (a, b) = tokio::join!(store.compare_and_set(&key, 1, &ra), store.compare_and_set(&key, 1, &rb));
        let outcomes = [a.unwrap(), b.unwrap()];
        let written = outcomes.iter().filter(|o| **o == CasOutcome::Written(2)).count();
        let conflicts = outcomes.iter().filter(|o| **o == CasOutcome::Conflict).count();
        assert_eq!((written, conflicts), (1, 1), "round {round}: {outcomes:?}");
        let winner = if outcomes[0] == CasOutcome::Written(2) { "a" } else { "b" };
        assert_eq!(store.load(&key).await.unwrap().unwrap().tokens.access_token, winner, "the loser re-reads the winner's tokens");
    }
}

/// A login's state is consumed once: the first `consume_state` wins, every later one (a
/// replayed callback) is refused until the marker expires; racing callbacks: exactly one wins.
async fn states_are_consumed_once(store: Arc<dyn SessionStore>) {
    let a = format!("state-a-{}", SessionId::generate().key());
    assert!(!store.state_consumed(&a).await.unwrap());
    assert!(store.consume_state(&a, Duration::from_secs(60)).await.unwrap(), "the first callback consumes the state");
    assert!(store.state_consumed(&a).await.unwrap());
    assert!(!store.consume_state(&a, Duration::from_secs(60)).await.unwrap(), "a replayed state is refused");

    let b = format!("state-b-{}", SessionId::generate().key());
    assert!(store.consume_state(&b, Duration::from_millis(100)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!store.state_consumed(&b).await.unwrap(), "the marker expires with its TTL (memory stays bounded)");

    for round in 0..20 {
        let c = format!("state-c-{round}-{}", SessionId::generate().key());
        let (x, y) = tokio::join!(store.consume_state(&c, Duration::from_secs(60)), store.consume_state(&c, Duration::from_secs(60)));
        assert_eq!([x.unwrap(), y.unwrap()].iter().filter(|w| **w).count(), 1, "round {round}: exactly one of two racing callbacks wins");
    }
}

async fn idle_and_absolute_lifetimes(make: impl Fn(Lifetimes) -> Arc<dyn SessionStore>) {
    let store = make(Lifetimes { idle: Duration::from_millis(600), absolute: Duration::from_secs(60) });
    let key = SessionId::generate().key();
    store.create(&key, &record("x")).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(store.load(&key).await.unwrap().is_some(), "use keeps an idle session alive");
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(store.load(&key).await.unwrap().is_none(), "an unused session ends after the idle timeout");

    let store = make(Lifetimes { idle: Duration::from_secs(60), absolute: Duration::from_millis(700) });
    let key = SessionId::generate().key();
    store.create(&key, &record("x")).await.unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(store.load(&key).await.unwrap().is_some());
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.load(&key).await.unwrap().is_none(), "a used session still ends at the absolute lifetime");
}

#[tokio::test]
async fn memory_store_contract() {
    versioned_writes(Arc::new(MemoryStore::new(LONG))).await;
    concurrent_writers_one_wins(Arc::new(MemoryStore::new(LONG))).await;
    states_are_consumed_once(Arc::new(MemoryStore::new(LONG))).await;
    idle_and_absolute_lifetimes(|l| Arc::new(MemoryStore::new(l))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_contract() {
    let redis = Redis::start().await;
    let url = redis.url();
    let make = |l| -> Arc<dyn SessionStore> { Arc::new(RedisStore::new(&url, l, Duration::from_secs(2)).unwrap()) };
    versioned_writes(make(LONG)).await;
    concurrent_writers_one_wins(make(LONG)).await;
    states_are_consumed_once(make(LONG)).await;
    idle_and_absolute_lifetimes(make).await;
}

/// Redis down: operations fail fast with `Unavailable` (never hang, never panic); Redis back:
/// the same store object works again without a restart of the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_an_error_not_a_hang() {
    let mut redis = Redis::start().await;
    let store = RedisStore::new(&redis.url(), LONG, Duration::from_millis(500)).unwrap();
    let key = SessionId::generate().key();
    store.create(&key, &record("x")).await.unwrap();

    redis.stop().await;
    let started = std::time::Instant::now();
    let err = store.load(&key).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());

    redis.restart().await;
    let mut recovered = false;
    for _ in 0..40 {
        if store.create(&key, &record("y")).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the store reconnects by itself");
    assert_eq!(store.load(&key).await.unwrap().unwrap().tokens.access_token, "y");
}

/// A store that was never reachable: the gateway can start without Redis.
#[tokio::test]
async fn redis_never_reachable_fails_fast() {
    let port = portcullis_testkit::free_port();
    let store = RedisStore::new(&format!("redis://127.0.0.1:{port}"), LONG, Duration::from_millis(300)).unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(store.load(&SessionId::generate().key()).await, Err(StoreError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A waiter on one instance is woken by another instance's write through the notification,
/// well before its poll interval would have fired.
async fn writes_wake_watchers(writer: Arc<dyn SessionStore>, watcher: Arc<dyn SessionStore>) {
    let key = SessionId::generate().key();
    writer.create(&key, &record("v1")).await.unwrap();
    for (expected, write) in [(1u64, "cas"), (2, "delete")] {
        let mut watch = watcher.watch(&key);
        let writer = writer.clone();
        let key2 = key.clone();
        let started = std::time::Instant::now();
        let write_task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match write {
                "cas" => assert_eq!(writer.compare_and_set(&key2, expected, &record("v2")).await.unwrap(), CasOutcome::Written(2)),
                _ => writer.delete(&key2).await.unwrap(),
            }
        });
        watch.changed(Duration::from_secs(10)).await;
        let took = started.elapsed();
        write_task.await.unwrap();
        assert!(took < Duration::from_secs(3), "{write}: woken after {took:?}, not by the notification");
        assert!(took >= Duration::from_millis(150), "{write}: woken before the write");
    }
}

#[tokio::test]
async fn memory_store_notifies() {
    let store = Arc::new(MemoryStore::new(LONG));
    writes_wake_watchers(store.clone(), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_notifies_across_instances() {
    let redis = Redis::start().await;
    let writer: Arc<dyn SessionStore> = Arc::new(RedisStore::new(&redis.url(), LONG, Duration::from_secs(2)).unwrap());
    let watcher: Arc<dyn SessionStore> = Arc::new(RedisStore::new(&redis.url(), LONG, Duration::from_secs(2)).unwrap());
    // Let the watcher's subscription come up (it starts with the store).
    tokio::time::sleep(Duration::from_millis(300)).await;
    writes_wake_watchers(writer, watcher).await;
}
