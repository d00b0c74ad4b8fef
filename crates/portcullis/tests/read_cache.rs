//! The Redis store's read cache against a real `redis-server`: two stores play two instances
//! (A writes directly, B reads through the cache), and B's connections to Redis pass a proxy
//! that can freeze its pub/sub connection (the half-open connection nobody notices for a few
//! seconds) or refuse new connections (a listener that cannot resubscribe).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use portcullis::session::{
    CachedStore, CasOutcome, Identity, Lifetimes, ReadCacheSettings, RedisStore, SessionId, SessionKey, SessionRecord, SessionStore,
    TokenSet, now_millis,
};
use portcullis_testkit::Redis;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIFETIMES: Lifetimes = Lifetimes { idle: Duration::from_secs(3600), absolute: Duration::from_secs(7200) };

/// A record whose access token lives `lifetime` from now.
fn record(access_token: &str, lifetime: Duration) -> SessionRecord {
    let now = now_millis();
    SessionRecord {
        version: 0,
        created_at: now,
        identity: Identity { subject: "alice".into(), user: "alice".into(), email: None, groups: vec![], claims: Default::default() },
        tokens: TokenSet {
            access_token: access_token.into(),
            issued_at: now,
            expires_at: Some(now + lifetime.as_millis() as u64),
            refresh_token: Some("rt".into()),
            id_token: None,
        },
        unsettled_refresh: None,
        forward: Default::default(),
    }
}

fn settings(renew_interval: Duration) -> ReadCacheSettings {
    ReadCacheSettings {
        max_entries: 1000,
        renew_interval,
        lifetimes: LIFETIMES,
        leeway_fraction: 0.25,
        leeway_max: Duration::from_secs(60),
        clock_skew: Duration::from_secs(1),
    }
}

/// Forwards to Redis; connections that sent a `SUBSCRIBE`-family command are the listener's.
struct Proxy {
    port: u16,
    refuse_new: Arc<AtomicBool>,
    pubsub: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let refuse_new = Arc::new(AtomicBool::new(false));
        let pubsub: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let (refuse, registry) = (refuse_new.clone(), pubsub.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { continue };
                let frozen = Arc::new(AtomicBool::new(false));
                let (mut ri, mut wi) = inbound.into_split();
                let (mut ro, mut wo) = outbound.into_split();
                let (up_frozen, registry) = (frozen.clone(), registry.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut registered = false;
                    loop {
                        let n = match ri.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if !registered && buf[..n].to_ascii_uppercase().windows(9).any(|w| w == b"SUBSCRIBE") {
                            registered = true;
                            registry.lock().unwrap().push(up_frozen.clone());
                        }
                        if up_frozen.load(Ordering::SeqCst) {
                            let _keep = (ri, wo);
                            std::future::pending::<()>().await;
                            return;
                        }
                        if wo.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match ro.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if frozen.load(Ordering::SeqCst) {
                            let _keep = (ro, wi);
                            std::future::pending::<()>().await;
                            return;
                        }
                        if wi.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, refuse_new, pubsub }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The listener's connection stops delivering, and stays open.
    fn freeze_pubsub(&self) {
        let conns = self.pubsub.lock().unwrap();
        assert!(!conns.is_empty(), "no pub/sub connection went through the proxy");
        for c in conns.iter() {
            c.store(true, Ordering::SeqCst);
        }
    }
}

struct Pair {
    redis: Redis,
    proxy: Proxy,
    a: RedisStore,
    b: CachedStore<RedisStore>,
}

async fn pair(renew_interval: Duration) -> Pair {
    let redis = Redis::start().await;
    let addr: std::net::SocketAddr = redis.url().trim_start_matches("redis://").parse().unwrap();
    let proxy = Proxy::start(addr).await;
    let a = RedisStore::new(&redis.url(), LIFETIMES, Duration::from_secs(2)).unwrap();
    let b_redis = RedisStore::new(&proxy.url(), LIFETIMES, Duration::from_secs(2)).unwrap();
    let feed = b_redis.change_feed();
    let b = CachedStore::new(b_redis, feed.clone(), settings(renew_interval));
    let started = std::time::Instant::now();
    while feed.live_epoch().is_none() {
        assert!(started.elapsed() < Duration::from_secs(5), "B's listener never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Pair { redis, proxy, a, b }
}

/// What B serves a request, read as `Authenticator::authenticate` reads it: the answer without
/// waiting when there is one (a hit), else the awaited read.
async fn token_at_b(b: &CachedStore<RedisStore>, key: &SessionKey) -> Option<String> {
    let loaded = match b.load_for_request_now(key) {
        Some(loaded) => loaded,
        None => b.load_for_request(key).await,
    };
    loaded.unwrap().map(|r| r.tokens.access_token.clone())
}

/// Polls B until `want` is what it serves, at most `within`; returns how long it took.
async fn b_serves_within(b: &CachedStore<RedisStore>, key: &SessionKey, want: Option<&str>, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let got = token_at_b(b, key).await;
        if got.as_deref() == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "B still serves {got:?} after {within:?}, expected {want:?}; {:?}", b.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Hot sessions are served from memory (no Redis read), and a write on another instance (A)
/// reaches B through the notification within a second although the copy would be served for
/// 30 s: fails if the invalidation is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_and_invalidation_by_another_instance() {
    let p = pair(Duration::from_secs(30)).await;
    let key = SessionId::generate().key();
    p.a.create(&key, &record("at-1", Duration::from_secs(600))).await.unwrap();
    assert_eq!(token_at_b(&p.b, &key).await.as_deref(), Some("at-1"));
    for _ in 0..10 {
        assert_eq!(token_at_b(&p.b, &key).await.as_deref(), Some("at-1"));
    }
    let stats = p.b.stats();
    assert_eq!((stats.misses, stats.hits), (1, 10), "{stats:?}");

    let mut raw = redis::Client::open(p.redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let pttl: i64 = redis::cmd("PTTL").arg(format!("portcullis:{{{key}}}:session")).query_async(&mut raw).await.unwrap();
    assert!(pttl > 0, "the fill renewed the idle clock");

    assert_eq!(p.a.compare_and_set(&key, 1, &record("at-2", Duration::from_secs(600))).await.unwrap(), CasOutcome::Written(2));
    let took = b_serves_within(&p.b, &key, Some("at-2"), Duration::from_secs(1)).await;
    assert!(p.b.stats().invalidations >= 1, "{:?}", p.b.stats());
    eprintln!("B served A's new version after {took:?}");

    p.a.delete(&key).await.unwrap();
    let took = b_serves_within(&p.b, &key, None, Duration::from_secs(1)).await;
    eprintln!("B refused A's deleted session after {took:?}");

    // A write through B itself is seen by B's next request at once.
    let key = SessionId::generate().key();
    p.b.create(&key, &record("own-1", Duration::from_secs(600))).await.unwrap();
    assert_eq!(token_at_b(&p.b, &key).await.as_deref(), Some("own-1"));
    assert_eq!(p.b.compare_and_set(&key, 1, &record("own-2", Duration::from_secs(600))).await.unwrap(), CasOutcome::Written(2));
    assert_eq!(token_at_b(&p.b, &key).await.as_deref(), Some("own-2"));
    p.b.delete(&key).await.unwrap();
    assert_eq!(token_at_b(&p.b, &key).await, None);
}

/// The argument that needs no notification: a refresh is only committed for a token that is
/// due (refresh leeway) by the committing instance's clock, at most `clock_skew` ahead of B's;
/// B serves a copy only while its token is not due by `now + clock_skew`. Here B's pub/sub
/// connection is frozen (half-open, not noticed yet), A commits the refresh as soon as it may,
/// and B's next request already carries the new token. Fails if the due check is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_committed_elsewhere_is_served_without_its_notification() {
    let p = pair(Duration::from_secs(30)).await;
    let key = SessionId::generate().key();
    // 8 s token, leeway 25 % = 2 s: due at 6 s; B (skew 1 s) serves copies until 5 s.
    let created = std::time::Instant::now();
    p.a.create(&key, &record("at-1", Duration::from_secs(8))).await.unwrap();
    assert_eq!(token_at_b(&p.b, &key).await.as_deref(), Some("at-1"));
    assert_eq!(token_at_b(&p.b, &key).await.as_deref(), Some("at-1"));
    assert_eq!(p.b.stats().hits, 1, "served from memory while fresh");

    // A's clock may be 1 s ahead: at B's 5.2 s it may read 6.2 s, the token due there.
    tokio::time::sleep(Duration::from_millis(5200).saturating_sub(created.elapsed())).await;
    p.proxy.freeze_pubsub();
    assert_eq!(p.a.compare_and_set(&key, 1, &record("at-2", Duration::from_secs(600))).await.unwrap(), CasOutcome::Written(2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(token_at_b(&p.b, &key).await.as_deref(), Some("at-2"), "B must not serve a token older than a committed refresh");
    assert_eq!(p.b.inner().notification_restarts(), 0, "the listener had not noticed: only the due check protected B");
    assert!(p.b.stats().invalidations == 0, "no notification reached B: {:?}", p.b.stats());
}

/// Logout elsewhere while B's notifications are silently lost: B may serve the copy at most
/// `renew_interval` after it read it (here 1.5 s, shorter than the listener's 2–5 s to notice),
/// then asks Redis and refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_delete_notification_is_bounded_by_the_renew_interval() {
    let renew = Duration::from_millis(1500);
    let p = pair(renew).await;
    let key = SessionId::generate().key();
    p.a.create(&key, &record("at-1", Duration::from_secs(600))).await.unwrap();
    let filled = std::time::Instant::now();
    assert_eq!(token_at_b(&p.b, &key).await.as_deref(), Some("at-1"));
    p.proxy.freeze_pubsub();
    p.a.delete(&key).await.unwrap();
    b_serves_within(&p.b, &key, None, renew + Duration::from_millis(500)).await;
    let window = filled.elapsed();
    assert!(window >= renew.saturating_sub(Duration::from_millis(100)), "refused after {window:?}: by the notification, not the bound?");
    eprintln!("B refused the deleted session {window:?} after reading it (bound {renew:?})");
}

/// The listener is killed and cannot resubscribe: B bypasses the cache (every request reads
/// Redis, so a logout elsewhere is refused at once), and once the listener is back, copies read
/// before the outage are not served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listener_bypasses_the_cache() {
    let p = pair(Duration::from_secs(30)).await;
    let feed = p.b.inner().change_feed();
    let (k1, k2) = (SessionId::generate().key(), SessionId::generate().key());
    p.a.create(&k1, &record("one", Duration::from_secs(600))).await.unwrap();
    p.a.create(&k2, &record("two", Duration::from_secs(600))).await.unwrap();
    assert_eq!(token_at_b(&p.b, &k1).await.as_deref(), Some("one"));
    assert_eq!(token_at_b(&p.b, &k2).await.as_deref(), Some("two"));

    p.proxy.refuse_new.store(true, Ordering::SeqCst);
    let mut raw = redis::Client::open(p.redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut raw).await.unwrap();
    assert!(killed >= 1);
    let started = std::time::Instant::now();
    while feed.live_epoch().is_some() {
        assert!(started.elapsed() < Duration::from_secs(5), "the listener never noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = p.b.stats();
    p.a.delete(&k1).await.unwrap();
    assert_eq!(token_at_b(&p.b, &k1).await, None, "listener down: read from Redis, the logout seen at once");
    assert_eq!(token_at_b(&p.b, &k2).await.as_deref(), Some("two"));
    let after = p.b.stats();
    assert_eq!((after.bypassed - before.bypassed, after.hits - before.hits), (2, 0), "{after:?}");

    // Back: a change made while the listener was down (no notification reached B) is not
    // hidden by the copy read before the outage.
    p.a.compare_and_set(&k2, 1, &record("two-changed", Duration::from_secs(600))).await.unwrap();
    p.proxy.refuse_new.store(false, Ordering::SeqCst);
    let started = std::time::Instant::now();
    while feed.live_epoch().is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "the listener never resubscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(token_at_b(&p.b, &k2).await.as_deref(), Some("two-changed"));
    assert_eq!(token_at_b(&p.b, &k2).await.as_deref(), Some("two-changed"));
    assert!(p.b.stats().hits > after.hits, "the cache serves again once the listener is back: {:?}", p.b.stats());
}

/// The cap holds, and a copy is never served past the renew interval (the idle clock is
/// renewed in Redis by the next read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_and_renewed() {
    let p = pair(Duration::from_millis(400)).await;
    let keys: Vec<SessionKey> = (0..2000).map(|_| SessionId::generate().key()).collect();
    for key in &keys {
        p.a.create(key, &record("t", Duration::from_secs(600))).await.unwrap();
        assert!(p.b.load_for_request(key).await.unwrap().is_some());
    }
    let stats = p.b.stats();
    assert!(stats.entries <= 1008, "cap of 1000 (16 shards of 63): {stats:?}");
    assert!(stats.entries >= 700, "eviction drops an eighth of a shard at a time, not the shard: {stats:?}");
    assert!(stats.evictions >= 900, "{stats:?}");

    let key = &keys[1999];
    let mut raw = redis::Client::open(p.redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let rkey = format!("portcullis:{{{key}}}:session");
    let _: () = redis::cmd("PEXPIRE").arg(&rkey).arg(60_000).query_async(&mut raw).await.unwrap();
    let misses = p.b.stats().misses;
    let mut ttl_raised = false;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1000) {
        assert!(p.b.load_for_request(key).await.unwrap().is_some());
        let pttl: i64 = redis::cmd("PTTL").arg(&rkey).query_async(&mut raw).await.unwrap();
        ttl_raised |= pttl > 60_000;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let renewals = p.b.stats().misses - misses;
    assert!(ttl_raised, "a request after the interval renewed the idle clock in Redis");
    assert!((2..=4).contains(&renewals), "about one Redis read per 400 ms over 1 s, not one per request: {renewals}");
}
