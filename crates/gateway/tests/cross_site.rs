//! Cross-site request forgery, end to end: the real gateway binary, `oidc-provider`, a logged-in
//! session, and requests marked the way browsers mark requests that another site made them send
//! (`Sec-Fetch-Site`, `Origin`). The scripted browser attaches the session cookie to every
//! request, as a real browser does for top-level navigations (`SameSite=Lax`) and for every
//! request from a sibling subdomain: the gateway's check is what stands in the way.

mod common;

use common::{Setup, Store};
use portcullis_testkit::{Browser, OpOptions};
use reqwest::{Method, header};

/// The routes of `Setup` (`/` and `/api` login, `/public` allow, `/internal` deny) plus `/hooks`,
/// a login route with `csrf_protection = false`.
async fn setup() -> Setup {
    Setup::start_with(Store::Memory, OpOptions::default(), |options| {
        let upstream = options.routes[0].1.clone();
        // `extra` lands before the generated [[routes]]; an array-of-tables entry here joins them.
        options.extra.push_str(&format!(
            "\n[[routes]]\nprefix = \"/hooks\"\nupstream = \"{upstream}\"\nunauthenticated = \"login\"\ncsrf_protection = false\n"
        ));
    })
    .await
}

const EVIL: &str = "https://evil.example";

/// Who sends the request: the logged-in browser (cookie attached) or one without a session.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Session,
    Anonymous,
}

/// `Origin` of a row: none, the gateway's own, or a literal.
#[derive(Debug, Clone, Copy)]
enum Origin<'a> {
    None,
    Own,
    Other(&'a str),
}

/// (who, method, path, Sec-Fetch-Site, Origin, expected status, reached the upstream).
type Row<'a> = (Who, &'a str, &'a str, Option<&'a str>, Origin<'a>, u16, bool);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_cross_site_requests_with_a_session_are_refused() {
    use Origin::{None as NoOrigin, Other, Own};
    use Who::*;
    let s = setup().await;
    let (browser, _) = s.logged_in("/", "alice").await;
    let anonymous = Browser::new();
    let other_port = format!("http://127.0.0.1:{}", s.op.port());
    let other_port = other_port.as_str();

    #[rustfmt::skip]
    let table: &[Row<'_>] = &[
        // who      method     path            Sec-Fetch-Site       Origin            status forwarded
        (Session,  "POST",    "/api/a",       Some("cross-site"),  NoOrigin,         403,   false),
        (Session,  "POST",    "/api/a",       Some("same-site"),   NoOrigin,         403,   false),
        (Session,  "POST",    "/api/a",       Some("cross-site"),  Own,              403,   false),
        (Session,  "POST",    "/api/a",       Some("bogus"),       NoOrigin,         403,   false),
        (Session,  "POST",    "/api/a",       Some("same-origin"), NoOrigin,         200,   true),
        (Session,  "POST",    "/api/a",       Some("same-origin"), Other(EVIL),      200,   true),
        (Session,  "POST",    "/api/a",       Some("none"),        NoOrigin,         200,   true),
        // Without Sec-Fetch-Site, Origin alone decides; neither header (curl) passes.
        (Session,  "POST",    "/api/a",       None,                Other(EVIL),      403,   false),
        (Session,  "POST",    "/api/a",       None,                Other("null"),    403,   false),
        (Session,  "POST",    "/api/a",       None,                Other(other_port),403,   false),
        (Session,  "POST",    "/api/a",       None,                Own,              200,   true),
        (Session,  "POST",    "/api/a",       None,                NoOrigin,         200,   true),
        // Every unsafe method, known or not; safe methods pass from anywhere.
        (Session,  "PUT",     "/api/a",       Some("cross-site"),  Other(EVIL),      403,   false),
        (Session,  "PATCH",   "/api/a",       None,                Other(EVIL),      403,   false),
        (Session,  "DELETE",  "/api/a",       Some("cross-site"),  Other(EVIL),      403,   false),
        (Session,  "PROPFIND","/api/a",       Some("cross-site"),  Other(EVIL),      403,   false),
        (Session,  "GET",     "/api/a",       Some("cross-site"),  Other(EVIL),      200,   true),
        (Session,  "HEAD",    "/api/a",       Some("cross-site"),  Other(EVIL),      200,   true),
        (Session,  "OPTIONS", "/api/a",       Some("cross-site"),  Other(EVIL),      200,   true),
        // Every route policy: an allow route with a session forwards identity, so it is checked.
        (Session,  "POST",    "/",            Some("cross-site"),  Other(EVIL),      403,   false),
        (Session,  "POST",    "/public/a",    Some("cross-site"),  Other(EVIL),      403,   false),
        (Session,  "POST",    "/internal/a",  Some("cross-site"),  Other(EVIL),      403,   false),
        // csrf_protection = false on the route.
        (Session,  "POST",    "/hooks/a",     Some("cross-site"),  Other(EVIL),      200,   true),
        // No session, no ambient authority: nothing to refuse.
        (Anonymous,"POST",    "/public/a",    Some("cross-site"),  Other(EVIL),      200,   true),
        (Anonymous,"POST",    "/api/a",       Some("cross-site"),  Other(EVIL),      401,   false),
    ];
    for (i, &(who, method, path, fetch_site, origin, status, forwarded)) in table.iter().enumerate() {
        s.upstream.clear();
        let client = if who == Session { &browser } else { &anonymous };
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut request =
            client.http().request(method.clone(), s.url(&format!("{path}?row={i}"))).header(header::ACCEPT, "application/json");
        if ![Method::GET, Method::HEAD, Method::OPTIONS].contains(&method) {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded").body("x=1");
        }
        if let Some(site) = fetch_site {
            request = request.header("sec-fetch-site", site);
        }
        match origin {
            NoOrigin => {}
            Own => request = request.header(header::ORIGIN, s.gateway.url()),
            Other(o) => request = request.header(header::ORIGIN, o),
        }
        let response = request.send().await.unwrap();
        let row = format!("row {i}: {who:?} {method} {path} Sec-Fetch-Site {fetch_site:?} Origin {origin:?}");
        assert_eq!(response.status().as_u16(), status, "{row}\n{}", s.gateway.log_text());
        let seen = s.upstream.seen().iter().any(|r| r.path.ends_with(&format!("row={i}")));
        assert_eq!(seen, forwarded, "{row}: forwarded upstream?");
        if status == 403 {
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json", "{row}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"], "cross_site_request", "{row}: {body}");
        }
    }
    assert!(s.gateway.log_text().contains("cross-site request refused"));

    // A refused navigation gets a page, not JSON; and the session survived every refusal.
    let page = browser
        .http()
        .post(s.url("/api/form"))
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-site", "cross-site")
        .header(header::ORIGIN, EVIL)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 403);
    assert!(page.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("came from another site"));
    let after = browser.http().get(s.url("/api/after")).send().await.unwrap();
    assert_eq!(after.status(), 200, "the session still works");
    assert_eq!(s.upstream.last().unwrap().headers.get("x-forwarded-user").map(String::as_str), Some("alice"));
}

/// A WebSocket handshake is a GET, but the socket carries the session both ways: a page on a
/// sibling subdomain (same-site: the `SameSite=Lax` cookie is sent) must not open one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_websocket_handshakes_are_refused() {
    let s = setup().await;
    let (browser, _) = s.logged_in("/", "alice").await;
    for (i, (site, origin, refused)) in [
        (Some("same-site"), None, true),
        (Some("cross-site"), Some(EVIL), true),
        (None, Some(EVIL), true),
        (Some("same-origin"), None, false),
    ]
    .into_iter()
    .enumerate()
    {
        s.upstream.clear();
        let mut request = browser
            .http()
            .get(s.url(&format!("/api/socket?row={i}")))
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        let response = request.send().await.unwrap();
        let seen = s.upstream.seen().iter().any(|r| r.path.ends_with(&format!("row={i}")));
        assert_eq!(response.status() == 403, refused, "row {i} ({site:?}, {origin:?}): {}", response.status());
        assert_eq!(seen, !refused, "row {i}: reached the upstream?");
    }
}

/// The OP's refresh-token revocation count.
async fn revocations(s: &Setup) -> u64 {
    s.op.stats().await["revocations"].as_u64().unwrap()
}

/// The session still opens `/api`.
async fn still_logged_in(s: &Setup, browser: &Browser) {
    let response = browser.http().get(s.url("/api/still")).header(header::ACCEPT, "application/json").send().await.unwrap();
    assert_eq!(response.status(), 200, "the session still works\n{}", s.gateway.log_text());
}

fn clears_the_session(set_cookies: &[String]) -> bool {
    set_cookies.iter().any(|c| c.starts_with("portcullis=;"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_by_get_only_asks_for_confirmation() {
    let s = setup().await;
    let (browser, _) = s.logged_in("/", "bob").await;

    // A top-level navigation from another site, as `<a href>` or `location =` makes it.
    for (query, action) in [
        ("?rd=/app/x%3Fy%3D1", "/oauth2/sign_out?rd=%2Fapp%2Fx%3Fy%3D1"),
        ("?rd=//evil.example/", "/oauth2/sign_out"),
        ("?rd=%22%3E%3Cscript%3E", "/oauth2/sign_out"),
        ("", "/oauth2/sign_out"),
    ] {
        let response = browser
            .http()
            .get(s.url(&format!("/oauth2/sign_out{query}")))
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-site", "cross-site")
            .header(header::ACCEPT, "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{query}");
        let headers = response.headers().clone();
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("form-action"), "form-action would block the redirect to the OP in Chrome: {csp}");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert!(headers.get_all(header::SET_COOKIE).iter().next().is_none(), "a GET sets no cookie");
        let body = response.text().await.unwrap();
        let form = format!("<form method=\"post\" action=\"{}\">", action.replace('&', "&amp;"));
        assert!(body.contains(&form), "{query}: {body}");
        assert!(!body.contains("<script"), "{query}: {body}");
    }
    still_logged_in(&s, &browser).await;
    assert_eq!(revocations(&s).await, 0, "nothing was revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_by_cross_site_post_is_refused() {
    let s = setup().await;
    let (browser, _) = s.logged_in("/", "carol").await;

    // (Sec-Fetch-Site, Origin, Sec-Fetch-Mode) → status; nothing ends in any row.
    #[rustfmt::skip]
    let table: &[(Option<&str>, Option<&str>, &str, u16)] = &[
        (Some("cross-site"), Some(EVIL),   "navigate", 403),
        (Some("cross-site"), None,         "cors",     403),
        (Some("same-site"),  Some("https://sibling.127.0.0.1"), "navigate", 403),
        (None,               Some(EVIL),   "navigate", 403),
        (None,               Some("null"), "navigate", 403),
        // No evidence either way (curl, a browser from before 2020): the confirmation page.
        (None,               None,         "navigate", 200),
    ];
    for (fetch_site, origin, mode, status) in table {
        let mut request = browser
            .http()
            .post(s.url("/oauth2/sign_out?rd=/x"))
            .header("sec-fetch-mode", *mode)
            .header(header::ACCEPT, if *mode == "navigate" { "text/html" } else { "application/json" });
        if let Some(site) = fetch_site {
            request = request.header("sec-fetch-site", *site);
        }
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, *origin);
        }
        let response = request.send().await.unwrap();
        let row = format!("Sec-Fetch-Site {fetch_site:?} Origin {origin:?} mode {mode}");
        assert_eq!(response.status().as_u16(), *status, "{row}");
        let set_cookies: Vec<String> =
            response.headers().get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert!(!clears_the_session(&set_cookies), "{row}: {set_cookies:?}");
        assert!(response.headers().get(header::LOCATION).is_none(), "{row}: no redirect to the OP's end-session endpoint");
        let body = response.text().await.unwrap();
        if *mode == "navigate" {
            // The page says what happened and offers the real button.
            assert!(body.contains("<form method=\"post\" action=\"/oauth2/sign_out?rd=%2Fx\">"), "{row}: {body}");
        } else {
            assert!(body.contains("cross_site_request"), "{row}: {body}");
        }
        still_logged_in(&s, &browser).await;
    }
    assert_eq!(revocations(&s).await, 0, "nothing was revoked");
    assert!(s.gateway.log_text().contains("cross-site sign-out refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_by_same_origin_post_ends_the_session() {
    let s = setup().await;
    for (user, fetch_site, origin) in [("dave", Some("same-origin"), None), ("erin", None, Some(()))] {
        let (browser, _) = s.logged_in("/", user).await;
        let token = s.upstream.last().unwrap().bearer.unwrap();
        let before = revocations(&s).await;
        let mut request = browser.http().post(s.url("/oauth2/sign_out?rd=/x")).header("sec-fetch-mode", "navigate");
        if let Some(site) = fetch_site {
            request = request.header("sec-fetch-site", site);
        }
        if origin.is_some() {
            request = request.header(header::ORIGIN, s.gateway.url());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 302, "{user}");
        let location = response.headers()[header::LOCATION].to_str().unwrap().to_string();
        assert!(location.starts_with(&format!("{}/session/end?", s.op.issuer())), "{location}");
        let set_cookies: Vec<String> =
            response.headers().get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert!(clears_the_session(&set_cookies), "{set_cookies:?}");
        assert_eq!(revocations(&s).await, before + 1, "{user}: the refresh token was revoked");
        assert!(!s.op.introspect(&token).await, "{user}: the grant is gone at the OP");
        let after = browser.http().get(s.url("/api/after")).header(header::ACCEPT, "application/json").send().await.unwrap();
        assert_eq!(after.status(), 401, "{user}: the session is gone");
    }
}
