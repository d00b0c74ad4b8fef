//! Faults of a replicated Redis, for the tests of what a failover can lose: a replica frozen
//! and cut off from its master (so the master's next writes reach no replica and `WAIT` gets
//! no acknowledgement), the master killed, the stale replica promoted.
//!
//! Kept apart from the topology fixtures (`redis_cluster.rs`, `redis_topology.rs`): only
//! `impl` blocks on them, through `redis-cli` and signals.

use std::time::Duration;

use crate::{
    RedisCluster,
    redis_topology::{redis_cli, wait_until},
};

/// One cluster node's line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct ClusterNodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// `fail` or `fail?` in its flags.
    pub failing: bool,
}

impl RedisCluster {
    /// `CLUSTER NODES` as node `via` sees it.
    pub async fn cluster_nodes(&self, via: usize) -> Vec<ClusterNodeInfo> {
        let text = redis_cli(self.nodes[via].port(), &["cluster", "nodes"]).await;
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = f.get(1)?.split('@').next()?.rsplit(':').next()?.parse().ok()?;
                let flags = f.get(2)?;
                Some(ClusterNodeInfo {
                    id: f[0].to_string(),
                    port,
                    master: flags.contains("master"),
                    master_id: f.get(3).filter(|m| **m != "-").map(|m| m.to_string()),
                    failing: flags.contains("fail"),
                })
            })
            .collect()
    }

    /// Waits until `masters` nodes say they are masters (`ROLE`, each node's own word: another
    /// node's `CLUSTER NODES` lags behind `redis-cli --cluster create` for a while) and each
    /// has `replicas` replicas online (`RedisCluster::start` waits for `cluster_state:ok` only,
    /// which comes before the replicas' first sync, 5 s of diskless-sync delay).
    pub async fn wait_replicas_online(&self, masters: usize, replicas: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut ready = 0;
            let mut seen = Vec::new();
            for i in 0..self.nodes.len() {
                if self.is_master(i).await {
                    let info = redis_cli(self.nodes[i].port(), &["info", "replication"]).await;
                    let online = info.lines().filter(|l| l.starts_with("slave") && l.contains("state=online")).count();
                    seen.push((self.nodes[i].port(), online));
                    ready += usize::from(online >= replicas);
                }
            }
            if ready == masters && seen.len() == masters {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{masters} masters with {replicas} replicas online: {seen:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether node `i` says it is a master (`ROLE`).
    pub async fn is_master(&self, i: usize) -> bool {
        redis_cli(self.nodes[i].port(), &["role"]).await.starts_with("master")
    }

    /// Index in `nodes` of the node listening on `port`.
    pub fn index_of(&self, port: u16) -> usize {
        self.nodes.iter().position(|n| n.port() == port).expect("a node on that port")
    }

    /// The master (index) holding a key matching `pattern` (one key expected).
    pub async fn master_holding(&self, pattern: &str) -> usize {
        let counts = self.keys_per_node(pattern).await;
        let mut holders = Vec::new();
        for (i, count) in counts.iter().enumerate() {
            if *count > 0 && self.is_master(i).await {
                holders.push(i);
            }
        }
        assert_eq!(holders.len(), 1, "one master holds {pattern}: {counts:?}");
        holders[0]
    }

    /// The replica (index) of master `master`, as the master itself reports it.
    pub async fn replica_of(&self, master: usize) -> usize {
        let info = redis_cli(self.nodes[master].port(), &["info", "replication"]).await;
        let port = info
            .lines()
            .find(|l| l.starts_with("slave0:"))
            .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("port=")))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("a replica of :{}: {info}", self.nodes[master].port()));
        self.index_of(port)
    }

    /// `redis-server`'s pid on node `i` (`INFO server`: the fixture keeps its child private).
    pub async fn pid(&self, i: usize) -> u32 {
        let info = redis_cli(self.nodes[i].port(), &["info", "server"]).await;
        info.lines().find_map(|l| l.strip_prefix("process_id:")).and_then(|p| p.trim().parse().ok()).expect("process_id")
    }

    /// Freezes node `i` (SIGSTOP); returns its pid for [`RedisCluster::thaw`].
    pub async fn freeze(&self, i: usize) -> u32 {
        let pid = self.pid(i).await;
        signal(pid, "-STOP");
        pid
    }

    /// Thaws a frozen node (SIGCONT).
    pub fn thaw(&self, pid: u32) {
        signal(pid, "-CONT");
    }

    /// Cuts `master`'s replica off, so that the master's next writes reach no replica: the
    /// replica is frozen (it cannot reconnect), then the master drops its replication link
    /// (`CLIENT KILL TYPE replica`). What was sent before stays in the replica's socket; what
    /// is written after exists on the master only, and `WAIT` there answers 0. Returns the
    /// replica's index and pid.
    pub async fn cut_replica(&self, master: usize) -> (usize, u32) {
        let replica = self.replica_of(master).await;
        // Let the replica take what the master has now (the cut is about the writes after it).
        let port = self.nodes[master].port();
        wait_until(Duration::from_secs(5), "the replica caught up", async || {
            let info = redis_cli(port, &["info", "replication"]).await;
            let offset = field(&info, "master_repl_offset");
            info.lines().any(|l| l.starts_with("slave0:") && offset.is_some_and(|o| l.contains(&format!("offset={o},"))))
        })
        .await;
        let pid = self.freeze(replica).await;
        let killed = redis_cli(port, &["client", "kill", "type", "replica"]).await;
        assert!(killed.trim().parse::<u32>().unwrap_or(0) >= 1, "the replication link was dropped: {killed}");
        (replica, pid)
    }

    /// Kills master `master`, thaws its stale replica and promotes it at once
    /// (`CLUSTER FAILOVER TAKEOVER`: no agreement from the other masters needed, no wait for
    /// `cluster-node-timeout`); waits until every live node sees it as master and the cluster
    /// is `ok`.
    pub async fn kill_and_promote(&mut self, master: usize, replica: usize, replica_pid: u32) {
        self.nodes[master].kill().await;
        self.thaw(replica_pid);
        let port = self.nodes[replica].port();
        // The thawed replica answers again once it has drained what it queued while frozen.
        wait_until(Duration::from_secs(10), "the thawed replica answering", async || {
            tokio::process::Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "ping"])
                .output()
                .await
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
        })
        .await;
        let out = redis_cli(port, &["cluster", "failover", "takeover"]).await;
        assert!(out.contains("OK"), "CLUSTER FAILOVER TAKEOVER: {out}");
        self.wait_for_master(replica, master, Duration::from_secs(20)).await;
    }

    /// Waits until node `new` is master and every node but `dead` says so and `cluster_state:ok`.
    pub async fn wait_for_master(&self, new: usize, dead: usize, within: Duration) {
        let port = self.nodes[new].port();
        let live: Vec<u16> = (0..self.nodes.len()).filter(|i| *i != dead).map(|i| self.nodes[i].port()).collect();
        wait_until(within, "the promoted replica master everywhere, cluster ok", async || {
            for p in &live {
                let info = redis_cli(*p, &["cluster", "info"]).await;
                if !info.contains("cluster_state:ok") {
                    return false;
                }
                let nodes = redis_cli(*p, &["cluster", "nodes"]).await;
                let sees_master = nodes.lines().any(|l| l.contains(&format!(":{port}@")) && l.contains("master"));
                if !sees_master {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// `CONFIG SET <name> <value>` on every node (masters and replicas alike, so that a
    /// promoted replica keeps it).
    pub async fn config_set_all(&self, name: &str, value: &str) {
        for node in &self.nodes {
            let out = redis_cli(node.port(), &["config", "set", name, value]).await;
            assert!(out.contains("OK"), "CONFIG SET {name} {value}: {out}");
        }
    }

    /// `INFO replication` field `name` on node `i`.
    pub async fn replication_field(&self, i: usize, name: &str) -> Option<String> {
        let info = redis_cli(self.nodes[i].port(), &["info", "replication"]).await;
        field(&info, name).map(str::to_string)
    }
}

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}
