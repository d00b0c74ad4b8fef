//! A session record as a shared store keeps it: sealed, so a dump, replica or backup of the store
//! yields no token and no personal data.
//!
//! Layout: `<version>|s1:<nonce ‖ AES-256-GCM(JSON record) ‖ tag>` (raw bytes after `s1:`).
//! - The version stays in clear in front, so the store's compare-and-set script compares it
//!   without the key (the CAS, lease and notification protocol does not change).
//! - The key is derived from the session id ([`super::id::SealingKey`]), which only the
//!   browser's cookie holds: the store holds only a hash of the id, so it cannot open its own
//!   records.
//! - The AAD names the purpose, the store key and the version: a record copied under another
//!   session's key does not open (even if two sessions somehow shared a sealing key), and the
//!   clear version cannot be changed without the record failing to open.
//!
//! Plain data, no I/O (the architecture invariant of `session`).

use super::{SessionKey, SessionRecord};
use crate::crypto::AeadKey;

/// Format tag after the version separator. The previous format put JSON (`{`) there.
const FORMAT_TAG: &[u8] = b"s1:";

/// Purpose label in the AAD: a sealed record cannot be passed off as anything else sealed.
const AAD_PURPOSE: &[u8] = b"portcullis/session-record/v1";

/// Why a stored value gave no record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpenError {
    /// The key was parsed back from the store and has no sealing key: a bug in the caller.
    #[error("session key has no sealing key")]
    NoSealingKey,
    /// Not `<version>|…` with a numeric version.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// Clear JSON written before records were sealed.
    #[error("record in the pre-encryption format")]
    Unsealed,
    /// A format tag this version does not know (written by a newer gateway?).
    #[error("record in an unknown format")]
    UnknownFormat,
    /// The seal did not open with this session's key and AAD: tampered, copied from another
    /// session's key, or truncated. GCM cannot tell these apart, and none of them is this
    /// session's record.
    #[error("record does not open with this session's key")]
    NotOpenable,
    /// Opened, but the JSON inside is not a record (an incompatible version of the gateway).
    #[error("sealed record body does not decode: {0}")]
    Body(String),
}

/// The sealing key of `key`, ready for AES-GCM.
fn aead(key: &SessionKey) -> Result<AeadKey, OpenError> {
    key.sealing_key().map(|k| AeadKey::from_bytes(k.material())).ok_or(OpenError::NoSealingKey)
}

fn aad(key: &SessionKey, version: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PURPOSE.len() + 2 + key.as_str().len() + 20);
    aad.extend_from_slice(AAD_PURPOSE);
    aad.push(0);
    aad.extend_from_slice(key.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(version.to_string().as_bytes());
    aad
}

/// The stored value of `record` at `version` under `key`. Fails only for a key without its
/// sealing key (never writes a clear record).
pub(crate) fn seal(key: &SessionKey, version: u64, record: &SessionRecord) -> Result<Vec<u8>, OpenError> {
    let aead = aead(key)?;
    let body = serde_json::to_vec(record).expect("a session record always serializes");
    let sealed = aead.seal(&body, &aad(key, version));
    let mut value = Vec::with_capacity(20 + 1 + FORMAT_TAG.len() + sealed.len());
    value.extend_from_slice(version.to_string().as_bytes());
    value.push(b'|');
    value.extend_from_slice(FORMAT_TAG);
    value.extend_from_slice(&sealed);
    Ok(value)
}

/// The record stored as `value` under `key`, with its version. Decrypts in place (`value` is
/// the store's reply, read once): no copy of the body on the request path.
pub(crate) fn open(key: &SessionKey, value: &mut [u8]) -> Result<SessionRecord, OpenError> {
    let aead = aead(key)?;
    let sep = value.iter().position(|&b| b == b'|').ok_or(OpenError::Malformed("no version prefix"))?;
    let (version, rest) = value.split_at_mut(sep);
    let version: u64 =
        std::str::from_utf8(version).ok().and_then(|v| v.parse().ok()).ok_or(OpenError::Malformed("version is not a number"))?;
    let Some(sealed) = rest[1..].strip_prefix(FORMAT_TAG).map(<[u8]>::len) else {
        return Err(if rest.get(1) == Some(&b'{') { OpenError::Unsealed } else { OpenError::UnknownFormat });
    };
    let at = rest.len() - sealed;
    let body = aead.open_in_place(&mut rest[at..], &aad(key, version)).ok_or(OpenError::NotOpenable)?;
    // One UTF-8 check of the whole body, then the `&str` parser (it skips per-string checks).
    let body = std::str::from_utf8(body).map_err(|e| OpenError::Body(e.to_string()))?;
    let mut record: SessionRecord = serde_json::from_str(body).map_err(|e| OpenError::Body(e.to_string()))?;
    record.version = version;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Identity, SessionId, TokenSet, now_millis};

    fn record() -> SessionRecord {
        SessionRecord {
            version: 0,
            created_at: now_millis(),
            identity: Identity {
                subject: "sub-1".into(),
                user: "alice".into(),
                email: Some("alice@example.com".into()),
                groups: vec![],
                claims: Default::default(),
            },
            tokens: TokenSet {
                access_token: "at-secret".into(),
                issued_at: now_millis(),
                expires_at: None,
                refresh_token: Some("rt-secret".into()),
                id_token: None,
            },
            unsettled_refresh: None,
            forward: Default::default(),
        }
    }

    #[test]
    fn round_trip_keeps_the_version_in_clear_and_the_rest_sealed() {
        let key = SessionId::generate().key();
        let value = seal(&key, 7, &record()).unwrap();
        assert!(value.starts_with(b"7|s1:"));
        let text = String::from_utf8_lossy(&value);
        for secret in ["at-secret", "rt-secret", "alice", "sub-1"] {
            assert!(!text.contains(secret), "{secret} in clear");
        }
        let opened = open(&key, &mut value.clone()).unwrap();
        assert_eq!((opened.version, opened.tokens.access_token.as_str()), (7, "at-secret"));
    }

    /// The AAD alone (same sealing key, different store key or version) refuses the record, so
    /// the binding holds even where two keys' sealing keys coincide.
    #[test]
    fn aad_binds_store_key_and_version() {
        let key = SessionId::generate().key();
        let value = seal(&key, 3, &record()).unwrap();
        let other = SessionId::generate().key();
        let same_sealing_other_name = SessionKey::with_sealing_of(&other, &key);
        assert_eq!(
            open(&same_sealing_other_name, &mut value.clone()).unwrap_err(),
            OpenError::NotOpenable,
            "copied under another store key"
        );
        let mut bumped = value.clone();
        bumped[0] = b'4';
        assert_eq!(open(&key, &mut bumped).unwrap_err(), OpenError::NotOpenable, "clear version changed");
    }

    #[test]
    fn refusals() {
        let key = SessionId::generate().key();
        let value = seal(&key, 2, &record()).unwrap();
        let mut tampered = value.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let not_json = [b"2|s1:".as_slice(), &aead(&key).unwrap().seal(b"not json", &aad(&key, 2))].concat();
        let legacy = format!("2|{}", serde_json::to_string(&record()).unwrap()).into_bytes();
        let cases: [(&str, &[u8], OpenError); 9] = [
            ("tampered", &tampered, OpenError::NotOpenable),
            ("truncated", &value[..value.len() - 20], OpenError::NotOpenable),
            ("tag only", b"2|s1:", OpenError::NotOpenable),
            ("other session's key", &seal(&SessionId::generate().key(), 2, &record()).unwrap(), OpenError::NotOpenable),
            ("pre-encryption JSON", &legacy, OpenError::Unsealed),
            ("sealed, not a record", &not_json, OpenError::Body("expected ident at line 1 column 2".into())),
            ("unknown format", b"2|s9:abc", OpenError::UnknownFormat),
            ("no separator", b"2s1:abc", OpenError::Malformed("no version prefix")),
            ("version not a number", b"x|s1:abc", OpenError::Malformed("version is not a number")),
        ];
        for (name, value, expected) in cases {
            assert_eq!(open(&key, &mut value.to_vec()).unwrap_err(), expected, "{name}");
        }
    }

    #[test]
    fn keys_from_the_store_neither_read_nor_write() {
        let key = SessionId::generate().key();
        let value = seal(&key, 1, &record()).unwrap();
        let parsed = SessionKey::from_stored(key.as_str());
        assert_eq!(parsed, key, "the same session to watchers");
        assert_eq!(seal(&parsed, 1, &record()).unwrap_err(), OpenError::NoSealingKey);
        assert_eq!(open(&parsed, &mut value.clone()).unwrap_err(), OpenError::NoSealingKey);
    }
}
