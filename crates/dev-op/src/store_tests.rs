use super::*;

const LIFE: Lifetimes = Lifetimes { access_ms: 10_000, refresh_ms: 60_000 };

fn grant(scope: &str) -> Grant {
    Grant { client_id: "gw".into(), username: "demo".into(), scope: scope.into(), auth_time: 0, sid: "sid-1".into() }
}

/// Redeems a fresh code for `grant` and returns the tokens.
fn login(store: &mut Store, scope: &str, now: Millis) -> Issued {
    let code = store.new_code(grant(scope), "http://cb".into(), "challenge".into(), None, now);
    store.redeem_code(code.as_str(), "gw", now, LIFE, |_| Ok::<_, ()>(())).unwrap().unwrap().0
}

#[test]
fn a_code_works_once_and_its_replay_revokes_the_grant() {
    let mut store = Store::default();
    let code = store.new_code(grant("openid offline_access"), "http://cb".into(), "c".into(), Some("n".into()), 0);
    assert_eq!(
        store.redeem_code(&code, "other", 0, LIFE, |_| Ok::<_, ()>(())).unwrap_err(),
        Refused::Invalid("the code was issued to another client")
    );
    let (issued, nonce) = store.redeem_code(&code, "gw", 0, LIFE, |_| Ok::<_, ()>(())).unwrap().unwrap();
    assert_eq!(nonce.as_deref(), Some("n"));
    assert!(store.access_token(&issued.access_token, 1).is_some());
    assert_eq!(store.redeem_code(&code, "gw", 1, LIFE, |_| Ok::<_, ()>(())).unwrap_err(), Refused::Replayed);
    assert!(store.access_token(&issued.access_token, 1).is_none(), "replay must revoke the access token");
    assert!(store.refresh_token(issued.refresh_token.as_deref().unwrap(), 1).is_none(), "and the refresh token");
}

#[test]
fn a_failed_check_burns_the_code() {
    let mut store = Store::default();
    let code = store.new_code(grant("openid"), "http://cb".into(), "c".into(), None, 0);
    assert_eq!(store.redeem_code(&code, "gw", 0, LIFE, |_| Err("pkce")).unwrap().unwrap_err(), "pkce");
    assert_eq!(store.redeem_code(&code, "gw", 0, LIFE, |_| Ok::<_, ()>(())).unwrap_err(), Refused::Replayed);
}

#[test]
fn codes_expire() {
    let mut store = Store::default();
    let code = store.new_code(grant("openid"), "http://cb".into(), "c".into(), None, 0);
    let refused = store.redeem_code(&code, "gw", CODE_TTL_MS, LIFE, |_| Ok::<_, ()>(())).unwrap_err();
    assert_eq!(refused, Refused::Invalid("unknown or expired code"));
}

#[test]
fn refresh_tokens_only_with_offline_access() {
    let mut store = Store::default();
    assert!(login(&mut store, "openid", 0).refresh_token.is_none());
    assert!(login(&mut store, "openid offline_access", 0).refresh_token.is_some());
}

#[test]
fn rotation_and_reuse_detection_revoke_the_family() {
    let mut store = Store::default();
    let first = login(&mut store, "openid offline_access", 0);
    let rt1 = first.refresh_token.unwrap();
    let second = store.redeem_refresh(&rt1, "gw", None, 1, LIFE, true).unwrap();
    let rt2 = second.refresh_token.unwrap();
    assert_ne!(rt1, rt2);
    assert!(store.refresh_token(&rt1, 2).is_none(), "a rotated token is no longer active");
    assert!(store.refresh_token(&rt2, 2).is_some());

    assert_eq!(store.redeem_refresh(&rt1, "gw", None, 3, LIFE, true).unwrap_err(), Refused::Replayed);
    assert!(store.refresh_token(&rt2, 3).is_none(), "reuse revokes the successor");
    assert!(store.access_token(&second.access_token, 3).is_none(), "and every access token");
    assert!(store.access_token(&first.access_token, 3).is_none());
    assert!(matches!(store.redeem_refresh(&rt2, "gw", None, 4, LIFE, true), Err(Refused::Invalid(_))));
}

#[test]
fn without_rotation_the_same_token_keeps_working() {
    let mut store = Store::default();
    let rt = login(&mut store, "openid offline_access", 0).refresh_token.unwrap();
    for now in 1..4 {
        let issued = store.redeem_refresh(&rt, "gw", None, now, LIFE, false).unwrap();
        assert_eq!(issued.refresh_token.as_deref(), Some(rt.as_str()));
    }
}

#[test]
fn another_client_cannot_use_or_burn_a_refresh_token() {
    let mut store = Store::default();
    let rt = login(&mut store, "openid offline_access", 0).refresh_token.unwrap();
    assert!(matches!(store.redeem_refresh(&rt, "other", None, 1, LIFE, true), Err(Refused::Invalid(_))));
    assert!(!store.revoke_token(&rt, "other"));
    assert!(store.redeem_refresh(&rt, "gw", None, 2, LIFE, true).is_ok());
}

#[test]
fn refresh_may_narrow_the_scope_but_not_widen_it() {
    let mut store = Store::default();
    let rt = login(&mut store, "openid offline_access email", 0).refresh_token.unwrap();
    assert_eq!(store.redeem_refresh(&rt, "gw", Some("openid profile"), 1, LIFE, false).unwrap_err(), Refused::ScopeExceeded);
    let narrowed = store.redeem_refresh(&rt, "gw", Some("openid"), 1, LIFE, false).unwrap();
    assert_eq!(narrowed.scope, "openid");
    assert_eq!(store.access_token(&narrowed.access_token, 2).unwrap().0.scope, "openid");
}

#[test]
fn revoking_a_refresh_token_revokes_its_grant_an_access_token_only_itself() {
    let mut store = Store::default();
    let a = login(&mut store, "openid offline_access", 0);
    assert!(store.revoke_token(&a.access_token, "gw"));
    assert!(store.refresh_token(a.refresh_token.as_deref().unwrap(), 1).is_some());
    let b = login(&mut store, "openid offline_access", 0);
    let second_at = store.redeem_refresh(b.refresh_token.as_deref().unwrap(), "gw", None, 1, LIFE, false).unwrap().access_token;
    assert!(store.revoke_token(b.refresh_token.as_deref().unwrap(), "gw"));
    assert!(store.access_token(&b.access_token, 2).is_none());
    assert!(store.access_token(&second_at, 2).is_none());
    assert!(!store.revoke_token("unknown", "gw"));
}

#[test]
fn ending_a_session_revokes_its_online_grants_only() {
    let mut store = Store::default();
    let (cookie, session) = store.new_session("demo", 0);
    let mut online = grant("openid");
    online.sid = session.sid.clone();
    let mut offline = grant("openid offline_access");
    offline.sid = session.sid.clone();
    let code = store.new_code(online, "http://cb".into(), "c".into(), None, 0);
    let online = store.redeem_code(&code, "gw", 0, LIFE, |_| Ok::<_, ()>(())).unwrap().unwrap().0;
    let code = store.new_code(offline, "http://cb".into(), "c".into(), None, 0);
    let offline = store.redeem_code(&code, "gw", 0, LIFE, |_| Ok::<_, ()>(())).unwrap().unwrap().0;

    assert!(store.end_session(Some("not-a-cookie"), Some("not-a-sid")).is_none());
    assert_eq!(store.end_session(Some(&cookie), None).unwrap().sid, session.sid);
    assert!(store.session(&cookie, 1).is_none());
    assert!(store.access_token(&online.access_token, 1).is_none());
    assert!(store.access_token(&offline.access_token, 1).is_some());
}

#[test]
fn a_session_can_be_ended_by_sid() {
    let mut store = Store::default();
    let (cookie, session) = store.new_session("demo", 0);
    assert!(store.end_session(None, Some(&session.sid)).is_some());
    assert!(store.session(&cookie, 1).is_none());
}

#[test]
fn everything_expires_and_memory_returns_to_zero() {
    let mut store = Store::default();
    for i in 0..100 {
        let issued = login(&mut store, "openid offline_access", i);
        let _ = store.redeem_refresh(issued.refresh_token.as_deref().unwrap(), "gw", None, i, LIFE, true);
        store.new_session("demo", i);
        store.new_code(grant("openid"), "http://cb".into(), "c".into(), None, i);
    }
    assert!(store.sizes().iter().all(|n| *n > 0));
    // Past every lifetime (refresh tokens, browser sessions), the next operation sweeps.
    let later = BROWSER_SESSION_TTL_MS + 100 + SWEEP_INTERVAL_MS;
    store.new_session("demo", later);
    assert_eq!(store.sizes(), [0, 0, 0, 0, 1]);
}
