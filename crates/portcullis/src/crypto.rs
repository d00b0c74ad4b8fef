//! The few primitives Portcullis needs, all from aws-lc-rs (the tree's single crypto backend).

use aws_lc_rs::{digest, hmac, rand::SecureRandom};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// `n` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut out).expect("the OS random source failed");
    out
}

/// A random URL-safe token carrying `N` bytes of entropy (state, nonce, PKCE verifier).
pub(crate) fn random_token<const N: usize>() -> String {
    b64(&random_bytes::<N>())
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// An HMAC-SHA256 key for one purpose, derived from the configured secret so that the
/// same secret never keys two different MACs (a cookie MAC can't be replayed as a login binding).
#[derive(Clone)]
pub(crate) struct MacKey(hmac::Key);

impl MacKey {
    pub(crate) fn derive(secret: &[u8], purpose: &str) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let sub = hmac::sign(&root, purpose.as_bytes());
        Self(hmac::Key::new(hmac::HMAC_SHA256, sub.as_ref()))
    }

    pub(crate) fn sign(&self, data: &[u8]) -> [u8; 32] {
        hmac::sign(&self.0, data).as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
    }

    /// Constant-time check of a tag.
    pub(crate) fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.0, data, tag).is_ok()
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}
