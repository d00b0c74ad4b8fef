//! A Redis Cluster of real `redis-server` processes on loopback ports.

use std::time::Duration;

use crate::redis_topology::{ACL_PASSWORD, ACL_USER, Cli, RedisNode, ScratchDir, TopologyOptions, base_args, pick_port, wait_until};

/// `masters` masters (each with `replicas` replicas), slots spread by `redis-cli --cluster
/// create`; every node also has the ACL user. Killed when dropped.
pub struct RedisCluster {
    /// Masters first, then replicas (as `redis-cli --cluster create` assigns them).
    pub nodes: Vec<RedisNode>,
    scheme: &'static str,
    cli: Cli,
    _dir: ScratchDir,
}

impl RedisCluster {
    /// Starts the nodes (plain TCP, the default user on), creates the cluster, and waits until
    /// every node says `cluster_state:ok`.
    pub async fn start(masters: usize, replicas: usize) -> Self {
        Self::start_with(masters, replicas, TopologyOptions::default()).await
    }

    /// [`RedisCluster::start`], secured as `options` says: with TLS the Cluster bus is TLS too
    /// (`tls-cluster`), so the nodes announce their TLS ports in `CLUSTER SLOTS` and
    /// redirections; with `acl_only` replicas authenticate to their masters as the admin user.
    pub async fn start_with(masters: usize, replicas: usize, options: TopologyOptions<'_>) -> Self {
        let dir = ScratchDir::new("redis-cluster");
        let cli = Cli::new(&options);
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
            if options.tls.is_some() {
                args.extend(options.tls_args(port));
                args.extend(["--tls-cluster", "yes"].map(String::from));
            }
            args.extend(options.acl_args());
            nodes.push(RedisNode::start(port, args).await);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        let replicas_arg = replicas.to_string();
        args.extend(["--cluster-replicas", &replicas_arg, "--cluster-yes"]);
        cli.run(nodes[0].port, &args).await;
        for node in &nodes {
            let port = node.port;
            wait_until(Duration::from_secs(20), "cluster_state:ok", async || {
                cli.run(port, &["cluster", "info"]).await.contains("cluster_state:ok")
            })
            .await;
        }
        Self { nodes, scheme: options.scheme(), cli, _dir: dir }
    }

    /// `redis+cluster://portcullis:…@127.0.0.1:p1,127.0.0.1:p2,…` (every node a seed;
    /// `rediss+cluster://` with TLS).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("{}+cluster://{ACL_USER}:{ACL_PASSWORD}@{}", self.scheme, seeds.join(","))
    }

    /// How many keys matching `pattern` each node holds (`--scan` on each).
    pub async fn keys_per_node(&self, pattern: &str) -> Vec<usize> {
        let mut counts = Vec::new();
        for node in &self.nodes {
            let keys = self.cli.run(node.port, &["--scan", "--pattern", pattern]).await;
            counts.push(keys.lines().filter(|l| !l.is_empty()).count());
        }
        counts
    }
}
