//! Secrets and what the public learns (issue 7, item 6): `portcullis generate-secret`, the
//! refusal of example secrets by the real binary, and a `/readyz` that names what is down but
//! not why.

use std::{process::Command, time::Duration};

use portcullis_testkit::{Gateway, GatewayOptions, Redis, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn generate() -> String {
    let out = Command::new(BIN).arg("generate-secret").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim_end().to_string()
}

fn check_config(secret: &str) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!("portcullis-secrets-test-{}-{}", std::process::id(), secret.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("portcullis.toml");
    std::fs::write(
        &file,
        format!(
            "public_url = \"http://127.0.0.1:8080\"\n[oidc]\nissuer = \"http://127.0.0.1:9000\"\nclient_id = \"gw\"\nclient_secret = \"gw-secret\"\n[session]\nsecret = {secret:?}\n[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9100\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&file).env_remove("PORTCULLIS_SESSION__SECRET").output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    out
}

#[test]
fn generate_secret_passes_validation_and_differs_per_run() {
    let (a, b) = (generate(), generate());
    assert_ne!(a, b, "two runs printed the same secret");
    for secret in [&a, &b] {
        assert_eq!(secret.len(), 64, "48 bytes in base64: {secret}");
        let out = check_config(secret);
        assert!(out.status.success(), "a generated secret is refused: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The example config's value is refused by the same command, naming the key.
    let out = check_config("change-me-change-me-change-me-change-me");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("session.secret") && err.contains("generate-secret"), "{err}");
    assert!(!err.contains("change-me"), "the error repeats the secret: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_what_is_down_and_only_the_log_says_why() {
    let mut redis = Redis::start().await;
    let upstream = Upstream::start(None).await;
    // An OP that is not there: discovery keeps failing.
    let mut options = GatewayOptions::new("http://127.0.0.1:9", &upstream.url());
    options.store = "redis".into();
    options.redis_url = Some(redis.url());
    let gateway = Gateway::start(BIN, &options).await;
    let redis_port = redis.url().rsplit(':').next().unwrap().to_string();
    redis.stop().await;

    let http = reqwest::Client::new();
    let mut bodies = Vec::new();
    for _ in 0..5 {
        let response = http.get(format!("{}/readyz", gateway.url())).send().await.unwrap();
        assert_eq!(response.status(), 503);
        bodies.push(response.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for body in &bodies {
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json, serde_json::json!({ "ready": false, "identity_provider": "unavailable", "session_store": "unavailable" }));
        for leak in ["127.0.0.1", redis_port.as_str(), "redis", "refused", "error", "timed out"] {
            assert!(!body.to_ascii_lowercase().contains(leak), "/readyz tells the public {leak:?}: {body}");
        }
    }
    let log = gateway.log_text();
    let reported = log.lines().filter(|l| l.contains("session store does not answer")).collect::<Vec<_>>();
    assert!(!reported.is_empty(), "the log does not say why the store is down:\n{log}");
    assert!(reported.iter().all(|l| l.contains("WARN") && l.contains("refused")), "{reported:?}");
    assert!(reported.len() < bodies.len(), "logged on every probe, not on change: {reported:?}");
}
