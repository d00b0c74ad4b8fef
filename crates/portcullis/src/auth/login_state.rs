//! The pending login, sealed into the browser's login cookie instead of the session store.
//!
//! Why: a login starts with an unauthenticated request (`/oauth2/start`, or any navigation to a
//! `login` route). If that stored anything on the server, a flood of such requests would grow
//! memory or Redis without bound (20,000 starts took a gateway from 14 MB to 63 MB). Sealed in
//! the cookie, the state, nonce, PKCE verifier and return path cost the server nothing until
//! the callback, and the callback only writes after the OP has authenticated the user.
//!
//! The seal is AES-256-GCM with a key of its own (derived from `session.secret` for this one
//! purpose) and an AAD naming the purpose, so no other sealed value of the gateway opens as a
//! login state. Holding the cookie is also the browser binding: a callback link carried to
//! another browser (login CSRF) finds no cookie for its `state`.
//!
//! One cookie per login attempt, named after a hash of its `state`, so two tabs logging in at
//! once do not overwrite each other. At most [`MAX_PENDING_LOGINS`] live per browser: a start
//! beyond that clears the oldest (their age is read from the sealed `started_at`, the only clock
//! the browser gives back to us).

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::{
    crypto::{self, AeadKey},
    session::UnixMillis,
};

/// Login attempts one browser may have in flight; a start beyond this drops the oldest.
/// Five covers a user opening several tabs after a restart, while the `Cookie` header these
/// cookies add to every request (they are `Path=/`, as `__Host-` requires) stays a few KB.
pub(crate) const MAX_PENDING_LOGINS: usize = 5;

/// Longest return path kept across a login; a longer one keeps its path without the query, or
/// returns to `/`. Bounds the cookie to about 1 KB: five of them ride on every request to the
/// host while logins are pending, and a front proxy with nginx's default 8 KB header buffer
/// would refuse every request (the user locked out for `login_timeout`) at 3 KB each.
pub(crate) const MAX_RETURN_TO: usize = 512;

/// Names what a sealed value is for: a login state cannot be replayed as any other seal.
const AAD: &[u8] = b"portcullis/login-state/v1";

/// Characters of the state hash in a login cookie's name (72 bits: no collisions between the
/// handful of logins of one browser, and nothing about the state itself).
const ID_LEN: usize = 12;

/// A login between `/oauth2/start` and the callback.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LoginState {
    /// The `state` sent to the OP; the callback's must equal it.
    #[serde(rename = "s")]
    pub(crate) state: String,
    /// Expected `nonce` claim of the ID token.
    #[serde(rename = "n")]
    pub(crate) nonce: String,
    /// PKCE code verifier.
    #[serde(rename = "v")]
    pub(crate) code_verifier: String,
    /// Where the browser goes after login: a same-origin path, already validated.
    #[serde(rename = "r")]
    pub(crate) return_to: String,
    /// When the login started (gateway clock): expiry, and which attempt is the oldest.
    #[serde(rename = "t")]
    pub(crate) started_at: UnixMillis,
}

impl std::fmt::Debug for LoginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginState").field("return_to", &self.return_to).field("started_at", &self.started_at).finish_non_exhaustive()
    }
}

/// Seals and opens login states; older keys (from `session.previous_secrets`) still open, so a
/// secret rotation does not break the logins in progress.
/// The keys are swappable (a SIGHUP reload changes `previous_secrets`).
#[derive(Clone)]
pub(crate) struct LoginSealer {
    keys: std::sync::Arc<arc_swap::ArcSwap<Vec<AeadKey>>>,
}

impl std::fmt::Debug for LoginSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoginSealer({} keys)", self.keys.load().len())
    }
}

fn login_keys<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Vec<AeadKey> {
    let keys: Vec<AeadKey> = secrets.into_iter().map(|s| AeadKey::derive(s, "portcullis/login-state/v1")).collect();
    assert!(!keys.is_empty(), "at least one session secret");
    keys
}

impl LoginSealer {
    /// Keys derived from the session secrets, newest first.
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Self { keys: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(login_keys(secrets))) }
    }

    /// Replaces the keys (newest first) for every seal and open from now on.
    pub(crate) fn set_secrets<'a>(&self, secrets: impl IntoIterator<Item = &'a [u8]>) {
        self.keys.store(std::sync::Arc::new(login_keys(secrets)));
    }

    /// The cookie value: base64url of `<nonce><ciphertext+tag>`.
    pub(crate) fn seal(&self, login: &LoginState) -> String {
        let plain = serde_json::to_vec(login).expect("a login state always serializes");
        crypto::b64(&self.keys.load()[0].seal(&plain, AAD))
    }

    /// The login state, or `None` for anything this gateway did not seal as one (tampered,
    /// truncated, another deployment's, a retired key's).
    pub(crate) fn open(&self, value: &str) -> Option<LoginState> {
        let sealed = crypto::b64_decode(value)?;
        let plain = self.keys.load().iter().find_map(|k| k.open(&sealed, AAD))?;
        serde_json::from_slice(&plain).ok()
    }
}

/// Hash of a `state`: the consumed-state marker's key, and (a prefix of it) the cookie name.
/// The store never holds a value that could be replayed as a callback parameter.
pub(crate) fn state_hash(state: &str) -> String {
    crypto::b64(&crypto::sha256(state.as_bytes()))
}

/// The login cookie's name for `state`: `<prefix><first chars of the state hash>`.
pub(crate) fn cookie_name(prefix: &str, state: &str) -> String {
    let hash = state_hash(state);
    format!("{prefix}{}", &hash[..ID_LEN])
}

/// Constant-time equality of two states (the callback's against the sealed one), so response
/// timing tells an attacker nothing about how much of a guessed state was right.
pub(crate) fn same_state(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A login cookie the browser sent: its name and, when it opens, its state.
#[derive(Debug)]
pub(crate) struct PresentLogin {
    pub(crate) name: String,
    pub(crate) login: Option<LoginState>,
}

/// Login cookies looked at per request: a browser has at most `MAX_PENDING_LOGINS` plus a few
/// dead ones; a hand-made request with thousands must not buy thousands of decryptions and
/// `Set-Cookie` lines.
const MAX_EXAMINED: usize = 4 * MAX_PENDING_LOGINS;

/// The login cookies in the request (names starting with `prefix`, at most `MAX_EXAMINED`),
/// opened.
pub(crate) fn present(headers: &HeaderMap, prefix: &str, sealer: &LoginSealer) -> Vec<PresentLogin> {
    let mut seen: Vec<PresentLogin> = Vec::new();
    // Bytes, not `to_str`: another cookie's non-ASCII byte must not hide ours.
    let pairs = crate::cookie_header::pairs(headers)
        .filter_map(|(name, value)| Some((std::str::from_utf8(name).ok()?, std::str::from_utf8(value).ok()?)));
    for (name, value) in pairs {
        let Some(id) = name.strip_prefix(prefix) else { continue };
        if id.is_empty() || seen.iter().any(|p| p.name == name) {
            continue;
        }
        if seen.len() == MAX_EXAMINED {
            break;
        }
        seen.push(PresentLogin { name: name.to_string(), login: sealer.open(value) });
    }
    seen
}

/// The login cookies to clear when a new login starts: every one that does not open or has
/// expired, and the oldest live ones so that, with the new one, at most `MAX_PENDING_LOGINS`
/// remain.
pub(crate) fn to_clear(present: Vec<PresentLogin>, now: UnixMillis, timeout_ms: u64) -> Vec<String> {
    let (mut live, dead): (Vec<PresentLogin>, Vec<PresentLogin>) =
        present.into_iter().partition(|p| p.login.as_ref().is_some_and(|l| !expired(l, now, timeout_ms)));
    let mut clear: Vec<String> = dead.into_iter().map(|p| p.name).collect();
    live.sort_by_key(|p| p.login.as_ref().map_or(0, |l| l.started_at));
    let excess = (live.len() + 1).saturating_sub(MAX_PENDING_LOGINS);
    clear.extend(live.into_iter().take(excess).map(|p| p.name));
    clear
}

/// Whether a login started at `login.started_at` is past the login timeout at `now`.
pub(crate) fn expired(login: &LoginState, now: UnixMillis, timeout_ms: u64) -> bool {
    now.saturating_sub(login.started_at) > timeout_ms || login.started_at > now.saturating_add(60_000)
}

#[cfg(test)]
mod tests {
    use http::header;

    use super::*;

    fn login(state: &str, started_at: UnixMillis) -> LoginState {
        LoginState { state: state.into(), nonce: "n".into(), code_verifier: "v".into(), return_to: "/x".into(), started_at }
    }

    #[test]
    fn seals_opens_and_refuses_tampering() {
        let sealer = LoginSealer::new([b"a secret a secret a secret a secret".as_slice()]);
        let l = login("st", 5);
        let sealed = sealer.seal(&l);
        assert_eq!(sealer.open(&sealed), Some(l.clone()));
        assert!(!sealed.contains("st\"") && !sealed.contains("/x"), "sealed, not signed: nothing readable");
        let mut bytes = sealed.clone().into_bytes();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        assert_eq!(sealer.open(&String::from_utf8(bytes).unwrap()), None, "tampered");
        assert_eq!(sealer.open(&sealed[..sealed.len() - 4]), None, "truncated");
        assert_eq!(sealer.open("garbage"), None);
        let other = LoginSealer::new([b"another secret another secret another".as_slice()]);
        assert_eq!(other.open(&sealed), None, "another deployment's key");
        let rotated =
            LoginSealer::new([b"another secret another secret another".as_slice(), b"a secret a secret a secret a secret".as_slice()]);
        assert_eq!(rotated.open(&sealed), Some(l), "a previous secret still opens logins in progress");
    }

    #[test]
    fn other_seals_of_the_same_secret_do_not_open_as_a_login() {
        let secret = b"a secret a secret a secret a secret".as_slice();
        let plain = serde_json::to_vec(&login("st", 5)).unwrap();
        let elsewhere = AeadKey::derive(secret, "portcullis/login-state/v1").seal(&plain, b"some other purpose");
        assert_eq!(LoginSealer::new([secret]).open(&crypto::b64(&elsewhere)), None, "the AAD names the purpose");
    }

    #[test]
    fn cookie_names_follow_the_state_and_stay_short() {
        let a = cookie_name("p_login_", "state-a");
        assert!(a.starts_with("p_login_") && a.len() == "p_login_".len() + ID_LEN, "{a}");
        assert_eq!(a, cookie_name("p_login_", "state-a"));
        assert_ne!(a, cookie_name("p_login_", "state-b"));
        assert!(!a.contains("state"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(same_state("abc", "abc"));
        assert!(!same_state("abc", "abd"));
        assert!(!same_state("abc", "abcd"));
        assert!(!same_state("", "a"));
    }

    #[test]
    fn the_oldest_beyond_the_cap_and_the_dead_are_cleared() {
        let sealer = LoginSealer::new([b"a secret a secret a secret a secret".as_slice()]);
        let now = 1_000_000;
        let mut cookies: Vec<String> =
            (0..5u64).map(|i| format!("p_login_{i}={}", sealer.seal(&login(&format!("s{i}"), now - 1000 + i * 10)))).collect();
        cookies.push("p_login_bad=garbage".into());
        cookies.push(format!("p_login_old={}", sealer.seal(&login("old", now - 700_000))));
        cookies.push("portcullis=session-is-not-a-login".into());
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, cookies.join("; ").parse().unwrap());
        let present = present(&headers, "p_login_", &sealer);
        assert_eq!(present.len(), 7);
        let clear = to_clear(present, now, 600_000);
        assert_eq!(clear, ["p_login_bad", "p_login_old", "p_login_0"], "dead ones, then the oldest live one");

        let mut headers = HeaderMap::new();
        let many: Vec<String> = (0..1000).map(|i| format!("p_login_{i}=x")).collect();
        headers.insert(header::COOKIE, many.join("; ").parse().unwrap());
        assert_eq!(to_clear(self::present(&headers, "p_login_", &sealer), now, 600_000).len(), MAX_EXAMINED, "bounded work per request");

        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, format!("p_login_a={}", sealer.seal(&login("a", now))).parse().unwrap());
        assert!(to_clear(self::present(&headers, "p_login_", &sealer), now, 600_000).is_empty(), "below the cap nothing goes");
    }

    #[test]
    fn expiry() {
        let l = login("s", 1_000);
        assert!(!expired(&l, 1_000 + 600_000, 600_000));
        assert!(expired(&l, 1_001 + 600_000, 600_000));
        assert!(expired(&login("s", 10_000_000), 1_000, 600_000), "a start time far in the future is not trusted");
    }
}
