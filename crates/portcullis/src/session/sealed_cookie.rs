//! The cookie store's format: the whole session, sealed with AES-256-GCM, split into cookies
//! small enough for browsers. Pure functions of bytes: no I/O here.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::{SessionKey, SessionRecord};
use crate::crypto::{self, MacKey};

/// Largest cookie value written. Browsers cap a cookie (name, value, attributes) near 4096
/// bytes; this leaves room for the name and the attributes.
pub(crate) const CHUNK_LEN: usize = 3800;

/// At most this many chunks (≈ 30 KB of sealed session): above that the cookie header alone
/// would exceed common server limits, so such a session is refused at login.
pub const MAX_CHUNKS: usize = 8;

/// Format tag, so another format can follow without misreading this one.
const FORMAT: &str = "s1";
/// Additional data bound into the seal: a sealed session cannot be replayed as anything else.
const AAD: &[u8] = b"portcullis/cookie-session/v1";

/// What a sealed cookie carries.
#[derive(Clone, Serialize, Deserialize)]
pub struct CookiePayload {
    /// Stable name of the session across refreshes (for logs and coordination).
    pub key: SessionKey,
    /// The session, with `version` counting refreshes.
    pub version: u64,
    /// The record itself.
    pub record: SessionRecord,
}

/// Seals with the newest key; opens with any configured key, so keys can be rotated by adding
/// a new secret in front and keeping the old ones until their cookies have expired.
pub struct CookieSealer {
    /// `(key id, key)`, newest first. The key id is a fingerprint, so the order of old keys in
    /// the config does not matter. Swappable (a SIGHUP reload changes `previous_secrets`).
    keys: arc_swap::ArcSwap<Vec<([u8; 4], LessSafeKey)>>,
}

impl std::fmt::Debug for CookieSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CookieSealer({} keys)", self.keys.load().len())
    }
}

fn sealing_keys<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Vec<([u8; 4], LessSafeKey)> {
    secrets
        .into_iter()
        .map(|secret| {
            let material = MacKey::derive(secret, "portcullis/cookie-store/aes-256-gcm/v1").sign(b"key");
            let id: [u8; 4] = crypto::sha256(&material)[..4].try_into().expect("4 bytes");
            let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &material).expect("32-byte key"));
            (id, key)
        })
        .collect()
}

impl CookieSealer {
    /// Keys derived from the session secrets, newest first.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Self { keys: arc_swap::ArcSwap::from_pointee(sealing_keys(secrets)) }
    }

    /// Replaces the keys (newest first) for every seal and open from now on.
    pub fn set_secrets<'a>(&self, secrets: impl IntoIterator<Item = &'a [u8]>) {
        self.keys.store(std::sync::Arc::new(sealing_keys(secrets)));
    }

    /// `s1.<key id><nonce><ciphertext+tag>` in URL-safe base64. A random 96-bit nonce per seal:
    /// AES-GCM stays safe for far more seals per key than a gateway makes (2^32).
    pub fn seal(&self, payload: &CookiePayload) -> String {
        let keys = self.keys.load();
        let (id, key) = &keys[0];
        let mut data = serde_json::to_vec(payload).expect("a cookie payload always serializes");
        let nonce: [u8; NONCE_LEN] = crypto::random_bytes();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut data).expect("sealing cannot fail");
        let mut out = Vec::with_capacity(4 + NONCE_LEN + data.len());
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        format!("{FORMAT}.{}", crypto::b64(&out))
    }

    /// The payload, or `None` for anything not sealed by one of our keys.
    pub fn open(&self, text: &str) -> Option<CookiePayload> {
        let body = text.strip_prefix(FORMAT)?.strip_prefix('.')?;
        let bytes = crypto::b64_decode(body)?;
        if bytes.len() < 4 + NONCE_LEN + 16 {
            return None;
        }
        let (id, rest) = bytes.split_at(4);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys.load();
        let (_, key) = keys.iter().find(|(kid, _)| kid == id)?;
        let mut sealed = sealed.to_vec();
        let nonce = Nonce::assume_unique_for_key(nonce.try_into().ok()?);
        let plain = key.open_in_place(nonce, Aad::from(AAD), &mut sealed).ok()?;
        let mut payload: CookiePayload = serde_json::from_slice(plain).ok()?;
        payload.record.version = payload.version;
        Some(payload)
    }
}

/// Name of chunk `i`: the base name for the first, `<name>_<i>` after it.
pub fn chunk_name(name: &str, i: usize) -> String {
    if i == 0 { name.to_string() } else { format!("{name}_{i}") }
}

/// Splits a sealed value into `(cookie name, value)` chunks. The first chunk starts with the
/// chunk count, so a reader knows how many to join and a missing one is detected.
pub fn split(name: &str, sealed: &str) -> Vec<(String, String)> {
    let parts: Vec<&str> = sealed.as_bytes().chunks(CHUNK_LEN - 4).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| (chunk_name(name, i), if i == 0 { format!("{}~{part}", parts.len()) } else { part.to_string() }))
        .collect()
}

/// Joins the chunks of cookie `name` from a request; `None` when absent or incomplete.
pub fn join(headers: &HeaderMap, name: &str) -> Option<String> {
    let first = crate::cookie_header::find(headers, name)?;
    let (count, head) = first.split_once('~')?;
    let count: usize = count.parse().ok().filter(|c| (1..=MAX_CHUNKS).contains(c))?;
    let mut sealed = head.to_string();
    for i in 1..count {
        sealed.push_str(crate::cookie_header::find(headers, &chunk_name(name, i))?);
    }
    Some(sealed)
}

/// How many chunks of `name` a request carries (to clear leftovers when a session shrinks).
pub fn chunks_present(headers: &HeaderMap, name: &str) -> usize {
    (0..MAX_CHUNKS).take_while(|i| crate::cookie_header::find(headers, &chunk_name(name, *i)).is_some()).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Identity, SessionId, TokenSet};

    fn payload(token_len: usize) -> CookiePayload {
        CookiePayload {
            key: SessionId::generate().key(),
            version: 3,
            record: SessionRecord {
                version: 0,
                created_at: 1,
                identity: Identity { subject: "s".into(), user: "u".into(), email: None, groups: vec![], claims: Default::default() },
                tokens: TokenSet {
                    access_token: "a".repeat(token_len),
                    issued_at: 1,
                    expires_at: Some(2),
                    refresh_token: Some("r".repeat(token_len)),
                    id_token: Some("i".repeat(token_len)),
                },
                unsettled_refresh: None,
                forward: Default::default(),
            },
        }
    }

    #[test]
    fn seals_opens_and_rotates_keys() {
        let old = CookieSealer::new([b"old secret old secret old secret!".as_slice()]);
        let rotated = CookieSealer::new([b"new secret new secret new secret!".as_slice(), b"old secret old secret old secret!".as_slice()]);
        let sealed = old.seal(&payload(10));
        let opened = rotated.open(&sealed).expect("old cookies open after rotation");
        assert_eq!(opened.version, 3);
        assert_eq!(opened.record.version, 3);
        let resealed = rotated.seal(&opened);
        assert!(old.open(&resealed).is_none(), "new cookies use the new key");
        assert!(rotated.open(&resealed).is_some());
    }

    #[test]
    fn refuses_tampering() {
        let sealer = CookieSealer::new([b"secret secret secret secret secret".as_slice()]);
        let sealed = sealer.seal(&payload(10));
        let mut bytes = sealed.clone().into_bytes();
        let i = bytes.len() - 10;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        for bad in [String::from_utf8(bytes).unwrap(), sealed.replace("s1.", "s2."), "s1.AAAA".into(), String::new(), "s1.".into()] {
            assert!(sealer.open(&bad).is_none(), "opened {bad:?}");
        }
    }

    #[test]
    fn large_sessions_split_under_the_browser_limit_and_join_back() {
        let sealer = CookieSealer::new([b"secret secret secret secret secret".as_slice()]);
        let sealed = sealer.seal(&payload(3000)); // ~9 KB of tokens, like Azure AD's
        let chunks = split("portcullis", &sealed);
        assert!(chunks.len() >= 3, "{}", chunks.len());
        let mut headers = HeaderMap::new();
        for (name, value) in &chunks {
            assert!(name.len() + value.len() < 3900, "chunk {name} too large");
            headers.append(http::header::COOKIE, format!("{name}={value}").parse().unwrap());
        }
        assert_eq!(chunks_present(&headers, "portcullis"), chunks.len());
        let joined = join(&headers, "portcullis").unwrap();
        assert_eq!(joined, sealed);
        assert_eq!(sealer.open(&joined).unwrap().record.tokens.access_token.len(), 3000);
        // A missing chunk is detected, not misread.
        let mut partial = HeaderMap::new();
        partial.append(http::header::COOKIE, format!("portcullis={}", chunks[0].1).parse().unwrap());
        assert!(join(&partial, "portcullis").is_none());
    }
}
