//! Portcullis: OpenID Connect sessions for any tower/axum service.
//!
//! # Layout
//!
//! - [`config`]: the TOML schema, environment overrides, validation naming the key at fault.
//! - [`session`]: session ids and cookies, the versioned session record, and the stores
//!   (memory, Redis) behind the [`session::SessionStore`] trait.
//! - [`oidc`]: the relying party: discovery, JWKS cache with refetch on unknown `kid`, ID-token
//!   validation, token and revocation calls with outcomes classified for the refresh coordinator.
//! - [`bearer`]: API clients' own bearer tokens: JWT access tokens checked against the OP's
//!   keys, or RFC 7662 introspection with a bounded cache.
//! - [`metrics`]: the Prometheus metric families the library records (refresh, store, OP),
//!   on an explicit registry.
//! - [`auth`]: the [`auth::Authenticator`] (cookie → session, refreshing on the way), the
//!   refresh coordinator, the login flow, the `/oauth2/*` endpoints and [`auth::AuthLayer`].
//!
//! The gateway binary (`portcullis-gateway`) adds the route table, the reverse proxy and the
//! command line on top; nothing here knows about upstreams.

pub mod auth;
pub mod bearer;
pub mod config;
mod cookie_header;
mod crypto;
pub mod metrics;
pub mod oidc;
pub mod session;
