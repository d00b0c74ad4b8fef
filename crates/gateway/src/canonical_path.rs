//! One canonical path: the path the route table matches is exactly the path the upstream
//! receives. (Stub: canonicalization lands with issue 7, item 1.)

use http::Uri;
use portcullis::config::{Config, PathParameters};

/// How paths are canonicalized.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    #[allow(dead_code)]
    pub(crate) path_parameters: PathParameters,
}

impl Settings {
    pub(crate) fn new(config: &Config) -> Self {
        Self { path_parameters: config.server.path_parameters }
    }
}

/// Why a path was refused; the text is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathRefusal {
    #[allow(dead_code)]
    #[error("the request path is not valid")]
    Invalid,
}

/// The canonical form of `uri` when it differs (`Some`), `None` when `uri` is canonical already.
pub(crate) fn canonicalize_uri(_settings: &Settings, _uri: &Uri) -> Result<Option<Uri>, PathRefusal> {
    Ok(None)
}
