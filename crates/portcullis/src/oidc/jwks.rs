//! A JWKS cache that refetches when an ID token names a key it does not know.
//!
//! `openidconnect` keeps the JWKS it was given (its issues #232, #224), so an OP that rotates its
//! signing key would lock every user out until a restart. Here an unknown `kid` triggers one
//! refetch; concurrent misses share it, and a cool-down stops a stream of forged `kid`s from
//! turning the gateway into a JWKS-fetching amplifier.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use tokio::{sync::Mutex, time::Instant};
use url::Url;

use super::OidcError;
use crate::metrics::{OpEndpoint, OpMetrics};

/// Least time between two refetches triggered by unknown keys.
const REFETCH_COOL_DOWN: Duration = Duration::from_secs(10);

/// Signing keys of the OP.
pub(crate) struct JwksCache {
    uri: Url,
    http: reqwest::Client,
    keys: RwLock<Arc<JwkSet>>,
    /// Held while fetching: the single flight. Holds when the last fetch happened.
    fetch: Mutex<Option<Instant>>,
    metrics: OpMetrics,
}

impl JwksCache {
    pub(crate) async fn fetch_new(http: reqwest::Client, uri: Url, metrics: OpMetrics) -> Result<Self, OidcError> {
        let keys = metrics.time(OpEndpoint::Jwks, fetch(&http, &uri), Result::is_err).await?;
        Ok(Self { uri, http, keys: RwLock::new(Arc::new(keys)), fetch: Mutex::new(Some(Instant::now())), metrics })
    }

    async fn fetch(&self) -> Result<JwkSet, OidcError> {
        self.metrics.time(OpEndpoint::Jwks, fetch(&self.http, &self.uri), Result::is_err).await
    }

    fn current(&self) -> Arc<JwkSet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The key for a token header: by `kid`, or the single key usable with `alg` when the token
    /// names none. On a miss, refetches once (rate-limited) and looks again.
    pub(crate) async fn key_for(&self, kid: Option<&str>, alg: jsonwebtoken::Algorithm) -> Result<Jwk, OidcError> {
        self.lookup(kid, alg, Refetch::CoolingDown).await
    }

    /// Like [`JwksCache::key_for`], but a miss refetches even during the cool-down. Only for
    /// ID tokens that came from the OP's own token endpoint in answer to our refresh grant:
    /// those are not attacker-chosen (the cool-down guards against forged `kid`s in tokens a
    /// client hands us), and at most one arrives per session per expiry. Without this, a key
    /// the OP started signing with during the cool-down would make the refreshed ID token
    /// unverifiable although the OP has just consumed the refresh token (issue 8, item 3).
    pub(crate) async fn key_for_trusted(&self, kid: Option<&str>, alg: jsonwebtoken::Algorithm) -> Result<Jwk, OidcError> {
        self.lookup(kid, alg, Refetch::Always).await
    }

    async fn lookup(&self, kid: Option<&str>, alg: jsonwebtoken::Algorithm, refetch: Refetch) -> Result<Jwk, OidcError> {
        let seen = self.current();
        if let Some(key) = select(&seen, kid, alg) {
            return Ok(key);
        }
        {
            let mut last = self.fetch.lock().await;
            // Someone else may have refetched while we waited for the lock.
            let now_keys = self.current();
            if !Arc::ptr_eq(&now_keys, &seen)
                && let Some(key) = select(&now_keys, kid, alg)
            {
                return Ok(key);
            }
            let cooling = refetch == Refetch::CoolingDown && last.is_some_and(|t| t.elapsed() < REFETCH_COOL_DOWN);
            if !cooling {
                // The attempt starts the cool-down, whether or not it succeeds: an OP whose JWKS
                // endpoint fails must not turn each forged kid into another fetch.
                *last = Some(Instant::now());
                let fresh = self.fetch().await?;
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
            }
        }
        select(&self.current(), kid, alg).ok_or_else(|| OidcError::UnknownKey(kid.unwrap_or("<none>").to_string()))
    }
}

/// Whether a miss may refetch during the cool-down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refetch {
    /// At most one refetch per cool-down (tokens a client hands us: their `kid` is its choice).
    CoolingDown,
    /// Whenever a key is missing (ID tokens from our own token call).
    Always,
}

/// What a periodic refetch changed (key ids are public; safe to log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refreshed {
    /// Keys in the new set.
    pub(crate) keys: usize,
    /// Ids of keys the OP no longer publishes, which are no longer trusted.
    pub(crate) dropped: Vec<String>,
}

impl JwksCache {
    /// Replaces the whole key set with the OP's current one, so a key the OP dropped (rotated
    /// out, or withdrawn because it leaked) stops verifying tokens; the unknown-`kid` refetch
    /// alone would keep trusting it forever. On failure the last good set stays. A set with no
    /// usable key is treated as a failure: it is a broken answer far more often than an OP
    /// that means to accept no logins, and keeping the old set costs nothing in that case.
    pub(crate) async fn refresh_all(&self) -> Result<Refreshed, OidcError> {
        let fresh = self.fetch().await?;
        if fresh.keys.is_empty() {
            return Err(OidcError::Jwks("the JWKS has no usable key; keeping the last good set".into()));
        }
        let kids = |set: &JwkSet| set.keys.iter().filter_map(|k| k.common.key_id.clone()).collect::<Vec<_>>();
        let new_kids = kids(&fresh);
        let keys = fresh.keys.len();
        let old = std::mem::replace(&mut *self.keys.write().unwrap_or_else(|e| e.into_inner()), Arc::new(fresh));
        let dropped = kids(&old).into_iter().filter(|kid| !new_kids.contains(kid)).collect();
        Ok(Refreshed { keys, dropped })
    }
}

fn select(keys: &JwkSet, kid: Option<&str>, alg: jsonwebtoken::Algorithm) -> Option<Jwk> {
    let usable = |k: &&Jwk| {
        let use_ok = k.common.public_key_use.as_ref().is_none_or(|u| *u == jsonwebtoken::jwk::PublicKeyUse::Signature);
        let alg_ok = k.common.key_algorithm.is_none_or(|a| a.to_string() == format!("{alg:?}"));
        use_ok && alg_ok
    };
    match kid {
        Some(kid) => keys.keys.iter().filter(usable).find(|k| k.common.key_id.as_deref() == Some(kid)).cloned(),
        None => {
            let family = alg.family();
            let mut candidates = keys.keys.iter().filter(usable).filter(|k| key_family(k) == Some(family));
            let first = candidates.next()?;
            // Without a kid, only an unambiguous key set is acceptable.
            candidates.next().is_none().then(|| first.clone())
        }
    }
}

fn key_family(k: &Jwk) -> Option<jsonwebtoken::AlgorithmFamily> {
    use jsonwebtoken::{AlgorithmFamily, jwk::AlgorithmParameters};
    match k.algorithm {
        AlgorithmParameters::RSA(_) => Some(AlgorithmFamily::Rsa),
        AlgorithmParameters::EllipticCurve(_) => Some(AlgorithmFamily::Ec),
        AlgorithmParameters::OctetKeyPair(_) => Some(AlgorithmFamily::Ed),
        _ => None,
    }
}

async fn fetch(http: &reqwest::Client, uri: &Url) -> Result<JwkSet, OidcError> {
    let response = http.get(uri.clone()).send().await.map_err(|e| OidcError::Jwks(super::http::describe(&e)))?;
    if !response.status().is_success() {
        return Err(OidcError::Jwks(format!("HTTP {}", response.status())));
    }
    // Keys of types this build cannot use are skipped rather than failing the whole set.
    let raw: serde_json::Value = response.json().await.map_err(|e| OidcError::Jwks(format!("not JSON: {e}")))?;
    let keys = raw
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| OidcError::Jwks("no \"keys\" array".into()))?
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .collect();
    Ok(JwkSet { keys })
}
