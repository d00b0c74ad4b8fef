//! One contract, every store: the memory store and a real `redis-server` must behave alike.

use std::{sync::Arc, time::Duration};

use portcullis::session::{
    CasOutcome, DeleteOutcome, Identity, Lifetimes, MemoryStore, RedisStore, SessionId, SessionRecord, SessionStore, StoreError, TokenSet,
    now_millis,
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
        forward: Default::default(),
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

/// A request's read, as `Authenticator::authenticate` does it: without waiting where the store
/// can answer so, else awaited.
async fn request_read(store: &dyn SessionStore, key: &portcullis::session::SessionKey) -> Option<Arc<SessionRecord>> {
    let loaded = match store.load_for_request_now(key) {
        Some(loaded) => loaded,
        None => store.load_for_request(key).await,
    };
    loaded.unwrap()
}

async fn idle_and_absolute_lifetimes(make: impl Fn(Lifetimes) -> Arc<dyn SessionStore>) {
    let store = make(Lifetimes { idle: Duration::from_millis(600), absolute: Duration::from_secs(60) });
    let key = SessionId::generate().key();
    store.create(&key, &record("x")).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(request_read(&*store, &key).await.is_some(), "use keeps an idle session alive");
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(request_read(&*store, &key).await.is_none(), "an unused session ends after the idle timeout");
    store.delete(&key).await.unwrap();
    let key = SessionId::generate().key();
    store.create(&key, &record("y")).await.unwrap();
    assert_eq!(request_read(&*store, &key).await.map(|r| r.tokens.access_token.clone()).as_deref(), Some("y"));
    store.delete(&key).await.unwrap();
    assert!(request_read(&*store, &key).await.is_none(), "a deleted session is not served");

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

/// Delete-if-version: a stale copy cannot delete the newer version another holder wrote; the
/// version read is deleted (and its waiters woken); racing a CAS from the same version,
/// exactly one of the two takes effect.
async fn deletes_only_the_version_read(store: Arc<dyn SessionStore>) {
    let key = SessionId::generate().key();
    assert_eq!(store.delete_if_version(&key, 1).await.unwrap(), DeleteOutcome::Gone);
    store.create(&key, &record("v1")).await.unwrap();
    assert_eq!(store.compare_and_set(&key, 1, &record("v2")).await.unwrap(), CasOutcome::Written(2));
    assert_eq!(store.delete_if_version(&key, 1).await.unwrap(), DeleteOutcome::Conflict, "a holder that read version 1");
    assert_eq!(store.load(&key).await.unwrap().unwrap().tokens.access_token, "v2", "the newer session survives");

    let mut watch = store.watch(&key);
    let started = std::time::Instant::now();
    assert_eq!(store.delete_if_version(&key, 2).await.unwrap(), DeleteOutcome::Deleted);
    watch.changed(Duration::from_secs(10)).await;
    assert!(started.elapsed() < Duration::from_secs(3), "the delete notifies waiters");
    assert!(store.load(&key).await.unwrap().is_none());
    assert_eq!(store.delete_if_version(&key, 2).await.unwrap(), DeleteOutcome::Gone);

    for round in 0..30 {
        let key = SessionId::generate().key();
        store.create(&key, &record("base")).await.unwrap();
        let new = record("new");
        let (deleted, written) = tokio::join!(store.delete_if_version(&key, 1), store.compare_and_set(&key, 1, &new));
        let survivor = store.load(&key).await.unwrap();
        match (deleted.unwrap(), written.unwrap()) {
            (DeleteOutcome::Deleted, CasOutcome::Gone) => assert!(survivor.is_none(), "round {round}"),
            (DeleteOutcome::Conflict, CasOutcome::Written(2)) => {
                assert_eq!(survivor.unwrap().tokens.access_token, "new", "round {round}")
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
}

/// Renew and release are owner-checked: a holder whose lease lapsed can neither extend nor
/// delete the lease a newcomer took, and a non-holder cannot release a live lease.
async fn leases_are_owner_checked(store: Arc<dyn SessionStore>) {
    let key = SessionId::generate().key();
    let short = Duration::from_millis(300);
    assert!(store.try_lease(&key, "a", short).await.unwrap());
    assert!(!store.try_lease(&key, "b", short).await.unwrap(), "held");
    assert!(!store.renew_lease(&key, "b", Duration::from_secs(5)).await.unwrap(), "b does not hold it");
    store.release_lease(&key, "b").await.unwrap();
    assert!(!store.try_lease(&key, "c", short).await.unwrap(), "b's release did not free a's lease");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!store.renew_lease(&key, "a", Duration::from_secs(5)).await.unwrap(), "a lapsed lease cannot be renewed");
    assert!(store.try_lease(&key, "b", Duration::from_secs(5)).await.unwrap(), "the lapsed lease is free");
    assert!(!store.renew_lease(&key, "a", Duration::from_secs(5)).await.unwrap(), "the lapsed holder cannot extend the newcomer's");
    store.release_lease(&key, "a").await.unwrap();
    assert!(!store.try_lease(&key, "c", short).await.unwrap(), "the lapsed holder cannot delete the newcomer's");
    assert!(store.renew_lease(&key, "b", Duration::from_secs(5)).await.unwrap());
    store.release_lease(&key, "b").await.unwrap();
    assert!(store.try_lease(&key, "c", short).await.unwrap(), "the holder's release frees it");

    // A renewal extends: a 300 ms lease renewed for 5 s is still held after 500 ms.
    let key = SessionId::generate().key();
    assert!(store.try_lease(&key, "a", short).await.unwrap());
    assert!(store.renew_lease(&key, "a", Duration::from_secs(5)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!store.try_lease(&key, "b", short).await.unwrap(), "renewed");
}

#[tokio::test]
async fn memory_store_contract() {
    deletes_only_the_version_read(Arc::new(MemoryStore::new(LONG))).await;
    leases_are_owner_checked(Arc::new(MemoryStore::new(LONG))).await;
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
    deletes_only_the_version_read(make(LONG)).await;
    leases_are_owner_checked(make(LONG)).await;
    versioned_writes(make(LONG)).await;
    concurrent_writers_one_wins(make(LONG)).await;
    states_are_consumed_once(make(LONG)).await;
    idle_and_absolute_lifetimes(make).await;
}

/// A refresh's CAS keeps the record's TTL (`KEEPTTL`): only use by the browser restarts the
/// idle clock, and the absolute lifetime cap set in the session's last idle window holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cas_keeps_the_ttl() {
    let redis = Redis::start().await;
    let store = RedisStore::new(&redis.url(), LONG, Duration::from_secs(2)).unwrap();
    let mut conn = raw_redis(&redis.url()).await;
    let key = SessionId::generate().key();
    store.create(&key, &record("v1")).await.unwrap();
    // As a load in the session's last idle window leaves it: capped well below the idle time.
    let _: () = redis::AsyncCommands::pexpire(&mut conn, record_key(&key), 50_000).await.unwrap();
    let before: i64 = redis::cmd("PTTL").arg(record_key(&key)).query_async(&mut conn).await.unwrap();
    assert_eq!(store.compare_and_set(&key, 1, &record("v2")).await.unwrap(), CasOutcome::Written(2));
    let after: i64 = redis::cmd("PTTL").arg(record_key(&key)).query_async(&mut conn).await.unwrap();
    assert!(after > 0 && after <= before && before - after < 5_000, "PTTL before {before} ms, after the CAS {after} ms");
    let mut marked = record("v2");
    marked.unsettled_refresh = Some(portcullis::session::UnsettledRefresh { token_hash: "h".into(), at: now_millis() });
    assert_eq!(store.compare_and_set(&key, 2, &marked).await.unwrap(), CasOutcome::Written(3));
    let last: i64 = redis::cmd("PTTL").arg(record_key(&key)).query_async(&mut conn).await.unwrap();
    assert!(last > 0 && last <= after, "PTTL {last} ms after the second CAS");
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

// ---- Sessions sealed at rest in Redis (issue 7, item 7) ----
//
// The attacker here holds what a Redis dump, replica or backup holds: every key and value, but
// no browser cookie. The store key is a hash of the session id; the record is sealed under a
// key derived from the id, so none of it opens.

/// A session like one a real OP leaves: a JWT ID token (whose payload carries `sub` and
/// `email` in base64url), opaque tokens, a few kilobytes of claims.
fn realistic_record(generation: u32) -> (SessionRecord, Vec<String>) {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let sub = "248289761001-alice-subject";
    let email = "alice.wonderland@example.com";
    let access_token = format!("at{generation}-Zk9mQ2xhVjNwSW9ZbWx0ZVhRZ1lXTmpaWE56SUhSdmEyVnU");
    let refresh_token = format!("rt{generation}-cmVmcmVzaCB0b2tlbiB0aGF0IGFuIGF0dGFja2VyIHdhbnRz");
    let payload = serde_json::json!({ "iss": "https://op.example", "sub": sub, "email": email, "aud": "portcullis", "gen": generation });
    let id_token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k1"}"#),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode([7u8; 256])
    );
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), sub.into());
    claims.insert("email".into(), email.into());
    claims.insert("name".into(), "Alice Wonderland".into());
    claims.insert("groups".into(), serde_json::json!((0..40).map(|i| format!("group-{i}")).collect::<Vec<_>>()));
    let record = SessionRecord {
        version: 0,
        created_at: now_millis(),
        identity: Identity {
            subject: sub.into(),
            user: email.into(),
            email: Some(email.into()),
            groups: (0..40).map(|i| format!("group-{i}")).collect(),
            claims,
        },
        tokens: TokenSet {
            access_token: access_token.clone(),
            issued_at: now_millis(),
            expires_at: Some(now_millis() + 60_000),
            refresh_token: Some(refresh_token.clone()),
            id_token: Some(id_token.clone()),
        },
        unsettled_refresh: None,
        forward: Default::default(),
    };
    (record, vec![access_token, refresh_token, id_token, sub.into(), email.into(), "Alice Wonderland".into()])
}

/// `secret` as it could appear in a value: in clear, or inside standard or URL-safe base64 at
/// any of the three alignments (the edges, which depend on neighbouring bytes, trimmed).
fn spellings(secret: &str) -> Vec<Vec<u8>> {
    use base64::{Engine, engine::general_purpose};
    let mut out = vec![secret.as_bytes().to_vec()];
    for engine in [general_purpose::STANDARD_NO_PAD, general_purpose::URL_SAFE_NO_PAD] {
        for skew in 0..3 {
            let mut data = vec![0u8; skew];
            data.extend_from_slice(secret.as_bytes());
            let encoded = engine.encode(&data);
            out.push(encoded.as_bytes()[4..encoded.len() - 4].to_vec());
        }
    }
    out
}

/// Every key and value of the server, as `redis-cli --scan` and `redis-cli --raw GET` show
/// them to whoever can reach Redis (or restore its backup).
fn redis_dump(url: &str) -> Vec<(String, Vec<u8>)> {
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli").arg("-u").arg(url).args(args).output().expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let keys = String::from_utf8(cli(&["--scan"])).unwrap();
    keys.lines().filter(|k| !k.is_empty()).map(|k| (k.to_string(), cli(&["--raw", "GET", k]))).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn raw_redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

fn record_key(key: &portcullis::session::SessionKey) -> String {
    format!("portcullis:{{{key}}}:session")
}

/// After a login (create) and a refresh (lease + CAS), nothing in Redis gives away a token or
/// who the user is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dump_holds_no_token_nor_identity() {
    let redis = Redis::start().await;
    let store = RedisStore::new(&redis.url(), LONG, Duration::from_secs(2)).unwrap();
    let key = SessionId::generate().key();
    let (login, mut secrets) = realistic_record(1);
    store.create(&key, &login).await.unwrap();
    assert!(store.try_lease(&key, "instance-a", Duration::from_secs(30)).await.unwrap());
    let (refreshed, newer) = realistic_record(2);
    assert_eq!(store.compare_and_set(&key, 1, &refreshed).await.unwrap(), CasOutcome::Written(2));
    secrets.extend(newer);
    // Whatever the values, a record in clear (or merely encoded) would spell its field names.
    secrets.extend(["access_token", "refresh_token", "id_token", "identity"].map(String::from));
    let loaded = store.load(&key).await.unwrap().expect("the session still loads");
    assert_eq!(loaded.tokens.refresh_token, refreshed.tokens.refresh_token);

    let dump = redis_dump(&redis.url());
    let record = dump.iter().find(|(k, _)| *k == record_key(&key)).expect("the record is in the dump");
    assert!(record.1.starts_with(b"2|s1:"), "version in clear, then the sealed body");
    for (name, value) in &dump {
        for secret in &secrets {
            for spelling in spellings(secret) {
                assert!(!contains(value, &spelling), "{name} gives away {secret:?}: sealing is off");
            }
        }
    }
}

/// Someone who can write to Redis copies their own session's record under the victim's key
/// (to have the victim act in their account, or to read it back later): the victim's gateway
/// finds nothing it can open and sends the browser to log in. The attacker's session still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_copied_under_another_session_does_not_open() {
    let redis = Redis::start().await;
    let store = RedisStore::new(&redis.url(), LONG, Duration::from_secs(2)).unwrap();
    let (mallory, victim) = (SessionId::generate().key(), SessionId::generate().key());
    store.create(&mallory, &record("mallory-token")).await.unwrap();
    store.create(&victim, &record("victim-token")).await.unwrap();
    let mut conn = raw_redis(&redis.url()).await;
    let copied: Vec<u8> = redis::AsyncCommands::get(&mut conn, record_key(&mallory)).await.unwrap();
    let _: () = redis::AsyncCommands::set(&mut conn, record_key(&victim), copied).await.unwrap();

    assert!(store.load(&victim).await.unwrap().is_none(), "a copied record must not open under another session's key");
    assert_eq!(store.load(&mallory).await.unwrap().unwrap().tokens.access_token, "mallory-token");
}

/// Stored values that are not this session's sealed record. Refused: `None` when it can never
/// open (the browser logs in again), `Corrupt` when a newer gateway may read it; never a panic,
/// never used, and the read deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_foreign_records_are_refused() {
    let redis = Redis::start().await;
    let store = RedisStore::new(&redis.url(), LONG, Duration::from_secs(2)).unwrap();
    let mut conn = raw_redis(&redis.url()).await;
    let flip_last = |mut v: Vec<u8>| {
        let last = v.len() - 1;
        v[last] ^= 1;
        v
    };
    let flip_body = |mut v: Vec<u8>| {
        v[20] ^= 0x80;
        v
    };
    let truncate = |v: Vec<u8>| v[..v.len() - 16].to_vec();
    let bump_version = |v: Vec<u8>| [b"7".as_slice(), &v[1..]].concat();
    let clear_json = |_: Vec<u8>| format!("1|{}", serde_json::to_string(&record("planted-token")).unwrap()).into_bytes();
    let unknown_format = |v: Vec<u8>| [b"1|s9:".as_slice(), &v[5..]].concat();
    let no_version = |v: Vec<u8>| v[2..].to_vec();
    #[allow(clippy::type_complexity)]
    let cases: [(&str, &dyn Fn(Vec<u8>) -> Vec<u8>, Option<&str>); 7] = [
        ("tag flipped", &flip_last, None),
        ("ciphertext flipped", &flip_body, None),
        ("truncated", &truncate, None),
        ("clear version changed", &bump_version, None),
        ("clear JSON planted (or left by the previous format)", &clear_json, None),
        ("unknown format tag", &unknown_format, Some("corrupt")),
        ("no version prefix", &no_version, Some("corrupt")),
    ];
    for (name, mutate, expected_error) in cases {
        let key = SessionId::generate().key();
        store.create(&key, &record("genuine-token")).await.unwrap();
        let genuine: Vec<u8> = redis::AsyncCommands::get(&mut conn, record_key(&key)).await.unwrap();
        let _: () = redis::AsyncCommands::set(&mut conn, record_key(&key), mutate(genuine)).await.unwrap();
        match (store.load(&key).await, expected_error) {
            (Ok(None), None) => {}
            (Err(StoreError::Corrupt(_)), Some("corrupt")) => {}
            (other, _) => panic!("{name}: {:?}", other.map(|r| r.map(|r| r.tokens.access_token.clone()))),
        }
        let still_there: bool = redis::AsyncCommands::exists(&mut conn, record_key(&key)).await.unwrap();
        assert!(still_there, "{name}: a read must not delete the record");
    }
}

/// A key parsed back from the store (a notification's channel, or deserialized) names a session
/// for watchers but cannot read or write its record: a typed error, before any write in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_without_their_sealing_key_neither_read_nor_write() {
    let redis = Redis::start().await;
    let store = RedisStore::new(&redis.url(), LONG, Duration::from_secs(2)).unwrap();
    let key = SessionId::generate().key();
    store.create(&key, &record("x")).await.unwrap();
    let parsed: portcullis::session::SessionKey = serde_json::from_str(&serde_json::to_string(&key).unwrap()).unwrap();
    assert_eq!(parsed, key);
    assert!(matches!(store.load(&parsed).await, Err(StoreError::NoSealingKey)));
    assert!(matches!(store.compare_and_set(&parsed, 1, &record("y")).await, Err(StoreError::NoSealingKey)));
    let fresh: portcullis::session::SessionKey = serde_json::from_str("\"AAAAAAAAAAAAAAAAAAAAAAAA\"").unwrap();
    assert!(matches!(store.create(&fresh, &record("y")).await, Err(StoreError::NoSealingKey)));
    assert_eq!(store.load(&key).await.unwrap().unwrap().tokens.access_token, "x", "nothing was overwritten");
}

// ---- The notification listener's health (issue 8, item 8) ----

/// A TCP proxy whose open connections can be frozen: bytes stop flowing both ways and the
/// sockets stay open, the half-open connection a NAT, a load balancer or a failover leaves
/// behind. Connections opened after the freeze flow normally.
struct StallingProxy {
    port: u16,
    connections: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>>,
}

impl StallingProxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let registry = connections.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { continue };
                let frozen = Arc::new(AtomicBool::new(false));
                registry.lock().unwrap().push(frozen.clone());
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(ri) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(wo) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(ro), Box::new(wi)),
                ] {
                    let frozen = frozen.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if frozen.load(Ordering::SeqCst) {
                                // Hold both sockets open, forward nothing, ever.
                                let _keep = (from, to);
                                std::future::pending::<()>().await;
                                return;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self { port, connections }
    }

    fn freeze_open_connections(&self) {
        for c in self.connections.lock().unwrap().iter() {
            c.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// After a fault on the pub/sub connection, a waiter on one instance is still woken by a write
/// on another within a second or two, although its poll interval is 30 s: the listener noticed
/// (the connection closed, or a ping went unanswered), restarted and counted the restart.
/// Both faults: the connection killed by the server (`CLIENT KILL TYPE pubsub`), and a
/// half-open connection that delivers nothing and never closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_survive_a_lost_listener_connection() {
    let redis = Redis::start().await;
    let redis_addr: std::net::SocketAddr = redis.url().trim_start_matches("redis://").parse().unwrap();
    for fault in ["CLIENT KILL TYPE pubsub", "half-open connection"] {
        let proxy = StallingProxy::start(redis_addr).await;
        let writer: Arc<dyn SessionStore> = Arc::new(RedisStore::new(&redis.url(), LONG, Duration::from_secs(2)).unwrap());
        let watcher = RedisStore::new(&format!("redis://127.0.0.1:{}", proxy.port), LONG, Duration::from_secs(2)).unwrap();
        let watcher_dyn: Arc<dyn SessionStore> = Arc::new(watcher.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        wake_within(&writer, &watcher_dyn, &format!("{fault}: before")).await;

        match fault {
            "CLIENT KILL TYPE pubsub" => {
                let killed: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut raw_redis(&redis.url()).await)
                    .await
                    .unwrap();
                assert!(killed >= 1, "killed {killed} pub/sub connections");
            }
            _ => proxy.freeze_open_connections(),
        }
        let started = std::time::Instant::now();
        while watcher.notification_restarts() == 0 {
            assert!(started.elapsed() < Duration::from_secs(20), "{fault}: the listener never noticed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the new subscription come up (its first back-off is 100 ms).
        tokio::time::sleep(Duration::from_millis(1000)).await;
        for round in 0..3 {
            wake_within(&writer, &watcher_dyn, &format!("{fault}: after, round {round}")).await;
        }
        assert_eq!(watcher.notification_restarts(), 1, "{fault}: one restart, counted");
    }
}

/// A write on `writer` wakes a watch on `watcher` within 2 s; the watch's own timeout (the
/// poll) is 30 s, so only the notification can wake it that early.
async fn wake_within(writer: &Arc<dyn SessionStore>, watcher: &Arc<dyn SessionStore>, what: &str) {
    let key = SessionId::generate().key();
    writer.create(&key, &record("v1")).await.unwrap();
    let mut watch = watcher.watch(&key);
    let (writer2, key2) = (writer.clone(), key.clone());
    let started = std::time::Instant::now();
    let write = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(writer2.compare_and_set(&key2, 1, &record("v2")).await.unwrap(), CasOutcome::Written(2));
    });
    watch.changed(Duration::from_secs(30)).await;
    let took = started.elapsed();
    write.await.unwrap();
    assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(2), "{what}: woken after {took:?}, not by the notification");
}
