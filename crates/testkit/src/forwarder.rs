//! A TCP forwarder the test can switch off: "the OP is unreachable" (connection refused)
//! without killing the OP and losing its grants.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{net::TcpListener, task::JoinHandle};

/// Forwards `127.0.0.1:<port>` to a target while up; refuses connections while down.
pub struct Forwarder {
    port: u16,
    target: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Forwarder {
    /// Starts forwarding from a free port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let forwarder = Self { port, target, task: Mutex::new(None), connections: Arc::default() };
        forwarder.serve(listener);
        forwarder
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn serve(&self, listener: TcpListener) {
        let target = self.target;
        let connections = self.connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().unwrap().push(conn);
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Stops listening and cuts open connections: new connections are refused.
    pub fn down(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
        for conn in self.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn up(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.port),
            }
        };
        self.serve(listener);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.down();
    }
}
