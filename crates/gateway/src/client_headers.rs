//! Headers the gateway owns: the client's copies are removed before any layer sets the
//! gateway's own. (Stub: lands with issue 7, item 2.)

use std::net::IpAddr;

use http::HeaderMap;
use portcullis::config::Config;

/// What the sanitizer needs from the config.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    #[allow(dead_code)]
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
}

impl Settings {
    pub(crate) fn new(config: &Config) -> Self {
        Self { trusted_proxies: config.trusted_proxies.clone() }
    }
}

/// Removes client-sent headers that only the gateway may set.
pub(crate) fn sanitize(_settings: &Settings, _headers: &mut HeaderMap, _peer: Option<IpAddr>) {}
