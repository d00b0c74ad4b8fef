//! The few primitives the OP needs, all from aws-lc-rs (the tree's single crypto backend).

use aws_lc_rs::{digest, rand::SecureRandom};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut out).expect("the OS random source failed");
    out
}

/// An unguessable URL-safe token with 256 bits of entropy: access and refresh tokens, codes,
/// session cookies, `jti`s.
pub(crate) fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// A uniform draw from `[0, 1)` for failure injection (53 random bits, the f64 mantissa).
pub(crate) fn random_unit() -> f64 {
    (u64::from_be_bytes(random_bytes::<8>()) >> 11) as f64 / (1u64 << 53) as f64
}

/// The S256 code challenge of a PKCE verifier (RFC 7636 §4.2).
pub(crate) fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

/// Compares secrets without leaking, through timing, how many leading bytes matched. Both sides
/// are hashed first so that the comparison does not reveal the secret's length either.
pub(crate) fn secret_eq(a: &str, b: &str) -> bool {
    let (a, b) = (digest::digest(&digest::SHA256, a.as_bytes()), digest::digest(&digest::SHA256, b.as_bytes()));
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_ref(), b.as_ref()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc7636_appendix_b() {
        assert_eq!(s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn unit_draws_stay_in_range() {
        assert!((0..1000).map(|_| random_unit()).all(|u| (0.0..1.0).contains(&u)));
    }

    #[test]
    fn secret_comparison() {
        assert!(secret_eq("s3cret", "s3cret"));
        assert!(!secret_eq("s3cret", "s3cre"));
        assert!(!secret_eq("", "x"));
    }
}
