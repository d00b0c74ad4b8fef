//! A real nginx (Debian's package) in front of the gateway, for the forward-auth tests: the
//! test hands it an `http`-block configuration (the shipped example, addresses substituted)
//! and the files it includes; it runs as a child process on a free loopback port.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tokio::process::{Child, Command};

use crate::process::{repo_root, wait_for_port};

/// A running nginx, stopped when dropped.
pub struct Nginx {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx on `port` (pick it first with [`crate::free_port`]: the OP must know the
    /// front's redirect URI) with `http_block` inside the `http { }` of a generated main config;
    /// `listen_placeholder` in it is replaced by `127.0.0.1:<port>`. `files` are written next to
    /// the main config (relative paths, e.g. `snippets/portcullis-auth.conf`), where nginx's
    /// relative `include`s find them.
    pub async fn start(port: u16, http_block: &str, listen_placeholder: &str, files: &[(&str, String)]) -> Self {
        ensure_front_proxies();
        let dir = std::env::temp_dir().join(format!("portcullis-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let http_block = http_block.replace(listen_placeholder, &format!("listen 127.0.0.1:{port}"));
        let d = dir.display();
        let main = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {d}/logs/access.log;\n  client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{http_block}\n}}\n"
        );
        let config = dir.join("nginx.conf");
        std::fs::write(&config, main).unwrap();
        let binary = if std::path::Path::new("/usr/sbin/nginx").exists() { "/usr/sbin/nginx" } else { "nginx" };
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("logs/stderr.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start nginx");
        let nginx = Self { port, child, dir };
        let up = wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(20)).await;
        assert!(up, "nginx did not come up:\n{}", nginx.log_text());
        nginx
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// nginx's error log and stderr.
    pub fn log_text(&self) -> String {
        let read = |p: &str| std::fs::read_to_string(self.dir.join(p)).unwrap_or_default();
        format!("{}{}", read("logs/stderr.log"), read("logs/error.log"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // One process (`master_process off`): killing it (kill_on_drop) leaves no worker behind.
        let _ = self.child.start_kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `scripts/install-test-deps.sh` once per test binary when nginx or caddy is missing.
pub(crate) fn ensure_front_proxies() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let found = |bin: &str| std::process::Command::new(bin).arg("-v").output().is_ok();
        if (found("nginx") || std::path::Path::new("/usr/sbin/nginx").exists()) && found("caddy") {
            return;
        }
        let script = repo_root().join("scripts/install-test-deps.sh");
        let status = std::process::Command::new("bash").arg(script).status().expect("run install-test-deps.sh");
        assert!(status.success(), "scripts/install-test-deps.sh failed");
    });
}
