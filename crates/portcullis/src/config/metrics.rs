//! `[metrics]`: the Prometheus endpoint's own listener.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Where `/metrics` is served. Off unless `listen` is set: metrics describe the traffic and
/// the OP's health, which is not for the public side, so they get a listener of their own
/// (bind it to loopback or an internal interface) rather than a path on the gateway's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Socket address of the metrics listener (e.g. `127.0.0.1:9464`); unset: no metrics
    /// endpoint.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}
