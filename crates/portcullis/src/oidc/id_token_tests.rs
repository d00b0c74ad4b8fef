//! Forgery and claim tests for [`super::validate`], against a real JWKS endpoint.
//!
//! Every test serves its key set from a small axum server on 127.0.0.1 (on its own thread and
//! runtime, so the test's paused clock never touches it), counts the JWKS fetches, builds a
//! [`JwksCache`] over HTTP and validates tokens signed here with aws-lc-rs. Tokens are assembled
//! by hand so headers can say anything (`alg: none`, HS256 with a real `kid`, ...).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use aws_lc_rs::{
    hmac,
    rand::SystemRandom,
    rsa,
    signature::{self, EcdsaKeyPair, KeyPair as _},
};
use axum::{Json, Router, extract::State, routing::get};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use url::Url;

use super::{Claims, Expectations, validate};
use crate::oidc::{OidcError, http, jwks::JwksCache};

const ISSUER: &str = "https://op.example.test";
const CLIENT_ID: &str = "gw";
const NONCE: &str = "n-0S6_WzA2Mj";
const SUBJECT: &str = "user-248289761001";
const SKEW: Duration = Duration::from_secs(60);
/// Longer than the cache's refetch cool-down (10 s).
const PAST_COOL_DOWN: Duration = Duration::from_secs(11);

// ---------------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------------

enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(rsa::KeyPair),
}

/// A signing key and its public JWK.
struct TestKey {
    kid: String,
    alg: &'static str,
    signer: Signer,
    jwk: Value,
}

impl TestKey {
    fn es256(kid: &str) -> Self {
        Self::ec(kid, "ES256")
    }

    fn ec(kid: &str, alg: &'static str) -> Self {
        let (signing, crv, width) = match alg {
            "ES256" => (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32),
            "ES384" => (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48),
            other => panic!("no EC test key for {other}"),
        };
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &SystemRandom::new()).expect("EC key generation");
        let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref()).expect("generated PKCS#8 parses");
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        assert_eq!(point.len(), 1 + 2 * width);
        assert_eq!(point[0], 0x04);
        let jwk = json!({
            "kty": "EC", "crv": crv, "use": "sig", "alg": alg, "kid": kid,
            "x": B64.encode(&point[1..=width]),
            "y": B64.encode(&point[1 + width..]),
        });
        Self { kid: kid.into(), alg, signer: Signer::Ec(pair), jwk }
    }

    fn rs256(kid: &str) -> Self {
        let pair = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).expect("RSA key generation");
        let (n, e) = rsa_public_components(pair.public_key().as_ref());
        let jwk = json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": B64.encode(n), "e": B64.encode(e)});
        Self { kid: kid.into(), alg: "RS256", signer: Signer::Rsa(pair), jwk }
    }

    /// The same key published under another JWK shape (e.g. without `alg`, or with `use: enc`).
    fn with_jwk(mut self, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Self {
        edit(self.jwk.as_object_mut().expect("a JWK is an object"));
        self
    }

    fn sign_bytes(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Ec(pair) => pair.sign(&rng, input).expect("ECDSA signing").as_ref().to_vec(),
            Signer::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, input, &mut sig).expect("RSA signing");
                sig
            }
        }
    }

    /// The raw public key bytes an attacker could use as an HMAC "secret".
    fn public_bytes(&self) -> Vec<u8> {
        match &self.signer {
            Signer::Ec(pair) => pair.public_key().as_ref().to_vec(),
            Signer::Rsa(pair) => pair.public_key().as_ref().to_vec(),
        }
    }
}

/// `(n, e)` of a DER `RSAPublicKey` (RFC 8017): SEQUENCE { INTEGER n, INTEGER e }.
fn rsa_public_components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let (len, header) = match input[1] {
            short if short < 0x80 => (usize::from(short), 2),
            long => {
                let count = usize::from(long & 0x7f);
                (input[2..2 + count].iter().fold(0, |acc, b| acc << 8 | usize::from(*b)), 2 + count)
            }
        };
        (input[0], &input[header..header + len], &input[header + len..])
    }
    let (tag, sequence, _) = tlv(der);
    assert_eq!(tag, 0x30, "RSAPublicKey is a SEQUENCE");
    let (tag, n, rest) = tlv(sequence);
    assert_eq!(tag, 0x02, "n is an INTEGER");
    let (tag, e, _) = tlv(rest);
    assert_eq!(tag, 0x02, "e is an INTEGER");
    let unsigned = |b: &[u8]| b.iter().copied().skip_while(|x| *x == 0).collect::<Vec<u8>>();
    (unsigned(n), unsigned(e))
}

/// `base64url(header).base64url(claims)`.
fn signing_input(header: &Value, claims: &Value) -> String {
    format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()))
}

/// The default header for `key`, with `overrides` applied (a `null` value removes the field).
fn header_for(key: &TestKey, overrides: Value) -> Value {
    let mut header = json!({"typ": "JWT", "alg": key.alg, "kid": key.kid});
    let map = header.as_object_mut().expect("object");
    for (name, value) in overrides.as_object().expect("header overrides are an object") {
        if value.is_null() {
            map.remove(name);
        } else {
            map.insert(name.clone(), value.clone());
        }
    }
    header
}

/// A compact JWS of `claims` signed by `key`, header adjusted by `overrides`.
fn sign(key: &TestKey, overrides: Value, claims: &Value) -> String {
    let input = signing_input(&header_for(key, overrides), claims);
    let sig = key.sign_bytes(input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

/// A token with an HS256 signature under `secret`, whatever the header says.
fn sign_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = signing_input(header, claims);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
    format!("{input}.{}", B64.encode(tag.as_ref()))
}

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).expect("the clock fits an i64")
}

/// Claims every check accepts.
fn good_claims() -> Value {
    let now = now();
    json!({"iss": ISSUER, "aud": CLIENT_ID, "sub": SUBJECT, "exp": now + 300, "iat": now, "nonce": NONCE})
}

/// `claims` with `edits` applied (a `null` value removes the claim).
fn claims_with(edits: Value) -> Value {
    let mut claims = good_claims();
    let map = claims.as_object_mut().expect("object");
    for (name, value) in edits.as_object().expect("edits are an object") {
        if value.is_null() {
            map.remove(name);
        } else {
            map.insert(name.clone(), value.clone());
        }
    }
    claims
}

// ---------------------------------------------------------------------------------------------
// The JWKS endpoint
// ---------------------------------------------------------------------------------------------

type ServerState = (Arc<Mutex<Value>>, Arc<AtomicUsize>);

/// A JWKS endpoint whose key set can be swapped at runtime, counting the fetches.
struct JwksServer {
    uri: Url,
    keys: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl JwksServer {
    fn start(keys: Value) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let state: ServerState = (keys.clone(), fetches.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = Router::new().route("/jwks", get(serve_jwks)).with_state(state);
                tokio::select! {
                    served = axum::serve(listener, app) => served.expect("JWKS server"),
                    _ = stopped => {}
                }
            });
        });
        let uri = Url::parse(&format!("http://{addr}/jwks")).expect("URL");
        Self { uri, keys, fetches, _stop: stop }
    }

    fn set_keys(&self, keys: Value) {
        *self.keys.lock().expect("key set lock") = keys;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    async fn cache(&self) -> JwksCache {
        JwksCache::fetch_new(http::client(Duration::from_secs(5)), self.uri.clone(), Default::default()).await.expect("initial JWKS fetch")
    }
}

async fn serve_jwks(State((keys, fetches)): State<ServerState>) -> Json<Value> {
    fetches.fetch_add(1, Ordering::SeqCst);
    Json(keys.lock().expect("key set lock").clone())
}

fn key_set(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

/// `set` with the `alg` member dropped from every key.
fn without_alg(set: &Value) -> Value {
    let mut set = set.clone();
    for key in set["keys"].as_array_mut().expect("keys array") {
        key.as_object_mut().expect("JWK object").remove("alg");
    }
    set
}

/// Moves this (current-thread) runtime's clock, which the cache's cool-down reads, past the
/// cool-down. The JWKS server runs on its own runtime and is unaffected.
async fn outlast_cool_down() {
    tokio::time::pause();
    tokio::time::advance(PAST_COOL_DOWN).await;
    tokio::time::resume();
}

// ---------------------------------------------------------------------------------------------
// Expectations and assertions
// ---------------------------------------------------------------------------------------------

const ALL_ALGS: &[Algorithm] = &[Algorithm::ES256, Algorithm::RS256];
const ES256_ONLY: &[Algorithm] = &[Algorithm::ES256];

fn login() -> Expectations<'static> {
    Expectations { issuer: ISSUER, client_id: CLIENT_ID, nonce: Some(NONCE), subject: None, algorithms: ALL_ALGS, clock_skew: SKEW }
}

fn refresh() -> Expectations<'static> {
    Expectations { nonce: None, subject: Some(SUBJECT), ..login() }
}

#[track_caller]
fn assert_rejected(case: &str, result: Result<Claims, OidcError>, needle: &str) {
    match result {
        Err(OidcError::IdToken(message)) => {
            assert!(message.contains(needle), "{case}: rejected for {message:?}, expected a rejection mentioning {needle:?}")
        }
        other => panic!("{case}: expected an ID-token rejection mentioning {needle:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_rejected_any(case: &str, result: Result<Claims, OidcError>, needles: &[&str]) {
    match result {
        Err(OidcError::IdToken(message)) => {
            assert!(needles.iter().any(|n| message.contains(n)), "{case}: rejected for {message:?}, expected one of {needles:?}")
        }
        other => panic!("{case}: expected an ID-token rejection ({needles:?}), got {other:?}"),
    }
}

#[track_caller]
fn assert_unknown_key(case: &str, result: Result<Claims, OidcError>, kid: &str) {
    match result {
        Err(OidcError::UnknownKey(named)) => assert_eq!(named, kid, "{case}"),
        other => panic!("{case}: expected UnknownKey({kid:?}), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn valid_tokens_pass_and_return_their_claims() {
    let ec = TestKey::es256("ec-1");
    let rsa = TestKey::rs256("rsa-1");
    let server = JwksServer::start(key_set(&[&ec, &rsa]));
    let jwks = server.cache().await;

    for key in [&ec, &rsa] {
        let claims = claims_with(json!({"custom": {"groups": ["a", "b"]}}));
        let token = sign(key, json!({}), &claims);
        let got = validate(&token, &jwks, &login()).await.unwrap_or_else(|e| panic!("{} token rejected: {e}", key.alg));
        assert_eq!(Value::Object(got), claims, "{}: the claims come back unchanged", key.alg);
    }
    // Refresh: no nonce expected (and none sent), same subject.
    let token = sign(&ec, json!({}), &claims_with(json!({"nonce": null})));
    let got = validate(&token, &jwks, &refresh()).await.expect("refresh token without nonce accepted");
    assert_eq!(got.get("sub"), Some(&json!(SUBJECT)));
    assert_eq!(server.fetches(), 1, "known keys need no refetch");
}

#[tokio::test]
async fn claim_violations_are_rejected() {
    let key = TestKey::es256("k1");
    let server = JwksServer::start(key_set(&[&key]));
    let jwks = server.cache().await;
    let now = now();
    let skew = i64::try_from(SKEW.as_secs()).expect("small");

    let cases: Vec<(&str, Value, Expectations<'static>, &str)> = vec![
        ("wrong iss", claims_with(json!({"iss": "https://evil.example.test"})), login(), "InvalidIssuer"),
        ("iss with trailing slash", claims_with(json!({"iss": format!("{ISSUER}/")})), login(), "InvalidIssuer"),
        ("missing iss", claims_with(json!({"iss": null})), login(), "Missing required claim: iss"),
        ("wrong aud", claims_with(json!({"aud": "other-client"})), login(), "InvalidAudience"),
        ("aud array without the client", claims_with(json!({"aud": ["other-client", "third"]})), login(), "InvalidAudience"),
        ("missing aud", claims_with(json!({"aud": null})), login(), "Missing required claim: aud"),
        ("several audiences, no azp", claims_with(json!({"aud": [CLIENT_ID, "other-client"]})), login(), "several audiences and no azp"),
        (
            "azp names another client",
            claims_with(json!({"aud": [CLIENT_ID, "other-client"], "azp": "other-client"})),
            login(),
            "azp is not this client",
        ),
        ("azp names another client, single aud", claims_with(json!({"azp": "other-client"})), login(), "azp is not this client"),
        ("azp not a string", claims_with(json!({"azp": [CLIENT_ID]})), login(), "azp is not this client"),
        ("expired beyond the skew", claims_with(json!({"exp": now - skew - 30})), login(), "ExpiredSignature"),
        ("expired long ago", claims_with(json!({"exp": 1_000_000_000})), login(), "ExpiredSignature"),
        ("missing exp", claims_with(json!({"exp": null})), login(), "Missing required claim: exp"),
        ("exp not a number", claims_with(json!({"exp": "never"})), login(), "claim: exp"),
        ("iat far in the future", claims_with(json!({"iat": now + 3600})), login(), "issued in the future"),
        ("iat just beyond the skew", claims_with(json!({"iat": now + skew + 30})), login(), "issued in the future"),
        ("missing iat", claims_with(json!({"iat": null})), login(), "no iat"),
        ("iat not a number", claims_with(json!({"iat": "yesterday"})), login(), "no iat"),
        ("negative iat", claims_with(json!({"iat": -1})), login(), "no iat"),
        ("missing sub", claims_with(json!({"sub": null})), login(), "Missing required claim: sub"),
        ("sub not a string", claims_with(json!({"sub": 42})), login(), "claim: sub"),
        ("nonce mismatch", claims_with(json!({"nonce": "n-attacker"})), login(), "nonce does not match"),
        ("nonce missing when expected", claims_with(json!({"nonce": null})), login(), "nonce does not match"),
        ("nonce not a string", claims_with(json!({"nonce": [NONCE]})), login(), "nonce does not match"),
        ("sub changed on refresh", claims_with(json!({"sub": "someone-else"})), refresh(), "sub changed on refresh"),
        ("sub missing on refresh", claims_with(json!({"sub": null})), refresh(), "Missing required claim: sub"),
    ];
    for (case, claims, expect, needle) in cases {
        let token = sign(&key, json!({}), &claims);
        assert_rejected(case, validate(&token, &jwks, &expect).await, needle);
    }
    assert_eq!(server.fetches(), 1, "claim failures never touch the JWKS");
}

#[tokio::test]
async fn claims_at_the_edges_pass() {
    let key = TestKey::es256("k1");
    let server = JwksServer::start(key_set(&[&key]));
    let jwks = server.cache().await;
    let now = now();
    let skew = i64::try_from(SKEW.as_secs()).expect("small");

    let cases: Vec<(&str, Value, Expectations<'static>)> = vec![
        ("expired, but within the skew", claims_with(json!({"exp": now - skew + 15})), login()),
        ("iat ahead, but within the skew", claims_with(json!({"iat": now + skew - 15})), login()),
        ("aud array with only the client", claims_with(json!({"aud": [CLIENT_ID]})), login()),
        ("several audiences, azp is the client", claims_with(json!({"aud": ["other-client", CLIENT_ID], "azp": CLIENT_ID})), login()),
        ("single aud, azp is the client", claims_with(json!({"azp": CLIENT_ID})), login()),
        ("refresh repeating the nonce", good_claims(), refresh()),
    ];
    for (case, claims, expect) in cases {
        let token = sign(&key, json!({}), &claims);
        if let Err(e) = validate(&token, &jwks, &expect).await {
            panic!("{case}: rejected: {e}");
        }
    }
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let key = TestKey::es256("k1");
    let server = JwksServer::start(key_set(&[&key]));
    let jwks = server.cache().await;
    let claims = good_claims();

    for alg in ["none", "None", "NONE", "nOnE", ""] {
        for kid in [Some("k1"), None] {
            let mut header = json!({"typ": "JWT", "alg": alg});
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            let unsigned = format!("{}.", signing_input(&header, &claims));
            assert_rejected(&format!("alg {alg:?}, kid {kid:?}"), validate(&unsigned, &jwks, &login()).await, "malformed header");
        }
    }
    // A header with no alg at all.
    let unsigned = format!("{}.", signing_input(&json!({"typ": "JWT", "kid": "k1"}), &claims));
    assert_rejected("no alg", validate(&unsigned, &jwks, &login()).await, "malformed header");
    // A real algorithm but no signature.
    let stripped = format!("{}.", signing_input(&header_for(&key, json!({})), &claims));
    assert_rejected("ES256 with empty signature", validate(&stripped, &jwks, &login()).await, "InvalidSignature");
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn hmac_key_confusion_is_rejected() {
    let ec = TestKey::es256("ec-1");
    let rsa = TestKey::rs256("rsa-1");
    let server = JwksServer::start(key_set(&[&ec, &rsa]));
    let jwks = server.cache().await;
    // The same keys published without `alg`, so key selection goes by kid alone and the JWT
    // library's own key/algorithm family check is what stands between HS256 and the key.
    let unpinned_server = JwksServer::start(without_alg(&key_set(&[&ec, &rsa])));
    let unpinned = unpinned_server.cache().await;
    let claims = good_claims();
    let misconfigured = Expectations { algorithms: &[Algorithm::ES256, Algorithm::RS256, Algorithm::HS256], ..login() };

    for key in [&ec, &rsa] {
        let mut secrets: Vec<(&str, Vec<u8>)> = vec![
            ("public key bytes", key.public_bytes()),
            ("JWK JSON", key.jwk.to_string().into_bytes()),
            ("JWKS JSON", server.keys.lock().expect("lock").to_string().into_bytes()),
        ];
        if key.jwk["kty"] == "EC" {
            let coordinate = |name: &str| B64.decode(key.jwk[name].as_str().expect("coordinate")).expect("base64");
            secrets.push(("x || y", [coordinate("x"), coordinate("y")].concat()));
        } else {
            secrets.push(("modulus", B64.decode(key.jwk["n"].as_str().expect("n")).expect("base64")));
        }
        for (what, secret) in &secrets {
            let forged = sign_hs256(&json!({"typ": "JWT", "alg": "HS256", "kid": key.kid}), &claims, secret);
            let case = format!("HS256 with the {} {what} as secret", key.alg);
            // As configured (the config parser refuses HS* in the allow-list).
            assert_rejected(&case, validate(&forged, &jwks, &login()).await, "algorithm HS256 is not allowed");
            assert_rejected(&case, validate(&forged, &unpinned, &login()).await, "algorithm HS256 is not allowed");
            // Even if HS256 slipped into the allow-list: a JWK pinned to another alg is not picked...
            assert_unknown_key(&format!("{case}, HS256 allowed"), validate(&forged, &jwks, &misconfigured).await, &key.kid);
            // ...and an unpinned asymmetric JWK is no HMAC key.
            assert_rejected_any(
                &format!("{case}, HS256 allowed, JWK without alg"),
                validate(&forged, &unpinned, &misconfigured).await,
                &["InvalidAlgorithm", "InvalidKeyFormat"],
            );
            // Without a kid, no key of another family is picked.
            let no_kid = sign_hs256(&json!({"typ": "JWT", "alg": "HS256"}), &claims, secret);
            for cache in [&jwks, &unpinned] {
                assert_unknown_key(&format!("{case}, no kid, HS256 allowed"), validate(&no_kid, cache, &misconfigured).await, "<none>");
            }
        }
    }
    assert_eq!(server.fetches(), 1);
    assert_eq!(unpinned_server.fetches(), 1);
}

#[tokio::test]
async fn signature_by_another_key_under_the_real_kid_is_rejected() {
    let ec = TestKey::es256("ec-1");
    let rsa = TestKey::rs256("rsa-1");
    let server = JwksServer::start(key_set(&[&ec, &rsa]));
    let jwks = server.cache().await;
    let claims = good_claims();

    let attacker_ec = TestKey::es256("ec-1");
    let forged = sign(&attacker_ec, json!({}), &claims);
    assert_rejected("ES256 by another key", validate(&forged, &jwks, &login()).await, "InvalidSignature");

    let attacker_rsa = TestKey::rs256("rsa-1");
    let forged = sign(&attacker_rsa, json!({}), &claims);
    assert_rejected("RS256 by another key", validate(&forged, &jwks, &login()).await, "InvalidSignature");

    // The genuine RSA key signing under the EC key's kid: the EC JWK says ES256, so no key fits.
    let forged = sign(&rsa, json!({"kid": "ec-1"}), &claims);
    assert_unknown_key("RS256 under an ES256 kid", validate(&forged, &jwks, &login()).await, "ec-1");

    // A signature lifted from another genuine token.
    let genuine = sign(&ec, json!({}), &claims_with(json!({"sub": "someone-else"})));
    let lifted = genuine.rsplit('.').next().expect("signature part");
    let transplant = format!("{}.{lifted}", signing_input(&header_for(&ec, json!({})), &claims));
    assert_rejected("signature of another token", validate(&transplant, &jwks, &login()).await, "InvalidSignature");

    // Garbage signature of the right length.
    let garbage = format!("{}.{}", signing_input(&header_for(&ec, json!({})), &claims), B64.encode([7u8; 64]));
    assert_rejected("random signature", validate(&garbage, &jwks, &login()).await, "InvalidSignature");
}

#[tokio::test]
async fn cross_family_kid_is_rejected_when_the_jwk_names_no_alg() {
    // Without `alg` on the JWK, a kid-matched EC key is handed to an RS256 token: the family
    // check in the JWT library must refuse it.
    let ec = TestKey::es256("ec-1").with_jwk(|jwk| {
        jwk.remove("alg");
    });
    let rsa = TestKey::rs256("rsa-1");
    let server = JwksServer::start(key_set(&[&ec]));
    let jwks = server.cache().await;

    let forged = sign(&rsa, json!({"kid": "ec-1"}), &good_claims());
    assert_rejected_any(
        "RS256 token, EC key without alg",
        validate(&forged, &jwks, &login()).await,
        &["InvalidAlgorithm", "InvalidKeyFormat"],
    );
    // The EC key itself still works.
    validate(&sign(&ec, json!({}), &good_claims()), &jwks, &login()).await.expect("genuine ES256 token");
}

#[tokio::test]
async fn payload_modified_after_signing_is_rejected() {
    let ec = TestKey::es256("ec-1");
    let rsa = TestKey::rs256("rsa-1");
    let server = JwksServer::start(key_set(&[&ec, &rsa]));
    let jwks = server.cache().await;

    for key in [&ec, &rsa] {
        let token = sign(key, json!({}), &good_claims());
        validate(&token, &jwks, &login()).await.expect("the unmodified token passes");
        let parts: Vec<&str> = token.split('.').collect();
        for (what, edits) in [
            ("sub swapped", json!({"sub": "admin"})),
            ("exp extended", json!({"exp": now() + 86_400 * 365})),
            ("claim added", json!({"groups": ["admins"]})),
        ] {
            let payload = B64.encode(claims_with(edits).to_string());
            let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
            assert_rejected(&format!("{} {what}", key.alg), validate(&tampered, &jwks, &login()).await, "InvalidSignature");
        }
        // Same JSON, re-encoded with padding: a different signing input.
        let padded = format!("{}.{}.{}", parts[0], base64::engine::general_purpose::URL_SAFE.encode(good_claims().to_string()), parts[2]);
        assert!(validate(&padded, &jwks, &login()).await.is_err(), "{}: re-encoded payload accepted", key.alg);
        // Header changed after signing (kid dropped): signature no longer covers it.
        let header = B64.encode(header_for(key, json!({"kid": null})).to_string());
        let tampered = format!("{header}.{}.{}", parts[1], parts[2]);
        assert_rejected(&format!("{} header edited", key.alg), validate(&tampered, &jwks, &login()).await, "InvalidSignature");
    }
}

#[tokio::test]
async fn algorithms_outside_the_allow_list_are_rejected_before_any_key_lookup() {
    let ec = TestKey::es256("ec-1");
    let rsa = TestKey::rs256("rsa-1");
    let ec384 = TestKey::ec("ec384-1", "ES384");
    let server = JwksServer::start(key_set(&[&ec, &rsa, &ec384]));
    let jwks = server.cache().await;
    let es256_only = Expectations { algorithms: ES256_ONLY, ..login() };
    let claims = good_claims();

    // Genuine signatures by keys the OP publishes, but algorithms the gateway does not accept.
    let rs256 = sign(&rsa, json!({}), &claims);
    assert_rejected("RS256, allow-list ES256", validate(&rs256, &jwks, &es256_only).await, "algorithm RS256 is not allowed");
    let es384 = sign(&ec384, json!({}), &claims);
    assert_rejected("ES384, allow-list ES256", validate(&es384, &jwks, &es256_only).await, "algorithm ES384 is not allowed");
    assert_rejected("ES384, allow-list ES256+RS256", validate(&es384, &jwks, &login()).await, "algorithm ES384 is not allowed");
    validate(&sign(&ec, json!({}), &claims), &jwks, &es256_only).await.expect("ES256 in the allow-list passes");

    // A disallowed algorithm with an unknown kid must not make the gateway fetch the JWKS.
    outlast_cool_down().await;
    let ghost = sign(&ec384, json!({"kid": "ghost"}), &claims);
    assert_rejected("ES384, unknown kid", validate(&ghost, &jwks, &es256_only).await, "algorithm ES384 is not allowed");
    assert_eq!(server.fetches(), 1, "a refused algorithm never reaches the JWKS");
}

#[tokio::test]
async fn unknown_kid_refetches_once_then_cools_down() {
    let key = TestKey::es256("k1");
    let attacker = TestKey::es256("unused");
    let server = JwksServer::start(key_set(&[&key]));
    let jwks = server.cache().await;
    assert_eq!(server.fetches(), 1);
    let claims = good_claims();

    // Right after the initial fetch the cool-down is already running: no refetch.
    let early = sign(&attacker, json!({"kid": "ghost-0"}), &claims);
    assert_unknown_key("miss right after start", validate(&early, &jwks, &login()).await, "ghost-0");
    assert_eq!(server.fetches(), 1, "a miss within the cool-down after the initial fetch does not refetch");

    outlast_cool_down().await;
    let first = sign(&attacker, json!({"kid": "ghost-1"}), &claims);
    assert_unknown_key("first miss", validate(&first, &jwks, &login()).await, "ghost-1");
    assert_eq!(server.fetches(), 2, "an unknown kid refetches exactly once");

    for kid in ["ghost-2", "ghost-3", "ghost-1"] {
        let again = sign(&attacker, json!({"kid": kid}), &claims);
        assert_unknown_key("miss within the cool-down", validate(&again, &jwks, &login()).await, kid);
    }
    assert_eq!(server.fetches(), 2, "misses within the cool-down do not refetch");

    // Known keys keep working throughout, without fetches.
    validate(&sign(&key, json!({}), &claims), &jwks, &login()).await.expect("genuine token");
    assert_eq!(server.fetches(), 2);

    // Concurrent misses after the cool-down share one refetch.
    outlast_cool_down().await;
    let forged: Vec<String> = (0..16).map(|i| sign(&attacker, json!({"kid": format!("flood-{i}")}), &claims)).collect();
    let expect = login();
    let results = futures_util::future::join_all(forged.iter().map(|t| validate(t, &jwks, &expect))).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_unknown_key("concurrent miss", result, &format!("flood-{i}"));
    }
    assert_eq!(server.fetches(), 3, "a burst of unknown kids costs one fetch");
}

#[tokio::test]
async fn key_rotation_is_picked_up_after_one_refetch() {
    let old = TestKey::es256("2024-old");
    let new = TestKey::es256("2025-new");
    let server = JwksServer::start(key_set(&[&old]));
    let jwks = server.cache().await;
    let claims = good_claims();
    validate(&sign(&old, json!({}), &claims), &jwks, &login()).await.expect("old key before rotation");

    // The OP rotates: the old key is gone, the new one signs.
    server.set_keys(key_set(&[&new]));
    let rotated = sign(&new, json!({}), &claims);

    // Within the cool-down after the initial fetch, the new key is not looked up yet.
    assert_unknown_key("rotation within the cool-down", validate(&rotated, &jwks, &login()).await, "2025-new");
    assert_eq!(server.fetches(), 1);

    outlast_cool_down().await;
    let got = validate(&rotated, &jwks, &login()).await.expect("the rotated key is found after one refetch");
    assert_eq!(got.get("sub"), Some(&json!(SUBJECT)));
    assert_eq!(server.fetches(), 2, "exactly one refetch");

    validate(&sign(&new, json!({}), &claims), &jwks, &login()).await.expect("the new key is cached");
    assert_eq!(server.fetches(), 2, "the new key is served from the cache");

    // The retired key is no longer trusted.
    let stale = sign(&old, json!({}), &claims);
    assert_unknown_key("retired key", validate(&stale, &jwks, &login()).await, "2024-old");
    assert_eq!(server.fetches(), 2, "within the cool-down, no refetch");
}

#[tokio::test]
async fn key_selection_without_kid_and_by_use() {
    let only = TestKey::es256("only");
    let server = JwksServer::start(key_set(&[&only]));
    let jwks = server.cache().await;
    let claims = good_claims();

    // A single usable key may sign without a kid.
    let no_kid = sign(&only, json!({"kid": null}), &claims);
    validate(&no_kid, &jwks, &login()).await.expect("single key, no kid");
    // But not a forged signature.
    let forged = sign(&TestKey::es256("x"), json!({"kid": null}), &claims);
    assert_rejected("no kid, other key", validate(&forged, &jwks, &login()).await, "InvalidSignature");

    // With two EC keys, a kid-less token is ambiguous.
    let second = TestKey::es256("second");
    let server = JwksServer::start(key_set(&[&only, &second]));
    let jwks = server.cache().await;
    assert_unknown_key("two keys, no kid", validate(&no_kid, &jwks, &login()).await, "<none>");

    // An encryption key is never used to verify signatures.
    let enc = TestKey::es256("enc-1").with_jwk(|jwk| {
        jwk.insert("use".into(), json!("enc"));
    });
    let server = JwksServer::start(key_set(&[&enc]));
    let jwks = server.cache().await;
    let token = sign(&enc, json!({}), &claims);
    assert_unknown_key("use: enc", validate(&token, &jwks, &login()).await, "enc-1");
    let token = sign(&enc, json!({"kid": null}), &claims);
    assert_unknown_key("use: enc, no kid", validate(&token, &jwks, &login()).await, "<none>");

    // A JWK pinned to another algorithm is not used for this one.
    let pinned = TestKey::es256("pinned").with_jwk(|jwk| {
        jwk.insert("alg".into(), json!("ES384"));
    });
    let server = JwksServer::start(key_set(&[&pinned]));
    let jwks = server.cache().await;
    let token = sign(&pinned, json!({}), &claims);
    assert_unknown_key("JWK alg ES384, token ES256", validate(&token, &jwks, &login()).await, "pinned");
}

#[tokio::test]
async fn malformed_tokens_are_rejected_without_panic() {
    let key = TestKey::es256("k1");
    let server = JwksServer::start(key_set(&[&key]));
    let jwks = server.cache().await;
    let good = sign(&key, json!({}), &good_claims());
    let header = B64.encode(header_for(&key, json!({})).to_string());

    // Properly signed tokens whose payload is JSON but not an object, or not JSON at all.
    let signed_payload = |payload: &[u8]| {
        let input = format!("{header}.{}", B64.encode(payload));
        let sig = key.sign_bytes(input.as_bytes());
        format!("{input}.{}", B64.encode(sig))
    };
    let mut tokens: Vec<(String, String)> = ["[1,2,3]", "\"a string\"", "42", "null", "true", "{", "", "\u{fffd}"]
        .into_iter()
        .map(|payload| (format!("signed payload {payload:?}"), signed_payload(payload.as_bytes())))
        .collect();
    tokens.push(("signed non-UTF-8 payload".into(), signed_payload(&[0xff, 0xfe, 0x00])));

    // Structurally broken tokens.
    let enc = |s: &str| B64.encode(s);
    let broken = [
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        "a".into(),
        "a.b".into(),
        "a.b.c".into(),
        "a.b.c.d".into(),
        "!!!.@@@.###".into(),
        format!("{header}.%%%.{}", good.rsplit('.').next().expect("sig")),
        format!("{header}.{}.***", enc("{}")),
        format!("{}.{}.", enc("[]"), enc("{}")),
        format!("{}.{}.", enc("\"ES256\""), enc("{}")),
        format!("{}.{}.", enc("{"), enc("{}")),
        format!("{}.{}.", enc(r#"{"alg": 256}"#), enc("{}")),
        format!("{}.{}.", enc(r#"{"alg": "ES256", "kid": 7}"#), enc("{}")),
        format!("{good}.extra"),
        format!("extra.{good}"),
        format!("{good}."),
        format!(".{good}"),
        good.replace('.', ".."),
        format!(" {good}"),
        format!("{good}\n"),
        "\u{0}.\u{0}.\u{0}".into(),
        "é.ü.ß".into(),
        "a".repeat(10_000),
    ];
    tokens.extend(broken.into_iter().map(|t| (format!("{:?}", t.chars().take(60).collect::<String>()), t)));

    for (case, token) in &tokens {
        let result = validate(token, &jwks, &login()).await;
        assert!(matches!(result, Err(OidcError::IdToken(_))), "{case}: expected an ID-token rejection, got {result:?}");
    }
    validate(&good, &jwks, &login()).await.expect("the well-formed token still passes");
    assert_eq!(server.fetches(), 1, "malformed tokens never trigger a JWKS fetch");
}

#[tokio::test]
async fn failed_refetch_still_starts_the_cool_down() {
    let key = TestKey::es256("k1");
    let attacker = TestKey::es256("unused");
    let server = JwksServer::start(key_set(&[&key]));
    let jwks = server.cache().await;
    let claims = good_claims();

    // The OP's JWKS endpoint breaks (here: a document without a "keys" array; a 5xx or a
    // timeout takes the same path).
    server.set_keys(json!({"error": "temporarily unavailable"}));
    outlast_cool_down().await;
    for i in 0..5 {
        let forged = sign(&attacker, json!({"kid": format!("ghost-{i}")}), &claims);
        assert!(validate(&forged, &jwks, &login()).await.is_err());
    }
    assert_eq!(server.fetches(), 2, "a stream of unknown kids costs at most one fetch per cool-down, even when fetches fail");
}

#[tokio::test]
async fn not_before_in_the_future_is_rejected_and_fractional_iat_accepted() {
    let key = TestKey::es256("k1");
    let server = JwksServer::start(key_set(&[&key]));
    let jwks = server.cache().await;
    let token = sign(&key, json!({}), &claims_with(json!({"nbf": now() + 86_400})));
    assert_rejected("nbf tomorrow", validate(&token, &jwks, &login()).await, "ImmatureSignature");
    let token = sign(&key, json!({}), &claims_with(json!({"iat": now() as f64 - 0.5})));
    assert!(validate(&token, &jwks, &login()).await.is_ok(), "fractional iat is a valid NumericDate");
}
