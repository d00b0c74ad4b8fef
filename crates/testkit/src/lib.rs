//! Test support: the real parts a Portcullis test talks to, each on a free loopback port.
//!
//! - [`Redis`]: a `redis-server` child process that the test can stop and restart;
//!   [`SecureRedis`] (TLS with [`TestCerts`], an ACL user), [`RedisCluster`], [`RedisSentinels`].
//! - [`Op`]: `oidc-provider` (npm) via `tests/op/provider.mjs`, with its grant counters.
//! - [`Upstream`]: an HTTP server that records what reached it and checks bearer tokens by
//!   introspection at the OP.
//! - [`Gateway`]: the real `portcullis` binary with a generated config.
//! - [`Browser`]: an HTTP client with a cookie jar that clicks through the OP's login form.
//! - [`Nginx`], [`Caddy`]: the real front proxies (Debian's packages) for forward-auth.

mod browser;
mod caddy;
mod forwarder;
mod gateway;
mod nginx;
mod op;
mod process;
mod redis;
mod redis_cluster;
mod redis_faults;
mod redis_sentinel;
mod redis_topology;
mod upstream;

pub use browser::{Browser, Hop};
pub use caddy::Caddy;
pub use forwarder::Forwarder;
pub use gateway::{Gateway, GatewayOptions};
pub use nginx::Nginx;
pub use op::{API_CLIENT_ID, API_CLIENT_SECRET, API_RESOURCE, CLIENT_ID, CLIENT_SECRET, Op, OpOptions};
pub use process::{free_port, repo_root};
pub use redis::Redis;
pub use redis_cluster::RedisCluster;
pub use redis_faults::ClusterNodeInfo;
pub use redis_sentinel::{DOWN_AFTER_MS, RedisSentinels, SENTINEL_SERVICE};
pub use redis_topology::{ACL_PASSWORD, ACL_USER, RedisNode, SENTINEL_PASSWORD, SENTINEL_USER, SecureRedis, TestCerts, TopologyOptions};
pub use upstream::{Seen, Upstream};
