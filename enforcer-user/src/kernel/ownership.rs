//! The daemon's claim on its endpoints, and who holds a port it could not get.
//!
//! The kernel programs allow an enforcer endpoint (proxy, router, later the
//! transparent listener and the DNS filter) only while the socket listening
//! there carries the daemon's tag in the `SOCK_TAGS` socket-storage map. The
//! daemon tags its own listeners by fd ([`claim_endpoints`]) right after
//! attaching. With the daemon down, or with another process on its port,
//! the endpoint is denied like any other destination (`endpoint_not_owned`).
//!
//! When a bind fails because the port is taken, [`BindError`] names the
//! processes holding it, read from `/proc/net/{tcp,tcp6,udp,udp6}` (socket
//! inode) and a scan of `/proc/*/fd` — done only on that error.

use std::{
    fmt, fs,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd,
};

use super::{KernelError, PinnedMaps, maps::Transport};

/// Tags each of the daemon's listening sockets as the daemon's, so the
/// kernel lets the cgroup reach the endpoints they serve.
pub fn claim_endpoints(maps: &PinnedMaps, listeners: &[&dyn AsFd]) -> Result<(), KernelError> {
    for listener in listeners {
        maps.tag_daemon_socket(listener)?;
    }
    Ok(())
}

/// A process that holds a socket on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    /// Process id.
    pub pid: u32,
    /// Command name (`/proc/PID/comm`).
    pub comm: String,
    /// Owner uid of the socket.
    pub uid: u32,
}

impl fmt::Display for PortHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({}, uid {})", self.pid, self.comm, self.uid)
    }
}

/// Binding one of the daemon's listeners failed.
#[derive(Debug, thiserror::Error)]
#[error("binding {what} to {addr} failed: {source}{}", holders_text(holders))]
pub struct BindError {
    /// Which listener (`the proxy`, `the lane router`).
    pub what: &'static str,
    /// The address asked for.
    pub addr: SocketAddr,
    /// Processes holding the port, when it was taken.
    pub holders: Vec<PortHolder>,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

fn holders_text(holders: &[PortHolder]) -> String {
    if holders.is_empty() {
        return String::new();
    }
    let list: Vec<String> = holders.iter().map(ToString::to_string).collect();
    format!(
        "; the port is held by {} — the enforced cgroup is denied this endpoint until the \
         enforcer daemon listens there itself: stop that process, or choose another address",
        list.join(", ")
    )
}

/// Builds the error for a failed bind, naming who holds the port when the
/// error is `EADDRINUSE`.
pub fn bind_error(
    what: &'static str,
    addr: SocketAddr,
    transport: Transport,
    source: std::io::Error,
) -> BindError {
    let holders = if source.kind() == std::io::ErrorKind::AddrInUse {
        port_holders(addr, transport)
    } else {
        Vec::new()
    };
    BindError {
        what,
        addr,
        holders,
        source,
    }
}

/// The processes with a socket bound to `addr`'s port on that address or a
/// wildcard (TCP: listening ones), by socket inode.
pub fn port_holders(addr: SocketAddr, transport: Transport) -> Vec<PortHolder> {
    let tables: [(&str, bool); 2] = match transport {
        Transport::Tcp => [("/proc/net/tcp", false), ("/proc/net/tcp6", true)],
        Transport::Udp => [("/proc/net/udp", false), ("/proc/net/udp6", true)],
    };
    let mut sockets = Vec::new();
    for (path, v6) in tables {
        let Ok(text) = fs::read_to_string(path) else {
            continue;
        };
        sockets.extend(
            text.lines()
                .skip(1)
                .filter_map(|line| parse_socket_line(line, v6))
                .filter(|socket| {
                    socket.port == addr.port()
                        && (transport == Transport::Udp || socket.state == TCP_LISTEN)
                        && covers(socket.addr, addr.ip())
                }),
        );
    }
    let mut holders = Vec::new();
    let Ok(processes) = fs::read_dir("/proc") else {
        return holders;
    };
    for process in processes.flatten() {
        let Some(pid) = process.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let Some(socket) = sockets
                .iter()
                .find(|socket| target == format!("socket:[{}]", socket.inode))
            else {
                continue;
            };
            let comm = fs::read_to_string(process.path().join("comm"))
                .map(|c| c.trim().to_owned())
                .unwrap_or_default();
            let holder = PortHolder {
                pid,
                comm,
                uid: socket.uid,
            };
            if !holders.contains(&holder) {
                holders.push(holder);
            }
        }
    }
    holders
}

/// `st` of a listening TCP socket in `/proc/net/tcp`.
const TCP_LISTEN: u8 = 0x0a;

/// One line of `/proc/net/{tcp,udp}{,6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcSocket {
    addr: IpAddr,
    port: u16,
    state: u8,
    uid: u32,
    inode: u64,
}

/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode`;
/// addresses are the raw network-order words printed as host-order hex.
fn parse_socket_line(line: &str, v6: bool) -> Option<ProcSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (addr_hex, port_hex) = fields.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let uid = fields.get(7)?.parse().ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    let words = (0..addr_hex.len() / 8)
        .map(|i| {
            addr_hex
                .get(i * 8..i * 8 + 8)
                .and_then(|w| u32::from_str_radix(w, 16).ok())
        })
        .collect::<Option<Vec<u32>>>()?;
    let mut bytes = Vec::with_capacity(16);
    for word in &words {
        // The kernel printed the in-memory (network order) word as a
        // host-order integer.
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let addr = if v6 {
        IpAddr::from(<[u8; 16]>::try_from(bytes.as_slice()).ok()?)
    } else {
        IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).ok()?)
    };
    Some(ProcSocket {
        addr,
        port,
        state,
        uid,
        inode,
    })
}

/// Whether a socket bound to `bound` receives for `wanted` (same address,
/// or a wildcard; an IPv6 socket may be v4-mapped or dual-stack).
fn covers(bound: IpAddr, wanted: IpAddr) -> bool {
    let bound = match bound {
        IpAddr::V6(v6) => v6.to_canonical(),
        v4 => v4,
    };
    bound == wanted.to_canonical() || bound.is_unspecified()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_listening_ipv4_line() {
        let line = "   3: 0100007F:2253 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 424242 1 0000000000000000 100 0 0 10 0";
        let socket = parse_socket_line(line, false).unwrap();
        assert_eq!(socket.addr, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(socket.port, 0x2253);
        assert_eq!(socket.state, TCP_LISTEN);
        assert_eq!(socket.uid, 1001);
        assert_eq!(socket.inode, 424_242);
    }

    #[test]
    fn parses_an_ipv6_line() {
        let line = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0";
        let socket = parse_socket_line(line, true).unwrap();
        assert_eq!(socket.addr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(socket.port, 8080);
    }

    #[test]
    fn wildcards_cover_every_address() {
        assert!(covers(
            "0.0.0.0".parse().unwrap(),
            "127.0.0.1".parse().unwrap()
        ));
        assert!(covers("::".parse().unwrap(), "127.0.0.1".parse().unwrap()));
        assert!(covers(
            "::ffff:127.0.0.1".parse().unwrap(),
            "127.0.0.1".parse().unwrap()
        ));
        assert!(!covers(
            "127.0.0.2".parse().unwrap(),
            "127.0.0.1".parse().unwrap()
        ));
    }

    #[test]
    fn a_taken_port_names_its_holder() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let error = std::net::TcpListener::bind(addr).unwrap_err();
        let error = bind_error("the lane router", addr, Transport::Tcp, error);
        assert!(
            error.holders.iter().any(|h| h.pid == std::process::id()),
            "{error}"
        );
        assert!(error.to_string().contains("held by pid"), "{error}");
    }
}
