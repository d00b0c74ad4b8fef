//! Authentication of browser sessions: login, the refresh coordinator, the tower layer.

mod authenticator;
pub mod authorization;
mod caller;
mod cookie_sessions;
mod cookies;
mod cross_site;
mod drain;
mod endpoints;
mod forward_auth;
pub mod identity_headers;
mod layer;
mod login;
mod login_state;
mod provider;
mod refresh;
mod reload;
mod request_kind;
mod responses;
mod return_to;
mod stats;

pub use authenticator::{AuthError, Authenticator, Session};
pub use authorization::{AuthorizeLayer, AuthorizeService, GlobalRules};
pub use caller::Caller;
pub use cookies::CookieSettings;
pub use drain::DrainReport;
pub use endpoints::{forward_auth_routes, routes};
pub use forward_auth::{Contract, FORWARD_AUTH_PATH, ForwardedRequest, OriginalRequest, query_rules};
pub use layer::{Admission, Admitted, AuthLayer, AuthService, CsrfProtection};
pub use login::CallbackQuery;
pub use provider::ProviderHandle;
pub use refresh::RefreshError;
pub use request_kind::RequestKind;
pub use responses::Failure;
pub use return_to::safe_return_path;
pub use stats::{RefreshSnapshot, RefreshStats};
