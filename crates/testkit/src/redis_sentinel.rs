//! A Sentinel group of real processes: a master, a replica, three sentinels (quorum 2).

use std::time::Duration;

use crate::redis_topology::{RedisNode, ScratchDir, base_args, pick_port, redis_cli, wait_until};

/// The service (master) name the sentinels monitor.
pub const SENTINEL_SERVICE: &str = "portcullis";

/// Master and replica start as `data[0]` and `data[1]`; after a failover, ask
/// [`RedisSentinels::master_port`]. Killed when dropped.
pub struct RedisSentinels {
    pub data: Vec<RedisNode>,
    pub sentinels: Vec<RedisNode>,
    dir: ScratchDir,
}

/// How long a sentinel waits before it calls an unanswering master down.
pub const DOWN_AFTER_MS: u64 = 1000;

impl RedisSentinels {
    /// Starts the data nodes and the sentinels, and waits until every sentinel knows the
    /// replica and the two other sentinels (a failover needs both).
    pub async fn start() -> Self {
        let dir = ScratchDir::new("redis-sentinel");
        let master_port = pick_port();
        let master = RedisNode::start(master_port, base_args(master_port, &dir.0)).await;
        let replica_port = pick_port();
        let mut args = base_args(replica_port, &dir.0);
        args.extend(["--replicaof".to_string(), "127.0.0.1".to_string(), master_port.to_string()]);
        let replica = RedisNode::start(replica_port, args).await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = pick_port();
            // A sentinel rewrites its config file: one file each.
            let config = dir.0.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_SERVICE} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {SENTINEL_SERVICE} 10000\nsentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
                    dir = dir.0.display()
                ),
            )
            .unwrap();
            sentinels.push(RedisNode::start(port, vec![config.display().to_string(), "--sentinel".into()]).await);
        }
        let group = Self { data: vec![master, replica], sentinels, dir };
        wait_until(Duration::from_secs(10), "the replica in sync", async || {
            redis_cli(replica_port, &["info", "replication"]).await.contains("master_link_status:up")
        })
        .await;
        for s in &group.sentinels {
            let port = s.port;
            wait_until(Duration::from_secs(20), "sentinels that know each other and the replica", async || {
                let master = redis_cli(port, &["sentinel", "master", SENTINEL_SERVICE]).await;
                field(&master, "num-other-sentinels") == Some("2") && field(&master, "num-slaves") == Some("1")
            })
            .await;
        }
        group
    }

    /// `redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/portcullis`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+sentinel://{}/{SENTINEL_SERVICE}", hosts.join(","))
    }

    /// The master's port as the first sentinel sees it now.
    pub async fn master_port(&self) -> u16 {
        let addr = redis_cli(self.sentinels[0].port, &["sentinel", "get-master-addr-by-name", SENTINEL_SERVICE]).await;
        addr.lines().nth(1).and_then(|p| p.trim().parse().ok()).expect("a master port")
    }

    /// `SENTINEL FAILOVER`: a planned switch to the replica.
    pub async fn failover(&self) {
        let out = redis_cli(self.sentinels[0].port, &["sentinel", "failover", SENTINEL_SERVICE]).await;
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
            new != old && redis_cli(new, &["role"]).await.starts_with("master")
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
