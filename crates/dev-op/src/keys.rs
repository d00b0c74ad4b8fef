//! Signing keys, generated at every start: one RSA 2048 (RS256) and one ECDSA P-256 (ES256) key.
//! Nothing is persisted, so a restart invalidates every token, which is what a development OP
//! should do (and it exercises a relying party's JWKS refetch on an unknown `kid`).

use std::sync::{Arc, RwLock};

use aws_lc_rs::{encoding::AsDer, rsa, signature};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    jwk::{Jwk, JwkSet, PublicKeyUse},
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::DevOpError;

/// Which key signs ID tokens; `RS256` unless changed through `POST /control`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum SigningAlg {
    #[default]
    RS256,
    ES256,
}

struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public: Jwk,
}

/// The OP's key pairs and its published JWKS. Behind a lock only so that `POST /control`
/// can rotate them (`rotate_signing_keys`); held for a clone of an `Arc`, never across an await.
pub(crate) struct Keys(RwLock<Arc<KeySet>>);

struct KeySet {
    rsa: SigningKey,
    ec: SigningKey,
    /// Keys replaced by a rotation: still published (tokens they signed stay verifiable, as at
    /// a real OP), no longer used to sign.
    retired: Vec<Jwk>,
}

fn generate_rsa() -> Result<SigningKey, DevOpError> {
    let fail = |what: &str| DevOpError::Keys(what.to_string());
    let rsa_pair = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).map_err(|_| fail("RSA 2048 key generation failed"))?;
    let pkcs8 = rsa_pair.as_der().map_err(|_| fail("RSA key has no PKCS#8 encoding"))?;
    // jsonwebtoken's aws-lc backend reads RSA keys as PKCS#1 `RSAPrivateKey`, which PKCS#8
    // wraps in an OCTET STRING.
    let pkcs1 = pkcs8_inner_key(pkcs8.as_ref()).ok_or_else(|| fail("unexpected PKCS#8 layout of the RSA key"))?;
    SigningKey::new("rs256-", Algorithm::RS256, EncodingKey::from_rsa_der(pkcs1))
}

fn generate_ec() -> Result<SigningKey, DevOpError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let ec_pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| DevOpError::Keys("P-256 key generation failed".into()))?;
    SigningKey::new("es256-", Algorithm::ES256, EncodingKey::from_ec_der(ec_pkcs8.as_ref()))
}

impl Keys {
    pub(crate) fn generate() -> Result<Self, DevOpError> {
        Ok(Self(RwLock::new(Arc::new(KeySet { rsa: generate_rsa()?, ec: generate_ec()?, retired: Vec::new() }))))
    }

    fn set(&self) -> Arc<KeySet> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Replaces both signing keys with new ones (new `kid`s), as an OP's key rollover does.
    /// The new keys are published at once and sign from now on; the old ones stay published.
    /// Relying parties under test see ID tokens with a `kid` they have not cached yet.
    pub(crate) fn rotate(&self) -> Result<(), DevOpError> {
        let (rsa, ec) = (generate_rsa()?, generate_ec()?);
        let mut guard = self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut retired = guard.retired.clone();
        retired.extend([guard.rsa.public.clone(), guard.ec.public.clone()]);
        *guard = Arc::new(KeySet { rsa, ec, retired });
        Ok(())
    }

    /// The public keys, as served at `/jwks`.
    pub(crate) fn jwks(&self) -> JwkSet {
        let set = self.set();
        let mut keys = vec![set.rsa.public.clone(), set.ec.public.clone()];
        keys.extend(set.retired.iter().cloned());
        JwkSet { keys }
    }

    /// Signs claims as a JWT with the given key; `typ` is `JWT` for ID tokens and `logout+jwt`
    /// for logout tokens (Back-Channel Logout §2.4 recommends explicit typing).
    pub(crate) fn sign(&self, alg: SigningAlg, typ: &str, claims: &Map<String, Value>) -> String {
        let set = self.set();
        let key = set.key(alg);
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        header.typ = Some(typ.to_string());
        jsonwebtoken::encode(&header, claims, &key.encoding).expect("signing with a freshly generated key cannot fail")
    }

    /// Verifies a JWT this OP signed (an `id_token_hint`), ignoring its expiry: RP-Initiated
    /// Logout accepts expired hints, since logging out usually happens after the token expired.
    pub(crate) fn verify_own(&self, token: &str, issuer: &str) -> Option<Map<String, Value>> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let set = self.set();
        let key = [&set.rsa, &set.ec].into_iter().find(|k| Some(&k.kid) == header.kid.as_ref() && k.alg == header.alg)?;
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[issuer]);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["iss", "aud", "sub"]);
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation).ok().map(|t| t.claims)
    }
}

impl KeySet {
    fn key(&self, alg: SigningAlg) -> &SigningKey {
        match alg {
            SigningAlg::RS256 => &self.rsa,
            SigningAlg::ES256 => &self.ec,
        }
    }
}

impl SigningKey {
    fn new(kid_prefix: &str, alg: Algorithm, encoding: EncodingKey) -> Result<Self, DevOpError> {
        let mut public = Jwk::from_encoding_key(&encoding, alg).map_err(|e| DevOpError::Keys(format!("{alg:?} public key: {e}")))?;
        // A fresh kid per start, so a relying party that cached the last run's JWKS sees an
        // unknown kid and refetches instead of failing on a signature mismatch.
        let kid = format!("{kid_prefix}{}", &crate::crypto::random_token()[..12]);
        public.common.key_id = Some(kid.clone());
        public.common.public_key_use = Some(PublicKeyUse::Signature);
        let decoding = DecodingKey::from_jwk(&public).map_err(|e| DevOpError::Keys(format!("{alg:?} decoding key: {e}")))?;
        Ok(Self { kid, alg, encoding, decoding, public })
    }
}

/// The `privateKey` OCTET STRING of a PKCS#8 `PrivateKeyInfo` (RFC 5208 §5):
/// `SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey, ... }`.
fn pkcs8_inner_key(der: &[u8]) -> Option<&[u8]> {
    let (tag, info, _) = der_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (0x02, _, rest) = der_tlv(info)? else { return None };
    let (0x30, _, rest) = der_tlv(rest)? else { return None };
    let (0x04, key, _) = der_tlv(rest)? else { return None };
    Some(key)
}

/// One DER tag-length-value: `(tag, value, rest)`. Definite lengths only, as DER requires.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_keys_sign_and_verify() {
        let keys = Keys::generate().unwrap();
        let jwks = keys.jwks();
        assert_eq!(jwks.keys.len(), 2);
        assert_ne!(jwks.keys[0].common.key_id, jwks.keys[1].common.key_id);
        let claims: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"iss": "http://op", "aud": "c", "sub": "u", "exp": 1})).unwrap();
        for alg in [SigningAlg::RS256, SigningAlg::ES256] {
            let jwt = keys.sign(alg, "JWT", &claims);
            let verified = keys.verify_own(&jwt, "http://op").expect("own token verifies (expired is fine)");
            assert_eq!(verified["sub"], "u");
            assert!(keys.verify_own(&jwt, "http://other").is_none(), "wrong issuer accepted");
        }
    }

    #[test]
    fn rotation_signs_with_new_kids_and_keeps_the_old_ones_published() {
        let keys = Keys::generate().unwrap();
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({"iss": "http://op", "aud": "c", "sub": "u"})).unwrap();
        let kid = |jwt: &str| jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap();
        let before = kid(&keys.sign(SigningAlg::RS256, "JWT", &claims));
        keys.rotate().unwrap();
        let after_jwt = keys.sign(SigningAlg::RS256, "JWT", &claims);
        let after = kid(&after_jwt);
        assert_ne!(before, after);
        let published: Vec<_> = keys.jwks().keys.into_iter().filter_map(|k| k.common.key_id).collect();
        assert_eq!(published.len(), 4);
        assert!(published.contains(&before) && published.contains(&after), "{published:?}");
        assert!(keys.verify_own(&after_jwt, "http://op").is_some());
    }

    #[test]
    fn truncated_der_is_refused() {
        assert!(der_tlv(&[0x30, 0x82, 0x01]).is_none());
        assert!(der_tlv(&[0x30, 0x05, 0x00]).is_none());
        assert_eq!(der_tlv(&[0x04, 0x01, 0xaa, 0xbb]), Some((0x04, &[0xaa][..], &[0xbb][..])));
    }
}
