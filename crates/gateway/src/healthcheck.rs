//! `portcullis healthcheck`: GET `/healthz` on the running gateway and exit 0 on `200`.
//!
//! For container `HEALTHCHECK`s and exec probes in images without curl or a shell (distroless).
//! Plain HTTP/1.1 over a `std` socket: the gateway's own listener speaks plain HTTP, and a probe
//! that starts a runtime and a client pool every few seconds would cost more than it checks.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::Context;

/// One probe, connect and answer together bounded by `timeout`.
pub(crate) fn probe(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let addr = reachable(addr);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: portcullis-healthcheck\r\n\r\n")
        .with_context(|| format!("writing to {addr}"))?;
    // The status line is all we read; 64 bytes hold it.
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() && !head[..len].contains(&b'\n') {
        match stream.read(&mut head[len..]).with_context(|| format!("reading from {addr}"))? {
            0 => break,
            n => len += n,
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let status = line.lines().next().unwrap_or("").trim();
    match status.split(' ').nth(1) {
        Some("200") => Ok(()),
        _ => anyhow::bail!("http://{addr}/healthz answered {status:?}"),
    }
}

/// A gateway listening on every address (`0.0.0.0`, `::`) is probed on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}
