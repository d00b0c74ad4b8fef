//! Authorization rules on the gateway's own routes, with the real OP and the real binary:
//! a refused user gets a 403 (HTML for a page, JSON for a script) and never a login loop, the
//! upstream never sees the request, the log names the user, the route and the rule; a public
//! route serves a refused user as an anonymous visitor; an unverified email never satisfies an
//! email rule.

mod common;

use common::{Setup, Store};
use portcullis_testkit::{Browser, OpOptions};

/// Global: verified addresses of example.test. `/team`: alice only. `/named`: the `name`
/// claim must be alice or carol. `/public`: allow, alice only (others served anonymously).
fn rules(upstream: &str) -> String {
    format!(
        "\n[authorization]\nallowed_email_domains = [\"example.test\"]\n\n\
         [[routes]]\nprefix = \"/team\"\nupstream = \"{upstream}\"\n[routes.authorization]\nallowed_emails = [\"ALICE@example.test\"]\n\n\
         [[routes]]\nprefix = \"/named\"\nupstream = \"{upstream}\"\n[routes.authorization]\nrequire_claims = {{ name = [\"alice\", \"carol\"] }}\n\n\
         [[routes]]\nprefix = \"/open\"\nupstream = \"{upstream}\"\nunauthenticated = \"allow\"\n[routes.authorization]\nallowed_emails = [\"alice@example.test\"]\n"
    )
}

async fn setup() -> Setup {
    // The upstream's address is only known once it runs: the rules' routes point at a
    // placeholder replaced by the catch-all's upstream.
    Setup::start_with(Store::Memory, OpOptions::default(), |o| {
        let upstream = o.routes[0].1.clone();
        o.extra = rules(&upstream);
        o.env.push(("PORTCULLIS_OIDC__ALLOW_UNVERIFIED_EMAIL".into(), "true".into()));
    })
    .await
}

/// (user, path, kind, expected status, the rule the body names)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_decide_who_passes() {
    let s = setup().await;
    let mut browsers = std::collections::HashMap::new();
    for user in ["alice", "bob", "unverified-carol"] {
        let browser = Browser::new();
        let hops = browser.login(&s.url("/"), user).await;
        // carol's login ends on a 403 page: logged in, not admitted, and no loop back to login.
        let want = if user == "unverified-carol" { 403 } else { 200 };
        assert_eq!(hops.last().unwrap().status, want, "{user}: {hops:#?}");
        browsers.insert(user, browser);
    }
    let cases: &[(&str, &str, &str, u16, Option<&str>)] = &[
        ("alice", "/team/plans", "page", 200, None),
        ("bob", "/team/plans", "page", 403, Some("allowed_emails")),
        ("bob", "/team/plans", "api", 403, Some("allowed_emails")),
        ("bob", "/app", "api", 200, None),
        ("alice", "/named/x", "api", 200, None),
        ("bob", "/named/x", "api", 403, Some("require_claims.name")),
        // Verified by nobody: the global domain rule refuses carol everywhere, even where her
        // `name` claim would do; no email rule is satisfied by an unverified address.
        ("unverified-carol", "/app", "api", 403, Some("email_verified")),
        ("unverified-carol", "/named/x", "page", 403, Some("email_verified")),
    ];
    for &(user, path, kind, want, rule) in cases {
        s.upstream.clear();
        let browser = &browsers[user];
        let request = browser.http().get(s.url(path));
        let request = match kind {
            "page" => request.header("sec-fetch-mode", "navigate").header("accept", "text/html"),
            _ => request.header("sec-fetch-mode", "cors").header("accept", "application/json"),
        };
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let location = r.headers().get("location").cloned();
        let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let body = r.text().await.unwrap();
        assert_eq!(status, want, "{user} {path} ({kind}): {body}\n{}", s.gateway.log_text());
        if let Some(rule) = rule {
            assert!(location.is_none(), "{user} {path}: a refusal is never a redirect (no login loop)");
            assert!(s.upstream.seen().is_empty(), "{user} {path}: the upstream was asked");
            assert!(body.contains(rule), "{user} {path}: the body names the rule {rule}: {body}");
            assert!(!body.contains("ALICE") && !body.contains("carol\""), "{user} {path}: no allowed values shown: {body}");
            if kind == "page" {
                assert!(content_type.starts_with("text/html") && body.contains("/oauth2/sign_out"), "{body}");
            } else {
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(json["error"], "forbidden", "{json}");
            }
        }
    }
    let log = s.gateway.log_text();
    let line = log.lines().find(|l| l.contains("authorization refused") && l.contains("bob")).expect("a log line for bob's refusal");
    assert!(line.contains("/team") && line.contains("allowed_emails") && line.contains("route"), "{line}");
}

/// A public route: nobody is turned away, and only callers the rules admit are named to the
/// upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_route_serves_refused_callers_anonymously() {
    let s = setup().await;
    let (alice, _) = s.logged_in("/", "alice").await;
    let (bob, _) = s.logged_in("/", "bob").await;
    let anonymous = Browser::new();
    for (who, browser, named) in [("alice", &alice, true), ("bob", &bob, false), ("nobody", &anonymous, false)] {
        s.upstream.clear();
        let r = browser.http().get(s.url("/open/page")).header("accept", "application/json").send().await.unwrap();
        assert_eq!(r.status(), 200, "{who}");
        let seen = s.upstream.last().unwrap();
        assert_eq!(seen.headers.contains_key("x-forwarded-user"), named, "{who}: {seen:?}");
        assert_eq!(seen.bearer.is_some(), named, "{who}: the token goes only with the identity: {seen:?}");
    }
}
