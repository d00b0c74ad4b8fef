//! A Redis Cluster of real `redis-server` processes on loopback ports.

use std::time::Duration;

use crate::redis_topology::{ACL_PASSWORD, ACL_USER, RedisNode, ScratchDir, acl_args, base_args, pick_port, redis_cli, wait_until};

/// `masters` masters (each with `replicas` replicas), slots spread by `redis-cli --cluster
/// create`; every node also has the ACL user. Killed when dropped.
pub struct RedisCluster {
    /// Masters first, then replicas (as `redis-cli --cluster create` assigns them).
    pub nodes: Vec<RedisNode>,
    _dir: ScratchDir,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster, and waits until every node says `cluster_state:ok`.
    pub async fn start(masters: usize, replicas: usize) -> Self {
        let dir = ScratchDir::new("redis-cluster");
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let port = pick_port();
            let mut args = base_args(port, &dir.0);
            #[rustfmt::skip]
            args.extend([
                "--cluster-enabled", "yes",
                "--cluster-config-file", &format!("nodes-{port}.conf"),
                // The bus port is port + 10000 by default: outside the port range for a high
                // free port. An explicit free one instead.
                "--cluster-port", &pick_port().to_string(),
                "--cluster-node-timeout", "2000",
            ].map(String::from));
            args.extend(acl_args(false));
            nodes.push(RedisNode::start(port, args).await);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        let replicas_arg = replicas.to_string();
        args.extend(["--cluster-replicas", &replicas_arg, "--cluster-yes"]);
        redis_cli(nodes[0].port, &args).await;
        for node in &nodes {
            let port = node.port;
            wait_until(Duration::from_secs(20), "cluster_state:ok", async || {
                redis_cli(port, &["cluster", "info"]).await.contains("cluster_state:ok")
            })
            .await;
        }
        Self { nodes, _dir: dir }
    }

    /// `redis+cluster://portcullis:…@127.0.0.1:p1,127.0.0.1:p2,…` (every node a seed).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{ACL_USER}:{ACL_PASSWORD}@{}", seeds.join(","))
    }

    /// How many keys matching `pattern` each node holds (`--scan` on each).
    pub async fn keys_per_node(&self, pattern: &str) -> Vec<usize> {
        let mut counts = Vec::new();
        for node in &self.nodes {
            let keys = redis_cli(node.port, &["--scan", "--pattern", pattern]).await;
            counts.push(keys.lines().filter(|l| !l.is_empty()).count());
        }
        counts
    }
}
