//! Everything the OP remembers: grants, authorization codes, access and refresh tokens, browser
//! sessions. One `Store` behind one `std::sync::Mutex` (see `provider`): every operation is a
//! few map lookups with no `.await` inside, and doing a whole redemption (check, consume, issue)
//! under one lock is what makes "a code or refresh token works once" hold under concurrency.
//!
//! A **grant** is one login of one user at one client; every token it yields belongs to it, and
//! revoking it (code replay, refresh-token reuse, revocation of a refresh token) removes all of
//! them at once. Entries are dropped when they expire (`sweep`), so memory is bounded by what
//! is alive: a rotated refresh token is kept until its own expiry, because that is exactly the
//! window in which its replay must still be recognised as reuse.

use std::collections::{BTreeSet, HashMap};

use crate::crypto::random_token;

/// Milliseconds since the Unix epoch.
pub(crate) type Millis = u64;

/// How long an authorization code can be redeemed (Core §3.1.2.5 suggests minutes at most).
pub(crate) const CODE_TTL_MS: Millis = 60_000;
/// How long a browser session at the OP lasts (the cookie that lets `/authorize` skip the form).
pub(crate) const BROWSER_SESSION_TTL_MS: Millis = 8 * 3600 * 1000;
/// Expired entries are swept at most this often: a sweep walks every map.
const SWEEP_INTERVAL_MS: Millis = 1000;

pub(crate) type GrantId = u64;

/// One login of one user at one client.
#[derive(Clone, Debug)]
pub(crate) struct Grant {
    pub(crate) client_id: String,
    pub(crate) username: String,
    /// Granted scopes, space-separated.
    pub(crate) scope: String,
    /// When the user authenticated (seconds), for `auth_time`.
    pub(crate) auth_time: u64,
    /// The browser session it came from, for `sid` and logout.
    pub(crate) sid: String,
}

impl Grant {
    /// `offline_access` grants outlive the browser session (Back-Channel Logout §2.7).
    pub(crate) fn offline(&self) -> bool {
        self.scope.split(' ').any(|s| s == "offline_access")
    }
}

/// An authorization code waiting to be redeemed.
#[derive(Clone, Debug)]
pub(crate) struct Code {
    pub(crate) grant: Grant,
    pub(crate) redirect_uri: String,
    pub(crate) code_challenge: String,
    pub(crate) nonce: Option<String>,
    pub(crate) expires_at: Millis,
    /// `Some` once redeemed (or a redemption was attempted): a second use is a replay, and the
    /// grant it produced, if any, is revoked (RFC 6749 §4.1.2).
    redeemed: Option<Option<GrantId>>,
}

#[derive(Clone, Debug)]
pub(crate) struct AccessToken {
    pub(crate) grant: GrantId,
    pub(crate) scope: String,
    pub(crate) issued_at: Millis,
    pub(crate) expires_at: Millis,
}

#[derive(Clone, Debug)]
pub(crate) struct RefreshToken {
    pub(crate) grant: GrantId,
    pub(crate) issued_at: Millis,
    pub(crate) expires_at: Millis,
    /// Replaced by a successor: presenting it again is reuse.
    rotated: bool,
}

/// A user signed in at the OP in one browser.
#[derive(Clone, Debug)]
pub(crate) struct BrowserSession {
    pub(crate) username: String,
    /// Public session id, the `sid` claim. Distinct from the cookie value, which is a credential.
    pub(crate) sid: String,
    pub(crate) auth_time: u64,
    pub(crate) expires_at: Millis,
    /// Clients this session logged into: they get a back-channel logout when it ends.
    pub(crate) clients: BTreeSet<String>,
}

/// Tokens handed out by one issuance.
#[derive(Debug)]
pub(crate) struct Issued {
    pub(crate) grant: Grant,
    pub(crate) access_token: String,
    pub(crate) refresh_token: Option<String>,
    pub(crate) scope: String,
}

/// Lifetimes and rotation for one issuance, read from the knobs at request time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lifetimes {
    pub(crate) access_ms: Millis,
    pub(crate) refresh_ms: Millis,
}

/// Why a code or refresh token was not redeemed. All but `ScopeExceeded` are `invalid_grant`
/// on the wire; the distinction is for the log and the counters.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Unknown, expired, revoked, or issued to another client.
    Invalid(&'static str),
    /// A used code or a rotated refresh token came back: the grant was revoked.
    Replayed,
    /// A refresh asked for more scope than the grant has (`invalid_scope`).
    ScopeExceeded,
}

#[derive(Default)]
pub(crate) struct Store {
    next_grant: GrantId,
    grants: HashMap<GrantId, Grant>,
    codes: HashMap<String, Code>,
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshToken>,
    /// Keyed by the cookie value.
    sessions: HashMap<String, BrowserSession>,
    last_sweep: Millis,
}

impl Store {
    pub(crate) fn new_code(
        &mut self,
        grant: Grant,
        redirect_uri: String,
        code_challenge: String,
        nonce: Option<String>,
        now: Millis,
    ) -> String {
        let code = random_token();
        let entry = Code { grant, redirect_uri, code_challenge, nonce, expires_at: now + CODE_TTL_MS, redeemed: None };
        self.codes.insert(code.clone(), entry);
        code
    }

    /// Redeems a code once: `check` sees it first (client, redirect URI, PKCE) and a failed
    /// check burns it too, so a stolen code cannot be tried against many verifiers.
    /// A code presented by another client is refused without being consumed: that client
    /// could not have used it, and must not be able to burn it for the right one.
    pub(crate) fn redeem_code<E>(
        &mut self,
        code: &str,
        client_id: &str,
        now: Millis,
        lifetimes: Lifetimes,
        check: impl FnOnce(&Code) -> Result<(), E>,
    ) -> Result<Result<(Issued, Option<String>), E>, Refused> {
        self.sweep(now);
        let entry = self.codes.get_mut(code).filter(|c| c.expires_at > now).ok_or(Refused::Invalid("unknown or expired code"))?;
        if entry.grant.client_id != client_id {
            return Err(Refused::Invalid("the code was issued to another client"));
        }
        if let Some(issued) = entry.redeemed {
            if let Some(grant) = issued {
                self.revoke_grant(grant);
            }
            return Err(Refused::Replayed);
        }
        entry.redeemed = Some(None);
        if let Err(e) = check(entry) {
            return Ok(Err(e));
        }
        let (grant, nonce) = (entry.grant.clone(), entry.nonce.clone());
        let id = self.next_grant;
        self.next_grant += 1;
        if let Some(entry) = self.codes.get_mut(code) {
            entry.redeemed = Some(Some(id));
        }
        self.grants.insert(id, grant);
        Ok(Ok((self.issue(id, now, lifetimes, None), nonce)))
    }

    /// Redeems a refresh token. With `rotate`, the presented token is marked rotated and a
    /// successor issued; presenting a rotated token again revokes the whole grant, as strict
    /// OPs do (OAuth 2.0 Security BCP §4.14.2), because either the client or a thief holds a
    /// copy that should have been discarded. Without rotation the same token is handed back.
    pub(crate) fn redeem_refresh(
        &mut self,
        token: &str,
        client_id: &str,
        scope: Option<&str>,
        now: Millis,
        lifetimes: Lifetimes,
        rotate: bool,
    ) -> Result<Issued, Refused> {
        self.sweep(now);
        let entry = self.refresh.get(token).filter(|t| t.expires_at > now).ok_or(Refused::Invalid("unknown or expired refresh token"))?;
        let grant_id = entry.grant;
        let grant = self.grants.get(&grant_id).ok_or(Refused::Invalid("the grant was revoked"))?;
        if grant.client_id != client_id {
            // Not reuse: another client cannot rotate this family, and must not revoke it either.
            return Err(Refused::Invalid("refresh token issued to another client"));
        }
        if entry.rotated {
            self.revoke_grant(grant_id);
            return Err(Refused::Replayed);
        }
        let scope = match scope {
            Some(requested) => {
                // RFC 6749 §6: a refresh may narrow the scope, never widen it.
                let granted: BTreeSet<&str> = grant.scope.split(' ').collect();
                if !requested.split(' ').filter(|s| !s.is_empty()).all(|s| granted.contains(s)) {
                    return Err(Refused::ScopeExceeded);
                }
                Some(requested.split(' ').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "))
            }
            None => None,
        };
        let keep = if rotate {
            if let Some(old) = self.refresh.get_mut(token) {
                old.rotated = true;
            }
            None
        } else {
            Some(token.to_string())
        };
        let mut issued = self.issue(grant_id, now, lifetimes, keep);
        if let Some(scope) = scope {
            if let Some(at) = self.access.get_mut(&issued.access_token) {
                at.scope = scope.clone();
            }
            issued.scope = scope;
        }
        Ok(issued)
    }

    /// A new access token, and a refresh token for `offline_access` grants: `keep` (no rotation)
    /// or a fresh one.
    fn issue(&mut self, grant_id: GrantId, now: Millis, lifetimes: Lifetimes, keep: Option<String>) -> Issued {
        let grant = self.grants[&grant_id].clone();
        let access_token = random_token();
        let at = AccessToken { grant: grant_id, scope: grant.scope.clone(), issued_at: now, expires_at: now + lifetimes.access_ms };
        self.access.insert(access_token.clone(), at);
        let refresh_token = match keep {
            Some(kept) => Some(kept),
            None if grant.offline() => {
                let token = random_token();
                let rt = RefreshToken { grant: grant_id, issued_at: now, expires_at: now + lifetimes.refresh_ms, rotated: false };
                self.refresh.insert(token.clone(), rt);
                Some(token)
            }
            None => None,
        };
        Issued { scope: grant.scope.clone(), grant, access_token, refresh_token }
    }

    /// Every token of the grant dies with it.
    pub(crate) fn revoke_grant(&mut self, grant: GrantId) {
        self.grants.remove(&grant);
        self.access.retain(|_, t| t.grant != grant);
        self.refresh.retain(|_, t| t.grant != grant);
    }

    /// A live access token and its grant.
    pub(crate) fn access_token(&self, token: &str, now: Millis) -> Option<(AccessToken, Grant)> {
        let at = self.access.get(token).filter(|t| t.expires_at > now)?;
        Some((at.clone(), self.grants.get(&at.grant)?.clone()))
    }

    /// A live, not yet rotated refresh token and its grant.
    pub(crate) fn refresh_token(&self, token: &str, now: Millis) -> Option<(RefreshToken, Grant)> {
        let rt = self.refresh.get(token).filter(|t| t.expires_at > now && !t.rotated)?;
        Some((rt.clone(), self.grants.get(&rt.grant)?.clone()))
    }

    /// RFC 7009: a refresh token takes its whole grant with it; an access token only itself.
    /// Tokens of other clients are left alone. Returns whether anything was revoked.
    pub(crate) fn revoke_token(&mut self, token: &str, client_id: &str) -> bool {
        let owned_by = |store: &Self, grant: GrantId| store.grants.get(&grant).is_some_and(|g| g.client_id == client_id);
        if let Some(rt) = self.refresh.get(token) {
            let grant = rt.grant;
            if owned_by(self, grant) {
                self.revoke_grant(grant);
                return true;
            }
        } else if let Some(at) = self.access.get(token)
            && owned_by(self, at.grant)
        {
            self.access.remove(token);
            return true;
        }
        false
    }

    /// Starts a browser session; returns the cookie value.
    pub(crate) fn new_session(&mut self, username: &str, now: Millis) -> (String, BrowserSession) {
        self.sweep(now);
        let cookie = random_token();
        let session = BrowserSession {
            username: username.to_string(),
            sid: random_token(),
            auth_time: now / 1000,
            expires_at: now + BROWSER_SESSION_TTL_MS,
            clients: BTreeSet::new(),
        };
        self.sessions.insert(cookie.clone(), session.clone());
        (cookie, session)
    }

    pub(crate) fn session(&self, cookie: &str, now: Millis) -> Option<&BrowserSession> {
        self.sessions.get(cookie).filter(|s| s.expires_at > now)
    }

    /// Records that the session logged into `client_id` (for back-channel logout).
    pub(crate) fn session_used_by(&mut self, cookie: &str, client_id: &str) {
        if let Some(s) = self.sessions.get_mut(cookie) {
            s.clients.insert(client_id.to_string());
        }
    }

    /// Ends the session with this cookie, or else the one with this `sid` (an `id_token_hint`
    /// from a browser that no longer has the cookie). Grants without `offline_access` end with
    /// it (Back-Channel Logout §2.7); offline ones are meant to outlive it.
    pub(crate) fn end_session(&mut self, cookie: Option<&str>, sid: Option<&str>) -> Option<BrowserSession> {
        let key = cookie
            .filter(|c| self.sessions.contains_key(*c))
            .map(str::to_string)
            .or_else(|| sid.and_then(|sid| self.sessions.iter().find(|(_, s)| s.sid == sid).map(|(k, _)| k.clone())))?;
        let session = self.sessions.remove(&key)?;
        let ended: Vec<GrantId> = self.grants.iter().filter(|(_, g)| g.sid == session.sid && !g.offline()).map(|(id, _)| *id).collect();
        for grant in ended {
            self.revoke_grant(grant);
        }
        Some(session)
    }

    /// Drops what has expired. Rotated refresh tokens stay until their own expiry (reuse
    /// detection needs them); used codes until theirs (replay detection); a grant goes when
    /// nothing refers to it any more.
    fn sweep(&mut self, now: Millis) {
        if now.saturating_sub(self.last_sweep) < SWEEP_INTERVAL_MS {
            return;
        }
        self.last_sweep = now;
        self.codes.retain(|_, c| c.expires_at > now);
        self.access.retain(|_, t| t.expires_at > now);
        self.refresh.retain(|_, t| t.expires_at > now);
        self.sessions.retain(|_, s| s.expires_at > now);
        let mut alive: BTreeSet<GrantId> = self.access.values().map(|t| t.grant).chain(self.refresh.values().map(|t| t.grant)).collect();
        alive.extend(self.codes.values().filter_map(|c| c.redeemed.flatten()));
        self.grants.retain(|id, _| alive.contains(id));
    }

    /// Entry counts, for the memory-bound test.
    #[cfg(test)]
    fn sizes(&self) -> [usize; 5] {
        [self.grants.len(), self.codes.len(), self.access.len(), self.refresh.len(), self.sessions.len()]
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
