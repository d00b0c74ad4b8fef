//! Configuration: one TOML file, every key overridable from the environment, secrets from files.
//!
//! Environment overrides use the prefix `PORTCULLIS_` and `__` between nesting levels:
//! `PORTCULLIS_OIDC__CLIENT_SECRET` sets `oidc.client_secret`, `PORTCULLIS_LISTEN` sets `listen`.
//! Any secret can instead be read from a file with the `*_file` twin of its key
//! (`oidc.client_secret_file`, `session.secret_file`), which is how container secrets arrive.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::{Deserialize, Serialize};
use url::Url;

/// Prefix of the environment variables that override file keys.
pub const ENV_PREFIX: &str = "PORTCULLIS_";

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Socket address the gateway listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where browsers reach the gateway; the redirect URI and cookie security derive from it.
    pub public_url: Url,
    /// The OpenID Provider and this client's registration at it.
    pub oidc: OidcConfig,
    /// Session storage and cookie behaviour.
    pub session: SessionConfig,
    /// Refresh timing.
    #[serde(default)]
    pub refresh: RefreshConfig,
    /// Route table: longest matching prefix wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Proxies (CIDRs such as `10.0.0.0/8`, or `192.0.2.7/32` for one address) whose
    /// `X-Forwarded-For` is extended rather than replaced. Empty: the peer address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connection limits and the request boundary (paths, upgrades).
    #[serde(default)]
    pub server: ServerConfig,
    /// Who may pass, on every route (a route's own rules apply in addition).
    #[serde(default)]
    pub authorization: AuthorizationRules,
    /// Bearer-token validation for API clients (routes with `bearer = "jwt"` or `"introspect"`).
    #[serde(default)]
    pub bearer: BearerConfig,
    /// Log output: format, filter, access lines.
    #[serde(default)]
    pub log: LogConfig,
    /// The Prometheus `/metrics` listener (off unless `metrics.listen` is set).
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// Rules a caller (browser session or bearer token) must satisfy. Every non-empty list must be
/// satisfied (AND); within a list any entry suffices (OR). Empty rules let every authenticated
/// caller pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRules {
    /// The caller's verified email must end in `@<domain>` for one of these (`*` allows any).
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// The caller's verified email must be one of these (compared case-insensitively).
    #[serde(default)]
    pub allowed_emails: Vec<String>,
    /// The caller must be in at least one of these groups (from `oidc.groups_claim`).
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Claim name → accepted values: the claim (a string, or an array of strings) must hold one
    /// of them (roles, `acr`, tenant ids).
    #[serde(default)]
    pub require_claims: BTreeMap<String, Vec<String>>,
}

impl AuthorizationRules {
    /// No rule at all: every authenticated caller passes.
    pub fn is_empty(&self) -> bool {
        self.allowed_email_domains.is_empty()
            && self.allowed_emails.is_empty()
            && self.allowed_groups.is_empty()
            && self.require_claims.is_empty()
    }
}

/// Bearer-token validation settings shared by every route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BearerConfig {
    /// Introspection answers kept at most this many tokens (least recently used dropped).
    #[serde(default = "default_introspection_cache_entries")]
    pub introspection_cache_entries: usize,
    /// An introspection answer is reused at most this long (and never past the token's `exp`).
    #[serde(default = "default_introspection_cache_ttl", with = "humantime_serde")]
    pub introspection_cache_ttl: Duration,
}

impl Default for BearerConfig {
    fn default() -> Self {
        Self {
            introspection_cache_entries: default_introspection_cache_entries(),
            introspection_cache_ttl: default_introspection_cache_ttl(),
        }
    }
}

/// How a route treats `Authorization: Bearer` from API clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BearerMode {
    /// Bearer tokens are not accepted as authentication (a session cookie is needed).
    #[default]
    Off,
    /// Validated locally against the OP's JWKS (signature, `iss`, `aud`, `exp`/`nbf`, scopes).
    Jwt,
    /// Validated by RFC 7662 introspection at the OP, answers cached.
    Introspect,
}

/// What the gateway accepts from clients before anything else looks at a request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// A client must send a whole request head within this long, or the connection is closed.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    #[serde(default = "default_keep_alive_timeout", with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// A request body must make progress (some bytes arrive) at least this often, or the request
    /// is answered 408 and the upstream request aborted (nginx's `client_body_timeout`).
    #[serde(default = "default_client_body_timeout", with = "humantime_serde")]
    pub client_body_timeout: Duration,
    /// A response write to the client must make progress (the client reads some bytes) at least
    /// this often, or the connection is closed and the upstream request dropped (nginx's
    /// `send_timeout`): a client that stops reading cannot hold a connection, an upstream
    /// connection and buffered bytes forever.
    #[serde(default = "default_send_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Largest request head (request line and headers) accepted, in bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Connections served at once; more wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    #[serde(default = "default_h2_max_concurrent_streams")]
    pub h2_max_concurrent_streams: u32,
    /// `Upgrade` protocols passed to upstreams (compared case-insensitively).
    #[serde(default = "default_allowed_upgrades")]
    pub allowed_upgrades: Vec<String>,
    /// `;` path parameters (`/a;jsessionid=1/b`): refused with 400, or passed as they are.
    #[serde(default)]
    pub path_parameters: PathParameters,
    /// On SIGTERM/SIGINT, `/readyz` answers 503 this long before the listener closes (see
    /// `config/lifecycle.rs`).
    #[serde(default = "lifecycle::default_shutdown_delay", with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// Once the listener is closed, requests and refreshes in flight get this long to finish.
    #[serde(default = "lifecycle::default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: default_header_read_timeout(),
            keep_alive_timeout: default_keep_alive_timeout(),
            client_body_timeout: default_client_body_timeout(),
            send_timeout: default_send_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_connections: default_max_connections(),
            h2_max_concurrent_streams: default_h2_max_concurrent_streams(),
            allowed_upgrades: default_allowed_upgrades(),
            path_parameters: PathParameters::default(),
            shutdown_delay: lifecycle::default_shutdown_delay(),
            drain_timeout: lifecycle::default_drain_timeout(),
        }
    }
}

/// What a `;` in a path segment gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    /// 400: Tomcat and Spring strip `;…` before matching, so `/admin;x/` would reach `/admin/`.
    #[default]
    Refuse,
    /// Passed unchanged (the `;` is part of the segment the route table matches).
    Pass,
}

/// The OpenID Provider and the client registration.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL; metadata is discovered at `<issuer>/.well-known/openid-configuration`.
    pub issuer: Url,
    /// Client identifier registered at the OP.
    pub client_id: String,
    /// Client secret (or use `client_secret_file`).
    #[serde(default, serialize_with = "redacted::secret")]
    pub client_secret: Option<String>,
    /// File holding the client secret; trailing newlines are trimmed.
    #[serde(default)]
    pub client_secret_file: Option<std::path::PathBuf>,
    /// How the client authenticates at the token endpoint.
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
    /// Scopes requested at login; `openid` is required, `offline_access` gets a refresh token.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Claim whose value becomes the upstream user header.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Signature algorithms accepted on ID tokens. `none` and HMAC algorithms are never accepted.
    #[serde(default = "default_algorithms")]
    pub id_token_algorithms: Vec<String>,
    /// Clock skew tolerated on `exp`/`iat`.
    #[serde(default = "default_clock_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Timeout of every call to the OP (discovery, JWKS, token, revocation).
    #[serde(default = "default_http_timeout", with = "humantime_serde")]
    pub http_timeout: Duration,
    /// Extra parameters added to the authorization request (e.g. `prompt`, `acr_values`).
    #[serde(default)]
    pub extra_auth_params: BTreeMap<String, String>,
    /// Where the OP sends the browser after logout; defaults to `public_url`.
    #[serde(default)]
    pub post_logout_redirect_url: Option<Url>,
    /// Forward an email the OP marks `email_verified: false` (oauth2-proxy's
    /// `insecure_oidc_allow_unverified_email`). Off: such a login is refused.
    #[serde(default)]
    pub allow_unverified_email: bool,
    /// The JWKS is fetched again this often, so a key the OP dropped stops being trusted.
    #[serde(default = "default_jwks_refresh_interval", with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// Claim holding the user's groups (`X-Forwarded-Groups`, `allowed_groups`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Discovery runs again this often (endpoints and `jwks_uri` may move).
    #[serde(default = "default_discovery_refresh_interval", with = "humantime_serde")]
    pub discovery_refresh_interval: Duration,
}

/// Client authentication at the token, revocation and introspection endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP Basic with the form-urlencoded client id and secret (RFC 6749 §2.3.1).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the request body.
    ClientSecretPost,
}

/// Which session store holds the tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In-process memory: one instance only, sessions lost on restart.
    #[default]
    Memory,
    /// Redis: tokens server-side, shared by any number of instances.
    Redis,
    /// Encrypted cookies: no server-side state; one instance (see the README's limits).
    Cookie,
}

/// Session storage and cookie behaviour.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Where sessions live.
    #[serde(default)]
    pub store: StoreKind,
    /// Redis URL, required when `store = "redis"`.
    #[serde(default, serialize_with = "redacted::url")]
    pub redis_url: Option<String>,
    /// PEM file of the CA(s) that sign the Redis servers' certificates, trusted instead of the
    /// system roots for `rediss` URLs (the usual case: a private CA).
    #[serde(default)]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// PEM certificate chain the gateway presents to Redis servers that ask for a client
    /// certificate (`tls-auth-clients yes`); with `redis_client_key_file`.
    #[serde(default)]
    pub redis_client_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `redis_client_cert_file` (a path: the key itself never enters the config).
    #[serde(default)]
    pub redis_client_key_file: Option<std::path::PathBuf>,
    /// ACL user and password for the sentinels of a `redis+sentinel://` URL, when they differ
    /// from the nodes' (the URL's credentials are the nodes').
    #[serde(default)]
    pub redis_sentinel_username: Option<String>,
    #[serde(default, serialize_with = "redacted::secret")]
    pub redis_sentinel_password: Option<String>,
    /// Key material (at least 32 bytes) for the cookie MAC and login binding.
    #[serde(default, serialize_with = "redacted::secret")]
    pub secret: Option<String>,
    /// File holding `secret`.
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
    /// Earlier secrets, still accepted for the session cookies, cookie-store sessions and
    /// pending logins made with them after a key rotation (new ones are made with `secret`).
    /// Drop one once `absolute_timeout` has passed. Reloadable (SIGHUP).
    #[serde(default, serialize_with = "redacted::secrets")]
    pub previous_secrets: Vec<String>,
    /// Cookie name; gets the `__Host-` prefix when `public_url` is https.
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// A session unused this long ends.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A session ends this long after login, used or not.
    #[serde(default = "default_absolute_timeout", with = "humantime_serde")]
    pub absolute_timeout: Duration,
    /// How long a login may take between `/oauth2/start` and the callback.
    #[serde(default = "default_login_timeout", with = "humantime_serde")]
    pub login_timeout: Duration,
    /// Timeout of one store operation; a slow store answers 503 instead of hanging requests.
    #[serde(default = "default_store_timeout", with = "humantime_serde")]
    pub store_timeout: Duration,
    /// The Redis store's in-process cache of hot sessions.
    #[serde(default)]
    pub read_cache: ReadCacheConfig,
}

// `Debug` by hand for the two structs holding secrets, so that a `{:?}` of the config (in a log
// line, a panic, a test failure) never shows one. The destructuring lists every field without
// `..`: a field added later does not compile until it is placed here, redacted or not.
impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            issuer,
            client_id,
            client_secret,
            client_secret_file,
            auth_method,
            scopes,
            user_claim,
            id_token_algorithms,
            clock_skew,
            http_timeout,
            extra_auth_params,
            post_logout_redirect_url,
            allow_unverified_email,
            jwks_refresh_interval,
            groups_claim,
            discovery_refresh_interval,
        } = self;
        f.debug_struct("OidcConfig")
            .field("issuer", &issuer.as_str())
            .field("client_id", client_id)
            .field("client_secret", &client_secret.as_ref().map(|_| REDACTED))
            .field("client_secret_file", client_secret_file)
            .field("auth_method", auth_method)
            .field("scopes", scopes)
            .field("user_claim", user_claim)
            .field("id_token_algorithms", id_token_algorithms)
            .field("clock_skew", clock_skew)
            .field("http_timeout", http_timeout)
            // Extra authorization parameters are sent in the browser's URL: not secrets.
            .field("extra_auth_params", extra_auth_params)
            .field("post_logout_redirect_url", &post_logout_redirect_url.as_ref().map(Url::as_str))
            .field("allow_unverified_email", allow_unverified_email)
            .field("groups_claim", groups_claim)
            .field("jwks_refresh_interval", jwks_refresh_interval)
            .field("discovery_refresh_interval", discovery_refresh_interval)
            .finish()
    }
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            store,
            redis_url,
            redis_ca_file,
            redis_client_cert_file,
            redis_client_key_file,
            redis_sentinel_username,
            redis_sentinel_password,
            secret,
            secret_file,
            previous_secrets,
            cookie_name,
            idle_timeout,
            absolute_timeout,
            login_timeout,
            store_timeout,
            read_cache,
        } = self;
        f.debug_struct("SessionConfig")
            .field("store", store)
            .field("redis_url", &redis_url.as_deref().map(redact_url))
            .field("redis_ca_file", redis_ca_file)
            .field("redis_client_cert_file", redis_client_cert_file)
            .field("redis_client_key_file", redis_client_key_file)
            .field("redis_sentinel_username", redis_sentinel_username)
            .field("redis_sentinel_password", &redis_sentinel_password.as_ref().map(|_| REDACTED))
            .field("secret", &secret.as_ref().map(|_| REDACTED))
            .field("secret_file", secret_file)
            .field("previous_secrets", &format_args!("[{} redacted]", previous_secrets.len()))
            .field("cookie_name", cookie_name)
            .field("idle_timeout", idle_timeout)
            .field("absolute_timeout", absolute_timeout)
            .field("login_timeout", login_timeout)
            .field("store_timeout", store_timeout)
            .field("read_cache", read_cache)
            .finish()
    }
}

const REDACTED: &str = "<redacted>";

/// A Redis URL without its password: the user-info password and the whole query (redis-rs
/// also reads `?password=` / `?pass=` on `redis+unix://`) are replaced. A URL that does not
/// parse is not shown at all.
fn redact_url(text: &str) -> String {
    if let Some(redacted) = redis::redact_multi_host(text, REDACTED) {
        return redacted;
    }
    match Url::parse(text) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some(REDACTED));
            } else if !url.username().is_empty() {
                // `redis://secret@host`: a lone user-info may be a password missing its colon.
                let _ = url.set_username(REDACTED);
            }
            if url.query().is_some() {
                url.set_query(Some(REDACTED));
            }
            url.to_string()
        }
        Err(_) => REDACTED.to_string(),
    }
}

/// When and how tokens are refreshed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    /// Refresh once this fraction of the token's lifetime remains…
    #[serde(default = "default_leeway_fraction")]
    pub leeway_fraction: f64,
    /// …but never earlier than this before expiry, so hour-long tokens are not refreshed early.
    #[serde(default = "default_leeway_max", with = "humantime_serde")]
    pub leeway_max: Duration,
    /// Longest a request waits for a refresh in flight (here or on another instance) before
    /// answering 503. The session is kept.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// Lifetime of the cross-instance refresh lease. The holder renews it every third of this
    /// while its token call runs, so a slow OP does not let the lease lapse; a holder that dies
    /// frees it after at most this long.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// A request waiting on another instance re-checks the session at least this often, in
    /// case a change notification was lost.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// After a refresh request that got no answer, wait this long before presenting the same
    /// refresh token again (default: `oidc.http_timeout`). See ARCHITECTURE.md.
    #[serde(default, with = "humantime_serde")]
    pub settle_after_unknown: Option<Duration>,
    /// Cookie store: how long a superseded cookie keeps working after a refresh replaced it
    /// (its requests get the new tokens and the new cookie instead of replaying a consumed
    /// refresh token).
    #[serde(default = "default_grace_period", with = "humantime_serde")]
    pub grace_period: Duration,
    /// How long a refresh task waits for the OP's answer to its `refresh_token` grant. Much
    /// longer than `max_wait` (requests are answered 503 at `max_wait`, the task keeps its
    /// connection and its lease): once sent, that answer may be the only copy of a rotated
    /// refresh token. A call that outlives this counts as an outcome unknown.
    #[serde(default = "default_op_answer_timeout", with = "humantime_serde")]
    pub op_answer_timeout: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            leeway_fraction: default_leeway_fraction(),
            leeway_max: default_leeway_max(),
            max_wait: default_max_wait(),
            lease_ttl: default_lease_ttl(),
            poll_interval: default_poll_interval(),
            settle_after_unknown: None,
            grace_period: default_grace_period(),
            op_answer_timeout: default_op_answer_timeout(),
        }
    }
}

/// What an unauthenticated request on a route gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unauthenticated {
    /// Navigations are redirected to the OP; API calls get 401 JSON with the login URL.
    #[default]
    Login,
    /// Always 401.
    Deny,
    /// Forwarded without identity.
    Allow,
}

/// One entry of the route table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, starting with `/`; matched on segment boundaries, longest wins.
    pub prefix: String,
    /// The route's name in access logs (and metrics): letters, digits, `_`, `-`, `.`; unset:
    /// the prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Upstream base URL (`http://` or `https://`).
    pub upstream: Url,
    /// What unauthenticated requests get.
    #[serde(default)]
    pub unauthenticated: Unauthenticated,
    /// Cookie-authenticated POST, PUT, PATCH and DELETE from another site (`Sec-Fetch-Site:
    /// cross-site`, or an `Origin` other than `public_url`'s) get 403.
    #[serde(default = "default_true")]
    pub csrf_protection: bool,
    /// Longest wait for a TCP (and TLS) connection to the upstream; then 504.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response head once the request is sent; then 504.
    #[serde(default = "default_response_header_timeout", with = "humantime_serde")]
    pub response_header_timeout: Duration,
    /// Largest request body forwarded, in bytes (413 above it); unset: no limit.
    #[serde(default)]
    pub max_request_body_bytes: Option<u64>,
    /// Rules for this route, in addition to the global `[authorization]` ones.
    #[serde(default)]
    pub authorization: AuthorizationRules,
    /// Whether API clients may authenticate with their own bearer token here.
    #[serde(default)]
    pub bearer: BearerMode,
    /// Accepted `aud` values of bearer tokens (required when `bearer = "jwt"`).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Scopes a bearer token must carry (all of them), else 403 `insufficient_scope`.
    #[serde(default)]
    pub required_scopes: Vec<String>,
}

impl RouteConfig {
    /// A route with every optional key at its default.
    pub fn new(prefix: impl Into<String>, upstream: Url, unauthenticated: Unauthenticated) -> Self {
        Self {
            prefix: prefix.into(),
            name: None,
            upstream,
            unauthenticated,
            csrf_protection: true,
            connect_timeout: default_connect_timeout(),
            response_header_timeout: default_response_header_timeout(),
            max_request_body_bytes: None,
            authorization: AuthorizationRules::default(),
            bearer: BearerMode::Off,
            audiences: Vec::new(),
            required_scopes: Vec::new(),
        }
    }

    /// What the route is called in logs: its `name`, else its prefix.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.prefix)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_scopes() -> Vec<String> {
    ["openid", "offline_access", "profile", "email"].map(String::from).to_vec()
}
fn default_user_claim() -> String {
    "sub".into()
}
fn default_algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256", "ES384", "EdDSA"].map(String::from).to_vec()
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_cookie_name() -> String {
    "portcullis".into()
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_absolute_timeout() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_login_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_store_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_leeway_fraction() -> f64 {
    0.25
}
fn default_leeway_max() -> Duration {
    Duration::from_secs(60)
}
fn default_max_wait() -> Duration {
    Duration::from_secs(15)
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_op_answer_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_grace_period() -> Duration {
    Duration::from_secs(60)
}
fn default_poll_interval() -> Duration {
    Duration::from_millis(250)
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_introspection_cache_entries() -> usize {
    10_000
}
fn default_introspection_cache_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_true() -> bool {
    true
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_response_header_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_jwks_refresh_interval() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_discovery_refresh_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_client_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_send_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_keep_alive_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_header_bytes() -> usize {
    // Cookie-store sessions arrive as several ~3.8 KB cookies; Envoy's default is 60 KiB.
    64 * 1024
}
fn default_max_connections() -> usize {
    10_000
}
fn default_h2_max_concurrent_streams() -> u32 {
    100
}
fn default_allowed_upgrades() -> Vec<String> {
    vec!["websocket".into()]
}

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable could not be parsed into the schema.
    #[error("{0}")]
    Parse(String),
    /// A key has a value the gateway cannot work with.
    #[error("{key}: {problem}")]
    Invalid {
        /// Dotted key path, e.g. `session.secret`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), problem: problem.into() }
}

impl Config {
    /// Reads `path`, applies `PORTCULLIS_*` environment overrides, resolves `*_file` secrets and
    /// validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::file_exact(path)))
    }

    /// Parses TOML text (with environment overrides) and validates it.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(text)))
    }

    fn from_figment(base: Figment) -> Result<Self, ConfigError> {
        let figment = base.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(&["config", "log"]));
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(e.into_iter().map(|e| describe_figment_error(&e)).collect::<Vec<_>>().join("; ")))?;
        config.resolve_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.oidc.client_secret_file {
            self.oidc.client_secret = Some(read_secret(path, "oidc.client_secret_file")?);
        }
        if let Some(path) = &self.session.secret_file {
            self.session.secret = Some(read_secret(path, "session.secret_file")?);
        }
        Ok(())
    }

    /// Checks what the schema cannot express; each error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.public_url.scheme() {
            "http" | "https" => {}
            other => return Err(invalid("public_url", format!("scheme must be http or https, not {other}"))),
        }
        if self.public_url.path() != "/" {
            return Err(invalid("public_url", "must be an origin without a path (e.g. https://app.example.com)"));
        }
        if !matches!(self.oidc.issuer.scheme(), "http" | "https") {
            return Err(invalid("oidc.issuer", "must be an http(s) URL"));
        }
        if self.oidc.client_id.is_empty() {
            return Err(invalid("oidc.client_id", "must not be empty"));
        }
        match &self.oidc.client_secret {
            Some(s) if !s.is_empty() => {}
            _ => return Err(invalid("oidc.client_secret", "missing (set it, oidc.client_secret_file, or PORTCULLIS_OIDC__CLIENT_SECRET)")),
        }
        if !self.oidc.scopes.iter().any(|s| s == "openid") {
            return Err(invalid("oidc.scopes", "must contain \"openid\""));
        }
        for alg in &self.oidc.id_token_algorithms {
            crate::oidc::id_token::parse_allowed_algorithm(alg).map_err(|e| invalid("oidc.id_token_algorithms", e))?;
        }
        match &self.session.secret {
            Some(s) => secret_strength::check(s).map_err(|problem| invalid("session.secret", problem))?,
            None => return Err(invalid("session.secret", "missing (set it, session.secret_file, or PORTCULLIS_SESSION__SECRET)")),
        }
        // An old secret still opens cookie-store sessions: as much a key as the current one.
        for (i, s) in self.session.previous_secrets.iter().enumerate() {
            secret_strength::check(s).map_err(|problem| invalid(&format!("session.previous_secrets[{i}]"), problem))?;
        }
        if self.session.store == StoreKind::Redis && self.session.redis_url.is_none() {
            return Err(invalid("session.redis_url", "required when session.store = \"redis\""));
        }
        if let Some(url) = &self.session.redis_url {
            let topology = RedisTopology::parse(url).map_err(|problem| invalid("session.redis_url", problem))?;
            if self.session.redis_ca_file.is_some() && !topology.tls() {
                return Err(invalid(
                    "session.redis_ca_file",
                    "set, but session.redis_url does not use TLS (rediss://, rediss+sentinel://, rediss+cluster://)",
                ));
            }
            let (cert, key) = (&self.session.redis_client_cert_file, &self.session.redis_client_key_file);
            if cert.is_some() != key.is_some() {
                let missing = if cert.is_none() { "session.redis_client_cert_file" } else { "session.redis_client_key_file" };
                return Err(invalid(
                    missing,
                    "session.redis_client_cert_file and session.redis_client_key_file go together: set both or neither",
                ));
            }
            if cert.is_some() && !topology.tls() {
                return Err(invalid(
                    "session.redis_client_cert_file",
                    "set, but session.redis_url does not use TLS (rediss://, rediss+sentinel://, rediss+cluster://)",
                ));
            }
        }
        if !self.session.cookie_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || self.session.cookie_name.is_empty()
        {
            return Err(invalid("session.cookie_name", "use letters, digits, '_' and '-' only"));
        }
        if self.session.idle_timeout.is_zero() || self.session.absolute_timeout.is_zero() {
            return Err(invalid("session.idle_timeout", "session lifetimes must be above zero"));
        }
        if self.session.store == StoreKind::Redis {
            self.session.read_cache.validate(self.session.idle_timeout).map_err(|(key, problem)| invalid(key, problem))?;
        }
        if self.refresh.lease_ttl < Duration::from_millis(300) {
            return Err(invalid("refresh.lease_ttl", "must be at least 300ms (it is renewed every third of it)"));
        }
        if self.refresh.poll_interval.is_zero() || self.refresh.max_wait.is_zero() {
            return Err(invalid("refresh.poll_interval", "refresh.poll_interval and refresh.max_wait must be above zero"));
        }
        if !(0.0..1.0).contains(&self.refresh.leeway_fraction) {
            return Err(invalid("refresh.leeway_fraction", "must be in [0, 1)"));
        }
        let server = &self.server;
        if server.header_read_timeout.is_zero() || server.keep_alive_timeout.is_zero() || server.client_body_timeout.is_zero() {
            return Err(invalid(
                "server.header_read_timeout",
                "server.header_read_timeout and server.keep_alive_timeout must be above zero",
            ));
        }
        if server.send_timeout.is_zero() {
            return Err(invalid("server.send_timeout", "must be above zero"));
        }
        if server.max_header_bytes < 8192 {
            return Err(invalid("server.max_header_bytes", "must be at least 8192"));
        }
        lifecycle::validate(server)?;
        if server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be above zero"));
        }
        if server.h2_max_concurrent_streams == 0 {
            return Err(invalid("server.h2_max_concurrent_streams", "must be above zero"));
        }
        if server.allowed_upgrades.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic() && b != b',')) {
            return Err(invalid("server.allowed_upgrades", "protocol names are tokens such as \"websocket\""));
        }
        if self.oidc.jwks_refresh_interval < Duration::from_secs(10) || self.oidc.discovery_refresh_interval < Duration::from_secs(10) {
            return Err(invalid(
                "oidc.jwks_refresh_interval",
                "oidc.jwks_refresh_interval and oidc.discovery_refresh_interval must be at least 10s",
            ));
        }
        // Authorization rule values (domains without '@', addresses, non-empty lists).
        let rule_sets = std::iter::once((&self.authorization, "authorization".to_string()))
            .chain(self.routes.iter().enumerate().map(|(i, r)| (&r.authorization, format!("routes[{i}].authorization"))));
        for (rules, key) in rule_sets {
            crate::auth::authorization::validate_rules(rules, &key).map_err(|(key, problem)| invalid(&key, problem))?;
        }
        for (i, route) in self.routes.iter().enumerate() {
            if route.connect_timeout.is_zero() || route.response_header_timeout.is_zero() {
                return Err(invalid(&format!("routes[{i}].connect_timeout"), "upstream timeouts must be above zero"));
            }
            if !route.prefix.starts_with('/') {
                return Err(invalid(&format!("routes[{i}].prefix"), "must start with '/'"));
            }
            if route.prefix.starts_with("/oauth2/") || route.prefix == "/oauth2" {
                return Err(invalid(&format!("routes[{i}].prefix"), "/oauth2 is reserved for the gateway's endpoints"));
            }
            if !matches!(route.upstream.scheme(), "http" | "https") {
                return Err(invalid(&format!("routes[{i}].upstream"), "must be an http(s) URL"));
            }
            if let Some(name) = &route.name {
                // A log field and a metrics label: no spaces, quotes or control characters.
                if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                    return Err(invalid(&format!("routes[{i}].name"), "1 to 64 letters, digits, '_', '-' or '.'"));
                }
                if self.routes[..i].iter().any(|r| r.name.as_ref() == Some(name)) {
                    return Err(invalid(&format!("routes[{i}].name"), format!("duplicate name {name}")));
                }
            }
            if self.routes[..i].iter().any(|r| r.prefix == route.prefix) {
                return Err(invalid(&format!("routes[{i}].prefix"), format!("duplicate prefix {}", route.prefix)));
            }
            // Bearer tokens (issue 9): a JWT route without audiences would take a token minted
            // for any API of the OP; scopes or audiences on a route without bearer tokens
            // would look enforced and be ignored.
            if route.bearer == BearerMode::Jwt && route.audiences.is_empty() {
                return Err(invalid(
                    &format!("routes[{i}].audiences"),
                    "required when bearer = \"jwt\" (the API's identifier, the tokens' aud)",
                ));
            }
            if route.bearer == BearerMode::Off && !(route.audiences.is_empty() && route.required_scopes.is_empty()) {
                return Err(invalid(
                    &format!("routes[{i}].bearer"),
                    "audiences and required_scopes need bearer = \"jwt\" or \"introspect\"",
                ));
            }
            // Scopes are named in the 403's WWW-Authenticate (RFC 6750 §3: scope-token chars).
            if route.required_scopes.iter().any(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')) {
                return Err(invalid(&format!("routes[{i}].required_scopes"), "scopes are printable ASCII without spaces, '\"' or '\\'"));
            }
        }
        Ok(())
    }

    /// The redirect URI registered at the OP.
    pub fn redirect_uri(&self) -> Url {
        self.public_url.join("/oauth2/callback").expect("public_url is a valid base")
    }

    /// Whether cookies get `Secure` and the `__Host-` prefix.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.scheme() == "https"
    }
}

fn describe_figment_error(e: &figment::Error) -> String {
    let key = e.path.join(".");
    if key.is_empty() { e.kind.to_string() } else { format!("{key}: {}", e.kind) }
}

fn read_secret(path: &Path, key: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// A new `session.secret`: 48 random bytes from the OS generator, base64 (64 characters), as
/// `portcullis generate-secret` prints it.
pub fn generate_secret() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(crate::crypto::random_bytes::<48>())
}

mod builder;
mod lifecycle;
mod logging;
mod metrics;
mod read_cache;
mod redacted;
mod redis;
pub mod reference;
mod secret_strength;

pub use builder::ConfigBuilder;
pub use logging::{LogConfig, LogFormat};
pub use metrics::MetricsConfig;
pub use read_cache::ReadCacheConfig;
pub use redis::{RedisAuth, RedisNode, RedisTopology};

#[cfg(test)]
mod tests;
