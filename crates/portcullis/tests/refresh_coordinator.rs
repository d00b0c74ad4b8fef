//! The refresh coordinator driven from Rust: the library's `Authenticator` (the real refresh
//! coordinator and `OidcClient`) against the development OP (`portcullis_dev_op`, rotating
//! refresh tokens with reuse detection, grants counted), over the memory store. Two
//! `Authenticator`s over one store are two instances: each has its own single flight, and they
//! share only the store (lease, versions, change feed), as instances share Redis.
//!
//! A wrapper store injects latency and interleavings at exact points (a slow `load`, a slow
//! lease release, another holder's write just before a delete), so that each ordering the
//! protocol relies on has a test that fails when the ordering is removed.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use futures_util::future::join_all;
use portcullis::{
    auth::{Authenticator, ProviderHandle},
    config::{Config, OidcConfig},
    oidc::OidcClient,
    session::{
        CasOutcome, ChangeWatch, CookieCodec, DeleteOutcome, Identity, Lifetimes, MemoryStore, SessionId, SessionKey, SessionRecord,
        SessionStore, StoreError, TokenSet, now_millis,
    },
};
use portcullis_dev_op::{ClientConfig, DevOp, DevOpConfig};

const SECRET: &str = "or9UtaSFLwIWWCKa2M8yYFbdgSrKZIR1sOASg3as6p0xWE9bgkwx7YJudagrJOcd";
const PUBLIC: &str = "http://127.0.0.1:1";
const LONG: Lifetimes = Lifetimes { idle: Duration::from_secs(3600), absolute: Duration::from_secs(7200) };

async fn dev_op() -> DevOp {
    portcullis_dev_op::start(DevOpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        clients: vec![ClientConfig {
            client_id: "gw".into(),
            client_secret: "gw-secret".into(),
            redirect_uris: vec![format!("{PUBLIC}/oauth2/callback")],
            post_logout_redirect_uris: vec![format!("{PUBLIC}/")],
            backchannel_logout_uri: None,
        }],
        rotate_refresh_tokens: true,
        ..DevOpConfig::default()
    })
    .await
    .expect("the dev OP starts")
}

fn issuer(op: &DevOp) -> String {
    op.issuer().as_str().trim_end_matches('/').to_string()
}

/// Changes the dev OP's runtime knobs (`POST /control`).
async fn control(op: &DevOp, change: serde_json::Value) {
    let response = reqwest::Client::new().post(format!("{}/control", issuer(op))).json(&change).send().await.unwrap();
    assert!(response.status().is_success(), "control: {}", response.status());
}

fn config(op: &DevOp, refresh: &str) -> Config {
    Config::from_toml_str(&format!(
        "listen = \"127.0.0.1:0\"\npublic_url = \"{PUBLIC}\"\n\n[oidc]\nissuer = \"{}\"\nclient_id = \"gw\"\nclient_secret = \"gw-secret\"\n\n\
         [session]\nstore = \"memory\"\nsecret = \"{SECRET}\"\n\n[refresh]\n{refresh}\n\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:2\"\nunauthenticated = \"login\"\n",
        issuer(op)
    ))
    .expect("a valid config")
}

async fn oidc_client(op: &DevOp) -> OidcClient {
    let config: OidcConfig = serde_json::from_value(serde_json::json!({
        "issuer": issuer(op), "client_id": "gw", "client_secret": "gw-secret",
        "scopes": ["openid", "offline_access", "profile", "email"],
    }))
    .unwrap();
    OidcClient::discover(&config, format!("{PUBLIC}/oauth2/callback").parse().unwrap(), format!("{PUBLIC}/").parse().unwrap())
        .await
        .expect("discovery")
}

/// Logs `demo` in at the dev OP through the code flow with PKCE; the tokens and identity the
/// gateway would store.
async fn login(op: &DevOp, oidc: &OidcClient) -> (TokenSet, Identity) {
    use aws_lc_rs::digest;
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let verifier = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, SessionId::generate().key().to_string().as_bytes()));
    let challenge = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
    let url = oidc.authorization_url("state-1", "nonce-1", &challenge);
    let mut form: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    form.push(("username".into(), "demo".into()));
    form.push(("password".into(), "demo".into()));
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = http.post(format!("{}/authorize", issuer(op))).form(&form).send().await.unwrap();
    assert_eq!(response.status(), 302, "the dev OP signs demo in");
    let location: url::Url = response.headers()["location"].to_str().unwrap().parse().unwrap();
    let code = location.query_pairs().find(|(k, _)| k == "code").expect("a code").1.into_owned();
    oidc.exchange_code(&code, &verifier, "nonce-1").await.expect("code exchange")
}

/// A logged-in session whose access token has expired, in `store`; the cookie that names it.
async fn expired_session(op: &DevOp, oidc: &OidcClient, store: &dyn SessionStore) -> (SessionKey, http::HeaderMap) {
    let (mut tokens, identity) = login(op, oidc).await;
    tokens.issued_at = now_millis() - 60_000;
    tokens.expires_at = Some(now_millis() - 1_000);
    let record =
        SessionRecord { version: 0, created_at: now_millis(), identity, tokens, unsettled_refresh: None, forward: Default::default() };
    let id = SessionId::generate();
    store.create(&id.key(), &record).await.unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("cookie", format!("portcullis={}", CookieCodec::new(SECRET.as_bytes()).encode(&id)).parse().unwrap());
    (id.key(), headers)
}

async fn grants(op: &DevOp) -> u64 {
    op.stats().refresh_grants
}

// ---- A store with injected latency and interleavings ----

type Hook = Box<dyn FnOnce() -> futures_util::future::BoxFuture<'static, ()> + Send>;

/// The memory store, with:
/// - `load_delays`: the n-th `load` reads, then waits this long before returning what it read
///   (a slow network: the answer is stale by the time it arrives);
/// - `release_delay`: `release_lease` waits this long first (a holder slow to let go);
/// - `before_delete`: run once just before the next delete (another holder's write landing
///   between a read and a delete).
#[derive(Clone)]
struct Scripted {
    inner: MemoryStore,
    load_delays: Arc<Mutex<VecDeque<Duration>>>,
    release_delay: Duration,
    before_delete: Arc<Mutex<Option<Hook>>>,
}

impl Scripted {
    fn new(inner: &MemoryStore) -> Self {
        Self { inner: inner.clone(), load_delays: Arc::default(), release_delay: Duration::ZERO, before_delete: Arc::default() }
    }

    fn delay_loads(self, delays: &[Duration]) -> Self {
        self.load_delays.lock().unwrap().extend(delays);
        self
    }

    async fn run_before_delete(&self) {
        let hook = self.before_delete.lock().unwrap().take();
        if let Some(hook) = hook {
            hook().await;
        }
    }
}

#[async_trait]
impl SessionStore for Scripted {
    async fn load_for_request(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.load(key).await
    }
    /// Through `load`, where this store does its scripted work.
    fn load_for_request_now(&self, _key: &SessionKey) -> Option<Result<Option<Arc<SessionRecord>>, StoreError>> {
        None
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        let delay = self.load_delays.lock().unwrap().pop_front().unwrap_or_default();
        let read = self.inner.load(key).await;
        tokio::time::sleep(delay).await;
        read
    }
    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        self.inner.create(key, record).await
    }
    async fn compare_and_set(&self, key: &SessionKey, expected: u64, record: &SessionRecord) -> Result<CasOutcome, StoreError> {
        self.inner.compare_and_set(key, expected, record).await
    }
    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.run_before_delete().await;
        self.inner.delete(key).await
    }
    async fn delete_if_version(&self, key: &SessionKey, expected: u64) -> Result<DeleteOutcome, StoreError> {
        self.run_before_delete().await;
        self.inner.delete_if_version(key, expected).await
    }
    async fn state_consumed(&self, state_hash: &str) -> Result<bool, StoreError> {
        self.inner.state_consumed(state_hash).await
    }
    async fn consume_state(&self, state_hash: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.consume_state(state_hash, ttl).await
    }
    async fn try_lease(&self, key: &SessionKey, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.try_lease(key, owner, ttl).await
    }
    async fn renew_lease(&self, key: &SessionKey, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.renew_lease(key, owner, ttl).await
    }
    async fn release_lease(&self, key: &SessionKey, owner: &str) -> Result<(), StoreError> {
        tokio::time::sleep(self.release_delay).await;
        self.inner.release_lease(key, owner).await
    }
    fn watch(&self, key: &SessionKey) -> ChangeWatch {
        self.inner.watch(key)
    }
}

/// Another holder's refresh, as it lands in the store: a new generation of the tokens.
fn another_generation(of: &SessionRecord, tag: &str) -> SessionRecord {
    let mut next = of.clone();
    next.tokens.access_token = format!("at-{tag}");
    next.tokens.refresh_token = Some(format!("rt-{tag}"));
    next.tokens.issued_at = now_millis();
    next.tokens.expires_at = Some(now_millis() + 300_000);
    next
}

const TIMING: &str = "lease_ttl = \"3s\"\nmax_wait = \"10s\"\npoll_interval = \"200ms\"";

// ---- Tests ----

/// 50 concurrent `authenticate()` calls on one expired session, one process, memory store:
/// one grant at a rotating OP, every call gets the one new token, no reuse detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_50_on_an_expired_session_makes_one_grant() {
    let op = dev_op().await;
    let oidc = oidc_client(&op).await;
    let store = MemoryStore::new(LONG);
    let (_, cookie) = expired_session(&op, &oidc, &store).await;
    control(&op, serde_json::json!({ "token_latency_ms": 200 })).await;
    let gateway = Authenticator::new(&config(&op, TIMING), Arc::new(store), ProviderHandle::ready(oidc));
    let results = join_all((0..50).map(|_| gateway.authenticate(&cookie))).await;
    let tokens: std::collections::HashSet<String> =
        results.iter().map(|r| r.as_ref().expect("served").as_ref().expect("a session").record.tokens.access_token.clone()).collect();
    assert_eq!(tokens.len(), 1, "every call got the one refreshed token");
    assert_eq!(grants(&op).await, 1, "one grant for 50 calls");
    assert_eq!(op.stats().reuse_detections, 0);
    assert_eq!(gateway.refresh_stats().waited_locally, 49);
}

/// Re-read under the lease. Instance B reads the expired session, and its read comes back late
/// (600 ms): meanwhile instance A refreshed, wrote and released the lease. B then takes the
/// free lease; only the re-read under it shows A's version. Without the re-read, B presents
/// the refresh token A already rotated: a second grant, and reuse detection at the OP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_holder_rereads_before_calling_the_op() {
    let op = dev_op().await;
    let oidc = oidc_client(&op).await;
    let store = MemoryStore::new(LONG);
    let (_, cookie) = expired_session(&op, &oidc, &store).await;
    control(&op, serde_json::json!({ "token_latency_ms": 200 })).await;
    let config = config(&op, TIMING);
    let provider = ProviderHandle::ready(oidc);
    let a = Authenticator::new(&config, Arc::new(store.clone()), provider.clone());
    // B's loads: the request's own (on time), the refresh task's first (late), then on time.
    let b_store = Scripted::new(&store).delay_loads(&[Duration::ZERO, Duration::from_millis(600)]);
    let b = Authenticator::new(&config, Arc::new(b_store), provider);
    let a_call = tokio::spawn({
        let (a, cookie) = (a.clone(), cookie.clone());
        async move { a.authenticate(&cookie).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b_result = b.authenticate(&cookie).await.expect("B served").expect("B has the session");
    let a_result = a_call.await.unwrap().expect("A served").expect("A has the session");
    assert_eq!(grants(&op).await, 1, "one grant: B found A's version under the lease");
    assert_eq!(op.stats().reuse_detections, 0);
    assert_eq!(b_result.record.tokens.access_token, a_result.record.tokens.access_token);
}

/// Watch before read. Instance A refreshes and writes (the notification goes out) while B's
/// read of the old version is still on its way back; A is slow to release its lease, so B
/// finds it taken and waits for a change. The change already happened: only a watch taken
/// before the read holds its notification. B's poll interval is 30 s and its `max_wait` 5 s,
/// so a watch taken after the read would time out (503) instead of answering in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_watch_is_taken_before_the_read() {
    let op = dev_op().await;
    let oidc = oidc_client(&op).await;
    let store = MemoryStore::new(LONG);
    let (_, cookie) = expired_session(&op, &oidc, &store).await;
    control(&op, serde_json::json!({ "token_latency_ms": 200 })).await;
    let config = config(&op, "lease_ttl = \"5s\"\nmax_wait = \"5s\"\npoll_interval = \"30s\"");
    let provider = ProviderHandle::ready(oidc);
    let a_store = Scripted { release_delay: Duration::from_millis(2000), ..Scripted::new(&store) };
    let a = Authenticator::new(&config, Arc::new(a_store), provider.clone());
    let b_store = Scripted::new(&store).delay_loads(&[Duration::ZERO, Duration::from_millis(700)]);
    let b = Authenticator::new(&config, Arc::new(b_store), provider);
    let a_call = tokio::spawn({
        let (a, cookie) = (a.clone(), cookie.clone());
        async move { a.authenticate(&cookie).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let b_result = b.authenticate(&cookie).await;
    let took = started.elapsed();
    let b_result = b_result.expect("B served, not timed out").expect("B has the session");
    assert!(took < Duration::from_millis(2000), "B answered from the notification while A still held the lease: {took:?}");
    let a_result = a_call.await.unwrap().expect("A served").expect("A has the session");
    assert_eq!(b_result.record.tokens.access_token, a_result.record.tokens.access_token);
    assert_eq!(grants(&op).await, 1);
}

/// Logout during a refresh (`Gone`): the refresh's CAS finds the session deleted; the request
/// gets "no session", the session stays gone, and nothing written later resurrects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_during_a_refresh_stays_a_logout() {
    let op = dev_op().await;
    let oidc = oidc_client(&op).await;
    let store = MemoryStore::new(LONG);
    let (key, cookie) = expired_session(&op, &oidc, &store).await;
    control(&op, serde_json::json!({ "token_latency_ms": 800 })).await;
    let gateway = Authenticator::new(&config(&op, TIMING), Arc::new(store.clone()), ProviderHandle::ready(oidc));
    let call = tokio::spawn({
        let (gateway, cookie) = (gateway.clone(), cookie.clone());
        async move { gateway.authenticate(&cookie).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.delete(&key).await.unwrap(); // the user's logout (unconditional)
    assert!(call.await.unwrap().expect("no error").is_none(), "the refreshed tokens are not handed out after a logout");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(store.load(&key).await.unwrap().is_none(), "the session stays gone");
    assert!(gateway.authenticate(&cookie).await.unwrap().is_none());
    assert_eq!(grants(&op).await, 1, "no grant after the logout");
}

/// `Conflict`: another holder writes a newer version while this refresh's token call runs (its
/// lease lapsed, say). The CAS loses; the newer version stands and is what the request gets;
/// this refresh's tokens are never written over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_cas_uses_the_newer_version() {
    let op = dev_op().await;
    let oidc = oidc_client(&op).await;
    let store = MemoryStore::new(LONG);
    let (key, cookie) = expired_session(&op, &oidc, &store).await;
    control(&op, serde_json::json!({ "token_latency_ms": 800 })).await;
    let gateway = Authenticator::new(&config(&op, TIMING), Arc::new(store.clone()), ProviderHandle::ready(oidc));
    let call = tokio::spawn({
        let (gateway, cookie) = (gateway.clone(), cookie.clone());
        async move { gateway.authenticate(&cookie).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let current = store.load(&key).await.unwrap().unwrap();
    assert_eq!(store.compare_and_set(&key, 1, &another_generation(&current, "other")).await.unwrap(), CasOutcome::Written(2));
    let session = call.await.unwrap().expect("served").expect("a session");
    assert_eq!(session.record.tokens.access_token, "at-other");
    assert_eq!(store.load(&key).await.unwrap().unwrap().tokens.access_token, "at-other", "not overwritten");
    assert_eq!(gateway.refresh_stats().cas_conflicts, 1);
}

/// After `invalid_grant`, another holder's newer session is kept and used, whether its write
/// landed while our token call ran or between our last read and our delete (item 7: the delete
/// is conditional on the version read; an unconditional one ends the session it just saved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_after_another_holder_won_keeps_its_session() {
    let op = dev_op().await;
    let oidc = oidc_client(&op).await;
    for when in ["while the token call runs", "just before the delete"] {
        let store = MemoryStore::new(LONG);
        let (key, cookie) = expired_session(&op, &oidc, &store).await;
        // Our copy holds a refresh token the OP no longer accepts (the other holder rotated it).
        let mut ours = (*store.load(&key).await.unwrap().unwrap()).clone();
        ours.tokens.refresh_token = Some("rotated-away".into());
        assert_eq!(store.compare_and_set(&key, 1, &ours).await.unwrap(), CasOutcome::Written(2));
        let scripted = Scripted::new(&store);
        let (hook_store, hook_key, newer) = (store.clone(), key.clone(), another_generation(&ours, "winner"));
        let write_newer = move || async move {
            assert_eq!(hook_store.compare_and_set(&hook_key, 2, &newer).await.unwrap(), CasOutcome::Written(3));
        };
        match when {
            "just before the delete" => {
                *scripted.before_delete.lock().unwrap() = Some(Box::new(move || Box::pin(write_newer())));
                control(&op, serde_json::json!({ "token_latency_ms": 0 })).await;
            }
            _ => {
                control(&op, serde_json::json!({ "token_latency_ms": 600 })).await;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    write_newer().await;
                });
            }
        }
        let gateway = Authenticator::new(&config(&op, TIMING), Arc::new(scripted), ProviderHandle::ready(oidc_client(&op).await));
        let session =
            gateway.authenticate(&cookie).await.expect("served").unwrap_or_else(|| panic!("{when}: the winner's session was ended"));
        assert_eq!(session.record.tokens.access_token, "at-winner", "{when}");
        assert_eq!(store.load(&key).await.unwrap().expect("kept").tokens.access_token, "at-winner", "{when}");
        assert_eq!(gateway.refresh_stats().sessions_ended, 0, "{when}");
    }
}

/// A session whose token expired with no refresh token ends, but only at the version read:
/// a newer version written between the read and the delete is kept (and served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_without_refresh_token_ends_only_at_the_version_read() {
    let op = dev_op().await;
    let oidc = oidc_client(&op).await;
    let store = MemoryStore::new(LONG);
    let (key, cookie) = expired_session(&op, &oidc, &store).await;
    let mut no_refresh = (*store.load(&key).await.unwrap().unwrap()).clone();
    no_refresh.tokens.refresh_token = None;
    assert_eq!(store.compare_and_set(&key, 1, &no_refresh).await.unwrap(), CasOutcome::Written(2));
    let scripted = Scripted::new(&store);
    let (hook_store, hook_key, newer) = (store.clone(), key.clone(), another_generation(&no_refresh, "newer"));
    *scripted.before_delete.lock().unwrap() = Some(Box::new(move || {
        Box::pin(async move {
            assert_eq!(hook_store.compare_and_set(&hook_key, 2, &newer).await.unwrap(), CasOutcome::Written(3));
        })
    }));
    let gateway = Authenticator::new(&config(&op, TIMING), Arc::new(scripted), ProviderHandle::ready(oidc));
    let session = gateway.authenticate(&cookie).await.expect("served");
    assert_eq!(store.load(&key).await.unwrap().expect("the newer version is kept").tokens.access_token, "at-newer");
    assert_eq!(session.expect("and served").record.tokens.access_token, "at-newer");
    // Without a newer version, the expired session does end.
    let (key, cookie) = expired_session(&op, &oidc_client(&op).await, &store).await;
    let mut no_refresh = (*store.load(&key).await.unwrap().unwrap()).clone();
    no_refresh.tokens.refresh_token = None;
    assert_eq!(store.compare_and_set(&key, 1, &no_refresh).await.unwrap(), CasOutcome::Written(2));
    assert!(gateway.authenticate(&cookie).await.unwrap().is_none());
    assert!(store.load(&key).await.unwrap().is_none());
}
