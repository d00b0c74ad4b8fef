//! Shared setup: a real OP, an upstream, optionally Redis, and the gateway binary.

#![allow(dead_code, unreachable_pub)]

pub mod traffic;

use portcullis_testkit::{Browser, Gateway, GatewayOptions, Hop, Op, OpOptions, Redis, Upstream};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Memory,
    Redis,
}

pub struct Setup {
    pub op: Op,
    pub upstream: Upstream,
    pub gateway: Gateway,
    pub redis: Option<Redis>,
}

impl Setup {
    pub async fn start(store: Store, op_options: OpOptions) -> Self {
        Self::start_with(store, op_options, |_| {}).await
    }

    /// Starts everything; `customize` may change the gateway's options before it starts.
    pub async fn start_with(store: Store, op_options: OpOptions, customize: impl FnOnce(&mut GatewayOptions)) -> Self {
        let redis = match store {
            Store::Redis => Some(Redis::start().await),
            Store::Memory => None,
        };
        let mut options = GatewayOptions::new("http://placeholder", "http://placeholder");
        let op = Op::start(op_options, &[format!("http://127.0.0.1:{}", options.port)]).await;
        let upstream = Upstream::start(Some(op.direct())).await;
        options.issuer = op.issuer();
        options.routes = vec![
            ("/".into(), upstream.url(), "login".into()),
            ("/api".into(), upstream.url(), "login".into()),
            ("/public".into(), upstream.url(), "allow".into()),
            ("/internal".into(), upstream.url(), "deny".into()),
        ];
        if let Some(redis) = &redis {
            options.store = "redis".into();
            options.redis_url = Some(redis.url());
        }
        customize(&mut options);
        let gateway = Gateway::start(BIN, &options).await;
        gateway.wait_ready().await;
        Self { op, upstream, gateway, redis }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url())
    }

    /// A browser that has logged in as `user`, having first asked for `path`.
    pub async fn logged_in(&self, path: &str, user: &str) -> (Browser, Vec<Hop>) {
        let browser = Browser::new();
        let hops = browser.login(&self.url(path), user).await;
        let last = hops.last().unwrap();
        assert_eq!(last.status, 200, "login did not end on the page: {hops:#?}\n{}", self.gateway.log_text());
        (browser, hops)
    }

    pub fn session_cookie(&self, browser: &Browser) -> Option<String> {
        browser.cookie(&self.gateway.url(), "portcullis")
    }
}

/// Generates one test per store from an `async fn(Store)`.
#[macro_export]
macro_rules! for_each_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::common::Store::Memory).await })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::common::Store::Redis).await })*
        }
    };
}
