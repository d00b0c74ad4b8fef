//! `portcullis demo`, end to end: the real binary, logged in through the development OP's
//! login page, tokens left to expire, then 20 parallel API calls through the gateway: all
//! succeed, and the OP counts exactly one refresh grant. Once with one gateway and the memory
//! store, once with three gateways sharing Redis behind the built-in round-robin front.

use std::{
    collections::BTreeSet,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use portcullis_testkit::{Redis, free_port};
use reqwest::{StatusCode, Url, header};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// Cold start on a busy 2-core machine: OP keys, discovery, Redis.
const READY_WITHIN: Duration = Duration::from_secs(60);
const PARALLEL: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_memory_store() {
    let demo = Demo::start(&["--token-ttl", "3s"]).await;
    let pings = demo.scenario().await;
    assert!(pings.iter().all(|p| p["instance"].is_null()), "no front, no instance label: {pings:?}");
    demo.sign_out().await;
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_sharing_redis() {
    let redis = Redis::start().await;
    let demo = Demo::start(&["--token-ttl", "3s", "--store", "redis", "--redis-url", &redis.url(), "--instances", "3"]).await;
    assert!(demo.banner.contains("3 gateways"), "{}", demo.banner);
    let pings = demo.scenario().await;
    let served_by: BTreeSet<_> = pings.iter().map(|p| p["instance"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(served_by, BTreeSet::from(["1".into(), "2".into(), "3".into()]), "round robin per request");
    demo.sign_out().await;
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_instances_refuse_the_memory_store() {
    let output = Command::new(BIN)
        .args(["demo", "--port", &free_port().to_string(), "--instances", "3", "--store", "memory"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--store redis"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing started, nothing announced");
}

/// The running demo and what it said.
struct Demo {
    child: Child,
    url: Url,
    /// The lines printed after `DEMO READY`.
    banner: String,
    /// Its stderr so far, for failure messages.
    log: Arc<Mutex<String>>,
    /// A browser: cookie jar, redirects followed by hand.
    browser: reqwest::Client,
    /// No cookies: what the page uses for `/api/op-stats`.
    anonymous: reqwest::Client,
}

impl Demo {
    async fn start(args: &[&str]) -> Self {
        let port = free_port();
        let mut child = Command::new(BIN)
            .arg("demo")
            .args(["--port", &port.to_string()])
            .args(args)
            .env("PORTCULLIS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start portcullis demo");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });

        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(READY_WITHIN, stdout.next_line()).await;
        let expected = format!("DEMO READY http://127.0.0.1:{port}/");
        match first {
            Ok(Ok(Some(line))) if line == expected => {}
            other => panic!("expected {expected:?} first, got {other:?}\n{}", log.lock().unwrap()),
        }
        // The human lines follow at once; read until the last one.
        let mut banner = String::new();
        while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(5), stdout.next_line()).await {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("Ctrl-C") {
                break;
            }
        }
        for needed in ["demo / demo", &format!("http://127.0.0.1:{port}/"), "Access tokens live", "Session store", "Instances"] {
            assert!(banner.contains(needed), "{needed:?} missing from:\n{banner}");
        }

        let jar = Arc::new(reqwest::cookie::Jar::default());
        let browser = reqwest::Client::builder().cookie_provider(jar).redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let anonymous = reqwest::Client::new();
        Self { child, url: expected["DEMO READY ".len()..].parse().unwrap(), banner, log, browser, anonymous }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Log in, let the token expire, fire the parallel calls; returns their JSON answers.
    async fn scenario(&self) -> Vec<Value> {
        let page = self.login().await;
        for id in ["user", "email", "token-remaining", "parallel-count", "fire", "results", "summary", "grants-before", "grants-after"] {
            assert!(page.contains(&format!("id=\"{id}\"")), "the page lacks #{id}");
        }
        assert!(page.contains("method=\"post\" action=\"/oauth2/sign_out\""), "the page lacks the sign-out button");

        let me = self.api("/api/me").await;
        assert_eq!(me["user"], "demo", "{me}");
        assert!(me["email"].as_str().is_some_and(|e| e.contains('@')), "{me}");
        let (exp, now) = (me["exp"].as_u64().expect("exp"), me["now"].as_u64().expect("now"));
        assert!(exp > now && exp <= now + 4, "a 3 s token: exp {exp}, now {now}");
        let first = self.api("/api/ping?i=0").await["token_suffix"].as_str().unwrap().to_string();
        assert_eq!(first.len(), 6, "only the token's last 6 characters");

        // Past the expiry at the OP (whole seconds) and at the gateway (which counted from
        // the token response, a little later).
        tokio::time::sleep(Duration::from_secs(exp - now) + Duration::from_millis(1500)).await;
        let before = self.refresh_grants().await;

        let calls = (1..=PARALLEL).map(|i| {
            let browser = self.browser.clone();
            let url = self.url.join(&format!("/api/ping?i={i}")).unwrap();
            async move {
                let response = browser.get(url).header(header::ACCEPT, "application/json").send().await.unwrap();
                (response.status(), response.json::<Value>().await.unwrap_or(Value::Null))
            }
        });
        let answers = futures_util::future::join_all(calls).await;
        let failed: Vec<_> = answers.iter().filter(|(status, _)| *status != StatusCode::OK).collect();
        assert!(failed.is_empty(), "{} of {PARALLEL} calls failed: {failed:?}\n{}", failed.len(), self.log());
        let pings: Vec<Value> = answers.into_iter().map(|(_, body)| body).collect();
        assert!(pings.iter().all(|p| p["ok"] == true), "{pings:?}");
        let tokens: BTreeSet<_> = pings.iter().map(|p| p["token_suffix"].as_str().unwrap().to_string()).collect();
        assert_eq!(tokens.len(), 1, "all calls carried the one refreshed token: {tokens:?}");
        assert!(!tokens.contains(&first), "the token was refreshed");

        let after = self.refresh_grants().await;
        assert_eq!(after, before + 1, "exactly one refresh grant for {PARALLEL} parallel calls\n{}", self.log());
        let stats = self.anonymous.get(self.url.join("/api/op-stats").unwrap()).send().await.unwrap().json::<Value>().await.unwrap();
        assert_eq!(stats["reuse_detections"], 0, "{stats}");

        // A reload: still logged in, same user.
        let reload = self.navigate(self.url.as_str()).await;
        assert_eq!(reload.0, StatusCode::OK);
        assert!(reload.2.contains("demo"));
        pings
    }

    /// The page's "Sign out" button (a same-origin form POST, marked as a browser marks it):
    /// the OP ends its session and sends the browser back to the demo (a registered
    /// post-logout URI), which needs a login again.
    async fn sign_out(&self) {
        let response = self
            .browser
            .post(self.url.join("/oauth2/sign_out").unwrap())
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-site", "same-origin")
            .header(header::ORIGIN, self.url.origin().ascii_serialization())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FOUND, "{}", self.log());
        let next = self.url.join(response.headers()[header::LOCATION].to_str().unwrap()).unwrap();
        let (status, end, page) = self.follow(next.as_str()).await;
        assert_eq!(status, StatusCode::OK, "{page}\n{}", self.log());
        assert_ne!(end.origin(), self.url.origin(), "back at the OP's login page: {end}");
        assert!(page.contains("name=\"password\""), "the login form again: {page}");
        let me = self.browser.get(self.url.join("/api/me").unwrap()).header(header::ACCEPT, "application/json").send().await.unwrap();
        assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
    }

    /// Opens the demo, follows the redirects to the OP's login page, submits it as demo/demo,
    /// and follows the redirects back. Returns the page's HTML.
    async fn login(&self) -> String {
        let (status, mut location, body) = self.follow(self.url.as_str()).await;
        assert_eq!(status, StatusCode::OK, "the login page: {body}\n{}", self.log());
        let form = Form::parse(&body).unwrap_or_else(|| panic!("no login form in:\n{body}"));
        let action = location.join(&form.action).unwrap();
        let mut fields = form.fields;
        fields.retain(|(name, _)| name != "username" && name != "password");
        fields.push(("username".into(), "demo".into()));
        fields.push(("password".into(), "demo".into()));
        let response = self.browser.post(action.clone()).header("sec-fetch-mode", "navigate").form(&fields).send().await.unwrap();
        assert!(response.status().is_redirection(), "the login form redirects: {} {:?}", response.status(), response.text().await);
        location = action.join(response.headers()[header::LOCATION].to_str().unwrap()).unwrap();
        let (status, end, page) = self.follow(location.as_str()).await;
        assert_eq!((status, end.as_str()), (StatusCode::OK, self.url.as_str()), "back on the demo page: {page}\n{}", self.log());
        page
    }

    /// Navigates to `url` and follows redirects: (status, final URL, body).
    async fn follow(&self, url: &str) -> (StatusCode, Url, String) {
        let mut url: Url = url.parse().unwrap();
        for _ in 0..10 {
            let (status, location, body) = self.navigate(url.as_str()).await;
            match location {
                Some(next) if status.is_redirection() => url = url.join(&next).unwrap(),
                _ => return (status, url, body),
            }
        }
        panic!("redirect loop at {url}");
    }

    /// One page load: (status, Location, body).
    async fn navigate(&self, url: &str) -> (StatusCode, Option<String>, String) {
        let response = self
            .browser
            .get(url)
            .header("sec-fetch-mode", "navigate")
            .header(header::ACCEPT, "text/html,application/xhtml+xml")
            .send()
            .await
            .unwrap();
        let location = response.headers().get(header::LOCATION).map(|l| l.to_str().unwrap().to_string());
        (response.status(), location, response.text().await.unwrap())
    }

    /// An API call with the session.
    async fn api(&self, path: &str) -> Value {
        let response = self.browser.get(self.url.join(path).unwrap()).header(header::ACCEPT, "application/json").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}\n{}", self.log());
        response.json().await.unwrap()
    }

    /// The OP's refresh-grant count, read as the page reads it: without the session cookie,
    /// so reading it never refreshes a token itself.
    async fn refresh_grants(&self) -> u64 {
        let response = self.anonymous.get(self.url.join("/api/op-stats").unwrap()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let stats: Value = response.json().await.unwrap();
        stats["refresh_grants"].as_u64().unwrap_or_else(|| panic!("no refresh_grants in {stats}"))
    }

    /// SIGTERM: everything stops cleanly and the process exits 0.
    async fn stop(mut self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        match exit {
            Ok(Ok(status)) => assert!(status.success(), "exit status {status}\n{}", self.log()),
            other => panic!("the demo did not stop within 15 s: {other:?}\n{}", self.log()),
        }
    }
}

/// The first form of a page: its action and its named inputs (hidden ones included).
struct Form {
    action: String,
    fields: Vec<(String, String)>,
}

impl Form {
    fn parse(html: &str) -> Option<Self> {
        let start = html.find("<form")?;
        let form = &html[start..start + html[start..].find("</form>")?];
        let tag_end = form.find('>')?;
        let action = attribute(&form[..tag_end], "action").unwrap_or_default();
        let fields = form
            .split("<input")
            .skip(1)
            .filter_map(|input| {
                let tag = &input[..input.find('>')?];
                Some((attribute(tag, "name")?, attribute(tag, "value").unwrap_or_default()))
            })
            .collect();
        Some(Self { action, fields })
    }
}

/// `name="value"` (or single quotes) in a tag, HTML entities for `&` undone.
fn attribute(tag: &str, name: &str) -> Option<String> {
    for quote in ['"', '\''] {
        let key = format!(" {name}={quote}");
        if let Some(at) = tag.find(&key) {
            let rest = &tag[at + key.len()..];
            return Some(rest[..rest.find(quote)?].replace("&amp;", "&"));
        }
    }
    None
}
