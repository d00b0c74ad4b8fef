//! A development OpenID Provider: enough of a real OP to log in through a browser, exercise a
//! relying party's refresh logic against a strict, rotating token endpoint, and inject faults.
//! Everything lives in memory and dies with the process. **Development only**: users and
//! passwords are fixed, keys are regenerated at every start, and [`start`] refuses a non-loopback
//! listen address unless told otherwise.
//!
//! ```no_run
//! # async fn run() -> Result<(), portcullis_dev_op::DevOpError> {
//! let op = portcullis_dev_op::start(portcullis_dev_op::DevOpConfig::default()).await?;
//! println!("issuer {}", op.issuer());
//! op.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `config`: the configuration ([`DevOpConfig`], [`ClientConfig`], [`User`],
//!   [`FailureRates`]) and its defaults.
//! - `cli`: [`DevOpArgs`], the `portcullis dev-op` command line.
//! - `server`: [`start`], the [`DevOp`] handle, the router (every endpoint in one place).
//! - `provider`: the shared state behind every handler: issuer, clients, users, keys, store,
//!   knobs, counters, and the ID-token claims.
//! - `keys`: the RS256 and ES256 signing keys, the JWKS, signing and verifying our own JWTs.
//! - `store`: grants, authorization codes, access and refresh tokens, browser sessions, expiry.
//! - `knobs`: settings changeable at runtime (`POST /control`).
//! - `stats`: the counters ([`Stats`]) and `/stats`.
//! - `params`: form and query parsing that refuses repeated parameters.
//! - `oauth_error`: RFC 6749 error responses.
//! - `client_auth`: `client_secret_basic` / `client_secret_post`.
//! - `discovery`: `/.well-known/openid-configuration`, `/jwks`.
//! - `authorize`: `/authorize`, the login form and the browser-session cookie.
//! - `token`: `/token` (authorization code, refresh with rotation and reuse detection,
//!   latency and failure injection).
//! - `userinfo`, `introspect`, `revoke`: the bearer and token-management endpoints.
//! - `logout`: `/end_session` and back-channel logout.
//! - `pages`: the HTML (login, signed out, errors), with escaping.
//! - `crypto`: random tokens, PKCE hashing, constant-time comparison.
//! - `error`: [`DevOpError`].

mod authorize;
mod cli;
mod client_auth;
mod config;
mod crypto;
mod discovery;
mod error;
mod introspect;
mod keys;
mod knobs;
mod logout;
mod oauth_error;
mod pages;
mod params;
mod provider;
mod revoke;
mod server;
mod stats;
mod store;
mod token;
mod userinfo;

pub use cli::DevOpArgs;
pub use config::{ClientConfig, DevOpConfig, FailureRates, User};
pub use error::DevOpError;
pub use server::{DevOp, start};
pub use stats::Stats;
