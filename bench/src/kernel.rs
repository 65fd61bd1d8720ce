//! The kernel rows' own process: UDP sockets `connect()`ing to a loopback
//! socket of its own. In an enforced cgroup each new socket runs
//! `sock_create` and each `connect()` runs `connect4` (loopback judged by a
//! socket lookup), with no handshake or peer thread to blur the time.

use std::{net::UdpSocket, time::Instant};

use anyhow::Context as _;

/// Two loops of `count`: a new socket bound and connected each time (then
/// closed), and one socket connected again and again. Prints the means,
/// `{"new_socket_ns": N, "connect_ns": N}`.
pub fn connects(count: u32) -> anyhow::Result<()> {
    let listener = UdpSocket::bind("127.0.0.1:0").context("a loopback UDP socket")?;
    let addr = listener.local_addr()?;
    let mean = |begun: Instant| begun.elapsed().as_nanos() as f64 / f64::from(count.max(1));
    let begun = Instant::now();
    for index in 0..count {
        let socket = UdpSocket::bind("127.0.0.1:0").context("a UDP socket")?;
        socket
            .connect(addr)
            .with_context(|| format!("connect {index} to {addr}"))?;
    }
    let new_socket = mean(begun);
    let socket = UdpSocket::bind("127.0.0.1:0").context("a UDP socket")?;
    let begun = Instant::now();
    for index in 0..count {
        socket
            .connect(addr)
            .with_context(|| format!("connect {index} to {addr}"))?;
    }
    let connect = mean(begun);
    println!(
        "{}",
        serde_json::json!({ "new_socket_ns": new_socket, "connect_ns": connect })
    );
    Ok(())
}
