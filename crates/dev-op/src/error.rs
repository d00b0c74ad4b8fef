//! Why the OP did not start.

use std::net::SocketAddr;

/// Why [`start`](crate::start) failed.
#[derive(Debug, thiserror::Error)]
pub enum DevOpError {
    /// The listen address is not loopback and `allow_non_loopback` is off.
    #[error(
        "refusing to listen on {0}: this is a development OpenID Provider. Its users and passwords are fixed, its keys \
         are thrown away at every restart, and anyone who can reach it can sign in, so the tokens it issues are not \
         secure. Listen on a loopback address (127.0.0.1 or ::1), or pass --allow-non-loopback \
         (allow_non_loopback = true) if you really want other machines to reach it"
    )]
    NonLoopback(SocketAddr),
    /// The listen address could not be bound.
    #[error("cannot listen: {0}")]
    Bind(#[source] std::io::Error),
    /// The configuration is unusable; the message names the field.
    #[error("invalid dev OP configuration: {0}")]
    InvalidConfig(String),
    /// Generating the signing keys failed (the OS random source or aws-lc-rs).
    #[error("generating signing keys: {0}")]
    Keys(String),
}
