//! Session identifiers: the opaque value in the browser's cookie and the key the store uses.

use std::fmt;

use crate::crypto::{self, MacKey};

/// The bearer secret in the session cookie: 256 random bits. Never logged, never stored as is.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId([u8; 32]);

/// The name a session has in the store and in logs: a hash of the id, so that read access to
/// the store (or to the logs) does not hand out working cookies.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SessionKey(String);

impl SessionId {
    /// A fresh random id; every login gets one (no session fixation).
    pub fn generate() -> Self {
        Self(crypto::random_bytes())
    }

    /// The store key of this session.
    pub fn key(&self) -> SessionKey {
        SessionKey(crypto::b64(&crypto::sha256(&self.0)[..18]))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId(key={})", self.key())
    }
}

impl SessionKey {
    /// A key as a store spelled it (e.g. in a change notification's channel name).
    pub(crate) fn from_stored(text: &str) -> Self {
        Self(text.to_string())
    }

    /// The key as text (URL-safe base64, 24 characters).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({})", self.0)
    }
}

/// Encodes ids into cookie values and back, checking the MAC before anything touches the store,
/// so a forged or tampered cookie costs one HMAC and never a store lookup.
#[derive(Clone, Debug)]
pub struct CookieCodec {
    mac: MacKey,
}

/// Version tag of the cookie format, so the format can change without misreading old cookies.
const COOKIE_FORMAT: &str = "v1";

impl CookieCodec {
    /// A codec keyed from the configured session secret.
    pub fn new(secret: &[u8]) -> Self {
        Self { mac: MacKey::derive(secret, "portcullis/session-cookie/v1") }
    }

    /// `v1.<id>.<mac>`, all URL-safe base64.
    pub fn encode(&self, id: &SessionId) -> String {
        let tag = self.mac.sign(&id.0);
        format!("{COOKIE_FORMAT}.{}.{}", crypto::b64(&id.0), crypto::b64(&tag))
    }

    /// The id in a cookie value, or `None` for anything malformed or not signed by us.
    pub fn decode(&self, value: &str) -> Option<SessionId> {
        let mut parts = value.split('.');
        let (Some(COOKIE_FORMAT), Some(id), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        let id: [u8; 32] = crypto::b64_decode(id)?.try_into().ok()?;
        let tag = crypto::b64_decode(tag)?;
        self.mac.verify(&id, &tag).then_some(SessionId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> CookieCodec {
        CookieCodec::new(b"0123456789abcdef0123456789abcdef")
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
