//! Who a request comes from, as the auth layer established it: the one thing authorization
//! rules, forward-auth and the inner service read, however the caller authenticated.

use std::sync::Arc;

use crate::session::{Identity, SessionRecord};

/// The authenticated caller of a request, put in the request's extensions by [`super::AuthLayer`].
#[derive(Debug, Clone)]
pub enum Caller {
    /// A browser session (the gateway's cookie).
    Session(Arc<SessionRecord>),
    /// An API client's own bearer token, validated; the identity is read from its claims.
    Bearer(Arc<Identity>),
}

impl Caller {
    /// The caller's identity: user, email, groups and claims.
    pub fn identity(&self) -> &Identity {
        match self {
            Self::Session(record) => &record.identity,
            Self::Bearer(identity) => identity,
        }
    }
}
