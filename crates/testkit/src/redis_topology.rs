//! Building blocks of the Redis topologies the tests start: one `redis-server` process with
//! arbitrary arguments, TLS certificates made for the test, and `redis-cli` calls.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::process::{Child, Command};

use crate::process::{ensure_test_deps, free_port, wait_for_port};

/// A scratch directory for one topology, removed when dropped (kept when a test fails).
pub(crate) struct ScratchDir(pub(crate) PathBuf);

impl ScratchDir {
    pub(crate) fn new(kind: &str) -> Self {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("portcullis-{kind}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One `redis-server` (or `redis-server --sentinel`) process on a loopback port.
pub struct RedisNode {
    pub(crate) port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisNode {
    /// Starts `redis-server <args>`; `args` must include `--port` (or a config file naming it).
    pub(crate) async fn start(port: u16, args: Vec<String>) -> Self {
        ensure_test_deps();
        let mut node = Self { port, args, child: None };
        node.spawn().await;
        node
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        assert!(wait_for_port(self.addr(), Duration::from_secs(10)).await, "redis-server on {} did not start", self.port);
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills the process (SIGKILL: a crash, no goodbye to the clients or the sentinels).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again with the same arguments.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

/// Arguments common to every test node: loopback only, nothing on disk.
pub(crate) fn base_args(port: u16, dir: &Path) -> Vec<String> {
    ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", &dir.display().to_string()]
        .into_iter()
        .map(String::from)
        .collect()
}

/// `redis-cli -p <port> <args>` on a plain node, its stdout; panics when it fails.
#[allow(dead_code)] // the topologies use `Cli` now; kept for fixtures on plain nodes
pub(crate) async fn redis_cli(port: u16, args: &[&str]) -> String {
    Cli::default().run(port, args).await
}

/// How the fixture's own `redis-cli` calls reach a topology: over TLS with the test CA, and as
/// [`ADMIN_USER`] when the default user is off.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cli {
    ca_file: Option<PathBuf>,
    admin: bool,
}

impl Cli {
    pub(crate) fn new(options: &TopologyOptions<'_>) -> Self {
        Self { ca_file: options.tls.map(|c| c.ca_file.clone()), admin: options.acl_only }
    }

    /// `redis-cli -p <port> [--tls --cacert …] [--user … --pass …] <args>`, its stdout; panics when it fails.
    pub(crate) async fn run(&self, port: u16, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(ca) = &self.ca_file {
            command.arg("--tls").arg("--cacert").arg(ca);
        }
        if self.admin {
            command.args(["--user", ADMIN_USER, "--pass", ADMIN_PASSWORD, "--no-auth-warning"]);
        }
        // Bounded: `--cluster create` waits forever for nodes whose bus cannot connect.
        let out = tokio::time::timeout(Duration::from_secs(30), command.args(args).kill_on_drop(true).output())
            .await
            .unwrap_or_else(|_| panic!("redis-cli {args:?} on port {port}: no answer within 30 s"))
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// How a multi-process topology ([`crate::RedisCluster`], [`crate::RedisSentinels`]) is
/// secured. The default is what the plain `start()` gives: plain TCP, the default user on.
#[derive(Clone, Copy, Default)]
pub struct TopologyOptions<'a> {
    /// TLS only, with these certificates (plain port 0), on every link: clients, the Cluster
    /// bus, replication, and the sentinels' links to the data nodes and to each other.
    pub tls: Option<&'a TestCerts>,
    /// The default user off on every process: the gateway gets in only as [`ACL_USER`] (and,
    /// at the sentinels, as [`SENTINEL_USER`]); replication, sentinels and the fixture itself
    /// as [`ADMIN_USER`].
    pub acl_only: bool,
}

impl TopologyOptions<'_> {
    /// `rediss` with TLS, else `redis` (the scheme's prefix before `+cluster`/`+sentinel`).
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "rediss" } else { "redis" }
    }

    /// TLS arguments of a data node (`redis-server`), replication over TLS included.
    pub(crate) fn tls_args(&self, port: u16) -> Vec<String> {
        let Some(certs) = self.tls else { return Vec::new() };
        let mut args = certs.server_args(port);
        args.extend(["--tls-replication", "yes"].map(String::from));
        args
    }

    /// ACL arguments of a data node: [`ACL_USER`] always; with `acl_only`, [`ADMIN_USER`],
    /// the default user off, and replication authenticated as the admin.
    pub(crate) fn acl_args(&self) -> Vec<String> {
        let mut args = acl_args(self.acl_only);
        if self.acl_only {
            args.extend(admin_args());
            args.extend(["--masteruser", ADMIN_USER, "--masterauth", ADMIN_PASSWORD].map(String::from));
        }
        args
    }
}

/// Waits until `check` is true, for at most `within`.
pub(crate) async fn wait_until<F: AsyncFnMut() -> bool>(within: Duration, what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A private CA and a server certificate for `127.0.0.1`/`localhost` (also good as a client
/// certificate, for the Cluster bus), made with `openssl`.
pub struct TestCerts {
    _dir: ScratchDir,
    /// PEM of the CA (what `session.redis_ca_file` points at).
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCerts {
    /// Makes fresh certificates (P-256, valid two days).
    pub fn generate() -> Self {
        ensure_test_deps();
        let dir = ScratchDir::new("certs");
        let d = &dir.0;
        // A name of its own: a second `TestCerts` must be a CA the servers' certificates do not
        // name as their issuer (rustls says `UnknownIssuer`, as with any foreign CA), not one
        // with the same name and another key (`BadSignature`).
        let ca_subject = format!("/CN=Portcullis test CA {}", d.file_name().unwrap().to_string_lossy());
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).current_dir(d).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        // clientAuth too: a Cluster node presents this certificate when it connects to another's
        // TLS bus, and the bus always asks for a client certificate (whatever
        // `tls-auth-clients` says); with serverAuth only, `CLUSTER MEET` never completes.
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        #[rustfmt::skip]
        run(&["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
              "-days", "2", "-subj", &ca_subject, "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        #[rustfmt::skip]
        run(&["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "server.key", "-out", "server.csr",
              "-subj", "/CN=localhost"]);
        #[rustfmt::skip]
        run(&["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt",
              "-days", "2", "-extfile", "server.ext"]);
        Self { ca_file: d.join("ca.crt"), cert_file: d.join("server.crt"), key_file: d.join("server.key"), _dir: dir }
    }

    /// `redis-server` arguments for TLS only on `port` (plain TCP off), clients not asked for certificates.
    pub(crate) fn server_args(&self, port: u16) -> Vec<String> {
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &self.cert_file.display().to_string(),
            "--tls-key-file",
            &self.key_file.display().to_string(),
            "--tls-ca-cert-file",
            &self.ca_file.display().to_string(),
            "--tls-auth-clients",
            "no",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    }
}

/// An ACL user for the gateway, limited to Portcullis' keys and change channels.
pub const ACL_USER: &str = "portcullis";
/// Its password.
pub const ACL_PASSWORD: &str = "s3cret-acl-pass";

/// `--user` arguments that create [`ACL_USER`] (keys and channels `portcullis:*` only) and,
/// with `lock_default`, turn the default user off, so that only the ACL user gets in.
pub(crate) fn acl_args(lock_default: bool) -> Vec<String> {
    // One argv item per ACL rule: redis-server would quote a single item as the user name.
    // The channel rule is the listener's PSUBSCRIBE pattern itself: ACL matches a pattern
    // subscription literally, so `&portcullis:*` would refuse it (and PUBLISH matches it as a glob).
    let mut args: Vec<String> =
        ["--user", ACL_USER, "on", &format!(">{ACL_PASSWORD}"), "~portcullis:*", "&portcullis:{*}:changed", "+@all"]
            .map(String::from)
            .to_vec();
    if lock_default {
        args.extend(["--user", "default", "off"].map(String::from));
    }
    args
}

/// A user for everything that is not the gateway: replication (`masteruser`), the sentinels
/// (`sentinel auth-user`, `sentinel sentinel-user`) and the fixture's own `redis-cli` calls.
pub(crate) const ADMIN_USER: &str = "fixture-admin";
pub(crate) const ADMIN_PASSWORD: &str = "fixture-admin-pass";

/// `--user` arguments that create [`ADMIN_USER`] with every key, channel and command.
pub(crate) fn admin_args() -> Vec<String> {
    ["--user", ADMIN_USER, "on", &format!(">{ADMIN_PASSWORD}"), "~*", "&*", "+@all"].map(String::from).to_vec()
}

/// The gateway's user at the sentinels (`session.redis_sentinel_username`), when they run with
/// the default user off.
pub const SENTINEL_USER: &str = "portcullis-sentinel";
/// Its password (`session.redis_sentinel_password`).
pub const SENTINEL_PASSWORD: &str = "s3cret-sentinel-pass";

pub(crate) fn pick_port() -> u16 {
    free_port()
}

/// One node with TLS only, an ACL user and the default user off; sessions in database 3.
pub struct SecureRedis {
    node: RedisNode,
    ca_file: PathBuf,
    /// What the fixture's `redis-cli` presents when the node asks for a client certificate.
    client_cert: (PathBuf, PathBuf),
    _dir: ScratchDir,
}

impl SecureRedis {
    /// Starts it with `certs`' server certificate.
    pub async fn start(certs: &TestCerts) -> Self {
        let dir = ScratchDir::new("redis-tls");
        let port = pick_port();
        let mut args = base_args(port, &dir.0);
        args.extend(certs.server_args(port));
        args.extend(acl_args(true));
        Self::started(RedisNode::start(port, args).await, certs, dir)
    }

    /// Like [`SecureRedis::start`], and every client must present a certificate signed by
    /// `certs`' CA (`tls-auth-clients yes`: mutual TLS). The fixture's own `redis-cli` calls
    /// present `certs`' certificate, which also allows client use.
    pub async fn start_mutual(certs: &TestCerts) -> Self {
        let dir = ScratchDir::new("redis-mtls");
        let port = pick_port();
        let mut args = base_args(port, &dir.0);
        args.extend(certs.server_args(port));
        args.extend(["--tls-auth-clients".to_string(), "yes".to_string()]);
        args.extend(acl_args(true));
        Self::started(RedisNode::start(port, args).await, certs, dir)
    }

    fn started(node: RedisNode, certs: &TestCerts, dir: ScratchDir) -> Self {
        Self { node, ca_file: certs.ca_file.clone(), client_cert: (certs.cert_file.clone(), certs.key_file.clone()), _dir: dir }
    }

    /// `rediss://portcullis:…@127.0.0.1:<port>/3`.
    pub fn url(&self) -> String {
        format!("rediss://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{}/3", self.node.port)
    }

    /// How many keys matching `pattern` database `db` holds (redis-cli over TLS as the ACL user).
    pub async fn count_keys(&self, db: u8, pattern: &str) -> usize {
        #[rustfmt::skip]
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.node.port.to_string(), "--tls", "--cacert", &self.ca_file.display().to_string(),
                   "--cert", &self.client_cert.0.display().to_string(), "--key", &self.client_cert.1.display().to_string(),
                   "--user", ACL_USER, "--pass", ACL_PASSWORD, "--no-auth-warning", "-n", &db.to_string(), "--scan", "--pattern", pattern])
            .output()
            .await
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli --scan: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).count()
    }

    /// The same node without credentials (must be refused).
    pub fn url_without_credentials(&self) -> String {
        format!("rediss://127.0.0.1:{}/3", self.node.port)
    }
}
