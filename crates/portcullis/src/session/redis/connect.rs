//! Connections for each topology of `session.redis_url`: one node, the master of a Sentinel
//! group, or a Cluster; TLS with extra CA roots; ACL credentials; the server version check.

use std::{
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisConnectionInfo, RedisError, RedisFuture,
    TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};

use crate::config::{RedisAuth, RedisNode, RedisTopology};

use super::super::StoreError;

/// The oldest Redis that has every command the store sends: `GETEX` (6.2; `SET … KEEPTTL`
/// is 6.0). Sharded pub/sub (7.0) is not used (see the notes on Cluster notifications).
pub(super) const MIN_VERSION: (u32, u32) = (6, 2);
const MIN_VERSION_WHY: &str = "GETEX";

/// Settings beside the URL.
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// PEM bundle of CA certificates trusted instead of the system roots for TLS connections.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and private key (PEM) presented to servers that ask for one
    /// (`tls-auth-clients yes`: mutual TLS).
    pub client_pem: Option<ClientPem>,
    /// Credentials for the sentinels (the URL's are the nodes').
    pub sentinel_auth: RedisAuth,
}

/// A client certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct ClientPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

// By hand: the private key must not reach a log line through `{:?}`.
impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { ca_pem, client_pem, sentinel_auth } = self;
        f.debug_struct("RedisOptions")
            .field("ca_pem", &ca_pem.as_ref().map(|pem| format!("{} bytes", pem.len())))
            .field("client_pem", &client_pem.as_ref().map(|_| "<certificate and redacted key>"))
            .field("sentinel_auth", sentinel_auth)
            .finish()
    }
}

impl RedisOptions {
    /// The settings of `session`: reads `redis_ca_file`, `redis_client_cert_file` and
    /// `redis_client_key_file` (an error names the key and the file).
    pub fn from_config(session: &crate::config::SessionConfig) -> Result<Self, String> {
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("session.{key}: cannot read {}: {e}", path.display()))
        };
        let ca_pem = session.redis_ca_file.as_deref().map(|path| read("redis_ca_file", path)).transpose()?;
        let client_pem = match (&session.redis_client_cert_file, &session.redis_client_key_file) {
            (Some(cert), Some(key)) => {
                Some(ClientPem { cert: read("redis_client_cert_file", cert)?, key: read("redis_client_key_file", key)? })
            }
            (None, None) => None,
            // `Config::validate` refuses one without the other; a caller that skipped it gets the same word.
            _ => return Err("session.redis_client_cert_file and session.redis_client_key_file go together: set both or neither".into()),
        };
        let sentinel_auth =
            RedisAuth { username: session.redis_sentinel_username.clone(), password: session.redis_sentinel_password.clone() };
        Ok(Self { ca_pem, client_pem, sentinel_auth })
    }
}

/// One connection handle for every topology: the store's commands and scripts run on it alike.
#[derive(Clone)]
pub(crate) enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// `WAIT 1 <timeout>` after a write to `key`, on the connection that made the write: the
    /// number of replicas that acknowledged it.
    ///
    /// `WAIT` counts the replication offset of the *connection* it is sent on, so it must go
    /// where the write went. On one node and Sentinel that is the one connection. On a Cluster,
    /// redis-rs routes a keyless `WAIT` to every master and answers the minimum (1.8:
    /// `RouteBy::AllPrimaries`, `AggregateOp::Min`), which would wait on shards this session
    /// never wrote to and report 0 as soon as any of them has no replica. It is routed to the
    /// master of `key`'s slot instead; the cluster client keeps one multiplexed connection
    /// per node, the one the write (a script or `SET` on `key`) just went through.
    pub(crate) async fn wait_for_replica(&mut self, key: &str, timeout: Duration) -> Result<i64, RedisError> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(1).arg(timeout.as_millis().max(1) as u64);
        match self {
            Self::Node(c) => cmd.query_async(c).await,
            Self::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master)));
                Ok(redis::from_redis_value(c.route_command(cmd, route).await?)?)
            }
        }
    }
}

/// What [`Connector::wants_replica_ack`] says about one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplicaAck {
    /// The topology promotes no replica on its own: nothing to wait for.
    Skip,
    /// Send `WAIT` to the master that took the write.
    Wait,
    /// The shard has no replica now: a failover there would lose the write (unacknowledged).
    NoReplica,
}

enum Target {
    Single(Client),
    Sentinel(Sentinel),
    Cluster { client: Box<ClusterClient>, seeds: Vec<Client> },
}

struct Sentinel {
    sentinels: Vec<Client>,
    service: String,
    /// db and credentials for the master.
    node: RedisConnectionInfo,
    tls: bool,
    certs: Option<TlsCertificates>,
}

/// Connects, keeps the connection, and replaces it when the topology moved under it.
pub(crate) struct Connector {
    target: Target,
    timeout: Duration,
    current: RwLock<Option<(u64, Conn)>>,
    generation: AtomicU64,
    connecting: tokio::sync::Mutex<()>,
    /// Index of the seed node the next notification listener starts at (Cluster).
    next_seed: AtomicU64,
    /// Whether `session.redis_ca_file` is set (for the hint on a certificate error).
    ca_configured: bool,
    /// The ACL user was refused `ROLE` (see `wants_replica_ack`).
    role_refused: std::sync::atomic::AtomicBool,
}

/// What redis-rs needs beyond its defaults for TLS: `None` when neither extra roots nor a client
/// certificate are configured (the system roots, no client certificate).
fn certs(options: &RedisOptions) -> Option<TlsCertificates> {
    if options.ca_pem.is_none() && options.client_pem.is_none() {
        return None;
    }
    let client_tls =
        options.client_pem.as_ref().map(|pem| redis::ClientTlsConfig { client_cert: pem.cert.clone(), client_key: pem.key.clone() });
    Some(TlsCertificates { client_tls, root_cert: options.ca_pem.clone() })
}

fn bad_url(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("bad redis url: {e}"))
}

/// A client for one TCP node, with TLS and credentials as configured.
fn node_client(node: &RedisNode, tls: bool, redis: RedisConnectionInfo, certs: &Option<TlsCertificates>) -> Result<Client, RedisError> {
    let addr = if tls {
        ConnectionAddr::TcpTls { host: node.host.clone(), port: node.port, insecure: false, tls_params: None }
    } else {
        ConnectionAddr::Tcp(node.host.clone(), node.port)
    };
    let info: ConnectionInfo = addr.into_connection_info()?.set_redis_settings(redis);
    match certs {
        Some(certs) if tls => Client::build_with_tls(info, certs.clone()),
        _ => Client::open(info),
    }
}

fn redis_info(auth: &RedisAuth, db: i64) -> RedisConnectionInfo {
    let mut info = RedisConnectionInfo::default().set_db(db);
    if let Some(user) = &auth.username {
        info = info.set_username(user);
    }
    if let Some(password) = &auth.password {
        info = info.set_password(password);
    }
    info
}

impl Connector {
    pub(crate) fn new(url: &str, options: &RedisOptions, timeout: Duration) -> Result<Self, StoreError> {
        let topology = RedisTopology::parse(url).map_err(|e| StoreError::Unavailable(format!("bad redis url: {e}")))?;
        let certs = certs(options);
        let target = match topology {
            RedisTopology::Single { url } => match &certs {
                Some(certs) if url.starts_with("rediss://") => Client::build_with_tls(url.as_str(), certs.clone()),
                _ => Client::open(url.as_str()),
            }
            .map(Target::Single)
            .map_err(bad_url)?,
            RedisTopology::Sentinel { tls, sentinels, service, db, auth } => {
                let sentinel_info = redis_info(&options.sentinel_auth, 0);
                let sentinels = sentinels
                    .iter()
                    .map(|s| node_client(s, tls, sentinel_info.clone(), &certs))
                    .collect::<Result<_, _>>()
                    .map_err(bad_url)?;
                Target::Sentinel(Sentinel { sentinels, service, node: redis_info(&auth, db), tls, certs })
            }
            RedisTopology::Cluster { tls, seeds, auth } => {
                let seed_clients = seeds
                    .iter()
                    .map(|s| node_client(s, tls, redis_info(&auth, 0), &certs))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad_url)?;
                let mut builder = ClusterClient::builder(seed_clients.iter().map(|c| c.get_connection_info().clone()))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    // MOVED/ASK and a lost node are retried inside the client; a few attempts
                    // are enough within the store timeout that bounds each operation anyway.
                    .retries(3);
                if let Some(user) = &auth.username {
                    builder = builder.username(user);
                }
                if let Some(password) = &auth.password {
                    builder = builder.password(password);
                }
                if tls {
                    builder = builder.tls(redis::TlsMode::Secure);
                    if let Some(certs) = &certs {
                        builder = builder.certs(certs.clone());
                    }
                }
                Target::Cluster { client: Box::new(builder.build().map_err(bad_url)?), seeds: seed_clients }
            }
        };
        Ok(Self {
            target,
            timeout,
            current: RwLock::new(None),
            generation: AtomicU64::new(0),
            connecting: tokio::sync::Mutex::new(()),
            next_seed: AtomicU64::new(0),
            ca_configured: options.ca_pem.is_some(),
            role_refused: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether a write to `key` that must survive a failover waits for a replica (`WAIT`).
    ///
    /// - One node: no. Nothing promotes a replica on its own there; an operator who fails over
    ///   by hand chooses the moment.
    /// - Sentinel and Cluster: when the master that took the write (on a Cluster, the master
    ///   of `key`'s slot) has a replica connected. Both promote replicas on their own (after
    ///   `down-after-milliseconds`, `cluster-node-timeout`), so a write no replica got is lost
    ///   at a failover. But `WAIT 1 t` on a master without replicas does not answer 0 at
    ///   once: it blocks for the whole `t` (measured: 300 ms for `WAIT 1 300`), which would add
    ///   twice the ack timeout (500 ms each with the default store timeout; measured 1.1 s
    ///   against 17 ms) to every refresh on a Cluster run without replicas, or on a Sentinel
    ///   group whose replica is down, for an answer known in advance. So that master is asked
    ///   first (`ROLE`, on the same connection: the one node that knows its replicas for
    ///   sure; a slot map read from a random node was seen to lag behind). One round trip
    ///   more, only for the lease and the refreshed tokens (a couple of writes per session per
    ///   token lifetime). No replica is [`ReplicaAck::NoReplica`]: no `WAIT`, and the write
    ///   counts as unacknowledged, so a Cluster shard or a Sentinel group that lost its
    ///   replica shows in the same metric as a replica that stopped answering.
    pub(crate) async fn wants_replica_ack(&self, conn: &mut Conn, key: &str) -> ReplicaAck {
        let role = match (&self.target, conn) {
            (Target::Single(_), _) => return ReplicaAck::Skip,
            // An ACL user without `ROLE` (it is in `@admin`): WAIT as before, without asking.
            _ if self.role_refused.load(Ordering::Relaxed) => return ReplicaAck::Wait,
            (_, Conn::Node(c)) => redis::cmd("ROLE").query_async::<Value>(c).await,
            (_, Conn::Cluster(c)) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master)));
                c.route_command(redis::cmd("ROLE"), route).await
            }
        };
        match role {
            // ["master", offset, [[ip, port, offset], …]]
            Ok(Value::Array(role)) => match role.get(2) {
                Some(Value::Array(replicas)) if replicas.is_empty() => ReplicaAck::NoReplica,
                _ => ReplicaAck::Wait,
            },
            Err(e) if e.code() == Some("NOPERM") => {
                tracing::info!("redis: the ACL user may not run ROLE; every lease and refresh waits for a replica without asking first");
                self.role_refused.store(true, Ordering::Relaxed);
                ReplicaAck::Wait
            }
            // Unknown: wait, as if it had one (bounded by the ack timeout).
            other => {
                tracing::debug!(answer = ?other.map(|_| ()), "redis: cannot read the master's replicas; waiting for one anyway");
                ReplicaAck::Wait
            }
        }
    }

    /// The shared connection, made on first use (after a version check) and after a failover.
    /// The number identifies it for [`Connector::failed`].
    pub(crate) async fn get(&self) -> Result<(u64, Conn), StoreError> {
        if let Some(current) = self.current.read().expect("not poisoned").clone() {
            return Ok(current);
        }
        let _single_flight = self.connecting.lock().await;
        if let Some(current) = self.current.read().expect("not poisoned").clone() {
            return Ok(current);
        }
        let conn = self.connect().await.map_err(|e| with_tls_hint(e, self.ca_configured))?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.write().expect("not poisoned") = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// An operation on connection `generation` could not be answered (refused, reset, timed
    /// out, or `READONLY`: the node was demoted). With Sentinel that may mean the master moved:
    /// drop the connection so that the next operation asks the sentinels again. One node and
    /// Cluster reconnect by themselves (ConnectionManager; the cluster client follows
    /// `MOVED`/`ASK` and refreshes its slot map).
    pub(crate) fn failed(&self, generation: u64) {
        if !matches!(self.target, Target::Sentinel(_)) {
            return;
        }
        let mut current = self.current.write().expect("not poisoned");
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            tracing::info!("redis: the master may have moved; asking the sentinels again");
            *current = None;
        }
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let manager_config = || {
            redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500))
        };
        let mut conn = match &self.target {
            Target::Single(client) => {
                Conn::Node(ConnectionManager::new_with_config(client.clone(), manager_config()).await.map_err(unavailable)?)
            }
            Target::Sentinel(sentinel) => {
                let client = self.sentinel_master(sentinel).await?;
                Conn::Node(ConnectionManager::new_with_config(client, manager_config()).await.map_err(unavailable)?)
            }
            Target::Cluster { client, .. } => {
                let config = redis::cluster::ClusterConfig::new().set_connection_timeout(self.timeout).set_response_timeout(self.timeout);
                Conn::Cluster(client.get_async_connection_with_config(config).await.map_err(unavailable)?)
            }
        };
        check_version(&mut conn).await?;
        Ok(conn)
    }

    /// A client for the node that receives the pub/sub listener: the node itself, the current
    /// master, or the next Cluster seed (a classic `PUBLISH` reaches every node of a Cluster,
    /// so one node's `PSUBSCRIBE` sees every session's changes).
    pub(crate) async fn pubsub_client(&self) -> Result<Client, StoreError> {
        match &self.target {
            Target::Single(client) => Ok(client.clone()),
            Target::Sentinel(sentinel) => self.sentinel_master(sentinel).await,
            Target::Cluster { seeds, .. } => {
                let i = self.next_seed.fetch_add(1, Ordering::Relaxed) as usize % seeds.len();
                Ok(seeds[i].clone())
            }
        }
    }

    /// Asks each sentinel in turn for the master of the service and checks, with `ROLE`, that
    /// the node it names is a master now (a sentinel may lag behind a failover).
    async fn sentinel_master(&self, sentinel: &Sentinel) -> Result<Client, StoreError> {
        let config =
            redis::AsyncConnectionConfig::new().set_connection_timeout(Some(self.timeout)).set_response_timeout(Some(self.timeout));
        let mut problems = Vec::new();
        for s in &sentinel.sentinels {
            let ask = async {
                let mut conn = s.get_multiplexed_async_connection_with_config(&config).await?;
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&sentinel.service)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            };
            let (host, port) = match tokio::time::timeout(self.timeout, ask).await {
                Ok(Ok(Some(addr))) => addr,
                Ok(Ok(None)) => {
                    problems.push(format!("sentinel {}: no master named {:?}", s.get_connection_info().addr(), sentinel.service));
                    continue;
                }
                Ok(Err(e)) => {
                    problems.push(format!("sentinel {}: {e}", s.get_connection_info().addr()));
                    continue;
                }
                Err(_) => {
                    problems.push(format!("sentinel {}: no answer within {:?}", s.get_connection_info().addr(), self.timeout));
                    continue;
                }
            };
            let master =
                node_client(&RedisNode { host, port }, sentinel.tls, sentinel.node.clone(), &sentinel.certs).map_err(unavailable)?;
            let role = async {
                let mut conn = master.get_multiplexed_async_connection_with_config(&config).await?;
                redis::cmd("ROLE").query_async::<Vec<Value>>(&mut conn).await
            };
            match tokio::time::timeout(self.timeout, role).await {
                Ok(Ok(role)) if matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") => return Ok(master),
                Ok(Ok(_)) => problems.push(format!("master {} is not a master (yet)", master.get_connection_info().addr())),
                Ok(Err(e)) => problems.push(format!("master {}: {e}", master.get_connection_info().addr())),
                Err(_) => problems.push(format!("master {}: no answer within {:?}", master.get_connection_info().addr(), self.timeout)),
            }
        }
        let mut text = format!("no master for {:?} from the sentinels: {}", sentinel.service, problems.join("; "));
        // The URL's credentials are the data nodes'; a sentinel refusing them (or none) is the
        // one setting that is easy to miss.
        if problems.iter().any(|p| p.starts_with("sentinel ") && (p.contains("NOAUTH") || p.contains("WRONGPASS"))) {
            text.push_str(" (the sentinels' own credentials are session.redis_sentinel_username and session.redis_sentinel_password)");
        }
        Err(StoreError::Unavailable(text))
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// rustls' words for a server certificate it does not accept (`rustls::Error::InvalidCertificate`'s
/// Display). redis-rs hands it over as I/O error text only, so the text is all there is to match.
const BAD_CERTIFICATE: &str = "invalid peer certificate";

/// Adds what to check to a refused server certificate: an operator reading "UnknownIssuer" in
/// `/readyz`'s log line should not have to know that it means the CA setting.
fn with_tls_hint(e: StoreError, ca_configured: bool) -> StoreError {
    match e {
        StoreError::Unavailable(text) if text.contains(BAD_CERTIFICATE) => {
            let hint = if ca_configured {
                "the Redis servers' TLS certificates are not signed by the CA in session.redis_ca_file, or do not name the host connected to"
            } else {
                "the Redis servers' TLS certificates are not trusted by the system roots: set session.redis_ca_file to the CA that signed them"
            };
            StoreError::Unavailable(format!("{text} ({hint})"))
        }
        other => other,
    }
}

/// Refuses a server older than [`MIN_VERSION`], naming the version found and the one needed
/// (on a Cluster, every master is checked: a rolling upgrade may have left an old one).
pub(crate) async fn check_version(conn: &mut impl ConnectionLike) -> Result<(), StoreError> {
    let info: Value = redis::cmd("INFO").arg("server").query_async(conn).await.map_err(unavailable)?;
    let mut texts = Vec::new();
    collect_texts(&info, &mut texts);
    if texts.is_empty() {
        return Err(StoreError::Unavailable("INFO server gave no answer to read the Redis version from".into()));
    }
    for text in texts {
        let version = text.lines().find_map(|l| l.strip_prefix("redis_version:")).map(str::trim).unwrap_or("unknown");
        if !version_at_least(version, MIN_VERSION) {
            let (major, minor) = MIN_VERSION;
            let problem = format!(
                "Redis {version} is too old: Portcullis needs Redis {major}.{minor} or newer (for {MIN_VERSION_WHY}); upgrade the server"
            );
            tracing::error!("{problem}");
            return Err(StoreError::Unavailable(problem));
        }
    }
    Ok(())
}

fn collect_texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::BulkString(bytes) => out.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::VerbatimString { text, .. } | Value::SimpleString(text) => out.push(text.clone()),
        Value::Map(pairs) => pairs.iter().for_each(|(_, v)| collect_texts(v, out)),
        Value::Array(items) => items.iter().for_each(|v| collect_texts(v, out)),
        _ => {}
    }
}

pub(crate) fn version_at_least(version: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_name_the_ca_setting() {
        let refused = || StoreError::Unavailable("Io: invalid peer certificate: UnknownIssuer".into());
        let text = |e: StoreError| e.to_string();
        assert!(text(with_tls_hint(refused(), true)).contains("not signed by the CA in session.redis_ca_file"));
        assert!(text(with_tls_hint(refused(), false)).contains("set session.redis_ca_file"));
        let other = StoreError::Unavailable("connection refused".into());
        assert_eq!(text(with_tls_hint(other, true)), "session store unavailable: connection refused");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("7.0.15", (6, 2)));
        assert!(version_at_least("6.2.0", (6, 2)));
        assert!(version_at_least("10.0.0", (6, 2)));
        assert!(!version_at_least("6.0.16", (6, 2)));
        assert!(!version_at_least("5.0.7", (6, 2)));
        assert!(!version_at_least("unknown", (6, 2)));
    }
}
