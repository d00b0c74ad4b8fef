//! Shutdown timing: `server.shutdown_delay` and `server.drain_timeout`.
//!
//! On SIGTERM/SIGINT the gateway first answers `/readyz` with 503 for `shutdown_delay` while
//! still serving everything else, so a load balancer that probes readiness stops sending
//! before connections are refused (0 by default: an orchestrator that removes the instance
//! from rotation itself, as Kubernetes does, needs no such wait). Then it closes the
//! listener and lets requests and refresh tasks in flight finish for at most `drain_timeout`;
//! what is still running then is cut (and its refresh lease released) and the process exits.

use std::time::Duration;

use super::{ConfigError, ServerConfig, invalid};

pub(super) fn default_drain_timeout() -> Duration {
    // Kubernetes' default termination grace period is 30 s; leave it a margin to SIGKILL.
    Duration::from_secs(25)
}

pub(super) fn default_shutdown_delay() -> Duration {
    Duration::ZERO
}

pub(super) fn validate(server: &ServerConfig) -> Result<(), ConfigError> {
    if server.drain_timeout.is_zero() {
        return Err(invalid("server.drain_timeout", "must be above zero (requests in flight need time to finish)"));
    }
    Ok(())
}
