//! The few primitives Portcullis needs, all from aws-lc-rs (the tree's single crypto backend).

use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    digest, hmac,
    rand::SecureRandom,
};
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

/// SHA-256 of `label ‖ data`, for deriving a key from `data` (uniformly random key material)
/// under a fixed-length label: outputs under different labels, or the plain hash of `data`, say
/// nothing about each other. Two compression blocks for a 32-byte label and a 32-byte `data`,
/// half the cost of an HMAC (which needs four) on the request path.
pub(crate) fn labelled_sha256(label: &[u8], data: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(label);
    ctx.update(data);
    ctx.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
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

/// An AES-256-GCM key for one purpose. `seal` output is `<nonce><ciphertext+tag>`; a random
/// 96-bit nonce per seal keeps GCM safe for far more seals per key than a gateway makes (2^32).
/// The `aad` names what a sealed value is for, so one sealed thing cannot be replayed as another.
#[derive(Clone)]
pub(crate) struct AeadKey(std::sync::Arc<LessSafeKey>);

impl AeadKey {
    /// A key derived from `secret` for `purpose` (domain separation, as [`MacKey::derive`]).
    pub(crate) fn derive(secret: &[u8], purpose: &str) -> Self {
        Self::from_bytes(&MacKey::derive(secret, purpose).sign(b"aes-256-gcm"))
    }

    /// A key from 32 bytes of key material.
    pub(crate) fn from_bytes(material: &[u8; 32]) -> Self {
        Self(std::sync::Arc::new(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, material).expect("32-byte key"))))
    }

    pub(crate) fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = random_bytes();
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (head, body) = out.split_at_mut(NONCE_LEN);
        let tag =
            self.0.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body).expect("sealing cannot fail");
        let _ = head;
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// [`AeadKey::open`] without a copy: decrypts `sealed` where it lies and returns the
    /// plaintext inside it (for the session record, opened on every request).
    pub(crate) fn open_in_place<'a>(&self, sealed: &'a mut [u8], aad: &[u8]) -> Option<&'a [u8]> {
        if sealed.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, body) = sealed.split_at_mut(NONCE_LEN);
        let nonce = Nonce::assume_unique_for_key((&*nonce).try_into().ok()?);
        self.0.open_in_place(nonce, Aad::from(aad), body).ok().map(|plain| &*plain)
    }

    /// The plaintext, or `None` for anything this key did not seal with this `aad`.
    pub(crate) fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let mut body = body.to_vec();
        let nonce = Nonce::assume_unique_for_key(nonce.try_into().ok()?);
        let len = self.0.open_in_place(nonce, Aad::from(aad), &mut body).ok()?.len();
        body.truncate(len);
        Some(body)
    }
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aead_round_trip_and_refusals() {
        let key = AeadKey::derive(b"0123456789abcdef0123456789abcdef", "test");
        let sealed = key.seal(b"hello", b"purpose-a");
        assert_eq!(key.open(&sealed, b"purpose-a").as_deref(), Some(&b"hello"[..]));
        assert_eq!(key.open(&sealed, b"purpose-b"), None, "another purpose cannot open it");
        let mut tampered = sealed.clone();
        tampered[NONCE_LEN] ^= 1;
        assert_eq!(key.open(&tampered, b"purpose-a"), None);
        assert_eq!(key.open(&sealed[..10], b"purpose-a"), None);
        let other = AeadKey::derive(b"0123456789abcdef0123456789abcdef", "other");
        assert_eq!(other.open(&sealed, b"purpose-a"), None, "another derived key cannot open it");
        assert_ne!(key.seal(b"hello", b"purpose-a"), sealed, "nonces are random");
        assert_eq!(key.open_in_place(&mut sealed.clone(), b"purpose-a"), Some(&b"hello"[..]));
        assert_eq!(key.open_in_place(&mut sealed.clone(), b"purpose-b"), None);
        assert_eq!(key.open_in_place(&mut tampered.clone(), b"purpose-a"), None);
        assert_eq!(key.open_in_place(&mut sealed[..10].to_vec(), b"purpose-a"), None);
    }
}
