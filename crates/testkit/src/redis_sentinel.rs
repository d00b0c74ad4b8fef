//! A Sentinel group of real processes: a master, a replica, three sentinels (quorum 2).

use std::time::Duration;

use crate::redis_topology::{
    ACL_PASSWORD, ACL_USER, ADMIN_PASSWORD, ADMIN_USER, Cli, RedisNode, SENTINEL_PASSWORD, SENTINEL_USER, ScratchDir, TopologyOptions,
    base_args, pick_port, wait_until,
};

/// The service (master) name the sentinels monitor.
pub const SENTINEL_SERVICE: &str = "portcullis";

/// Master and replica start as `data[0]` and `data[1]`; after a failover, ask
/// [`RedisSentinels::master_port`]. Killed when dropped.
pub struct RedisSentinels {
    pub data: Vec<RedisNode>,
    pub sentinels: Vec<RedisNode>,
    scheme: &'static str,
    acl_only: bool,
    cli: Cli,
    dir: ScratchDir,
}

/// How long a sentinel waits before it calls an unanswering master down.
pub const DOWN_AFTER_MS: u64 = 1000;

impl RedisSentinels {
    /// Starts the data nodes and the sentinels (plain TCP, the default user on), and waits
    /// until every sentinel knows the replica and the two other sentinels (a failover needs both).
    pub async fn start() -> Self {
        Self::start_with(TopologyOptions::default()).await
    }

    /// [`RedisSentinels::start`], secured as `options` says. With TLS every link is TLS: the
    /// replica's to the master (`tls-replication`), and the sentinels' to the data nodes and
    /// to each other (a sentinel's `tls-replication` makes all its outgoing links TLS). With
    /// `acl_only`, the data nodes have [`ACL_USER`] for the gateway and the admin user for the
    /// replica (`masteruser`) and the sentinels (`sentinel auth-user`); the sentinels have
    /// [`SENTINEL_USER`] for the gateway, allowed only what the gateway asks, and the admin
    /// user for each other (`sentinel sentinel-user`).
    pub async fn start_with(options: TopologyOptions<'_>) -> Self {
        let dir = ScratchDir::new("redis-sentinel");
        let cli = Cli::new(&options);
        let data_node = |port: u16| {
            let mut args = base_args(port, &dir.0);
            args.extend(options.tls_args(port));
            args.extend(options.acl_args());
            args
        };
        let master_port = pick_port();
        let master = RedisNode::start(master_port, data_node(master_port)).await;
        let replica_port = pick_port();
        let mut args = data_node(replica_port);
        args.extend(["--replicaof".to_string(), "127.0.0.1".to_string(), master_port.to_string()]);
        let replica = RedisNode::start(replica_port, args).await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = pick_port();
            // A sentinel rewrites its config file: one file each.
            let config = dir.0.join(format!("sentinel-{port}.conf"));
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {SENTINEL_SERVICE} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {SENTINEL_SERVICE} 10000\nsentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
                dir = dir.0.display()
            );
            if let Some(certs) = options.tls {
                text.push_str(&format!(
                    "port 0\ntls-port {port}\ntls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                     tls-auth-clients no\ntls-replication yes\n",
                    cert = certs.cert_file.display(),
                    key = certs.key_file.display(),
                    ca = certs.ca_file.display(),
                ));
            }
            if options.acl_only {
                // The gateway asks one thing of a sentinel: where the master is.
                text.push_str(&format!(
                    "user default off\nuser {ADMIN_USER} on >{ADMIN_PASSWORD} ~* &* +@all\n\
                     user {SENTINEL_USER} on >{SENTINEL_PASSWORD} -@all +sentinel|get-master-addr-by-name +ping\n\
                     sentinel sentinel-user {ADMIN_USER}\nsentinel sentinel-pass {ADMIN_PASSWORD}\n\
                     sentinel auth-user {SENTINEL_SERVICE} {ADMIN_USER}\nsentinel auth-pass {SENTINEL_SERVICE} {ADMIN_PASSWORD}\n"
                ));
            }
            std::fs::write(&config, text).unwrap();
            sentinels.push(RedisNode::start(port, vec![config.display().to_string(), "--sentinel".into()]).await);
        }
        let group = Self { data: vec![master, replica], sentinels, scheme: options.scheme(), acl_only: options.acl_only, cli, dir };
        wait_until(Duration::from_secs(10), "the replica in sync", async || {
            group.cli.run(replica_port, &["info", "replication"]).await.contains("master_link_status:up")
        })
        .await;
        for s in &group.sentinels {
            let port = s.port;
            wait_until(Duration::from_secs(20), "sentinels that know each other and the replica", async || {
                let master = group.cli.run(port, &["sentinel", "master", SENTINEL_SERVICE]).await;
                field(&master, "num-other-sentinels") == Some("2") && field(&master, "num-slaves") == Some("1")
            })
            .await;
        }
        group
    }

    /// `redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/portcullis` (`rediss+sentinel://`
    /// with TLS; with `acl_only`, [`ACL_USER`]'s credentials for the data nodes in it: the
    /// sentinels' go in `session.redis_sentinel_username/password`).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let auth = if self.acl_only { format!("{ACL_USER}:{ACL_PASSWORD}@") } else { String::new() };
        format!("{}+sentinel://{auth}{}/{SENTINEL_SERVICE}", self.scheme, hosts.join(","))
    }

    /// The master's port as the first sentinel sees it now.
    pub async fn master_port(&self) -> u16 {
        let addr = self.cli.run(self.sentinels[0].port, &["sentinel", "get-master-addr-by-name", SENTINEL_SERVICE]).await;
        addr.lines().nth(1).and_then(|p| p.trim().parse().ok()).expect("a master port")
    }

    /// `SENTINEL FAILOVER`: a planned switch to the replica.
    pub async fn failover(&self) {
        let out = self.cli.run(self.sentinels[0].port, &["sentinel", "failover", SENTINEL_SERVICE]).await;
        assert!(out.contains("OK"), "SENTINEL FAILOVER: {out}");
    }

    /// The data node listening on `port`.
    pub fn data_node(&mut self, port: u16) -> &mut RedisNode {
        self.data.iter_mut().find(|n| n.port == port).expect("a data node on that port")
    }

    /// Waits until the sentinels name a master other than `old` and that node says it is master.
    pub async fn wait_for_new_master(&self, old: u16, within: Duration) -> u16 {
        let mut new = old;
        wait_until(within, "a new master", async || {
            new = self.master_port().await;
            new != old && self.cli.run(new, &["role"]).await.starts_with("master")
        })
        .await;
        new
    }

    /// The scratch directory (sentinel configs), for a failing test's post-mortem.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.0
    }
}

/// A field of a `SENTINEL MASTER` reply as redis-cli prints it (name and value on alternate lines).
fn field<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    let lines: Vec<&str> = reply.lines().collect();
    lines.iter().position(|l| l.trim() == name).and_then(|i| lines.get(i + 1)).map(|v| v.trim())
}
