//! The cookie store: sessions sealed in the browser's cookie. A refresh changes the cookie, so
//! the tests play the responses back in every order a browser could keep them.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{Setup, Store};
use futures_util::future::join_all;
use portcullis_testkit::OpOptions;

const GRACE: &str = "4s";

async fn setup(ttl: u64) -> Setup {
    Setup::start_with(Store::Memory, OpOptions { access_token_ttl: ttl, ..OpOptions::default() }, |o| {
        o.store = "cookie".into();
        o.env.push(("PORTCULLIS_REFRESH__GRACE_PERIOD".into(), GRACE.into()));
    })
    .await
}

/// `n` parallel API calls with `cookie`; returns (status, the new session cookie if one was set).
async fn burst(s: &Setup, cookie: &str, n: usize) -> Vec<(u16, Option<String>)> {
    let http = reqwest::Client::new();
    let calls = (0..n).map(|i| {
        http.get(s.url(&format!("/api/{i}"))).header("cookie", format!("portcullis={cookie}")).header("accept", "application/json").send()
    });
    join_all(calls)
        .await
        .into_iter()
        .map(|r| {
            let r = r.unwrap();
            let set = r
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|c| c.strip_prefix("portcullis=").map(|v| v.split(';').next().unwrap().to_string()));
            (r.status().as_u16(), set)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cookie_handed_out_keeps_working_and_one_grant_per_expiry() {
    let s = setup(3).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let c0 = s.session_cookie(&browser).unwrap();
    assert!(c0.starts_with("1~s1."), "one chunk, sealed: {}", &c0[..10]);
    assert_eq!(burst(&s, &c0, 1).await[0], (200, None), "a fresh session sets no cookie");

    // Round 1: the token expires; 20 parallel requests carry the same old cookie.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let round1 = burst(&s, &c0, 20).await;
    assert!(round1.iter().all(|(status, _)| *status == 200), "{round1:?}");
    let handed_out: BTreeSet<String> = round1.iter().filter_map(|(_, c)| c.clone()).collect();
    assert_eq!(round1.iter().filter(|(_, c)| c.is_some()).count(), 20, "every response carries the new cookie");
    assert_eq!(handed_out.len(), 1, "all responses carry the same new cookie, whatever order the browser applies them in");
    assert_eq!(s.op.refresh_grants().await, 1);
    let c1 = handed_out.into_iter().next().unwrap();

    // Whichever Set-Cookie the browser kept last, it works, and nothing refreshes again.
    for (name, cookie) in [("old", &c0), ("new", &c1), ("old again", &c0)] {
        let r = burst(&s, cookie, 5).await;
        assert!(r.iter().all(|(status, _)| *status == 200), "{name} cookie: {r:?}");
    }
    assert_eq!(s.op.refresh_grants().await, 1, "superseded cookies within the grace period cause no grant");
    assert!(s.upstream.seen().iter().all(|seen| seen.active == Some(true)));

    // Round 2, with both generations in flight at once.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let (old, new) = tokio::join!(burst(&s, &c0, 10), burst(&s, &c1, 10));
    let round2: Vec<_> = old.into_iter().chain(new).collect();
    assert!(round2.iter().all(|(status, _)| *status == 200), "{round2:?}");
    let c2: BTreeSet<String> = round2.iter().filter_map(|(_, c)| c.clone()).collect();
    assert_eq!(c2.len(), 1, "one new generation");
    assert_eq!(s.op.refresh_grants().await, 2);
    let c2 = c2.into_iter().next().unwrap();
    for cookie in [&c0, &c1, &c2] {
        assert!(burst(&s, cookie, 2).await.iter().all(|(status, _)| *status == 200));
    }
    assert_eq!(s.op.refresh_grants().await, 2);
    let stats = s.op.stats().await;
    assert_eq!(stats["grant_outcomes"]["refresh_token:invalid_grant"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_cookie_after_the_grace_period_is_refused_without_a_grant() {
    let s = setup(2).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let c0 = s.session_cookie(&browser).unwrap();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let c1 = burst(&s, &c0, 1).await.remove(0).1.expect("a new cookie");
    assert_eq!(s.op.refresh_grants().await, 1);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    // The old cookie's refresh token was consumed: presenting it to a rotating OP would trip
    // reuse detection and revoke the live session. It is refused instead.
    let r = burst(&s, &c0, 3).await;
    assert!(r.iter().all(|(status, _)| *status == 401), "{r:?}");
    assert_eq!(s.op.refresh_grants().await, 1, "no grant for a superseded cookie");
    let r = burst(&s, &c1, 3).await;
    assert!(r.iter().all(|(status, _)| *status == 200), "the live cookie is unharmed: {r:?}");
    assert!(s.gateway.log_text().contains("superseded session cookie"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_cookie_and_logout() {
    let s = setup(30).await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let c0 = s.session_cookie(&browser).unwrap();
    let mut tampered = c0.clone().into_bytes();
    let i = tampered.len() - 8;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(burst(&s, &tampered, 1).await[0].0, 401);
    assert_eq!(burst(&s, &c0, 1).await[0].0, 200);

    let hop = browser.sign_out(&s.gateway.url()).await;
    assert_eq!(hop.status, 302);
    assert!(hop.set_cookies.iter().any(|c| c.starts_with("portcullis=;") && c.contains("Max-Age=0")), "{:?}", hop.set_cookies);
    assert_eq!(s.op.stats().await["revocations"], 1);
    // A copy of the cookie kept elsewhere no longer opens anything on this instance.
    assert_eq!(burst(&s, &c0, 1).await[0].0, 401);
}
