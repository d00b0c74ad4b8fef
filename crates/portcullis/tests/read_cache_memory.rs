//! Resident memory per cached session (its own test binary: no other test allocates meanwhile).
//! The figure goes to BENCHMARKS.md: `cargo test -p portcullis --release --test read_cache_memory -- --nocapture`.

use std::time::Duration;

use futures_util::future::join_all;
use portcullis::session::{
    CachedStore, Identity, Lifetimes, ReadCacheSettings, RedisStore, SessionId, SessionKey, SessionRecord, SessionStore, TokenSet,
    now_millis,
};
use portcullis_testkit::Redis;

const LIFETIMES: Lifetimes = Lifetimes { idle: Duration::from_secs(3600), absolute: Duration::from_secs(7200) };
const N: usize = 20_000;

/// A session of the usual shape: a JWT access token and ID token of about 1 KB each, an opaque
/// refresh token, a handful of claims.
fn record(i: usize) -> SessionRecord {
    let now = now_millis();
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), format!("user-{i:08}").into());
    claims.insert("email".into(), format!("user-{i:08}@example.com").into());
    claims.insert("email_verified".into(), true.into());
    claims.insert("name".into(), "Alice Example".into());
    claims.insert("groups".into(), serde_json::json!(["staff", "engineering"]));
    SessionRecord {
        version: 0,
        created_at: now,
        identity: Identity {
            subject: format!("user-{i:08}"),
            user: format!("user-{i:08}"),
            email: Some(format!("user-{i:08}@example.com")),
            groups: vec!["staff".into(), "engineering".into()],
            claims,
        },
        tokens: TokenSet {
            access_token: format!("{i:08}{}", "a".repeat(1000)),
            issued_at: now,
            expires_at: Some(now + 3_600_000),
            refresh_token: Some(format!("{i:08}{}", "r".repeat(35))),
            id_token: Some(format!("{i:08}{}", "i".repeat(1000))),
        },
        unsettled_refresh: None,
        forward: Default::default(),
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_memory_per_cached_session() {
    let redis = Redis::start().await;
    let writer = RedisStore::new(&redis.url(), LIFETIMES, Duration::from_secs(5)).unwrap();
    let reader = RedisStore::new(&redis.url(), LIFETIMES, Duration::from_secs(5)).unwrap();
    let feed = reader.change_feed();
    let settings = ReadCacheSettings {
        // Room to spare: shards fill unevenly, and this measures copies, not eviction.
        max_entries: 2 * N,
        renew_interval: Duration::from_secs(600),
        lifetimes: LIFETIMES,
        leeway_fraction: 0.25,
        leeway_max: Duration::from_secs(60),
        clock_skew: Duration::from_secs(60),
    };
    let cache = CachedStore::new(reader, feed.clone(), settings);
    while feed.live_epoch().is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let keys: Vec<SessionKey> = (0..N).map(|_| SessionId::generate().key()).collect();
    for (chunk, base) in keys.chunks(500).zip((0..).step_by(500)) {
        let records: Vec<SessionRecord> = (0..chunk.len()).map(|j| record(base + j)).collect();
        join_all(chunk.iter().zip(&records).map(|(k, r)| writer.create(k, r))).await.into_iter().for_each(|r| r.unwrap());
    }
    // Warm the allocator and the connection with a first fill of a few, then measure the rest.
    let warm = 500;
    for k in &keys[..warm] {
        assert!(cache.load_for_request(k).await.unwrap().is_some());
    }
    let before = rss_bytes();
    for chunk in keys[warm..].chunks(200) {
        join_all(chunk.iter().map(|k| cache.load_for_request(k))).await.into_iter().for_each(|r| assert!(r.unwrap().is_some()));
    }
    let after = rss_bytes();
    let stats = cache.stats();
    assert_eq!(stats.entries as usize, N, "{stats:?}");
    let per_entry = (after.saturating_sub(before)) as f64 / (N - warm) as f64;
    let r = record(0);
    let payload = r.tokens.access_token.len()
        + r.tokens.refresh_token.as_ref().map_or(0, String::len)
        + r.tokens.id_token.as_ref().map_or(0, String::len)
        + serde_json::to_string(&r.identity).unwrap().len();
    eprintln!(
        "read cache: {per_entry:.0} bytes resident per cached session ({} sessions; token and identity text {payload} bytes)",
        N - warm
    );
    assert!(per_entry < 3.0 * payload as f64 + 1024.0, "{per_entry:.0} bytes per entry for {payload} bytes of payload");
    // Every load after the warm-up was a miss: nothing was served before it was cached.
    assert_eq!(stats.hits, 0);
}
