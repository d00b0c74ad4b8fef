//! Child processes and ports.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::Once,
    time::Duration,
};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// Runs `scripts/install-test-deps.sh` once per test binary when redis-server or the OP's
/// node modules are missing, so `cargo test` works on a fresh machine too.
pub(crate) fn ensure_test_deps() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let root = repo_root();
        let have_redis = std::process::Command::new("redis-server").arg("--version").output().is_ok();
        let have_modules = root.join("tests/op/node_modules/oidc-provider").exists();
        if have_redis && have_modules {
            return;
        }
        let status =
            std::process::Command::new("bash").arg(root.join("scripts/install-test-deps.sh")).status().expect("run install-test-deps.sh");
        assert!(status.success(), "scripts/install-test-deps.sh failed");
    });
}

/// Waits until something accepts TCP connections on `addr`.
pub(crate) async fn wait_for_port(addr: SocketAddr, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
