//! The bypass matrix as data, and the pure functions that turn it into a
//! probe plan and judge what the probe saw.
//!
//! Each [`AttemptSpec`] says what one attempt tries, which kernel layer
//! claims to stop it (or that it is a path that must work), and what it is
//! aimed at. [`plan_one`] fills in the concrete addresses (decoys, endpoints);
//! [`judge`] turns the probe's [`Outcome`] and the decoy's hit count into a
//! [`Verdict`]. Nothing here touches a socket.

use std::{net::SocketAddr, path::PathBuf};

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

/// Which kernel layer claims to stop an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// `cgroup/sock_create` (raw and non-TCP/UDP inet sockets).
    SockCreate,
    /// `cgroup/connect4` (TCP and UDP connect over IPv4).
    Connect4,
    /// `cgroup/connect6` (IPv6, v4-mapped judged as IPv4).
    Connect6,
    /// `cgroup/sendmsg4` (unconnected UDP over IPv4).
    Sendmsg4,
    /// `cgroup/sendmsg6` (unconnected UDP over IPv6).
    Sendmsg6,
    /// `cgroup/setsockopt` (routing headers, source routes).
    Setsockopt,
    /// `lsm_cgroup/socket_create` (socket families; needs BPF-LSM).
    LsmSocketCreate,
    /// cgroup unix-socket hooks (not built on every kernel).
    UnixHooks,
    /// `lsm_cgroup/ptrace_access_check` (ptrace and `process_vm_*` of
    /// processes outside the cgroup; needs BPF-LSM).
    LsmPtrace,
}

impl Layer {
    /// The name shown in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SockCreate => "sock_create",
            Self::Connect4 => "connect4",
            Self::Connect6 => "connect6",
            Self::Sendmsg4 => "sendmsg4",
            Self::Sendmsg6 => "sendmsg6",
            Self::Setsockopt => "setsockopt",
            Self::LsmSocketCreate => "socket_create (BPF-LSM)",
            Self::UnixHooks => "unix hooks",
            Self::LsmPtrace => "ptrace_access_check (BPF-LSM)",
        }
    }

    /// Whether this kernel's attached programs claim this layer.
    pub fn claimed(self, layers: &crate::kernel::hooks::Layers) -> bool {
        match self {
            Self::LsmSocketCreate => layers.socket_families,
            Self::UnixHooks => layers.unix_sockets,
            Self::LsmPtrace => layers.ptrace,
            _ => true,
        }
    }
}

/// What an attempt must end in for the self-test to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Refused with `EPERM` by the named layer; its decoy untouched.
    Denied(Layer),
    /// DNS: refused with `EPERM`, or rewritten by the named layer to the
    /// daemon's DNS filter (`egress.dns = "filtered"`), so the send
    /// succeeds; either way its decoy untouched.
    Filtered(Layer),
    /// A path that must work (the daemon's endpoints, the cgroup's own servers).
    Reached,
}

/// Where an attempt's decoy listens. Every deny row aimed at a listener
/// has a decoy of its own, so a hit names the attempt that got through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// `127.0.0.2` (loopback, not the cgroup's).
    Loopback2,
    /// `127.0.0.1` (the V6ONLY attempt's target).
    Loopback1,
    /// `[::1]`.
    Loopback6,
    /// This host's own (non-loopback) IPv4 address.
    Host4,
    /// This host's own global IPv6 address.
    Host6,
    /// UDP port 53 on this host's own IPv4 address (else `127.0.0.2`).
    Dns,
    /// A unix stream socket in the state directory.
    StateDir,
}

/// A decoy's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// A TCP listener.
    Tcp,
    /// A UDP socket.
    Udp,
    /// A unix stream listener.
    Unix,
}

/// What an attempt is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The attempt's own decoy.
    Decoy(Place, Proto),
    /// The attempt's own (IPv4) decoy, addressed as IPv4-mapped IPv6.
    MappedDecoy(Place, Proto),
    /// The CONNECT proxy.
    Proxy,
    /// The lane router.
    Router,
    /// The transparent listener (redirect mode only).
    Transparent,
    /// A process the daemon starts outside the cgroup, of the probe's uid,
    /// that any process may trace were it not for the kernel program
    /// (`PR_SET_PTRACER_ANY`, so Yama does not stand in for it).
    OutsideProcess,
    /// Nothing outside the probe (socket creation, its own servers).
    None,
}

/// How the probe makes an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `connect(2)` a TCP socket, send one byte.
    TcpConnect,
    /// `sendto(MSG_FASTOPEN)` on a fresh TCP socket.
    TcpFastOpen,
    /// `connect(2)` a UDP socket, then `send`.
    UdpConnect,
    /// `sendto(2)` on an unconnected UDP socket.
    UdpSendto,
    /// `socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)`.
    RawSocket,
    /// `socket(AF_PACKET, SOCK_RAW, ETH_P_ALL)`.
    PacketSocket,
    /// `socket(AF_VSOCK, SOCK_STREAM, 0)`.
    VsockSocket,
    /// bind `[::]:P` with `IPV6_V6ONLY`, then connect `127.0.0.1:P`.
    V6onlyWildcard,
    /// bind `127.0.0.1:P` with `SO_REUSEADDR` first; once a host listener
    /// is on `P`, connect to it.
    SquatTcp,
    /// `setsockopt(IPV6_RTHDR)` with a segment-routing header via `::1`.
    Ipv6RoutingHeader,
    /// `setsockopt(IP_OPTIONS)` with a loose source route via `127.0.0.1`.
    Ipv4SourceRoute,
    /// `connect(2)` a unix stream socket.
    UnixConnect,
    /// `process_vm_readv(2)` of one byte of another process.
    ProcessVmRead,
    /// `ptrace(PTRACE_ATTACH)` to another process (detached at once).
    PtraceAttach,
    /// Its own TCP server on loopback, a client to it, one byte each way.
    OwnTcpServer,
    /// Its own UDP server on loopback, one datagram each way.
    OwnUdpServer,
}

/// One row of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptSpec {
    /// Stable name (logs, JSON, tests).
    pub id: &'static str,
    /// What it tries, for the operator.
    pub tries: &'static str,
    /// The pass condition.
    pub expect: Expect,
    /// How.
    pub method: Method,
    /// At what.
    pub target: Target,
    /// Address family of the probe's own server (own-server rows): IPv6?
    pub v6: bool,
}

const fn deny(
    id: &'static str,
    tries: &'static str,
    layer: Layer,
    method: Method,
    target: Target,
) -> AttemptSpec {
    AttemptSpec {
        id,
        tries,
        expect: Expect::Denied(layer),
        method,
        target,
        v6: false,
    }
}

const fn reach(
    id: &'static str,
    tries: &'static str,
    method: Method,
    target: Target,
    v6: bool,
) -> AttemptSpec {
    AttemptSpec {
        id,
        tries,
        expect: Expect::Reached,
        method,
        target,
        v6,
    }
}

use Layer as L;
use Method as M;
use Place as P;
use Proto::{Tcp, Udp};

/// The whole matrix: every escape the kernel layers claim to stop, the
/// families they may not, and the paths that must keep working.
pub const MATRIX: &[AttemptSpec] = &[
    deny(
        "tcp4_loopback",
        "TCP connect to a host port on 127.0.0.2",
        L::Connect4,
        M::TcpConnect,
        Target::Decoy(P::Loopback2, Tcp),
    ),
    deny(
        "tcp4_fastopen",
        "TCP Fast Open sendto to a host port on 127.0.0.2",
        L::Connect4,
        M::TcpFastOpen,
        Target::Decoy(P::Loopback2, Tcp),
    ),
    deny(
        "udp4_loopback_connect",
        "UDP connect+send to a host port on 127.0.0.2",
        L::Connect4,
        M::UdpConnect,
        Target::Decoy(P::Loopback2, Udp),
    ),
    deny(
        "udp4_loopback_sendto",
        "UDP sendto a host port on 127.0.0.2",
        L::Sendmsg4,
        M::UdpSendto,
        Target::Decoy(P::Loopback2, Udp),
    ),
    deny(
        "tcp6_loopback",
        "TCP connect to a host port on [::1]",
        L::Connect6,
        M::TcpConnect,
        Target::Decoy(P::Loopback6, Tcp),
    ),
    deny(
        "udp6_loopback_sendto",
        "UDP sendto a host port on [::1]",
        L::Sendmsg6,
        M::UdpSendto,
        Target::Decoy(P::Loopback6, Udp),
    ),
    deny(
        "tcp_v4mapped",
        "TCP connect to [::ffff:127.0.0.2] from an IPv6 socket",
        L::Connect6,
        M::TcpConnect,
        Target::MappedDecoy(P::Loopback2, Tcp),
    ),
    deny(
        "udp_v4mapped_sendto",
        "UDP sendto [::ffff:127.0.0.2] from an IPv6 socket",
        L::Sendmsg6,
        M::UdpSendto,
        Target::MappedDecoy(P::Loopback2, Udp),
    ),
    deny(
        "tcp4_host_address",
        "TCP connect to this host's own IPv4 address",
        L::Connect4,
        M::TcpConnect,
        Target::Decoy(P::Host4, Tcp),
    ),
    deny(
        "udp4_host_address_sendto",
        "UDP sendto this host's own IPv4 address",
        L::Sendmsg4,
        M::UdpSendto,
        Target::Decoy(P::Host4, Udp),
    ),
    deny(
        "tcp6_host_address",
        "TCP connect to this host's own IPv6 address",
        L::Connect6,
        M::TcpConnect,
        Target::Decoy(P::Host6, Tcp),
    ),
    deny(
        "udp6_host_address_sendto",
        "UDP sendto this host's own IPv6 address",
        L::Sendmsg6,
        M::UdpSendto,
        Target::Decoy(P::Host6, Udp),
    ),
    AttemptSpec {
        id: "dns_direct",
        tries: "DNS (UDP port 53) to a resolver address on this host",
        expect: Expect::Filtered(L::Sendmsg4),
        method: M::UdpSendto,
        target: Target::Decoy(P::Dns, Udp),
        v6: false,
    },
    deny(
        "raw_socket",
        "socket(AF_INET, SOCK_RAW)",
        L::SockCreate,
        M::RawSocket,
        Target::None,
    ),
    deny(
        "packet_socket",
        "socket(AF_PACKET)",
        L::LsmSocketCreate,
        M::PacketSocket,
        Target::None,
    ),
    deny(
        "vsock_socket",
        "socket(AF_VSOCK)",
        L::LsmSocketCreate,
        M::VsockSocket,
        Target::None,
    ),
    deny(
        "v6only_wildcard",
        "bind [::]:P with IPV6_V6ONLY, then TCP connect 127.0.0.1:P (a host port)",
        L::Connect4,
        M::V6onlyWildcard,
        Target::Decoy(P::Loopback1, Tcp),
    ),
    deny(
        "squat_reuseaddr",
        "bind 127.0.0.1:P with SO_REUSEADDR first, connect once a host listener is on P",
        L::Connect4,
        M::SquatTcp,
        Target::None,
    ),
    deny(
        "ipv6_routing_header",
        "setsockopt(IPV6_RTHDR) with a segment-routing header",
        L::Setsockopt,
        M::Ipv6RoutingHeader,
        Target::None,
    ),
    deny(
        "ipv4_source_route",
        "setsockopt(IP_OPTIONS) with a loose source route",
        L::Setsockopt,
        M::Ipv4SourceRoute,
        Target::None,
    ),
    deny(
        "unix_host_socket",
        "connect to a host unix socket",
        L::UnixHooks,
        M::UnixConnect,
        Target::Decoy(P::StateDir, Proto::Unix),
    ),
    deny(
        "process_vm_read_outside",
        "process_vm_readv of a process outside the cgroup",
        L::LsmPtrace,
        M::ProcessVmRead,
        Target::OutsideProcess,
    ),
    deny(
        "ptrace_attach_outside",
        "ptrace(PTRACE_ATTACH) to a process outside the cgroup",
        L::LsmPtrace,
        M::PtraceAttach,
        Target::OutsideProcess,
    ),
    reach(
        "proxy_reachable",
        "TCP connect to the CONNECT proxy",
        M::TcpConnect,
        Target::Proxy,
        false,
    ),
    reach(
        "router_reachable",
        "TCP connect to the lane router",
        M::TcpConnect,
        Target::Router,
        false,
    ),
    reach(
        "transparent_reachable",
        "TCP connect to the transparent listener (redirect mode)",
        M::TcpConnect,
        Target::Transparent,
        false,
    ),
    reach(
        "own_tcp4_server",
        "its own TCP server on 127.0.0.1",
        M::OwnTcpServer,
        Target::None,
        false,
    ),
    reach(
        "own_udp4_server",
        "its own UDP server on 127.0.0.1",
        M::OwnUdpServer,
        Target::None,
        false,
    ),
    reach(
        "own_tcp6_server",
        "its own TCP server on [::1]",
        M::OwnTcpServer,
        Target::None,
        true,
    ),
];

/// Where a decoy ended up (absent: it could not be bound on this host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecoyAddr {
    /// An IP socket.
    Ip(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

/// What the plan needs besides the matrix.
#[derive(Debug, Clone, Default)]
pub struct PlanInputs {
    /// Bound decoys, by attempt id.
    pub decoys: std::collections::BTreeMap<String, DecoyAddr>,
    /// The CONNECT proxy.
    pub proxy: Option<SocketAddr>,
    /// The lane router.
    pub router: Option<SocketAddr>,
    /// The transparent listener (redirect mode; none yet).
    pub transparent: Option<SocketAddr>,
    /// The pid of the process the daemon started outside the cgroup as
    /// the ptrace rows' target.
    pub outside_process: Option<u32>,
    /// Whether `[::1]` exists (IPv6 enabled).
    pub ipv6: bool,
}

/// One attempt as the probe receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedAttempt {
    /// The matrix row's id.
    pub id: String,
    /// What to do.
    pub action: Action,
}

/// A concrete action for the probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// TCP connect (and one byte).
    TcpConnect {
        /// Destination.
        addr: SocketAddr,
    },
    /// TCP Fast Open sendto.
    TcpFastOpen {
        /// Destination.
        addr: SocketAddr,
    },
    /// UDP connect and send.
    UdpConnect {
        /// Destination.
        addr: SocketAddr,
    },
    /// UDP sendto.
    UdpSendto {
        /// Destination.
        addr: SocketAddr,
    },
    /// Raw inet socket creation.
    RawSocket {},
    /// Packet socket creation.
    PacketSocket {},
    /// Vsock socket creation.
    VsockSocket {},
    /// V6ONLY wildcard on `port`, then connect `127.0.0.1:port`.
    V6onlyWildcard {
        /// The host port.
        port: u16,
    },
    /// Squat a port, ask the daemon for a listener there, connect.
    SquatTcp {},
    /// IPv6 routing header by setsockopt.
    Ipv6RoutingHeader {},
    /// IPv4 source route by setsockopt.
    Ipv4SourceRoute {},
    /// Unix stream connect.
    UnixConnect {
        /// Socket path.
        path: PathBuf,
    },
    /// `process_vm_readv` of `pid`.
    ProcessVmRead {
        /// The target.
        pid: u32,
    },
    /// `PTRACE_ATTACH` to `pid`.
    PtraceAttach {
        /// The target.
        pid: u32,
    },
    /// Own TCP server.
    OwnTcpServer {
        /// `[::1]` instead of `127.0.0.1`.
        v6: bool,
    },
    /// Own UDP server.
    OwnUdpServer {
        /// `[::1]` instead of `127.0.0.1`.
        v6: bool,
    },
}

/// Either a planned attempt or why there is nothing to aim it at here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// Run it.
    Run(Action),
    /// Not possible on this host (no IPv6, no own address, no such listener).
    NotApplicable(String),
}

/// The decoy an attempt is aimed at, if any.
pub fn decoy_of(spec: &AttemptSpec) -> Option<(Place, Proto)> {
    match spec.target {
        Target::Decoy(place, proto) | Target::MappedDecoy(place, proto) => Some((place, proto)),
        _ => None,
    }
}

/// The concrete action for `spec`, given what was bound.
pub fn plan_one(spec: &AttemptSpec, inputs: &PlanInputs) -> Planned {
    let bound = inputs.decoys.get(spec.id);
    let addr = match spec.target {
        Target::Decoy(place, _) | Target::MappedDecoy(place, _) => match bound {
            Some(DecoyAddr::Unix(path)) => {
                return Planned::Run(Action::UnixConnect { path: path.clone() });
            }
            Some(DecoyAddr::Ip(SocketAddr::V4(v4)))
                if matches!(spec.target, Target::MappedDecoy(..)) =>
            {
                if !inputs.ipv6 {
                    return Planned::NotApplicable("IPv6 is not enabled on this host".into());
                }
                Some(SocketAddr::new(
                    std::net::IpAddr::V6(v4.ip().to_ipv6_mapped()),
                    v4.port(),
                ))
            }
            Some(DecoyAddr::Ip(addr)) => Some(*addr),
            None => return Planned::NotApplicable(missing_decoy(place)),
        },
        Target::Proxy => inputs.proxy,
        Target::Router => inputs.router,
        Target::Transparent => match inputs.transparent {
            Some(addr) => Some(addr),
            None => {
                return Planned::NotApplicable(
                    "no transparent listener (egress mode is not redirect)".into(),
                );
            }
        },
        Target::OutsideProcess => {
            let Some(pid) = inputs.outside_process else {
                return Planned::NotApplicable(
                    "no process could be started outside the cgroup".into(),
                );
            };
            return match spec.method {
                Method::PtraceAttach => Planned::Run(Action::PtraceAttach { pid }),
                _ => Planned::Run(Action::ProcessVmRead { pid }),
            };
        }
        Target::None => None,
    };
    let need = |addr: Option<SocketAddr>| {
        addr.ok_or_else(|| Planned::NotApplicable("no address to aim at".into()))
    };
    let action = match spec.method {
        Method::TcpConnect => need(addr).map(|addr| Action::TcpConnect { addr }),
        Method::TcpFastOpen => need(addr).map(|addr| Action::TcpFastOpen { addr }),
        Method::UdpConnect => need(addr).map(|addr| Action::UdpConnect { addr }),
        Method::UdpSendto => need(addr).map(|addr| Action::UdpSendto { addr }),
        Method::V6onlyWildcard if !inputs.ipv6 => Err(Planned::NotApplicable(
            "IPv6 is not enabled on this host".into(),
        )),
        Method::V6onlyWildcard => {
            need(addr).map(|addr| Action::V6onlyWildcard { port: addr.port() })
        }
        Method::RawSocket => Ok(Action::RawSocket {}),
        Method::PacketSocket => Ok(Action::PacketSocket {}),
        Method::VsockSocket => Ok(Action::VsockSocket {}),
        Method::SquatTcp => Ok(Action::SquatTcp {}),
        Method::Ipv6RoutingHeader if !inputs.ipv6 => Err(Planned::NotApplicable(
            "IPv6 is not enabled on this host".into(),
        )),
        Method::Ipv6RoutingHeader => Ok(Action::Ipv6RoutingHeader {}),
        Method::Ipv4SourceRoute => Ok(Action::Ipv4SourceRoute {}),
        Method::UnixConnect => Err(Planned::NotApplicable(missing_decoy(Place::StateDir))),
        Method::ProcessVmRead | Method::PtraceAttach => Err(Planned::NotApplicable(
            "no process outside the cgroup to aim at".into(),
        )),
        Method::OwnTcpServer if spec.v6 && !inputs.ipv6 => Err(Planned::NotApplicable(
            "IPv6 is not enabled on this host".into(),
        )),
        Method::OwnTcpServer => Ok(Action::OwnTcpServer { v6: spec.v6 }),
        Method::OwnUdpServer => Ok(Action::OwnUdpServer { v6: spec.v6 }),
    };
    match action {
        Ok(action) => Planned::Run(action),
        Err(not) => not,
    }
}

fn missing_decoy(place: Place) -> String {
    match place {
        Place::Host4 => "this host has no non-loopback IPv4 address".into(),
        Place::Host6 => "this host has no global IPv6 address".into(),
        Place::Loopback6 => "IPv6 is not enabled on this host".into(),
        other => format!("no decoy could be bound at {other:?}"),
    }
}

/// What the probe saw for one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// The operation succeeded.
    Ok {},
    /// It failed with this errno.
    Err {
        /// `errno`.
        errno: i32,
        /// Its text.
        message: String,
    },
    /// It could not be made as intended (e.g. the daemon lacks a capability).
    Precondition {
        /// Why.
        why: String,
    },
}

/// The judgement on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// As expected: refused with EPERM (deny rows) or reached (positive rows).
    Passed,
    /// A deny row got through: the operation succeeded or its decoy was hit.
    Bypass,
    /// A positive row failed: a path that must work does not.
    Broken,
    /// A deny row failed some other way: nothing proves the layer works.
    Inconclusive,
    /// The layer is not attached on this kernel; the attempt is reported, not judged.
    NotEnforced,
    /// A deny row refused before the kernel program ran (privileges or the
    /// daemon's own address-family filter): reported, not proven either way.
    Unproven,
    /// Nothing to aim it at on this host.
    NotApplicable,
}

impl Verdict {
    /// Whether this verdict fails the self-test.
    pub fn fails(&self) -> bool {
        matches!(self, Self::Bypass | Self::Broken | Self::Inconclusive)
    }

    /// The name in tables.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Bypass => "BYPASS",
            Self::Broken => "BROKEN",
            Self::Inconclusive => "INCONCLUSIVE",
            Self::NotEnforced => "not enforced",
            Self::Unproven => "unproven",
            Self::NotApplicable => "n/a",
        }
    }
}

/// Judges one attempt: `outcome` is what the probe saw (`None`: it was
/// never made or the probe died), `decoy_hits` the connections and bytes
/// its decoy received, `claimed` whether this kernel's layers claim it.
pub fn judge(
    spec: &AttemptSpec,
    outcome: Option<&Outcome>,
    decoy_hits: u64,
    claimed: bool,
) -> Verdict {
    match spec.expect {
        Expect::Reached => match outcome {
            Some(Outcome::Ok {}) => Verdict::Passed,
            _ => Verdict::Broken,
        },
        Expect::Denied(_) | Expect::Filtered(_) if !claimed => Verdict::NotEnforced,
        Expect::Filtered(_) if decoy_hits > 0 => Verdict::Bypass,
        // Rewritten to the DNS filter: the send went there, not to the decoy.
        Expect::Filtered(_) if matches!(outcome, Some(Outcome::Ok {})) => Verdict::Passed,
        Expect::Denied(_) | Expect::Filtered(_) => {
            let reached = decoy_hits > 0 || matches!(outcome, Some(Outcome::Ok {}));
            if reached {
                return Verdict::Bypass;
            }
            match outcome {
                Some(Outcome::Err { errno, .. }) if *errno == Errno::EPERM as i32 => {
                    Verdict::Passed
                }
                Some(Outcome::Precondition { .. }) => Verdict::Unproven,
                // Socket creation can be refused before `sock_create` runs:
                // the daemon's own address-family filter (systemd's
                // RestrictAddressFamilies) or an absent family module.
                Some(Outcome::Err { .. }) if creates_only(spec.method) => Verdict::Unproven,
                _ => Verdict::Inconclusive,
            }
        }
    }
}

/// Attempts that only create a socket (no destination).
fn creates_only(method: Method) -> bool {
    matches!(
        method,
        Method::RawSocket | Method::PacketSocket | Method::VsockSocket
    )
}

/// The matrix row named `id`.
pub fn spec(id: &str) -> Option<&'static AttemptSpec> {
    MATRIX.iter().find(|spec| spec.id == id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::kernel::hooks::Layers;

    fn eperm() -> Outcome {
        Outcome::Err {
            errno: Errno::EPERM as i32,
            message: "Operation not permitted".into(),
        }
    }

    fn inputs() -> PlanInputs {
        let mut decoys = std::collections::BTreeMap::new();
        for (id, addr) in [
            ("tcp4_loopback", "127.0.0.2:4001"),
            ("tcp_v4mapped", "127.0.0.2:4002"),
            ("v6only_wildcard", "127.0.0.1:4003"),
            ("tcp6_loopback", "[::1]:4004"),
            ("tcp4_host_address", "192.0.2.7:4006"),
            ("dns_direct", "192.0.2.7:53"),
        ] {
            decoys.insert(id.to_owned(), DecoyAddr::Ip(addr.parse().unwrap()));
        }
        decoys.insert(
            "unix_host_socket".to_owned(),
            DecoyAddr::Unix("/state/d.sock".into()),
        );
        PlanInputs {
            decoys,
            proxy: Some("127.0.0.1:3128".parse().unwrap()),
            router: Some("127.0.0.1:8787".parse().unwrap()),
            transparent: None,
            outside_process: Some(4242),
            ipv6: true,
        }
    }

    #[test]
    fn ids_are_unique_and_every_claimed_layer_is_covered() {
        let mut ids: Vec<&str> = MATRIX.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        assert_eq!(before, ids.len(), "duplicate attempt ids");
        for layer in [
            Layer::SockCreate,
            Layer::Connect4,
            Layer::Connect6,
            Layer::Sendmsg4,
            Layer::Sendmsg6,
            Layer::Setsockopt,
            Layer::LsmSocketCreate,
            Layer::UnixHooks,
            Layer::LsmPtrace,
        ] {
            assert!(
                MATRIX.iter().any(|s| s.expect == Expect::Denied(layer)),
                "no attempt for {layer:?}"
            );
        }
    }

    #[test]
    fn the_dns_row_passes_when_denied_or_filtered_and_never_with_its_decoy_hit() {
        let row = spec("dns_direct").unwrap();
        assert_eq!(judge(row, Some(&eperm()), 0, true), Verdict::Passed);
        assert_eq!(judge(row, Some(&Outcome::Ok {}), 0, true), Verdict::Passed);
        assert_eq!(judge(row, Some(&Outcome::Ok {}), 1, true), Verdict::Bypass);
        assert_eq!(judge(row, Some(&eperm()), 1, true), Verdict::Bypass);
        assert_eq!(judge(row, None, 0, true), Verdict::Inconclusive);
        assert_eq!(
            judge(row, Some(&Outcome::Ok {}), 0, false),
            Verdict::NotEnforced
        );
    }

    #[test]
    fn a_deny_row_passes_only_on_eperm_with_its_decoy_untouched() {
        let row = spec("tcp4_loopback").unwrap();
        assert_eq!(judge(row, Some(&eperm()), 0, true), Verdict::Passed);
        assert_eq!(
            judge(row, Some(&eperm()), 1, true),
            Verdict::Bypass,
            "a decoy hit is a bypass whatever the probe saw"
        );
        assert_eq!(judge(row, Some(&Outcome::Ok {}), 0, true), Verdict::Bypass);
        let refused = Outcome::Err {
            errno: Errno::ECONNREFUSED as i32,
            message: "refused".into(),
        };
        assert_eq!(judge(row, Some(&refused), 0, true), Verdict::Inconclusive);
        assert_eq!(judge(row, None, 0, true), Verdict::Inconclusive);
        assert!(Verdict::Inconclusive.fails() && Verdict::Bypass.fails());
    }

    #[test]
    fn ptrace_rows_aim_at_the_outside_process_or_are_not_applicable() {
        let read = spec("process_vm_read_outside").unwrap();
        let attach = spec("ptrace_attach_outside").unwrap();
        assert_eq!(
            plan_one(read, &inputs()),
            Planned::Run(Action::ProcessVmRead { pid: 4242 })
        );
        assert_eq!(
            plan_one(attach, &inputs()),
            Planned::Run(Action::PtraceAttach { pid: 4242 })
        );
        let none = PlanInputs {
            outside_process: None,
            ..inputs()
        };
        assert!(matches!(plan_one(read, &none), Planned::NotApplicable(_)));
        // A read that got past the access check is a bypass.
        assert_eq!(judge(read, Some(&Outcome::Ok {}), 0, true), Verdict::Bypass);
        assert_eq!(judge(read, Some(&eperm()), 0, true), Verdict::Passed);
    }

    #[test]
    fn unclaimed_layers_are_not_enforced_never_skipped_or_failed() {
        let layers = Layers {
            socket_families: false,
            unix_sockets: false,
            ptrace: false,
        };
        for id in [
            "packet_socket",
            "vsock_socket",
            "unix_host_socket",
            "process_vm_read_outside",
            "ptrace_attach_outside",
        ] {
            let row = spec(id).unwrap();
            let Expect::Denied(layer) = row.expect else {
                panic!("{id} is a deny row")
            };
            assert!(!layer.claimed(&layers), "{id}");
            let verdict = judge(row, Some(&Outcome::Ok {}), 1, layer.claimed(&layers));
            assert_eq!(verdict, Verdict::NotEnforced, "{id}");
            assert!(!verdict.fails());
        }
        let enforced = Layers {
            socket_families: true,
            unix_sockets: true,
            ptrace: true,
        };
        let row = spec("vsock_socket").unwrap();
        assert_eq!(
            judge(
                row,
                Some(&Outcome::Ok {}),
                0,
                Layer::LsmSocketCreate.claimed(&enforced)
            ),
            Verdict::Bypass
        );
        assert!(Layer::Connect4.claimed(&layers));
    }

    #[test]
    fn socket_creation_refused_before_the_program_is_unproven() {
        let row = spec("raw_socket").unwrap();
        let filtered = Outcome::Err {
            errno: Errno::EAFNOSUPPORT as i32,
            message: "not supported".into(),
        };
        assert_eq!(judge(row, Some(&filtered), 0, true), Verdict::Unproven);
        let no_cap = Outcome::Precondition {
            why: "no CAP_NET_RAW".into(),
        };
        assert_eq!(judge(row, Some(&no_cap), 0, true), Verdict::Unproven);
        assert!(!Verdict::Unproven.fails());
    }

    #[test]
    fn positive_rows_must_be_reached() {
        let row = spec("proxy_reachable").unwrap();
        assert_eq!(judge(row, Some(&Outcome::Ok {}), 0, true), Verdict::Passed);
        assert_eq!(judge(row, Some(&eperm()), 0, true), Verdict::Broken);
        assert_eq!(judge(row, None, 0, true), Verdict::Broken);
    }

    #[test]
    fn plans_aim_at_the_decoys_and_name_what_is_missing() {
        let inputs = inputs();
        let action = |id: &str| plan_one(spec(id).unwrap(), &inputs);
        assert_eq!(
            action("tcp_v4mapped"),
            Planned::Run(Action::TcpConnect {
                addr: "[::ffff:127.0.0.2]:4002".parse().unwrap()
            })
        );
        assert_eq!(
            action("v6only_wildcard"),
            Planned::Run(Action::V6onlyWildcard { port: 4003 })
        );
        assert_eq!(
            action("unix_host_socket"),
            Planned::Run(Action::UnixConnect {
                path: "/state/d.sock".into()
            })
        );
        assert_eq!(
            action("proxy_reachable"),
            Planned::Run(Action::TcpConnect {
                addr: "127.0.0.1:3128".parse().unwrap()
            })
        );
        assert!(
            matches!(action("tcp6_host_address"), Planned::NotApplicable(why) if why.contains("IPv6 address"))
        );
        assert!(matches!(
            action("transparent_reachable"),
            Planned::NotApplicable(_)
        ));
        let no_v6 = PlanInputs {
            ipv6: false,
            ..inputs.clone()
        };
        assert!(matches!(
            plan_one(spec("tcp_v4mapped").unwrap(), &no_v6),
            Planned::NotApplicable(_)
        ));
    }

    #[test]
    fn actions_travel_as_json() {
        let planned = PlannedAttempt {
            id: "raw_socket".into(),
            action: Action::RawSocket {},
        };
        let text = serde_json::to_string(&planned).unwrap();
        assert_eq!(
            text,
            r#"{"id":"raw_socket","action":{"kind":"raw_socket"}}"#
        );
        assert_eq!(
            serde_json::from_str::<PlannedAttempt>(&text).unwrap(),
            planned
        );
        assert!(serde_json::from_str::<Outcome>(r#"{"result":"ok","extra":1}"#).is_err());
    }
}
