//! PKCE (RFC 7636), S256 only: `plain` protects nothing against an attacker who sees the request.

use crate::crypto;

/// A fresh code verifier: 32 random bytes, 43 characters of base64url (the RFC's minimum length).
pub(crate) fn new_verifier() -> String {
    crypto::random_token::<32>()
}

/// `BASE64URL(SHA256(verifier))`.
pub(crate) fn challenge(verifier: &str) -> String {
    crypto::b64(&crypto::sha256(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc7636_appendix_b_vector() {
        assert_eq!(super::challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn verifier_length_is_within_rfc_bounds() {
        let v = super::new_verifier();
        assert!((43..=128).contains(&v.len()));
    }
}
