//! What `packaging/` relies on, checked with the real binary (issue 11, item 6): the Kubernetes
//! ConfigMap's configuration is valid with the secrets where the Deployment mounts them, the
//! systemd unit's credential overrides work, and the image's HEALTHCHECK is a command the
//! binary takes. The files' syntax and schemas are `packaging/lint.sh`'s part.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn packaging(path: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("portcullis-packaging-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A session secret and a client secret, as files.
    fn secrets(&self) -> (PathBuf, PathBuf) {
        let out = Command::new(BIN).arg("generate-secret").output().unwrap();
        let session = self.0.join("session_secret");
        std::fs::write(&session, out.stdout).unwrap();
        let client = self.0.join("oidc_client_secret");
        std::fs::write(&client, "client-secret\n").unwrap();
        (session, client)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// The block scalar under `key: |` in a YAML file, dedented.
fn block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |")).skip(1);
    let first = lines.next().unwrap_or_else(|| panic!("no `{key}: |` block"));
    let indent = first.len() - first.trim_start().len();
    std::iter::once(first)
        .chain(lines.take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent))
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn check_config(file: &Path, env: &[(&str, &Path)]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.arg("check-config").arg(file);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")) {
        command.env_remove(key);
    }
    command.envs(env.iter().map(|(k, v)| (*k, v.as_os_str()))).output().unwrap()
}

#[test]
fn the_configmap_config_is_valid_where_the_deployment_mounts_things() {
    let (configmap, deployment) = (packaging("kubernetes/configmap.yaml"), packaging("kubernetes/deployment.yaml"));
    let config = block(&configmap, "portcullis.toml");
    // The Deployment mounts the ConfigMap at /etc/portcullis and points --config at its key.
    assert!(deployment.contains("mountPath: /etc/portcullis\n") && deployment.contains("\"/etc/portcullis/portcullis.toml\""));
    // Reachable through the Service: every address, the container port.
    assert!(config.contains("listen = \"0.0.0.0:8080\"") && deployment.contains("containerPort: 8080"), "{config}");
    assert!(deployment.contains("path: /readyz") && deployment.contains("path: /healthz"));

    // Secret files where the Deployment mounts the Secret's items: the test puts real files at
    // those names under a temporary directory.
    let dir = TempDir::new("configmap");
    let (session, client) = dir.secrets();
    let mount = "/run/secrets/portcullis/";
    assert!(deployment.contains(&format!("mountPath: {}\n", mount.trim_end_matches('/'))));
    for item in ["session_secret", "oidc_client_secret"] {
        assert!(config.contains(&format!("\"{mount}{item}\"")), "the config does not read {mount}{item}");
        assert!(deployment.contains(&format!("path: {item}")), "the Deployment does not mount {item}");
    }
    let config = config
        .replace(&format!("{mount}session_secret"), session.to_str().unwrap())
        .replace(&format!("{mount}oidc_client_secret"), client.to_str().unwrap());
    let file = dir.0.join("portcullis.toml");
    std::fs::write(&file, &config).unwrap();

    // store = "redis" without a URL: the Deployment's environment supplies it.
    assert!(deployment.contains("name: PORTCULLIS_SESSION__REDIS_URL"));
    let refused = check_config(&file, &[]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("session.redis_url"));
    let url = Path::new("redis://redis.default.svc.cluster.local:6379/0");
    let out = check_config(&file, &[("PORTCULLIS_SESSION__REDIS_URL", url)]);
    assert!(out.status.success(), "the ConfigMap's config is refused: {}", String::from_utf8_lossy(&out.stderr));
}

/// The unit passes secrets as credentials and points the `*_file` keys at them through the
/// environment, over the example config's own values.
#[test]
fn the_systemd_units_credential_overrides_work() {
    let unit = packaging("systemd/portcullis.service");
    for line in [
        "Environment=PORTCULLIS_SESSION__SECRET_FILE=%d/session_secret",
        "Environment=PORTCULLIS_OIDC__CLIENT_SECRET_FILE=%d/oidc_client_secret",
        "ExecStartPre=/usr/bin/portcullis check-config ${PORTCULLIS_CONFIG}",
        "ExecStart=/usr/bin/portcullis run",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lost {line:?}");
    }
    let dir = TempDir::new("systemd");
    let (session, client) = dir.secrets();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/portcullis.toml");
    // Without the overrides the example's secret file is missing; with them it is valid.
    assert!(!check_config(&example, &[]).status.success());
    let out = check_config(&example, &[("PORTCULLIS_SESSION__SECRET_FILE", &session), ("PORTCULLIS_OIDC__CLIENT_SECRET_FILE", &client)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// HEALTHCHECK runs a subcommand the binary has (a usage error would exit 2, and the image
/// would be marked unhealthy forever).
#[test]
fn the_image_healthcheck_is_a_command_the_binary_takes() {
    let dockerfile = packaging("Dockerfile");
    let cmd = dockerfile.split("HEALTHCHECK").nth(1).and_then(|s| s.split("CMD [").nth(1)).and_then(|s| s.split(']').next()).unwrap();
    let words: Vec<String> = cmd.split(',').map(|w| w.trim().trim_matches('"').to_string()).collect();
    assert_eq!(words[0], "/usr/local/bin/portcullis");
    assert!(dockerfile.contains("COPY --from=build /out/portcullis /usr/local/bin/portcullis"));
    // Against a port nothing listens on: a probe failure (exit 1), not a usage error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = Command::new(BIN).args(&words[1..]).args(["--addr", &closed.to_string()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to"));
}
