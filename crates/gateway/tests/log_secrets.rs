//! Logs (issue 11 item 2): a full login, refresh, sign-out and bearer-token run against the real
//! OP (`oidc-provider`), with the gateway logging at `debug` (`trace` for its own crates), in
//! text and in JSON. Every secret value of the run is collected where it really travels (the
//! gateway's calls to the OP pass through a recording HTTP proxy, `HTTP_PROXY`; the browser's
//! redirects and cookies; the API client's tokens) and none may appear in the log. The access
//! lines must be there: one per request, with route, status and the request id the response
//! carried; parseable JSON in JSON mode.

mod common;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{Setup, Store};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use portcullis_testkit::{API_RESOURCE, Browser, Hop, OpOptions};
use serde_json::Value;

// --- A recording forward proxy between the gateway and the OP ----------------------------

/// Everything that crossed the proxy: request lines, headers and bodies, both ways.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<Exchange>>>);

#[derive(Debug, Clone)]
struct Exchange {
    uri: String,
    request_headers: Vec<(String, String)>,
    request_body: String,
    response_body: String,
}

/// An HTTP/1.1 forward proxy on a free port (the gateway reaches the OP through it because its
/// environment says `HTTP_PROXY`); it passes each request on and records it.
async fn recording_proxy() -> (String, Recording) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let recording = Recording::default();
    let shared = recording.clone();
    tokio::spawn(async move {
        let http = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        while let Ok((stream, _)) = listener.accept().await {
            let (http, recording) = (http.clone(), shared.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let (http, recording) = (http.clone(), recording.clone());
                    async move { Ok::<_, Infallible>(pass_on(&http, &recording, req).await) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (url, recording)
}

async fn pass_on(http: &reqwest::Client, recording: &Recording, req: hyper::Request<Incoming>) -> hyper::Response<Full<bytes::Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let mut forwarded = http.request(parts.method.clone(), parts.uri.to_string()).body(body.clone());
    let mut request_headers = Vec::new();
    for (name, value) in &parts.headers {
        request_headers.push((name.to_string(), value.to_str().unwrap_or_default().to_string()));
        if !matches!(name.as_str(), "host" | "proxy-connection" | "connection" | "content-length") {
            forwarded = forwarded.header(name, value);
        }
    }
    let answer = forwarded.send().await.unwrap();
    let status = answer.status();
    let headers = answer.headers().clone();
    let answer_body = answer.bytes().await.unwrap();
    recording.0.lock().unwrap().push(Exchange {
        uri: parts.uri.to_string(),
        request_headers,
        request_body: String::from_utf8_lossy(&body).into_owned(),
        response_body: String::from_utf8_lossy(&answer_body).into_owned(),
    });
    let mut response = hyper::Response::builder().status(status);
    for (name, value) in &headers {
        if !matches!(name.as_str(), "connection" | "transfer-encoding" | "content-length" | "keep-alive") {
            response = response.header(name, value);
        }
    }
    response.body(Full::new(answer_body)).unwrap()
}

// --- The secrets of a run ----------------------------------------------------------------

/// Every secret value seen in the run, with where it was seen (for the failure message).
#[derive(Default)]
struct Secrets(BTreeMap<String, String>);

impl Secrets {
    fn add(&mut self, what: &str, value: &str) {
        // Short values (`true`, `S256`, a port) are not secrets and would match by chance.
        if value.len() >= 8 {
            self.0.entry(value.to_string()).or_insert_with(|| what.to_string());
        }
    }

    /// Token and code fields of the OP's JSON answers and of the gateway's form posts.
    fn add_recorded(&mut self, recording: &Recording) {
        const FIELDS: [&str; 8] =
            ["access_token", "refresh_token", "id_token", "code", "code_verifier", "token", "client_secret", "id_token_hint"];
        for exchange in recording.0.lock().unwrap().iter() {
            if let Ok(json) = serde_json::from_str::<Value>(&exchange.response_body) {
                for field in FIELDS {
                    if let Some(value) = json[field].as_str() {
                        self.add(&format!("{field} from the OP ({})", exchange.uri), value);
                    }
                }
            }
            for (field, value) in url::form_urlencoded::parse(exchange.request_body.as_bytes()) {
                if FIELDS.contains(&field.as_ref()) {
                    self.add(&format!("{field} sent to the OP ({})", exchange.uri), &value);
                }
            }
            for (name, value) in &exchange.request_headers {
                if name == "authorization" {
                    self.add("client authentication header", value);
                    if let Some((_, credentials)) = value.split_once(' ') {
                        self.add("client credentials (base64)", credentials);
                    }
                }
            }
        }
    }

    /// Query parameters of the browser's redirects (state, nonce, PKCE challenge, code,
    /// `id_token_hint`) and the gateway's cookie values.
    fn add_hops(&mut self, hops: &[Hop], gateway: &str) {
        for hop in hops {
            for url in std::iter::once(&hop.url).chain(hop.location.as_ref()) {
                for (name, value) in url.query_pairs() {
                    if matches!(name.as_ref(), "state" | "nonce" | "code" | "code_challenge" | "id_token_hint") {
                        self.add(&format!("{name} in {}", url.path()), &value);
                    }
                }
            }
            if hop.url.as_str().starts_with(gateway) {
                for cookie in &hop.set_cookies {
                    let value = cookie.split(';').next().and_then(|nv| nv.split_once('=')).map(|(_, v)| v).unwrap_or_default();
                    self.add(&format!("cookie set at {}", hop.url.path()), value);
                    // The session cookie is `<version>.<id>.<mac>`: its parts are secrets too.
                    for part in value.split('.') {
                        self.add(&format!("cookie part set at {}", hop.url.path()), part);
                    }
                }
            }
        }
    }

    fn assert_absent_from(&self, log: &str, format: &str) {
        assert!(self.0.len() >= 12, "the run should have produced tokens, codes, cookies: {:?}", self.0.values().collect::<Vec<_>>());
        for (value, what) in &self.0 {
            assert!(!log.contains(value.as_str()), "{format} log leaks {what}");
        }
    }
}

// --- Access lines ------------------------------------------------------------------------

/// One access line's fields.
type Fields = BTreeMap<String, String>;

fn access_lines(log: &str, format: &str) -> Vec<Fields> {
    let mut lines = Vec::new();
    for line in log.lines() {
        if format == "json" {
            let json: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if json["target"] == "portcullis::access" {
                let fields =
                    json.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), String::from)));
                lines.push(fields.collect());
            }
        } else if let Some((_, rest)) = line.split_once(" portcullis::access: request ") {
            lines.push(text_fields(rest));
        }
    }
    lines
}

/// `key=value key="quoted \"value\""` as the text format writes fields.
fn text_fields(text: &str) -> Fields {
    let mut fields = Fields::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        fields.insert(key.trim().to_string(), value);
        rest = next.trim_start();
    }
    fields
}

/// The route label the gateway should log for a path of this setup.
fn route_of(path: &str) -> &'static str {
    match path {
        "/oauth2/start" => "/oauth2/start",
        "/oauth2/callback" => "/oauth2/callback",
        "/oauth2/sign_out" => "/oauth2/sign_out",
        p if p.starts_with("/public") => "/public",
        p if p.starts_with("/jwt") => "api-jwt",
        p if p.starts_with("/introspect") => "api-introspect",
        _ => "/",
    }
}

// --- The run -----------------------------------------------------------------------------

/// What the run did at the gateway, in order: (method, path, status, request id if read).
type Calls = Vec<(String, String, u16, Option<String>)>;

fn gateway_hops(calls: &mut Calls, hops: &[Hop], gateway: &str, methods: &[&str]) {
    let mut methods = methods.iter();
    for hop in hops.iter().filter(|h| h.url.as_str().starts_with(gateway)) {
        calls.push((methods.next().unwrap_or(&"GET").to_string(), hop.url.path().to_string(), hop.status, None));
    }
}

fn client(local: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(local.parse::<IpAddr>().unwrap()).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn call(calls: &mut Calls, request: reqwest::RequestBuilder, path: &str) -> reqwest::Response {
    let (client, request) = request.build_split();
    let request = request.unwrap();
    let method = request.method().to_string();
    let response = client.execute(request).await.unwrap();
    let id = response.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string());
    calls.push((method, path.to_string(), response.status().as_u16(), id));
    response
}

async fn run(format: &str) {
    let (proxy, recording) = recording_proxy().await;
    let api = portcullis_testkit::Upstream::start(None).await;
    let api_url = api.url();
    let level = format!("[log]\nformat = \"{format}\"\nlevel = \"debug,portcullis=trace\"\n");
    let s = Setup::start_with(Store::Memory, OpOptions { access_token_ttl: 2, ..OpOptions::default() }, |o| {
        let route = |prefix: &str, name: &str, rest: &str| {
            format!(
                "\n[[routes]]\nprefix = \"{prefix}\"\nname = \"{name}\"\nupstream = \"{api_url}\"\nunauthenticated = \"deny\"\n{rest}\n"
            )
        };
        o.extra = [
            level.clone(),
            route("/jwt", "api-jwt", "bearer = \"jwt\"\naudiences = [\"http://api.test\"]"),
            route("/introspect", "api-introspect", "bearer = \"introspect\""),
        ]
        .concat();
        o.routes.retain(|(prefix, _, _)| prefix == "/" || prefix == "/public");
        // The config's level applies: the environment's would override it.
        o.env.push(("PORTCULLIS_LOG".into(), String::new()));
        o.env.push(("RUST_LOG".into(), String::new()));
        o.env.push(("HTTP_PROXY".into(), proxy.clone()));
        o.env.push(("NO_PROXY".into(), String::new()));
        o.env.push(("PORTCULLIS_TRUSTED_PROXIES".into(), "[\"127.0.0.2/32\"]".into()));
    })
    .await;
    let gateway = s.gateway.url();
    let mut secrets = Secrets::default();
    let mut calls = Calls::new();

    // Login: the browser's hops at the gateway are GETs (the OP's form POST is not ours).
    let browser = Browser::new();
    let hops = browser.login(&s.url("/"), "alice").await;
    assert_eq!(hops.last().unwrap().status, 200, "{hops:#?}");
    secrets.add_hops(&hops, &gateway);
    gateway_hops(&mut calls, &hops, &gateway, &[]);
    let cookie = s.session_cookie(&browser).unwrap();
    secrets.add("session cookie", &cookie);

    // Refresh: the access token expires (2 s), the next request waits for the new one.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let response = call(&mut calls, browser.http().get(s.url("/after-refresh")), "/after-refresh").await;
    assert_eq!(response.status(), 200);
    assert!(s.op.refresh_grants().await >= 1, "a refresh happened");

    // Bearer tokens: a JWT and an opaque (introspected) one, and a forged one refused.
    let jwt = s.op.api_token(Some(API_RESOURCE), "api:read").await;
    let opaque = s.op.api_token(None, "api:read").await;
    secrets.add("API client's JWT", &jwt);
    secrets.add("API client's opaque token", &opaque);
    secrets.add("API client secret", portcullis_testkit::API_CLIENT_SECRET);
    let r = call(&mut calls, client("127.0.0.1").get(s.url("/jwt/x")).bearer_auth(&jwt), "/jwt/x").await;
    assert_eq!(r.status(), 200);
    let r = call(&mut calls, client("127.0.0.1").get(s.url("/introspect/x")).bearer_auth(&opaque), "/introspect/x").await;
    assert_eq!(r.status(), 200);
    let forged = format!("{}x", &jwt[..jwt.len() - 1]);
    secrets.add("forged JWT", &forged);
    let r = call(&mut calls, client("127.0.0.1").get(s.url("/jwt/x")).bearer_auth(&forged), "/jwt/x").await;
    assert_eq!(r.status(), 401);
    // A code and a state sent by hand, without the login they belong to: refused, not logged.
    let r = call(
        &mut calls,
        client("127.0.0.1").get(s.url("/oauth2/callback?code=hand-made-code-123&state=hand-made-state-456")),
        "/oauth2/callback",
    )
    .await;
    assert!(r.status().is_client_error(), "{}", r.status());
    secrets.add("hand-made code", "hand-made-code-123");
    secrets.add("hand-made state", "hand-made-state-456");

    // Sign-out: the confirmation page, then the POST (its redirect carries the ID token hint).
    let out = browser.sign_out(&gateway).await;
    // `sign_out` loads the page again, then posts.
    calls.push(("GET".into(), "/oauth2/sign_out".into(), 200, None));
    gateway_hops(&mut calls, std::slice::from_ref(&out), &gateway, &["POST"]);
    assert_eq!(out.status / 100, 3, "{out:#?}");
    secrets.add_hops(&[out], &gateway);

    // Request ids: a trusted proxy's is kept, a client's is replaced (any spelling).
    let trusted = client("127.0.0.2").get(s.url("/public/id")).header("x-request-id", "front-proxy-id-0001");
    let r = call(&mut calls, trusted, "/public/id").await;
    assert_eq!(r.headers()["x-request-id"], "front-proxy-id-0001");
    assert_eq!(s.upstream.last().unwrap().headers.get("x-request-id").map(String::as_str), Some("front-proxy-id-0001"));
    let too_long = "i".repeat(129);
    let r = client("127.0.0.2").get(s.url("/public/id")).header("x-request-id", &too_long).send().await.unwrap();
    let replaced = r.headers()["x-request-id"].to_str().unwrap().to_string();
    calls.push(("GET".into(), "/public/id".into(), r.status().as_u16(), Some(replaced.clone())));
    assert_eq!(replaced.len(), 32, "an unacceptable id is replaced by the gateway's");
    let spoofed =
        client("127.0.0.1").get(s.url("/public/id")).header("x-request-id", "spoofed-id-0001").header("x_request_id", "spoofed-id-0002");
    let r = call(&mut calls, spoofed, "/public/id").await;
    let own = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(own.len() == 32 && own.bytes().all(|b| b.is_ascii_hexdigit()), "the gateway's own id: {own}");
    let seen = s.upstream.last().unwrap();
    assert_eq!(seen.headers.get("x-request-id"), Some(&own), "the upstream gets the id the client gets back");
    assert!(!seen.headers.contains_key("x_request_id"), "another spelling never passes: {:?}", seen.headers);

    // Everything the gateway said to the OP and heard from it.
    secrets.add_recorded(&recording);
    secrets.add("OIDC client secret", portcullis_testkit::CLIENT_SECRET);
    secrets.add("session secret", "or9UtaSFLwIWWCKa2M8yYFbdgSrKZIR1sOASg3as6p0xWE9bgkwx7YJudagrJOcd");
    secrets.add("session secret (a part)", "or9UtaSFLwIWWCKa2M8yYFb");
    let exchanges = recording.0.lock().unwrap().len();
    assert!(exchanges >= 5, "discovery, JWKS, code, refresh, introspection, revocation went through the proxy: {exchanges}");

    // Let the last lines reach the file.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = s.gateway.log_text();
    let debug_marker = if format == "json" { "\"level\":\"DEBUG\"" } else { " DEBUG " };
    assert!(log.contains(debug_marker), "the config's level (debug) is in force: {log}");
    secrets.assert_absent_from(&log, format);

    let lines: Vec<Fields> = access_lines(&log, format)
        .into_iter()
        .filter(|l| !matches!(l.get("route").map(String::as_str), Some("/healthz" | "/readyz")))
        .collect();
    assert_eq!(lines.len(), calls.len(), "one access line per request:\n{lines:#?}\n{calls:#?}");
    for (line, (method, path, status, id)) in lines.iter().zip(&calls) {
        assert_eq!(line["method"], *method, "{line:?} for {path}");
        assert_eq!(line["route"], route_of(path), "{line:?} for {path}");
        assert_eq!(line["status"], status.to_string(), "{line:?} for {path}");
        assert!(line["duration_ms"].parse::<f64>().is_ok(), "{line:?}");
        assert!(!line["request_id"].is_empty(), "{line:?}");
        if let Some(id) = id {
            assert_eq!(&line["request_id"], id, "the access line names the id the response carried");
        }
    }
    let user_of = |path: &str| lines.iter().zip(&calls).find(|(_, c)| c.1 == path).map(|(l, _)| l["user"].clone());
    assert_eq!(user_of("/after-refresh").as_deref(), Some("alice"), "the user_claim of the session");
    assert_eq!(user_of("/public/id").as_deref(), Some("-"), "anonymous");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_text_logs_and_one_access_line_per_request() {
    run("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_json_logs_and_one_access_line_per_request() {
    run("json").await;
}

// --- The level: the config's, unless the environment says otherwise ----------------------

/// A gateway whose OP is unreachable (discovery retries in the background; `/healthz` answers),
/// configured with `level = "warn"`.
async fn quiet_gateway(env_filter: &str) -> portcullis_testkit::Gateway {
    let mut options = portcullis_testkit::GatewayOptions::new("http://127.0.0.1:9", "http://127.0.0.1:9");
    options.extra = "[log]\nlevel = \"warn\"\n".into();
    options.env = vec![("PORTCULLIS_LOG".into(), env_filter.into()), ("RUST_LOG".into(), String::new())];
    portcullis_testkit::Gateway::start(common::BIN, &options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_level_applies_and_the_environment_overrides_it() {
    let (quiet, loud) = tokio::join!(quiet_gateway(""), quiet_gateway("info"));
    for gateway in [&quiet, &loud] {
        let r = reqwest::get(format!("{}/healthz", gateway.url())).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (quiet, loud) = (quiet.log_text(), loud.log_text());
    assert!(!quiet.contains("portcullis::access") && !quiet.contains(" INFO "), "level = \"warn\" is in force:\n{quiet}");
    assert!(loud.contains("portcullis::access: request method=GET route=\"/healthz\" status=200"), "PORTCULLIS_LOG=info wins:\n{loud}");
}

#[test]
fn check_config_refuses_a_bad_log_level() {
    let dir = std::env::temp_dir().join(format!("portcullis-log-level-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("portcullis.toml");
    let config = |level: &str| {
        format!(
            "public_url = \"http://127.0.0.1:8080\"\n[oidc]\nissuer = \"http://127.0.0.1:9000\"\nclient_id = \"gw\"\nclient_secret = \"gw-secret\"\n\
             [session]\nsecret = \"or9UtaSFLwIWWCKa2M8yYFbdgSrKZIR1sOASg3as6p0xWE9bgkwx7YJudagrJOcd\"\n[log]\nformat = \"json\"\nlevel = \"{level}\"\n"
        )
    };
    let check = |level: &str| {
        std::fs::write(&file, config(level)).unwrap();
        std::process::Command::new(common::BIN).arg("check-config").arg(&file).output().unwrap()
    };
    let good = check("warn,portcullis::access=info");
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    let bad = check("info,portcullis=loud");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("log.level"), "{}", String::from_utf8_lossy(&bad.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that gives up before the upstream answers still gets its access line: 499.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_is_logged_as_499() {
    let silent = portcullis_testkit::Upstream::silent().await;
    let mut options = portcullis_testkit::GatewayOptions::new("http://127.0.0.1:9", &silent.url());
    options.routes = vec![("/".into(), silent.url(), "allow".into())];
    let gateway = portcullis_testkit::Gateway::start(common::BIN, &options).await;
    let client = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let gone = client.get(format!("{}/slow", gateway.url())).send().await;
    assert!(gone.is_err_and(|e| e.is_timeout()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = gateway.log_text();
        let line = log.lines().find(|l| l.contains("portcullis::access") && l.contains("route=\"/\""));
        if let Some(line) = line {
            assert!(line.contains("status=499"), "{line}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no access line for the abandoned request:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
