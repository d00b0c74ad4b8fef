//! `portcullis print-config` (issue 11, item 5): the effective configuration, after environment
//! overrides, with every secret redacted; and `portcullis healthcheck`, the probe the container
//! image's HEALTHCHECK runs (issue 11, item 6).

use std::{path::PathBuf, process::Command, time::Duration};

use portcullis_testkit::{Gateway, GatewayOptions, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

const CLIENT_SECRET: &str = "client-secret-from-the-file-1f3b";
const ENV_CLIENT_SECRET: &str = "client-secret-from-the-environment-9c2e";
const REDIS_PASSWORD: &str = "redis-password-77aa";

struct Files {
    dir: PathBuf,
    config: PathBuf,
    session_secret: String,
    previous_secret: String,
}

impl Drop for Files {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn generate() -> String {
    let out = Command::new(BIN).arg("generate-secret").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim_end().to_string()
}

/// A config holding every kind of secret: inline client secret, session secret from a file,
/// an old secret in `previous_secrets`, a Redis URL with a password.
fn files(name: &str, listen: &str) -> Files {
    let dir = std::env::temp_dir().join(format!("portcullis-print-config-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (session_secret, previous_secret) = (generate(), generate());
    std::fs::write(dir.join("session_secret"), format!("{session_secret}\n")).unwrap();
    let config = dir.join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "{listen}"
public_url = "https://gateway.example"
[oidc]
issuer = "http://127.0.0.1:9"
client_id = "gw"
client_secret = "{CLIENT_SECRET}"
[session]
store = "redis"
redis_url = "redis://portcullis:{REDIS_PASSWORD}@127.0.0.1:6379/2"
secret_file = "{}"
previous_secrets = ["{previous_secret}"]
[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:9100"
"#,
            dir.join("session_secret").display()
        ),
    )
    .unwrap();
    Files { dir, config, session_secret, previous_secret }
}

fn portcullis(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("PORTCULLIS_CONFIG").env_remove("PORTCULLIS_OIDC__CLIENT_SECRET");
    command.envs(env.iter().copied()).output().unwrap()
}

#[test]
fn print_config_shows_the_effective_config_with_secrets_redacted() {
    let f = files("print", "127.0.0.1:8080");
    let out = portcullis(
        &["print-config", f.config.to_str().unwrap()],
        &[
            ("PORTCULLIS_SESSION__IDLE_TIMEOUT", "3h"),
            ("PORTCULLIS_LISTEN", "0.0.0.0:8443"),
            ("PORTCULLIS_OIDC__CLIENT_SECRET", ENV_CLIENT_SECRET),
        ],
    );
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "print-config failed: {stderr}");
    for secret in [CLIENT_SECRET, ENV_CLIENT_SECRET, REDIS_PASSWORD, &f.session_secret, &f.previous_secret] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "a secret is printed:\n{stdout}{stderr}");
    }
    let printed: toml::Table = stdout.parse().unwrap_or_else(|e| panic!("not TOML ({e}):\n{stdout}"));
    let get = |path: &str| {
        let mut value = toml::Value::Table(printed.clone());
        for key in path.split('.') {
            value = value.get(key).unwrap_or_else(|| panic!("{path} not printed:\n{stdout}")).clone();
        }
        value
    };
    // Environment overrides applied, over the file.
    assert_eq!(get("session.idle_timeout").as_str(), Some("3h"));
    assert_eq!(get("listen").as_str(), Some("0.0.0.0:8443"));
    // Secrets: shown to be set, never shown.
    assert_eq!(get("oidc.client_secret").as_str(), Some("<redacted>"));
    assert_eq!(get("session.secret").as_str(), Some("<redacted>"));
    assert_eq!(get("session.previous_secrets").as_array().map(Vec::len), Some(1));
    let redis = get("session.redis_url");
    assert!(redis.as_str().unwrap().contains("127.0.0.1:6379/2"), "{redis}");
    // Defaults filled in, and the route table.
    assert_eq!(get("refresh.lease_ttl").as_str(), Some("5s"));
    assert_eq!(get("server.path_parameters").as_str(), Some("refuse"));
    assert_eq!(get("routes").as_array().unwrap()[0]["prefix"].as_str(), Some("/"));

    // An invalid config is refused like check-config refuses it, naming the key.
    let out = portcullis(&["print-config", f.config.to_str().unwrap()], &[("PORTCULLIS_SESSION__STORE", "mongo")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("session.store"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_probes_the_configured_listener() {
    let upstream = Upstream::start(None).await;
    // /healthz answers whether or not the OP is reachable.
    let gateway = Gateway::start(BIN, &GatewayOptions::new("http://127.0.0.1:9", &upstream.url())).await;
    let addr = gateway.url().trim_start_matches("http://").to_string();
    let port = addr.rsplit(':').next().unwrap().to_string();

    // From the configuration's `listen` (0.0.0.0 is probed on loopback), as a container runs it.
    let f = files("healthcheck", &format!("0.0.0.0:{port}"));
    let run = |args: &[&str]| portcullis(args, &[("PORTCULLIS_CONFIG", f.config.to_str().unwrap())]);
    let out = tokio::task::block_in_place(|| run(&["healthcheck"]));
    assert!(out.status.success(), "healthcheck failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = tokio::task::block_in_place(|| run(&["healthcheck", "--addr", &addr]));
    assert!(out.status.success(), "healthcheck --addr failed: {}", String::from_utf8_lossy(&out.stderr));

    // Nothing listening: a failure, quickly.
    drop(gateway);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let out = tokio::task::block_in_place(|| run(&["healthcheck", "--timeout", "2s"]));
    assert!(!out.status.success(), "healthcheck passed with no gateway");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to 127.0.0.1:"), "{}", String::from_utf8_lossy(&out.stderr));
}
