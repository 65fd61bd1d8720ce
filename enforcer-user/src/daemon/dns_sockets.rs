//! The DNS filter's sockets: one UDP socket and one TCP listener on the
//! same loopback address and port, per family (`egress.dns = "filtered"`).
//!
//! Stub resolvers send port-53 queries over UDP and retry over TCP when an
//! answer is truncated; the kernel rewrites both to one address and port,
//! so both sockets must share it. With `--dns-listen` unset (or port 0)
//! a free port is taken: UDP first, then TCP on the port UDP got, retried
//! on a fresh port when TCP's is taken.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::{TcpListener, UdpSocket};

use super::error::{DaemonError, Listener};
use crate::kernel::{dns::DnsRedirect, maps::Transport, ownership};

/// `--dns-listen`'s default: IPv4 loopback, a free port.
pub const DEFAULT_DNS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// How often a free port is tried when TCP's half of it is taken.
const FREE_PORT_ATTEMPTS: usize = 8;

/// One family's UDP socket and TCP listener, on one address and port.
pub struct DnsPair {
    /// Where both listen.
    pub addr: SocketAddr,
    /// Queries over UDP.
    pub udp: UdpSocket,
    /// Queries over TCP (truncated answers, `options use-vc`).
    pub tcp: TcpListener,
}

/// The DNS filter's sockets: the `--dns-listen` family's pair and, where
/// the other loopback exists, one on it.
pub struct DnsSockets {
    /// The IPv4 pair (absent only when `--dns-listen` is IPv6 and there is
    /// no IPv4 loopback).
    pub v4: Option<DnsPair>,
    /// The IPv6 pair on `[::1]` (absent without IPv6 loopback: IPv6
    /// queries are then denied).
    pub v6: Option<DnsPair>,
}

impl DnsSockets {
    /// Binds the pair at `listen` (its family) and a free-port pair on the
    /// other family's loopback. Failing to bind `listen` is an error;
    /// failing the other family only logs (its queries stay denied).
    pub async fn bind(listen: SocketAddr) -> Result<Self, DaemonError> {
        let (other, other_name) = match listen {
            SocketAddr::V4(_) => (SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0), "IPv6"),
            SocketAddr::V6(_) => (SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0), "IPv4"),
        };
        let asked = bind_pair(listen).await?;
        let second = match bind_pair(other).await {
            Ok(pair) => Some(pair),
            Err(error) => {
                tracing::warn!(
                    error = %error,
                    "no {other_name} DNS filter listener: {other_name} port-53 traffic is denied, not filtered"
                );
                None
            }
        };
        let (v4, v6) = match listen {
            SocketAddr::V4(_) => (Some(asked), second),
            SocketAddr::V6(_) => (second, Some(asked)),
        };
        Ok(Self { v4, v6 })
    }

    /// What the programs are told: where port-53 traffic goes.
    pub fn redirect(&self) -> DnsRedirect {
        DnsRedirect {
            listen4: self.v4.as_ref().map(|pair| pair.addr),
            listen6: self.v6.as_ref().map(|pair| pair.addr),
        }
    }

    /// The pairs, IPv4 first.
    pub fn pairs(&self) -> impl Iterator<Item = &DnsPair> {
        self.v4.iter().chain(self.v6.iter())
    }

    /// Takes the pairs out (to hand each to a server task).
    pub fn into_pairs(self) -> impl Iterator<Item = DnsPair> {
        self.v4.into_iter().chain(self.v6)
    }
}

/// A UDP socket and a TCP listener on `addr` (port 0: one free port for both).
async fn bind_pair(addr: SocketAddr) -> Result<DnsPair, DaemonError> {
    let attempts = if addr.port() == 0 {
        FREE_PORT_ATTEMPTS
    } else {
        1
    };
    let mut last = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|error| bind_error(addr, Transport::Udp, error))?;
        let bound = udp.local_addr().map_err(|source| DaemonError::LocalAddr {
            listener: Listener::Dns,
            source,
        })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => {
                return Ok(DnsPair {
                    addr: bound,
                    udp,
                    tcp,
                });
            }
            // Port 0: UDP's free port is taken for TCP; try another.
            Err(error) => last = Some(bind_error(bound, Transport::Tcp, error)),
        }
    }
    Err(last.unwrap_or_else(|| {
        bind_error(
            addr,
            Transport::Tcp,
            std::io::Error::from(std::io::ErrorKind::AddrInUse),
        )
    }))
}

fn bind_error(addr: SocketAddr, transport: Transport, error: std::io::Error) -> DaemonError {
    DaemonError::Bind {
        listener: Listener::Dns,
        source: Box::new(ownership::bind_error(
            Listener::Dns.what(),
            addr,
            transport,
            error,
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_transports_share_one_free_port_per_family() {
        let sockets = DnsSockets::bind(DEFAULT_DNS_LISTEN).await.unwrap();
        for pair in sockets.pairs() {
            assert_ne!(pair.addr.port(), 0);
            assert_eq!(pair.udp.local_addr().unwrap(), pair.addr);
            assert_eq!(pair.tcp.local_addr().unwrap(), pair.addr);
        }
        let redirect = sockets.redirect();
        assert!(redirect.listen4.unwrap().ip().is_loopback());
        assert!(redirect.enabled());
    }

    #[tokio::test]
    async fn a_taken_address_is_an_error_naming_the_dns_filter() {
        let holder = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let taken = holder.local_addr().unwrap();
        let error = DnsSockets::bind(taken).await.err().unwrap().to_string();
        assert!(error.contains("DNS filter"), "{error}");
    }
}
