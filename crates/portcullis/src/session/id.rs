//! Session identifiers: the opaque value in the browser's cookie and the key the store uses.

use std::{fmt, sync::Arc};

use arc_swap::ArcSwap;

use super::verified::VerifiedCookies;
use crate::crypto::{self, MacKey};

/// The bearer secret in the session cookie: 256 random bits. Never logged, never stored as is.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId([u8; 32]);

/// The name a session has in the store and in logs: a hash of the id, so that read access to
/// the store (or to the logs) does not hand out working cookies.
///
/// A key made from the id ([`SessionId::key`]) also carries the key that seals the session's
/// record at rest (see `sealed_record`); a key parsed back from a store's notification
/// ([`SessionKey::from_stored`]) carries none and can only match watchers. Equality, hashing,
/// ordering, `Display`, `Debug` and serde see the store-key text alone, so both spellings of one
/// session are the same key, and the sealing key never reaches a log line or a serialized form.
#[derive(Clone)]
pub struct SessionKey {
    /// Shared: a key is cloned into every map, log field and task that names its session, and
    /// out of the verified-cookie cache on every request.
    text: Arc<str>,
    /// The id itself, kept only to derive the sealing key when a store asks for it: the hash
    /// costs ~2,000 instructions, and the memory store (the default) never needs it, so it is not
    /// paid on every request.
    id: Option<[u8; 32]>,
}

/// Key material for sealing one session's record: SHA-256 of a label of its own followed by the
/// session id (256 random bits). The store key is the plain SHA-256 of the same id; the two
/// hashes of different inputs say nothing about each other, so whoever reads the store (and so
/// knows every store key) still cannot open a record.
#[derive(Clone)]
pub(crate) struct SealingKey([u8; 32]);

/// Domain separation of the record-sealing key from every other use of the id. Fixed length
/// (16 bytes), so `label ‖ id` is unambiguous; 48 bytes hash in one SHA-256 block (a 32-byte
/// label made it two, paid on every Redis-store request).
const SEALING_LABEL: &[u8; 16] = b"pc/record-key/v1";

impl SessionId {
    /// A fresh random id; every login gets one (no session fixation).
    pub fn generate() -> Self {
        Self(crypto::random_bytes())
    }

    /// The store key of this session, carrying the key that seals its record.
    pub fn key(&self) -> SessionKey {
        SessionKey { text: self.store_key_text().into(), id: Some(self.0) }
    }

    /// The store key's text alone (what `key` computed before records were sealed).
    pub(super) fn store_key_text(&self) -> String {
        crypto::b64(&crypto::sha256(&self.0)[..18])
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId(key={})", self.store_key_text())
    }
}

impl SessionKey {
    /// A key as a store spelled it (e.g. in a change notification's channel name): good for
    /// matching watchers, not for reading or writing the record (it has no sealing key).
    pub(crate) fn from_stored(text: &str) -> Self {
        Self { text: text.into(), id: None }
    }

    /// The key as text (URL-safe base64, 24 characters).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `name` with the sealing key of `sealing`: lets a test separate the AAD's binding from
    /// the key's.
    #[cfg(test)]
    pub(crate) fn with_sealing_of(name: &SessionKey, sealing: &SessionKey) -> Self {
        Self { text: name.text.clone(), id: sealing.id }
    }

    /// Whether this key can derive its record's sealing key (it was made from the id), without
    /// deriving it.
    pub(crate) fn can_seal(&self) -> bool {
        self.id.is_some()
    }

    /// The record's sealing key, derived now; `None` for a key parsed back from the store.
    pub(crate) fn sealing_key(&self) -> Option<SealingKey> {
        self.id.map(|id| SealingKey(crypto::labelled_sha256(SEALING_LABEL, &id)))
    }
}

impl SealingKey {
    pub(crate) fn material(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for SessionKey {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for SessionKey {}

impl std::hash::Hash for SessionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl PartialOrd for SessionKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SessionKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl serde::Serialize for SessionKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for SessionKey {
    /// Like [`SessionKey::from_stored`]: text in, no sealing key.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self { text: String::deserialize(deserializer)?.into(), id: None })
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({})", self.text)
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

/// Encodes ids into cookie values and back, checking the MAC before anything touches the store,
/// so a forged or tampered cookie costs one HMAC per configured secret and never a store lookup.
///
/// Cookies are signed with the current `session.secret`; those signed with one of
/// `session.previous_secrets` still decode, so a secret rotation logs nobody out. The keys are
/// swappable ([`CookieCodec::set_secrets`], a SIGHUP reload), shared by every clone.
///
/// [`CookieCodec::decode_key`] remembers the values it verified (`verified.rs`): a browser's
/// next request with the same cookie costs a hash lookup, not a MAC check and a SHA-256.
#[derive(Clone)]
pub struct CookieCodec {
    keys: Arc<ArcSwap<Keys>>,
}

/// One set of MAC keys and what was verified with them: swapped together, so a cookie verified
/// under keys that are gone is forgotten with them.
struct Keys {
    /// The current secret's first.
    macs: Vec<MacKey>,
    verified: VerifiedCookies,
}

impl fmt::Debug for CookieCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CookieCodec({} keys)", self.keys.load().macs.len())
    }
}

/// Version tag of the cookie format, so the format can change without misreading old cookies.
const COOKIE_FORMAT: &str = "v1";

fn keys<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Keys {
    let macs: Vec<MacKey> = secrets.into_iter().map(|s| MacKey::derive(s, "portcullis/session-cookie/v1")).collect();
    assert!(!macs.is_empty(), "at least one session secret");
    Keys { macs, verified: VerifiedCookies::new() }
}

impl CookieCodec {
    /// A codec keyed from the configured session secret.
    pub fn new(secret: &[u8]) -> Self {
        Self::with_secrets([secret])
    }

    /// A codec signing with the first of `secrets` and accepting any of them.
    pub fn with_secrets<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Self { keys: Arc::new(ArcSwap::from_pointee(keys(secrets))) }
    }

    /// Replaces the keys (current first) for every cookie encoded or decoded from now on, and
    /// forgets every cookie verified with the old ones (even those the new set still accepts:
    /// one MAC check each, once, rather than reasoning about which survived).
    pub fn set_secrets<'a>(&self, secrets: impl IntoIterator<Item = &'a [u8]>) {
        self.keys.store(Arc::new(keys(secrets)));
    }

    /// `v1.<id>.<mac>`, all URL-safe base64.
    pub fn encode(&self, id: &SessionId) -> String {
        let tag = self.keys.load().macs[0].sign(&id.0);
        format!("{COOKIE_FORMAT}.{}.{}", crypto::b64(&id.0), crypto::b64(&tag))
    }

    /// The id in a cookie value, or `None` for anything malformed or not signed by us.
    pub fn decode(&self, value: &str) -> Option<SessionId> {
        open(&self.keys.load().macs, value)
    }

    /// The store key of the session a cookie value names, or `None` for anything malformed or
    /// not signed by us: [`CookieCodec::decode`] then [`SessionId::key`], remembered for the
    /// next request carrying the same value (only values whose MAC verified are remembered).
    pub fn decode_key(&self, value: &str) -> Option<SessionKey> {
        let keys = self.keys.load();
        if let Some(key) = keys.verified.get(value) {
            return Some(key);
        }
        let key = open(&keys.macs, value)?.key();
        keys.verified.insert(value, &key);
        Some(key)
    }

    /// Cookie values remembered as verified, for tests.
    #[cfg(test)]
    fn verified_len(&self) -> usize {
        self.keys.load().verified.len()
    }
}

/// The id in `value` if one of `macs` signed it.
fn open(macs: &[MacKey], value: &str) -> Option<SessionId> {
    let mut parts = value.split('.');
    let (Some(COOKIE_FORMAT), Some(id), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let id: [u8; 32] = crypto::b64_decode(id)?.try_into().ok()?;
    let tag = crypto::b64_decode(tag)?;
    macs.iter().any(|mac| mac.verify(&id, &tag)).then_some(SessionId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> CookieCodec {
        CookieCodec::new(b"0123456789abcdef0123456789abcdef")
    }

    /// A previous secret still opens its cookies; new ones are signed with the current secret;
    /// a swap takes effect for the clones too.
    #[test]
    fn previous_secrets_decode_and_swap() {
        let (old, new) = (b"0123456789abcdef0123456789abcdef".as_slice(), b"fedcba9876543210fedcba9876543210".as_slice());
        let id = SessionId::generate();
        let old_cookie = CookieCodec::new(old).encode(&id);
        let codec = CookieCodec::new(new);
        let clone = codec.clone();
        assert_eq!(codec.decode(&old_cookie), None);
        codec.set_secrets([new, old]);
        assert_eq!(clone.decode(&old_cookie), Some(id.clone()));
        assert_eq!(CookieCodec::new(new).decode(&clone.encode(&id)), Some(id.clone()), "signed with the current secret");
        codec.set_secrets([new]);
        assert_eq!(clone.decode(&old_cookie), None, "a secret dropped from the list stops opening");
    }

    /// `decode_key` remembers a verified cookie; a rotation that drops the secret that signed
    /// it refuses it from then on, although it was remembered (through a clone, as the auth
    /// layer's is); nothing that fails the MAC check is ever remembered.
    #[test]
    fn verified_cookies_are_forgotten_with_their_keys_and_forgeries_never_enter() {
        let (old, new) = (b"0123456789abcdef0123456789abcdef".as_slice(), b"fedcba9876543210fedcba9876543210".as_slice());
        let id = SessionId::generate();
        let old_cookie = CookieCodec::new(old).encode(&id);
        let codec = CookieCodec::with_secrets([new, old]);
        let clone = codec.clone();
        assert_eq!(clone.decode_key(&old_cookie), Some(id.key()));
        assert_eq!(codec.verified_len(), 1, "remembered, for every clone");
        let again = clone.decode_key(&old_cookie).expect("still valid");
        assert_eq!(again.sealing_key().unwrap().material(), id.key().sealing_key().unwrap().material());
        assert_eq!(codec.verified_len(), 1);

        codec.set_secrets([new]);
        assert_eq!(clone.decode_key(&old_cookie), None, "the old secret is gone: its cookie goes, remembered or not");
        assert_eq!(codec.verified_len(), 0);

        let good = codec.encode(&id);
        let mut flipped = good.clone().into_bytes();
        let i = flipped.len() - 3;
        flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let foreign = CookieCodec::new(b"another secret that is long enough!!").encode(&id);
        for forged in [flipped.as_str(), &foreign, &old_cookie, "v1.x.y", &format!("{good}.extra")] {
            for _ in 0..2 {
                assert_eq!(codec.decode_key(forged), None, "accepted {forged:?}");
            }
        }
        assert_eq!(codec.verified_len(), 0, "a forged cookie was remembered");
        assert_eq!(codec.decode_key(&good), Some(id.key()));
        assert_eq!(codec.verified_len(), 1);
    }

    #[test]
    fn round_trip() {
        let id = SessionId::generate();
        assert_eq!(codec().decode(&codec().encode(&id)), Some(id));
    }

    #[test]
    fn ids_are_unique_and_keys_differ_from_ids() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert!(!codec().encode(&a).contains(a.key().as_str()));
    }

    /// A key parsed from a notification is the same key to every map and watcher, and nothing
    /// that prints or serializes a key shows the sealing key.
    #[test]
    fn keys_compare_by_store_key_and_never_show_the_sealing_key() {
        use std::hash::BuildHasher;
        let id = SessionId::generate();
        let key = id.key();
        let parsed = SessionKey::from_stored(key.as_str());
        assert_eq!(key, parsed);
        assert_eq!(key.cmp(&parsed), std::cmp::Ordering::Equal);
        let hasher = std::collections::hash_map::RandomState::new();
        assert_eq!(hasher.hash_one(&key), hasher.hash_one(&parsed));
        assert!(key.sealing_key().is_some() && parsed.sealing_key().is_none());

        let sealing = key.sealing_key().unwrap();
        let material = sealing.material();
        assert_ne!(&material[..18], &crypto::sha256(&id.0)[..18], "the sealing key is not the store-key hash");
        let secrets = [crypto::b64(material), crypto::b64(&id.0), format!("{material:?}")];
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{}\"", key.as_str()));
        let back: SessionKey = serde_json::from_str(&json).unwrap();
        assert!(back == key && back.sealing_key().is_none());
        for shown in [format!("{key}"), format!("{key:?}"), format!("{:?}", key.sealing_key().unwrap()), format!("{id:?}"), json] {
            for secret in &secrets {
                assert!(!shown.contains(secret.as_str()), "{shown} shows a secret");
            }
        }
    }

    #[test]
    fn rejects_tampering_and_garbage() {
        let good = codec().encode(&SessionId::generate());
        let other_key = CookieCodec::new(b"another secret that is long enough!!");
        let mut flipped = good.clone().into_bytes();
        let i = flipped.len() / 2;
        flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let cases = [
            "",
            "v1",
            "v1..",
            "v2.AAAA.AAAA",
            "not a cookie",
            "v1.%%%.%%%",
            &flipped,
            &format!("{good}.extra"),
            &good.replace("v1.", "v0."),
        ];
        for case in cases {
            assert_eq!(codec().decode(case), None, "accepted {case:?}");
        }
        assert_eq!(other_key.decode(&good), None, "accepted a cookie signed with another secret");
    }
}
