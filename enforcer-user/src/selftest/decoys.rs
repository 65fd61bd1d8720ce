//! The daemon's decoys: listeners outside the enforced cgroup standing
//! where an escape would land (loopback, this host's own addresses, a unix
//! socket). Each counts what reaches it; a hit on a denied attempt's decoy
//! is a bypass whatever the probe reported.
//!
//! The sockets are non-blocking and only read after the probe is done
//! ([`Decoys::hits`]): a TCP connection the kernel let through sits in the
//! accept queue, a datagram in the receive queue.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
};

use nix::ifaddrs::getifaddrs;

use super::matrix::{DecoyAddr, Place, Proto};

/// Port of the DNS decoy.
const DNS_PORT: u16 = 53;

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
    Unix(UnixListener),
    /// Aimed at but not bound (e.g. port 53 already served): an attempt's
    /// own success still shows a bypass.
    Unbound,
}

struct Decoy {
    addr: DecoyAddr,
    socket: Socket,
}

/// This host's own non-loopback addresses (decoys go there too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostAddrs {
    /// The first non-loopback IPv4 address.
    pub v4: Option<Ipv4Addr>,
    /// The first global (not link-local) IPv6 address.
    pub v6: Option<Ipv6Addr>,
}

impl HostAddrs {
    /// Read with `getifaddrs(3)`: every interface, `lo` included (a VM or
    /// test may add its host addresses there).
    pub fn discover() -> Self {
        let mut found = Self::default();
        let Ok(addrs) = getifaddrs() else {
            return found;
        };
        for entry in addrs {
            let Some(addr) = entry.address else {
                continue;
            };
            if let Some(sin) = addr.as_sockaddr_in() {
                let ip = sin.ip();
                if found.v4.is_none() && usable_v4(ip) {
                    found.v4 = Some(ip);
                }
            } else if let Some(sin6) = addr.as_sockaddr_in6() {
                let ip = sin6.ip();
                if found.v6.is_none() && usable_v6(ip) {
                    found.v6 = Some(ip);
                }
            }
        }
        found
    }
}

fn usable_v4(ip: Ipv4Addr) -> bool {
    !ip.is_loopback() && !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast()
}

fn usable_v6(ip: Ipv6Addr) -> bool {
    !ip.is_loopback()
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && !ip.is_unicast_link_local()
        && ip.to_ipv4_mapped().is_none()
}

/// The bound decoys of one self-test run, one per attempt id.
pub struct Decoys {
    decoys: BTreeMap<String, Decoy>,
    unix_paths: Vec<PathBuf>,
}

impl Decoys {
    /// Binds a decoy for each `(attempt id, place, transport)` this host
    /// allows, re-using the `remembered` address of that attempt where it is
    /// still free (else a new port). Unix decoys are `unix_path`.
    pub fn bind(
        rows: &[(&str, Place, Proto)],
        remembered: &BTreeMap<String, SocketAddr>,
        host: HostAddrs,
        unix_path: &Path,
    ) -> Self {
        let mut decoys = BTreeMap::new();
        let mut unix_paths = Vec::new();
        let loopback2 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        for (id, place, proto) in rows {
            let ip: Option<IpAddr> = match place {
                Place::Loopback2 => Some(loopback2),
                Place::Loopback1 => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                Place::Loopback6 => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                Place::Host4 => host.v4.map(IpAddr::V4),
                Place::Host6 => host.v6.map(IpAddr::V6),
                Place::Dns => Some(host.v4.map_or(loopback2, IpAddr::V4)),
                Place::StateDir => None,
            };
            let port = remembered
                .get(*id)
                .filter(|addr| Some(addr.ip()) == ip)
                .map_or(0, SocketAddr::port);
            let decoy = match (place, proto, ip) {
                (Place::StateDir, _, _) | (_, Proto::Unix, _) => {
                    let decoy = bind_unix(unix_path);
                    if decoy.is_some() {
                        unix_paths.push(unix_path.to_owned());
                    }
                    decoy
                }
                (Place::Dns, _, Some(ip)) => {
                    let addr = SocketAddr::new(ip, DNS_PORT);
                    Some(bind_udp(addr).unwrap_or(Decoy {
                        addr: DecoyAddr::Ip(addr),
                        socket: Socket::Unbound,
                    }))
                }
                // The V6ONLY wildcard attempt binds [::]:P beside this one.
                (Place::Loopback1, Proto::Tcp, Some(ip)) => bind_tcp_v6_wildcard_free(ip, port),
                (_, Proto::Tcp, Some(ip)) => bind_tcp_reusing(ip, port),
                (_, Proto::Udp, Some(ip)) => bind_udp_reusing(ip, port),
                (_, _, None) => None,
            };
            if let Some(decoy) = decoy {
                decoys.insert((*id).to_owned(), decoy);
            }
        }
        Self { decoys, unix_paths }
    }

    /// Where each attempt's decoy is.
    pub fn addresses(&self) -> BTreeMap<String, DecoyAddr> {
        self.decoys
            .iter()
            .map(|(id, decoy)| (id.clone(), decoy.addr.clone()))
            .collect()
    }

    /// The IP addresses to remember for the next run.
    pub fn remembered(&self) -> BTreeMap<String, SocketAddr> {
        self.decoys
            .iter()
            .filter_map(|(id, decoy)| match decoy.addr {
                DecoyAddr::Ip(addr) => Some((id.clone(), addr)),
                DecoyAddr::Unix(_) => None,
            })
            .collect()
    }

    /// Connections plus bytes (TCP, unix) or datagrams (UDP) received so
    /// far, per attempt id; reading empties the queues.
    pub fn hits(&self) -> BTreeMap<String, u64> {
        self.decoys
            .iter()
            .map(|(id, decoy)| (id.clone(), drain(&decoy.socket)))
            .collect()
    }
}

impl Drop for Decoys {
    fn drop(&mut self) {
        for path in &self.unix_paths {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A TCP listener on `127.0.0.1:port` standing in for a host service that
/// listens after the probe squatted the port (`SO_REUSEADDR`, as std binds).
pub fn squat_listener(port: u16) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Connections and bytes that reached `listener`.
pub fn tcp_hits(listener: &TcpListener) -> u64 {
    drain_tcp(listener)
}

fn bind_tcp_reusing(ip: IpAddr, port: u16) -> Option<Decoy> {
    let bind = |port| -> io::Result<Decoy> {
        let listener = TcpListener::bind(SocketAddr::new(ip, port))?;
        listener.set_nonblocking(true)?;
        Ok(Decoy {
            addr: DecoyAddr::Ip(listener.local_addr()?),
            socket: Socket::Tcp(listener),
        })
    };
    first_free(port, bind)
}

/// A TCP decoy on a port whose IPv6 wildcard (V6ONLY) is free too; a few
/// tries, then whatever binds.
fn bind_tcp_v6_wildcard_free(ip: IpAddr, port: u16) -> Option<Decoy> {
    const TRIES: usize = 16;
    let mut wanted = port;
    // Held until the end, so a retry is not handed the same port again.
    let mut refused = Vec::new();
    for _ in 0..TRIES {
        let decoy = bind_tcp_reusing(ip, wanted)?;
        if decoy_port(&decoy).is_some_and(super::probe::v6_wildcard_free) {
            return Some(decoy);
        }
        refused.push(decoy);
        wanted = 0;
    }
    drop(refused);
    bind_tcp_reusing(ip, 0)
}

fn decoy_port(decoy: &Decoy) -> Option<u16> {
    match decoy.addr {
        DecoyAddr::Ip(addr) => Some(addr.port()),
        _ => None,
    }
}

fn bind_udp_reusing(ip: IpAddr, port: u16) -> Option<Decoy> {
    first_free(port, |port| bind_udp(SocketAddr::new(ip, port)))
}

fn bind_udp(addr: SocketAddr) -> io::Result<Decoy> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(Decoy {
        addr: DecoyAddr::Ip(socket.local_addr()?),
        socket: Socket::Udp(socket),
    })
}

/// `port` when it binds, else any free port; `None` when neither binds
/// (e.g. no IPv6).
fn first_free(port: u16, bind: impl Fn(u16) -> io::Result<Decoy>) -> Option<Decoy> {
    if port != 0
        && let Ok(decoy) = bind(port)
    {
        return Some(decoy);
    }
    bind(0).ok()
}

fn bind_unix(path: &Path) -> Option<Decoy> {
    // A stale socket from a run that was killed.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).ok()?;
    listener.set_nonblocking(true).ok()?;
    Some(Decoy {
        addr: DecoyAddr::Unix(path.to_owned()),
        socket: Socket::Unix(listener),
    })
}

fn drain(socket: &Socket) -> u64 {
    match socket {
        Socket::Tcp(listener) => drain_tcp(listener),
        Socket::Udp(socket) => {
            let mut hits = 0;
            let mut buf = [0u8; 2048];
            while socket.recv(&mut buf).is_ok() {
                hits += 1;
            }
            hits
        }
        Socket::Unix(listener) => {
            let mut hits = 0;
            while let Ok((mut stream, _)) = listener.accept() {
                hits += 1 + read_available(&mut stream);
            }
            hits
        }
        Socket::Unbound => 0,
    }
}

fn drain_tcp(listener: &TcpListener) -> u64 {
    let mut hits = 0;
    while let Ok((mut stream, _)) = listener.accept() {
        hits += 1 + read_available(&mut stream);
    }
    hits
}

/// Bytes already received on an accepted stream, without waiting.
fn read_available(stream: &mut (impl io::Read + AsNonblocking)) -> u64 {
    if stream.nonblocking().is_err() {
        return 0;
    }
    let mut total = 0u64;
    let mut buf = [0u8; 512];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total
}

trait AsNonblocking {
    fn nonblocking(&self) -> io::Result<()>;
}

impl AsNonblocking for std::net::TcpStream {
    fn nonblocking(&self) -> io::Result<()> {
        self.set_nonblocking(true)
    }
}

impl AsNonblocking for std::os::unix::net::UnixStream {
    fn nonblocking(&self) -> io::Result<()> {
        self.set_nonblocking(true)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn the_loopback_tcp_decoy_avoids_a_port_held_by_an_ipv6_only_socket() {
        // An IPv6-only listener on [::1]:P leaves 127.0.0.1:P free but
        // makes a [::]:P V6ONLY bind fail: the decoy must not take P.
        let Ok(v6) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 here: nothing to collide with
        };
        let taken = v6.local_addr().unwrap().port();
        let decoy = bind_tcp_v6_wildcard_free(IpAddr::V4(Ipv4Addr::LOCALHOST), taken).unwrap();
        let port = decoy_port(&decoy).unwrap();
        assert_ne!(port, taken);
        assert!(super::super::probe::v6_wildcard_free(port));
    }

    #[test]
    fn decoys_count_what_reaches_them_and_keep_their_ports() {
        let dir = tempfile::tempdir().unwrap();
        let unix = dir.path().join("decoy.sock");
        let rows = [
            ("tcp", Place::Loopback2, Proto::Tcp),
            ("udp", Place::Loopback2, Proto::Udp),
            ("host", Place::Host4, Proto::Tcp),
            ("unix", Place::StateDir, Proto::Unix),
        ];
        let decoys = Decoys::bind(&rows, &BTreeMap::new(), HostAddrs::default(), &unix);
        let addresses = decoys.addresses();
        let ip = |id: &str| match addresses.get(id) {
            Some(DecoyAddr::Ip(addr)) => *addr,
            other => panic!("{id}: {other:?}"),
        };
        let (tcp, udp) = (ip("tcp"), ip("udp"));
        assert_eq!(tcp.ip(), Ipv4Addr::new(127, 0, 0, 2));
        assert!(!addresses.contains_key("host"), "no host address given");
        assert_eq!(decoys.hits().values().sum::<u64>(), 0);
        let mut stream = std::net::TcpStream::connect(tcp).unwrap();
        stream.write_all(b"xy").unwrap();
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"z", udp)
            .unwrap();
        let _unix_client = std::os::unix::net::UnixStream::connect(&unix).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let hits = decoys.hits();
        assert_eq!(hits["tcp"], 3, "one connection, two bytes");
        assert_eq!(hits["udp"], 1);
        assert_eq!(hits["unix"], 1);
        let remembered = decoys.remembered();
        drop(stream);
        drop(decoys);
        assert!(!unix.exists(), "the unix decoy is removed");
        let again = Decoys::bind(&rows, &remembered, HostAddrs::default(), &unix);
        assert_eq!(again.remembered()["tcp"], tcp, "the port is re-used");
        assert_eq!(again.remembered()["udp"], udp);
    }

    #[test]
    fn host_addresses_are_never_loopback_or_link_local() {
        assert!(!usable_v4(Ipv4Addr::LOCALHOST));
        assert!(usable_v4(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(!usable_v6(Ipv6Addr::LOCALHOST));
        assert!(!usable_v6("fe80::1".parse().unwrap()));
        assert!(usable_v6("2001:db8::1".parse().unwrap()));
        let found = HostAddrs::discover();
        assert!(found.v4.is_none_or(usable_v4));
        assert!(found.v6.is_none_or(usable_v6));
    }
}
