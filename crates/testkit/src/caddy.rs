//! A real Caddy (Debian's package) in front of the gateway, for the forward-auth tests: the
//! test hands it a Caddyfile (the shipped example, addresses substituted); it runs as a child
//! process on a free loopback port, without its admin API or automatic HTTPS.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tokio::process::{Child, Command};

use crate::process::wait_for_port;

/// A running Caddy, killed when dropped.
pub struct Caddy {
    port: u16,
    _child: Child,
    dir: PathBuf,
}

impl Caddy {
    /// Starts Caddy on `port` (pick it first with [`crate::free_port`]) with `site`, a Caddyfile site block whose address is `site_placeholder`
    /// (replaced by `http://127.0.0.1:<port>`), after a generated global options block.
    pub async fn start(port: u16, site: &str, site_placeholder: &str) -> Self {
        crate::nginx::ensure_front_proxies();
        let dir = std::env::temp_dir().join(format!("portcullis-caddy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let site = site.replace(site_placeholder, &format!("http://127.0.0.1:{port}"));
        let caddyfile = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}\n");
        let config = dir.join("Caddyfile");
        std::fs::write(&config, caddyfile).unwrap();
        let child = Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&config)
            // Caddy keeps state (certificates, autosave) under these; none of it is wanted here.
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("HOME", &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("caddy.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start caddy");
        let caddy = Self { port, _child: child, dir };
        let up = wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(20)).await;
        assert!(up, "caddy did not come up:\n{}", caddy.log_text());
        caddy
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Caddy's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("caddy.log")).unwrap_or_default()
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
