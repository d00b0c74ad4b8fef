//! Redis store: tokens server-side, shared by every gateway instance.
//!
//! Layout, one string per session so a request costs one `GETEX`:
//! `portcullis:{<key>}:session` = `<version>|s1:<sealed body>` (`sealed_record`: AES-256-GCM
//! under a key derived from the session id, which Redis never sees). The version sits in clear
//! in front of the body so the compare-and-set script reads it without the key. `portcullis:{<key>}:lease`
//! holds the refresh lease's owner. The `{<key>}` hash tag keeps every key of one session on one
//! Redis Cluster slot, so one script can touch them together. Every write publishes on
//! `portcullis:{<key>}:changed`, which wakes requests waiting on other instances.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use redis::AsyncCommands;

mod connect;

pub use connect::{ClientPem, RedisOptions};
use connect::{Conn, Connector, ReplicaAck};

use super::{
    CasOutcome, ChangeFeed, ChangeWatch, DeleteOutcome, Lifetimes, SessionKey, SessionRecord, SessionStore, StoreError, record::now_millis,
    sealed_record,
};

/// Compare-and-set of a session record. A script, not WATCH/MULTI: transactions on a shared
/// multiplexed connection interleave between callers (redis-rs #565), a script runs atomically.
/// `KEEPTTL`: a refresh must not restart the idle clock — only use by the browser does.
/// Returns 1 written, 0 version conflict, -1 session gone.
/// The notification is published from inside the script, so no waiter can see the new version
/// before the notification exists, nor the notification before the version.
const CAS_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
local sep = string.find(cur, '|', 1, true)
if not sep or tonumber(string.sub(cur, 1, sep - 1)) ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
redis.call('PUBLISH', ARGV[3], ARGV[1] + 1)
return 1
";

/// Delete-if-version: the same version check as the CAS, then `DEL` and the notification, in
/// one script (a `GET` then `DEL` from the client would let a newer version written between
/// them be deleted). Returns 1 deleted, 0 version conflict, -1 already gone.
const DELETE_IF_VERSION_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
local sep = string.find(cur, '|', 1, true)
if not sep or tonumber(string.sub(cur, 1, sep - 1)) ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], 0)
return 1
";

/// Extends the lease only for its owner: a holder whose lease lapsed and was taken by another
/// instance must not extend the newcomer's lease.
const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// Compare-and-delete: a holder whose lease lapsed must not delete the newcomer's lease.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Pattern matching every session's change channel.
const CHANGES_PATTERN: &str = "portcullis:{*}:changed";

/// Sessions in Redis: one node, the master of a Sentinel group, or a Cluster (`connect.rs`;
/// the URL forms are in `config/redis.rs`), all through the same layout and scripts.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    // Connected on first use, not at startup: a gateway whose Redis is down still starts,
    // answers /healthz, and serves sessions as soon as Redis is back.
    connector: Arc<Connector>,
    lifetimes: Lifetimes,
    timeout: Duration,
    cas: redis::Script,
    delete_if_version: redis::Script,
    renew: redis::Script,
    release: redis::Script,
    changes: ChangeFeed,
    /// Started with the first `watch`: one pub/sub connection per process, fanned out in-process.
    listener: std::sync::Once,
    /// Restarts of that connection after it was lost (closed, or a ping unanswered).
    listener_restarts: Arc<AtomicU64>,
    /// Writes that should have reached a replica and did not (`replica_ack`).
    replica_ack_missing: AtomicU64,
    /// Whether the first write to a shard without replicas was logged as a warning.
    no_replica_warned: std::sync::atomic::AtomicBool,
}

impl RedisStore {
    /// A store for `url` (`redis://host:port/db`); connects lazily. `timeout` bounds every
    /// operation, connection included.
    pub fn new(url: &str, lifetimes: Lifetimes, timeout: Duration) -> Result<Self, StoreError> {
        Self::with_options(url, &RedisOptions::default(), lifetimes, timeout)
    }

    /// A store for any form of `session.redis_url` (one node, `redis+sentinel://`,
    /// `redis+cluster://`, with or without TLS), with the settings beside the URL.
    pub fn with_options(url: &str, options: &RedisOptions, lifetimes: Lifetimes, timeout: Duration) -> Result<Self, StoreError> {
        let connector = Arc::new(Connector::new(url, options, timeout)?);
        let store = Self {
            inner: Arc::new(Inner {
                connector,
                lifetimes,
                timeout,
                cas: redis::Script::new(CAS_SCRIPT),
                delete_if_version: redis::Script::new(DELETE_IF_VERSION_SCRIPT),
                renew: redis::Script::new(RENEW_SCRIPT),
                release: redis::Script::new(RELEASE_SCRIPT),
                changes: ChangeFeed::default(),
                listener: std::sync::Once::new(),
                listener_restarts: Arc::default(),
                replica_ack_missing: AtomicU64::new(0),
                no_replica_warned: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        // Subscribe at startup when there is a runtime, so the first refresh's notification
        // is not lost to a subscription still being set up (the poll would cover it, slower).
        if tokio::runtime::Handle::try_current().is_ok() {
            store.start_listener();
        }
        Ok(store)
    }

    fn start_listener(&self) {
        let inner = &self.inner;
        inner.listener.call_once(|| {
            tokio::spawn(listen_for_changes(
                inner.connector.clone(),
                inner.changes.clone(),
                inner.timeout,
                inner.listener_restarts.clone(),
            ));
        });
    }

    #[allow(dead_code)] // see `with_timeout`
    async fn conn(&self) -> Result<Conn, StoreError> {
        Ok(self.inner.connector.get().await?.1)
    }

    /// Runs `op` on the shared connection within the store timeout. A failure that may mean
    /// the master moved (Sentinel) makes the next operation look for it again.
    async fn run<T, Fut>(&self, op: impl FnOnce(Conn) -> Fut) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let connector = &self.inner.connector;
        let mut used = None;
        let attempt = async {
            let (generation, conn) = connector.get().await?;
            used = Some(generation);
            op(conn).await
        };
        let result = tokio::time::timeout(self.inner.timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("no answer within {:?}", self.inner.timeout))));
        if let (Err(StoreError::Unavailable(_)), Some(generation)) = (&result, used) {
            connector.failed(generation);
        }
        result
    }

    /// After a write that a failover must not lose (the token-changing CAS, the lease), waits
    /// until a replica has it, when the topology promotes replicas on its own (Sentinel,
    /// Cluster) and the master has a replica connected (`Connector::wants_replica_ack`). The write
    /// stands either way: the answer says only whether it would survive a failover right now.
    /// A write no replica acknowledged is logged and counted
    /// (`portcullis_store_replica_ack_missing_total`), so an operator can alert on a replica
    /// that is gone or lagging. What a failover then loses, and why the write is kept rather
    /// than refused, is measured in `crates/gateway/tests/redis_replication.rs`.
    async fn replica_ack(&self, conn: &mut Conn, key: &str) {
        let wait = replica_ack_timeout(self.inner.timeout);
        let missing = match self.inner.connector.wants_replica_ack(conn, key).await {
            ReplicaAck::Skip => return,
            ReplicaAck::NoReplica => None,
            ReplicaAck::Wait => match conn.wait_for_replica(key, wait).await {
                Ok(n) if n >= 1 => return,
                Ok(_) => Some("no replica acknowledged it in time".to_string()),
                Err(e) => Some(format!("WAIT failed: {e}")),
            },
        };
        let count = self.inner.replica_ack_missing.fetch_add(1, Ordering::Relaxed) + 1;
        match missing {
            Some(reason) => {
                tracing::warn!(within = ?wait, %reason, unacknowledged = count, "redis: no replica has a session write; a failover now could roll it back")
            }
            // A master without replicas may be the operator's choice (a Cluster run without
            // any): said once, then counted only, rather than a warning on every refresh.
            None if !self.inner.no_replica_warned.swap(true, Ordering::Relaxed) => tracing::warn!(
                unacknowledged = count,
                "redis: a session write went to a master without replicas (a Cluster shard without any, or a Sentinel group whose replica is down); a failover there would lose it (said once; counted in portcullis_store_replica_ack_missing_total)"
            ),
            None => tracing::debug!(unacknowledged = count, "redis: session write to a master without replicas"),
        }
    }

    /// Session writes that no replica acknowledged (see `replica_ack`) since start.
    pub fn replica_acks_missing(&self) -> u64 {
        self.inner.replica_ack_missing.load(Ordering::Relaxed)
    }

    /// Runs one operation with the store timeout; a timeout is `Unavailable`, like a refusal.
    /// (`run` is the form that also follows a Sentinel failover; this one stays for callers
    /// written against it.)
    #[allow(dead_code)]
    async fn with_timeout<T>(&self, op: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        tokio::time::timeout(self.inner.timeout, op)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("no answer within {:?}", self.inner.timeout))))
    }

    /// How many times the change-notification connection was lost and restarted since start
    /// (for the metrics endpoint; each restart is also logged).
    pub fn notification_restarts(&self) -> u64 {
        self.inner.listener_restarts.load(Ordering::Relaxed)
    }

    /// Checks that Redis answers (for readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut conn| async move {
            redis::cmd("PING").query_async::<redis::Value>(&mut conn).await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}

fn session_key(key: &SessionKey) -> String {
    format!("portcullis:{{{key}}}:session")
}

fn lease_key(key: &SessionKey) -> String {
    format!("portcullis:{{{key}}}:lease")
}

fn changes_channel(key: &SessionKey) -> String {
    format!("portcullis:{{{key}}}:changed")
}

/// The session key in a change channel's name.
fn key_of_channel(channel: &str) -> Option<SessionKey> {
    channel.strip_prefix("portcullis:{")?.strip_suffix("}:changed").map(SessionKey::from_stored)
}

/// How often the notification connection is pinged. A subscribed connection carries no
/// traffic of its own: without a ping, a half-open connection (a NAT or load balancer that
/// dropped its state, a failover that left the socket open) would look exactly like a quiet
/// one, and every cross-instance wait would silently fall back to polling, forever.
const LISTENER_PING_EVERY: Duration = Duration::from_secs(3);
/// A ping not answered within this restarts the connection.
const LISTENER_PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Back-off between restarts of the notification connection.
const LISTENER_BACKOFF_MIN: Duration = Duration::from_millis(100);
const LISTENER_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Forwards every session change published in Redis to the in-process feed. The connection is
/// pinged every few seconds and restarted, with back-off, when it closes or a pong does not
/// come; each restart is logged and counted (`RedisStore::notification_restarts`). After each
/// (re)subscription every waiter is told to re-read, since notifications sent while the
/// connection was down are lost: a restart costs a re-read, never a poll interval.
async fn listen_for_changes(connector: Arc<Connector>, feed: ChangeFeed, connect_timeout: Duration, restarts: Arc<AtomicU64>) {
    let mut delay = LISTENER_BACKOFF_MIN;
    let mut subscribed_before = false;
    loop {
        let ended = match connector.pubsub_client().await {
            Ok(client) => listen_once(&client, &feed, connect_timeout, &mut delay, &mut subscribed_before).await,
            Err(e) => e.to_string(),
        };
        feed.disconnected();
        if subscribed_before {
            let count = restarts.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(reason = %ended, retry_in = ?delay, restarts = count, "redis change notifications interrupted; restarting the listener");
        } else {
            tracing::debug!(reason = %ended, retry_in = ?delay, "redis: change notifications not connected yet");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(LISTENER_BACKOFF_MAX);
    }
}

/// One life of the notification connection; returns why it ended.
async fn listen_once(
    client: &redis::Client,
    feed: &ChangeFeed,
    connect_timeout: Duration,
    delay: &mut Duration,
    subscribed: &mut bool,
) -> String {
    use futures_util::StreamExt;
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.psubscribe(CHANGES_PATTERN).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    let pubsub = match tokio::time::timeout(connect_timeout, connect).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => return format!("cannot subscribe: {e}"),
        Err(_) => return format!("no subscription within {connect_timeout:?}"),
    };
    *delay = LISTENER_BACKOFF_MIN;
    *subscribed = true;
    feed.connected();
    let (mut sink, mut messages) = pubsub.split();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + LISTENER_PING_EVERY, LISTENER_PING_EVERY);
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => {
                    if let Some(key) = key_of_channel(message.get_channel_name()) {
                        feed.publish(key);
                    }
                }
                None => return "connection closed".into(),
            },
            _ = ping.tick() => match tokio::time::timeout(LISTENER_PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("ping failed: {e}"),
                Err(_) => return format!("no pong within {LISTENER_PING_TIMEOUT:?}"),
            },
        }
    }
}

/// Marker of a completed login (`state_hash` is a hash of its `state`); same `{…}` hash-tag
/// layout as the session keys. The pending login itself is never in Redis: it travels sealed
/// in the browser's cookie.
fn consumed_state_key(state_hash: &str) -> String {
    format!("portcullis:{{{state_hash}}}:consumed-state")
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The stored value of `record` at `version`: sealed, never clear.
fn encode(key: &SessionKey, version: u64, record: &SessionRecord) -> Result<Vec<u8>, StoreError> {
    sealed_record::seal(key, version, record).map_err(|_| StoreError::NoSealingKey)
}

/// The record in `value`, `None` for a record that is not this session's to read.
///
/// - Does not open (tampered, copied from another session's key, truncated): `None`, logged.
///   Nothing of it is used; a `503` instead would trap the browser (every retry, and even the
///   logout, would fail on the same bytes, forever), while `None` sends it to log in again,
///   which gives it a new id and deletes this record. The read itself deletes nothing: the
///   bytes stay for the operator to look at, until the re-login or the idle timeout.
/// - Clear JSON from before records were sealed: `None` too (one re-login per user after the
///   upgrade). Accepting clear records would keep a way to plant a session under a key that
///   anyone who can read Redis knows, and keep working tokens in clear until the next write.
/// - An unknown format, or a sealed body that is not a record: `Corrupt` (`503`, record kept),
///   as before: probably written by a newer gateway during a rolling upgrade, readable there.
fn decode(key: &SessionKey, value: &mut [u8]) -> Result<Option<SessionRecord>, StoreError> {
    use sealed_record::OpenError;
    match sealed_record::open(key, value) {
        Ok(record) => Ok(Some(record)),
        Err(OpenError::NoSealingKey) => Err(StoreError::NoSealingKey),
        Err(e @ (OpenError::NotOpenable | OpenError::Unsealed)) => {
            tracing::warn!(session = %key, error = %e, "session record refused; the browser must log in again");
            Ok(None)
        }
        Err(e @ (OpenError::Malformed(_) | OpenError::UnknownFormat | OpenError::Body(_))) => Err(StoreError::Corrupt(e.to_string())),
    }
}

/// How long a write waits for a replica's acknowledgement: a replica on the same network
/// answers in a millisecond; a missing one must not hold a refresh for the whole store timeout.
fn replica_ack_timeout(store_timeout: Duration) -> Duration {
    (store_timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(500))
}

/// `SET key value NX PX ttl`: true when it was set.
async fn set_if_absent(conn: &mut Conn, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
    let set: Option<String> =
        redis::cmd("SET").arg(key).arg(value).arg("NX").arg("PX").arg(millis(ttl)).query_async(conn).await.map_err(unavailable)?;
    Ok(set.is_some())
}

fn millis(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn load_for_request(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.load(key).await
    }

    /// Every read is a round trip.
    fn load_for_request_now(&self, _key: &SessionKey) -> Option<Result<Option<Arc<SessionRecord>>, StoreError>> {
        None
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        if !key.can_seal() {
            return Err(StoreError::NoSealingKey);
        }
        self.run(|mut conn| async move {
            let rkey = session_key(key);
            let lifetimes = self.inner.lifetimes;
            // GETEX reads and restarts the idle clock in one round trip.
            let getex: Result<Option<Vec<u8>>, _> =
                redis::cmd("GETEX").arg(&rkey).arg("PX").arg(millis(lifetimes.idle)).query_async(&mut conn).await;
            let (value, renewed) = match getex {
                Ok(value) => (value, true),
                // `GETEX` is a write (it sets the TTL), so a master configured with
                // `min-replicas-to-write` refuses it while too few replicas are connected.
                // Refusing the request for that would turn "no replica to keep writes"
                // into "nobody is served": read without renewing the idle clock instead.
                // Requests whose token is valid are served; a refresh (its lease is a `SET`)
                // is refused by the same rule, so no grant is spent whose result Redis would
                // not keep, and those requests get a 503 with the session kept.
                Err(e) if e.code() == Some("NOREPLICAS") => {
                    tracing::debug!(session = %key, "redis refuses writes (min-replicas-to-write): read without renewing the idle timeout");
                    (conn.get(&rkey).await.map_err(unavailable)?, false)
                }
                Err(e) => return Err(unavailable(e)),
            };
            let Some(mut value) = value else { return Ok(None) };
            let Some(record) = decode(key, &mut value)? else { return Ok(None) };
            let ttl = lifetimes.ttl(record.created_at, now_millis());
            if ttl.is_zero() {
                return Ok(None);
            }
            if renewed && ttl < lifetimes.idle {
                // Only in the session's last idle window: cap the key at the absolute lifetime.
                let _: () = conn.pexpire(&rkey, millis(ttl) as i64).await.map_err(unavailable)?;
            }
            Ok(Some(Arc::new(record)))
        })
        .await
    }

    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        let value = encode(key, 1, record)?;
        self.run(|mut conn| async move {
            let ttl = self.inner.lifetimes.ttl(record.created_at, now_millis());
            match set_if_absent(&mut conn, &session_key(key), &value, ttl).await? {
                true => Ok(()),
                false => Err(StoreError::Corrupt("session id collision".into())),
            }
        })
        .await
    }

    async fn compare_and_set(&self, key: &SessionKey, expected: u64, record: &SessionRecord) -> Result<CasOutcome, StoreError> {
        let value = encode(key, expected + 1, record)?;
        self.run(|mut conn| async move {
            let outcome: i64 = self
                .inner
                .cas
                .key(session_key(key))
                .arg(expected)
                .arg(value)
                .arg(changes_channel(key))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if outcome == 1 {
                // The new refresh token is in this write, and the old one is already spent at
                // the OP: a failover that lost it would leave the session on a dead token.
                self.replica_ack(&mut conn, &session_key(key)).await;
            }
            Ok(match outcome {
                1 => CasOutcome::Written(expected + 1),
                0 => CasOutcome::Conflict,
                _ => CasOutcome::Gone,
            })
        })
        .await
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.run(|mut conn| async move {
            let _: (i64, i64) =
                redis::pipe().del(session_key(key)).publish(changes_channel(key), 0).query_async(&mut conn).await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn delete_if_version(&self, key: &SessionKey, expected: u64) -> Result<DeleteOutcome, StoreError> {
        self.run(|mut conn| async move {
            let outcome: i64 = self
                .inner
                .delete_if_version
                .key(session_key(key))
                .arg(expected)
                .arg(changes_channel(key))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(match outcome {
                1 => DeleteOutcome::Deleted,
                0 => DeleteOutcome::Conflict,
                _ => DeleteOutcome::Gone,
            })
        })
        .await
    }

    async fn state_consumed(&self, state_hash: &str) -> Result<bool, StoreError> {
        self.run(|mut conn| async move { conn.exists(consumed_state_key(state_hash)).await.map_err(unavailable) }).await
    }

    async fn consume_state(&self, state_hash: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.run(|mut conn| async move {
            // SET NX: of two callbacks racing with one state, exactly one marks it.
            set_if_absent(&mut conn, &consumed_state_key(state_hash), b"1", ttl).await
        })
        .await
    }

    async fn try_lease(&self, key: &SessionKey, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.run(|mut conn| async move {
            let taken = set_if_absent(&mut conn, &lease_key(key), owner.as_bytes(), ttl).await?;
            if taken {
                // A lease lost at a failover would let a second instance spend the same
                // refresh token.
                self.replica_ack(&mut conn, &lease_key(key)).await;
            }
            Ok(taken)
        })
        .await
    }

    async fn renew_lease(&self, key: &SessionKey, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.run(|mut conn| async move {
            let renewed: i64 =
                self.inner.renew.key(lease_key(key)).arg(owner).arg(millis(ttl)).invoke_async(&mut conn).await.map_err(unavailable)?;
            Ok(renewed == 1)
        })
        .await
    }

    async fn release_lease(&self, key: &SessionKey, owner: &str) -> Result<(), StoreError> {
        self.run(|mut conn| async move {
            let _: i64 = self.inner.release.key(lease_key(key)).arg(owner).invoke_async(&mut conn).await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    fn watch(&self, key: &SessionKey) -> ChangeWatch {
        self.start_listener();
        self.inner.changes.watch(key)
    }
}

/// What the read cache (`read_cache::CachedStore`) needs from this store, kept apart from the
/// connection plumbing above.
impl RedisStore {
    /// The change feed this store's pub/sub listener fills, with its liveness; starts the
    /// listener if it is not running yet.
    pub fn change_feed(&self) -> ChangeFeed {
        self.start_listener();
        self.inner.changes.clone()
    }
}
