//! Child processes and ports.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

/// Where [`free_port`] picks from: below Linux's ephemeral range (32768–60999), which is where
/// every `bind(…:0)` of the tests' own servers (upstreams, the OP) and every outgoing
/// connection's source port come from. A port taken from the ephemeral range and released was
/// free for the OS to hand to the next `:0` bind of a test running in parallel, before the
/// process meant to use it had bound it: that process then failed to start while the other
/// test's server answered on its port (seen: a login that reached another test's upstream).
const PICK_FROM: u32 = 10_000;
const PICK_SPAN: u32 = 22_000;

/// A port nobody listens on right now, never handed out twice by this process.
pub fn free_port() -> u16 {
    // A start that differs per process, so that test binaries run one after another (whose
    // children may linger a moment) do not walk the same sequence.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(u32::MAX, std::process::id().wrapping_mul(7919) % PICK_SPAN, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..PICK_SPAN {
        let port = (PICK_FROM + NEXT.fetch_add(1, Ordering::Relaxed) % PICK_SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PICK_FROM}..{}", PICK_FROM + PICK_SPAN)
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
