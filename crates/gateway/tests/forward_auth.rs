//! Forward-auth behind the real front proxies: Debian's nginx (`auth_request`) and Caddy
//! (`forward_auth`), each running the configuration shipped in `examples/` (addresses
//! substituted), in front of two gateway instances sharing a real Redis, with the real OP.
//!
//! Per front: logging in through it, an API call reaching the application with the injected
//! token and identity, a rule refusal, a public route, spoofed headers, a cross-site POST, and
//! 20 parallel calls across an expiry costing exactly one refresh grant at the OP. Then the
//! endpoint's own contract, called directly: trusted and untrusted peers, ambiguous headers,
//! and Envoy's `ext_authz` form (Envoy is not in Debian; its answers are checked here).

mod common;

use std::{net::IpAddr, time::Duration};

use futures_util::future::join_all;
use portcullis_testkit::{
    API_RESOURCE, Browser, Caddy, Gateway, GatewayOptions, Nginx, Op, OpOptions, Redis, Upstream, free_port, repo_root,
};

use common::BIN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    Nginx,
    Caddy,
}

enum Running {
    Nginx(Nginx),
    Caddy(Caddy),
}

/// The OP, the application, Redis, two gateways and the front proxy.
struct Deployment {
    op: Op,
    app: Upstream,
    _redis: Redis,
    gateways: Vec<Gateway>,
    front: Running,
    url: String,
}

/// Gateway config beyond the basics: refresh timing, the trusted front, rules by route.
fn extra(app: &str) -> String {
    format!(
        "\n[refresh]\nlease_ttl = \"1s\"\nmax_wait = \"15s\"\npoll_interval = \"200ms\"\n\n\
         [[routes]]\nprefix = \"/team\"\nupstream = \"{app}\"\n[routes.authorization]\nallowed_emails = [\"alice@example.test\"]\n\n\
         [[routes]]\nprefix = \"/api\"\nupstream = \"{app}\"\nbearer = \"jwt\"\naudiences = [\"{API_RESOURCE}\"]\n"
    )
}

impl Deployment {
    async fn start(front: Front, op_options: OpOptions) -> Self {
        let redis = Redis::start().await;
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let op = Op::start(op_options, std::slice::from_ref(&url)).await;
        let app = Upstream::start(Some(op.direct())).await;
        let mut gateways = Vec::new();
        for _ in 0..2 {
            let mut options = GatewayOptions::new(&op.issuer(), &app.url());
            options.store = "redis".into();
            options.redis_url = Some(redis.url());
            options.public_url = Some(url.clone());
            options.routes = vec![("/".into(), app.url(), "login".into()), ("/public".into(), app.url(), "allow".into())];
            options.extra = extra(&app.url());
            options.env = vec![("PORTCULLIS_TRUSTED_PROXIES".into(), "[\"127.0.0.1/32\"]".into())];
            let gateway = Gateway::start(BIN, &options).await;
            gateway.wait_ready().await;
            gateways.push(gateway);
        }
        let gw: Vec<String> = gateways.iter().map(|g| g.url().trim_start_matches("http://").to_string()).collect();
        let app_addr = app.url().trim_start_matches("http://").to_string();
        let examples = repo_root().join("examples");
        let running = match front {
            Front::Nginx => {
                let conf = std::fs::read_to_string(examples.join("nginx/portcullis.conf")).unwrap();
                let servers: String = gw.iter().map(|g| format!("server {g};\n    ")).collect();
                let conf = conf
                    .replace("server 127.0.0.1:4180;\n    ", &servers)
                    .replace("server 127.0.0.1:8080;", &format!("server {app_addr};"))
                    .replace("server_name app.example.com;", "server_name _;");
                assert!(conf.contains(&gw[1]) && conf.contains(&app_addr), "the example's addresses moved:\n{conf}");
                let snippets: Vec<(&str, String)> = ["snippets/portcullis-auth.conf", "snippets/portcullis-auth-request.conf"]
                    .into_iter()
                    .map(|f| (f, std::fs::read_to_string(examples.join("nginx").join(f)).unwrap()))
                    .collect();
                Running::Nginx(Nginx::start(port, &conf, "listen 80", &snippets).await)
            }
            Front::Caddy => {
                let file = std::fs::read_to_string(examples.join("caddy/Caddyfile")).unwrap();
                let site = &file[file.find("app.example.com {").expect("the example's site block")..];
                let site = site
                    .replace("reverse_proxy 127.0.0.1:4180", &format!("reverse_proxy {}", gw.join(" ")))
                    .replace("forward_auth 127.0.0.1:4180", &format!("forward_auth {}", gw.join(" ")))
                    .replace("reverse_proxy 127.0.0.1:8080", &format!("reverse_proxy {app_addr}"));
                assert!(site.contains(&gw[1]) && site.contains(&app_addr), "the example's addresses moved:\n{site}");
                Running::Caddy(Caddy::start(port, &site, "app.example.com").await)
            }
        };
        Self { op, app, _redis: redis, gateways, front: running, url }
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn logs(&self) -> String {
        let front = match &self.front {
            Running::Nginx(n) => n.log_text(),
            Running::Caddy(c) => c.log_text(),
        };
        let gateways: Vec<String> = self.gateways.iter().map(Gateway::log_text).collect();
        format!("--- front\n{front}\n--- gateways\n{}", gateways.join("\n---\n"))
    }

    async fn logged_in(&self, path: &str, user: &str) -> (Browser, String) {
        let browser = Browser::new();
        let hops = browser.login(&self.at(path), user).await;
        let last = hops.last().unwrap();
        assert_eq!(last.status, 200, "login through the front did not end on the page: {hops:#?}\n{}", self.logs());
        assert_eq!(last.url.path(), path, "back where the login started: {hops:#?}");
        let cookie = browser.cookie(&self.url, "portcullis").expect("session cookie for the front's origin");
        (browser, cookie)
    }
}

/// Whether an answer hands over a token (an empty header says "none").
fn carries_token(h: &reqwest::header::HeaderMap) -> bool {
    ["authorization", "x-auth-request-access-token"].iter().any(|n| h.get(*n).is_some_and(|v| !v.is_empty()))
}

fn api(http: &reqwest::Client, url: &str, cookie: Option<&str>) -> reqwest::RequestBuilder {
    let request = http.get(url).header("accept", "application/json").header("sec-fetch-mode", "cors");
    match cookie {
        Some(c) => request.header("cookie", format!("portcullis={c}")),
        None => request,
    }
}

/// Log in through the front, then what each kind of request gets there.
async fn deployment_works(front: Front) {
    let d = Deployment::start(front, OpOptions { access_token_ttl: 60, ..OpOptions::default() }).await;

    // Unauthenticated navigation: to the login, and back to the page afterwards.
    let first = Browser::new().navigate(&d.at("/app/page")).await;
    assert_eq!(first.status, 302, "{first:#?}\n{}", d.logs());
    let location = first.location.clone().unwrap();
    assert_eq!((location.path(), location.query()), ("/oauth2/start", Some("rd=/app/page")), "{first:#?}");
    let (browser, cookie) = d.logged_in("/app/page", "alice").await;
    let page = d.app.last().unwrap();
    assert_eq!(page.path, "/app/page");
    assert_eq!(page.headers.get("x-auth-request-user").map(String::as_str), Some("alice"));

    // An API call: the application gets the fresh token and the identity.
    d.app.clear();
    let http = reqwest::Client::new();
    let r = api(&http, &d.at("/api/items"), Some(&cookie)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", d.logs());
    let seen = d.app.last().expect("the API call reached the application");
    assert_eq!(seen.active, Some(true), "the injected bearer token is active at the OP: {seen:?}");
    assert_eq!(seen.headers.get("x-auth-request-user").map(String::as_str), Some("alice"), "{seen:?}");
    assert_eq!(seen.headers.get("x-auth-request-email").map(String::as_str), Some("alice@example.test"), "{seen:?}");
    assert_eq!(seen.headers.get("x-auth-request-access-token"), seen.bearer.as_ref(), "{seen:?}");
    assert!(!seen.headers.contains_key("x-forwarded-uri") || front == Front::Caddy, "nginx sends it to Portcullis only: {seen:?}");

    // A page's script asking forward-auth itself, through the front (a trusted peer): never
    // handed the access token the gateway keeps away from browsers.
    for path in ["/oauth2/auth", "/oauth2/auth/app/x", "/oauth2/auth?allowed_groups="] {
        let r = api(&http, &d.at(path), Some(&cookie)).header("x-forwarded-uri", "/app/x").send().await.unwrap();
        assert!(!r.status().is_success(), "{path}: {}", r.status());
        assert!(!carries_token(r.headers()), "{path}");
    }

    // An API call without a session: 401, not a redirect to a login page.
    let r = api(&http, &d.at("/api/items"), None).send().await.unwrap();
    assert_eq!(r.status(), 401, "{}", d.logs());

    // A rule refuses bob on /team: 403 through the front, the application never asked; and
    // his own X-Original-URI / X-Forwarded-Uri naming an open path change nothing.
    let (bob, bob_cookie) = d.logged_in("/app/", "bob").await;
    d.app.clear();
    let refused = bob.navigate(&d.at("/team/plans")).await;
    assert_eq!(refused.status, 403, "{refused:#?}\n{}", d.logs());
    assert!(refused.location.is_none(), "a refusal is no login loop");
    let spoofed = api(&http, &d.at("/team/plans"), Some(&bob_cookie))
        .header("x-original-uri", "/public/x")
        .header("x-forwarded-uri", "/public/x")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), 403, "{}", d.logs());
    assert!(d.app.seen().is_empty(), "nothing reached the application: {:?}", d.app.seen());
    if front == Front::Caddy {
        // Caddy passes Portcullis' answer on: the JSON names the rule.
        let body: serde_json::Value = spoofed.json().await.unwrap();
        assert_eq!(body["error"], "forbidden", "{body}");
        assert!(body["message"].as_str().unwrap().contains("allowed_emails"), "{body}");
    }
    let log = d.gateways.iter().map(Gateway::log_text).collect::<String>();
    assert!(log.contains("authorization refused") && log.contains("bob") && log.contains("/team"), "{log}");
    let alice_team = browser.navigate(&d.at("/team/plans")).await;
    assert_eq!(alice_team.status, 200, "alice is on the list");

    // nginx's /admin/ location adds `allowed_groups=admins` in the auth request's query.
    if front == Front::Nginx {
        let admin = browser.navigate(&d.at("/admin/")).await;
        assert_eq!(admin.status, 403, "{admin:#?}\n{}", d.logs());
    }

    // A cross-site POST with the session cookie: refused, never reaches the application.
    d.app.clear();
    let forged = http
        .post(d.at("/app/transfer"))
        .header("cookie", format!("portcullis={cookie}"))
        .header("sec-fetch-site", "cross-site")
        .header("origin", "http://evil.example")
        .body("amount=1000")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403, "{}", d.logs());
    assert!(d.app.seen().is_empty(), "the forged POST reached the application");

    // A public route: served without a session, and no identity a client made up gets through.
    let r = api(&http, &d.at("/public/news"), None)
        .header("x-auth-request-user", "mallory")
        .header("x-forwarded-user", "mallory")
        .header("x_auth_request_user", "mallory")
        .header("x-auth-request-access-token", "mallory")
        .header("authorization", "Bearer forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", d.logs());
    let seen = d.app.last().unwrap();
    assert_eq!(seen.path, "/public/news");
    assert!(!format!("{:?}", seen.headers).contains("mallory"), "{seen:?}");
    assert_eq!(seen.bearer, None, "{seen:?}");
}

/// 20 parallel API calls through the front just after the access token expired: one refresh
/// grant at the OP across both gateway instances; every call served with the one new token.
async fn one_grant_through_the_front(front: Front) {
    let ttl = 3;
    let d = Deployment::start(front, OpOptions { access_token_ttl: ttl, ..OpOptions::default() }).await;
    let (_browser, cookie) = d.logged_in("/app/", "alice").await;
    let http = reqwest::Client::new();
    for round in 1..=2u64 {
        tokio::time::sleep(Duration::from_millis(ttl * 1000 + 300)).await;
        d.app.clear();
        let calls = (0..20).map(|i| api(&http, &d.at(&format!("/api/round{round}/{i}")), Some(&cookie)).send());
        let results = join_all(calls).await;
        for (i, r) in results.into_iter().enumerate() {
            let r = r.unwrap();
            assert_eq!(r.status(), 200, "round {round}, call {i}\n{}", d.logs());
        }
        let seen = d.app.seen();
        assert_eq!(seen.len(), 20, "round {round}: every call reached the application");
        assert!(seen.iter().all(|s| s.active == Some(true)), "round {round}: every token was active at the OP");
        let tokens: std::collections::HashSet<_> = seen.iter().map(|s| s.bearer.clone()).collect();
        assert_eq!(tokens.len(), 1, "round {round}: all calls carried the one refreshed token");
        assert_eq!(d.op.refresh_grants().await, round, "round {round}: exactly one refresh grant at the OP\n{}", d.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_deployment_works() {
    deployment_works(Front::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_deployment_works() {
    deployment_works(Front::Caddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_one_grant_for_20_parallel_calls_over_2_instances() {
    one_grant_through_the_front(Front::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_one_grant_for_20_parallel_calls_over_2_instances() {
    one_grant_through_the_front(Front::Caddy).await;
}

/// A client bound to `local` (127.0.0.2 is on loopback but not in `trusted_proxies`).
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(local.parse::<IpAddr>().unwrap()).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The endpoint called directly: who it answers, and what it answers. (name, peer, path,
/// headers, session?, expected status)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_contract() {
    let d = Deployment::start(Front::Nginx, OpOptions { access_token_ttl: 60, ..OpOptions::default() }).await;
    let (_alice, alice) = d.logged_in("/app/", "alice").await;
    let (_bob, bob) = d.logged_in("/app/", "bob").await;
    let gateway = d.gateways[0].url();
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>, u16);
    let nav: &[(&str, &str)] = &[("sec-fetch-mode", "navigate")];
    let cases: Vec<Case<'_>> = vec![
        ("trusted proxy, session", "127.0.0.1", "/oauth2/auth", &[("x-forwarded-uri", "/app/x")], Some(&alice), 202),
        (
            "untrusted peer: its X-Forwarded-Uri is not read, it is not answered",
            "127.0.0.2",
            "/oauth2/auth",
            &[("x-forwarded-uri", "/app/x")],
            Some(&alice),
            403,
        ),
        ("untrusted peer, Envoy form", "127.0.0.2", "/oauth2/auth/app/x", &[], Some(&alice), 403),
        ("trusted proxy without X-Forwarded-Uri", "127.0.0.1", "/oauth2/auth", &[], Some(&alice), 400),
        (
            "contradicting families",
            "127.0.0.1",
            "/oauth2/auth",
            &[("x-forwarded-uri", "/team/x"), ("x-original-uri", "/public/x")],
            Some(&bob),
            400,
        ),
        (
            "contradicting spellings",
            "127.0.0.1",
            "/oauth2/auth",
            &[("x-forwarded-uri", "/team/x"), ("x_forwarded_uri", "/public/x")],
            Some(&bob),
            400,
        ),
        ("route rule", "127.0.0.1", "/oauth2/auth", &[("x-forwarded-uri", "/team/x")], Some(&bob), 403),
        (
            "the original URI is canonicalized before the route is picked",
            "127.0.0.1",
            "/oauth2/auth",
            &[("x-forwarded-uri", "/public/../team/x")],
            Some(&bob),
            403,
        ),
        (
            "what the boundary refuses is refused",
            "127.0.0.1",
            "/oauth2/auth",
            &[("x-forwarded-uri", "/public/%2e%2e/team/x")],
            Some(&bob),
            400,
        ),
        ("query rule", "127.0.0.1", "/oauth2/auth?allowed_emails=carol@example.test", &[("x-forwarded-uri", "/app/x")], Some(&alice), 403),
        (
            "query rule admits",
            "127.0.0.1",
            "/oauth2/auth?allowed_email_domains=example.test",
            &[("x-forwarded-uri", "/app/x")],
            Some(&alice),
            202,
        ),
        ("no session", "127.0.0.1", "/oauth2/auth", &[("x-forwarded-uri", "/app/x")], None, 401),
        ("no session, public route", "127.0.0.1", "/oauth2/auth", &[("x-forwarded-uri", "/public/x")], None, 202),
        ("Envoy: allowed is 200", "127.0.0.1", "/oauth2/auth/app/x?y=1", &[], Some(&alice), 200),
        ("Envoy: route rule", "127.0.0.1", "/oauth2/auth/team/x", &[], Some(&bob), 403),
        ("Envoy: a navigation without a session goes to login", "127.0.0.1", "/oauth2/auth/app/x", nav, None, 302),
        ("Envoy: an API call without a session", "127.0.0.1", "/oauth2/auth/app/x", &[], None, 401),
    ];
    for (name, peer, path, headers, cookie, want) in cases {
        let mut request = client_from(peer).get(format!("{gateway}{path}")).header("accept", "application/json");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(c) = cookie {
            request = request.header("cookie", format!("portcullis={c}"));
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let h = r.headers().clone();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, want, "{name}: {body}\n{}", d.gateways[0].log_text());
        assert_eq!(carries_token(&h), status == 202 && cookie.is_some() || status == 200, "{name}: token headers only when allowed: {h:?}");
        if status == 302 {
            let location = h["location"].to_str().unwrap();
            assert!(location.contains("/auth") && location.contains("redirect_uri"), "{name}: to the OP: {location}");
        }
        if status == 401 && path == "/oauth2/auth" {
            assert!(body.contains("rd=%2Fapp%2Fx"), "{name}: the login URL returns to the original page: {body}");
        }
    }
    // What the allowing answer carries.
    let r = client_from("127.0.0.1")
        .get(format!("{gateway}/oauth2/auth"))
        .header("x-forwarded-uri", "/app/x")
        .header("cookie", format!("portcullis={alice}"))
        .send()
        .await
        .unwrap();
    let h = r.headers();
    let token = h["x-auth-request-access-token"].to_str().unwrap().to_string();
    assert_eq!(h["authorization"].to_str().unwrap(), format!("Bearer {token}"));
    assert!(d.op.introspect(&token).await, "the token handed over is active");
    assert_eq!(h["x-auth-request-user"], "alice");
    assert_eq!(h["x-auth-request-email"], "alice@example.test");
    assert_eq!(h["cache-control"], "no-store");
    // An API client's own bearer token through forward-auth: validated on the route the
    // original URI names, and handed back unchanged; a forged one gets RFC 6750's challenge.
    let api_token = d.op.api_token(Some(API_RESOURCE), "api:read").await;
    let r = client_from("127.0.0.1")
        .get(format!("{gateway}/oauth2/auth"))
        .header("x-forwarded-uri", "/api/orders")
        .header("authorization", format!("Bearer {api_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", d.gateways[0].log_text());
    assert_eq!(r.headers()["authorization"].to_str().unwrap(), format!("Bearer {api_token}"), "forwarded unchanged");
    let mut forged = api_token.clone();
    forged.push('x');
    for (uri, token, want) in [("/api/orders", forged.as_str(), 401), ("/app/x", api_token.as_str(), 401)] {
        let r = client_from("127.0.0.1")
            .get(format!("{gateway}/oauth2/auth"))
            .header("x-forwarded-uri", uri)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{uri}");
        assert!(!carries_token(r.headers()), "{uri}: nothing handed over");
        if uri == "/api/orders" {
            let challenge = r.headers()["www-authenticate"].to_str().unwrap();
            assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        }
    }
    // And never a forwarding header reaching the application from a trusted proxy's request.
    d.app.clear();
    let r = client_from("127.0.0.1")
        .get(format!("{gateway}/app/direct"))
        .header("x-forwarded-uri", "/elsewhere")
        .header("x-original-method", "DELETE")
        .header("cookie", format!("portcullis={alice}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = d.app.last().unwrap();
    assert!(!seen.headers.contains_key("x-forwarded-uri") && !seen.headers.contains_key("x-original-method"), "{seen:?}");
}
