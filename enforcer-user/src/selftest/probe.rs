//! The in-cgroup side of the self-test: `enforcer selftest-probe`, the
//! shipped binary re-executed inside the leaf cgroup.
//!
//! It reads one [`ProbePlan`] line on stdin, makes each attempt in order
//! and prints one [`ProbeReport`] line on stdout. The squat attempt needs
//! the daemon in the middle: the probe prints `squat PORT`, the daemon
//! starts a listener there and answers with one line on stdin.
//!
//! Each attempt records the errno it got; the daemon judges
//! ([`super::matrix::judge`]). The probe runs with the daemon's uid and
//! capabilities (root), so an attempt that is refused was refused by the
//! kernel programs, not for want of privilege; where a privilege is missing
//! anyway (a hardened unit without `CAP_NET_RAW`) it says so.

use std::{
    io::{self, BufRead, IoSliceMut, Read as _, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsFd, AsRawFd as _, OwnedFd},
    time::Duration,
};

// What nix 0.32 does not name: the raw-byte socket options, the
// `MSG_FASTOPEN` flag and `PR_SET_PTRACER`.
use libc::{
    IP_OPTIONS, IPPROTO_IP, IPPROTO_IPV6, IPV6_RTHDR, MSG_FASTOPEN, PR_SET_PTRACER,
    PR_SET_PTRACER_ANY, c_ulong, socklen_t,
};
use nix::{
    errno::Errno,
    sys::{
        prctl, ptrace,
        socket::{
            self as sock, AddressFamily, Backlog, MsgFlags, SockFlag, SockProtocol, SockType,
            SockaddrIn, SockaddrIn6, SockaddrLike, SockaddrStorage, sockopt,
        },
        uio::{RemoteIoVec, process_vm_readv},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

use super::matrix::{Action, Outcome, PlannedAttempt};

/// What the daemon sends the probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbePlan {
    /// The attempts, in order.
    pub attempts: Vec<PlannedAttempt>,
}

/// One attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeResult {
    /// The matrix row's id.
    pub id: String,
    /// What happened.
    pub outcome: Outcome,
}

/// What the probe prints when done.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeReport {
    /// One per planned attempt.
    pub results: Vec<ProbeResult>,
}

/// The line prefix of the squat hand-off (`squat PORT`).
pub const SQUAT_PREFIX: &str = "squat ";

/// How long a socket read inside one attempt may wait.
const IO_TIMEOUT: Duration = Duration::from_millis(500);

/// The probe's command name, as deny events and the audit log show it
/// (exec'd through `/proc/self/exe`, it would otherwise be `exe`).
pub const PROBE_COMM: &std::ffi::CStr = c"selftest-probe";

/// Names this process [`PROBE_COMM`].
pub fn set_comm() {
    let _ = prctl::set_name(PROBE_COMM);
}

/// Runs the probe: plan from `input`, report (and the squat hand-off) to `output`.
pub fn run(input: &mut impl BufRead, output: &mut impl Write) -> io::Result<()> {
    let mut line = String::new();
    input.read_line(&mut line)?;
    let plan: ProbePlan = serde_json::from_str(line.trim())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
    let mut results = Vec::with_capacity(plan.attempts.len());
    for attempt in &plan.attempts {
        let outcome = attempt_one(&attempt.action, input, output);
        results.push(ProbeResult {
            id: attempt.id.clone(),
            outcome,
        });
    }
    let text = serde_json::to_string(&ProbeReport { results })
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
    writeln!(output, "{text}")?;
    output.flush()
}

fn attempt_one(action: &Action, input: &mut impl BufRead, output: &mut impl Write) -> Outcome {
    let result = match action {
        Action::TcpConnect { addr } => TcpStream::connect_timeout(addr, IO_TIMEOUT).map(drop),
        Action::TcpFastOpen { addr } => tcp_fastopen(*addr),
        Action::UdpConnect { addr } => udp_for(*addr).and_then(|socket| {
            socket.connect(addr)?;
            socket.send(b"enforcer-selftest").map(drop)
        }),
        Action::UdpSendto { addr } => {
            udp_for(*addr).and_then(|socket| socket.send_to(b"enforcer-selftest", addr).map(drop))
        }
        Action::RawSocket {} => {
            if let Some(missing) = missing_net_raw() {
                return missing;
            }
            socket(AddressFamily::Inet, SockType::Raw, Some(SockProtocol::Icmp)).map(drop)
        }
        Action::PacketSocket {} => {
            if let Some(missing) = missing_net_raw() {
                return missing;
            }
            // ETH_P_ALL in network byte order.
            socket(
                AddressFamily::Packet,
                SockType::Raw,
                Some(SockProtocol::EthAll),
            )
            .map(drop)
        }
        Action::VsockSocket {} => socket(AddressFamily::Vsock, SockType::Stream, None).map(drop),
        Action::V6onlyWildcard { port } => v6only_wildcard(*port),
        Action::SquatTcp {} => squat(input, output),
        Action::Ipv6RoutingHeader {} => routing_header(),
        Action::Ipv4SourceRoute {} => source_route(),
        Action::UnixConnect { path } => std::os::unix::net::UnixStream::connect(path).map(drop),
        Action::ProcessVmRead { pid } => process_vm_read(*pid),
        Action::PtraceAttach { pid } => ptrace_attach(*pid),
        Action::OwnTcpServer { v6 } => own_tcp_server(*v6),
        Action::OwnUdpServer { v6 } => own_udp_server(*v6),
    };
    match result {
        Ok(()) => Outcome::Ok {},
        Err(error) => Outcome::Err {
            errno: error.raw_os_error().unwrap_or(0),
            message: error.to_string(),
        },
    }
}

/// The line the outside process prints once it may be traced.
pub const HOLD_READY: &str = "ready";

/// The ptrace rows' target (`enforcer selftest-probe --hold`, started by
/// the daemon outside the cgroup): lets any process trace it, so that
/// only the kernel program (not Yama) can refuse the probe, says
/// [`HOLD_READY`], and waits for its stdin to close.
pub fn hold(input: &mut impl BufRead, output: &mut impl Write) -> io::Result<()> {
    if let Err(errno) = set_ptracer(PR_SET_PTRACER_ANY) {
        // EINVAL: Yama is not built in, so nothing needs lifting.
        if errno != Errno::EINVAL {
            return Err(errno.into());
        }
    }
    writeln!(output, "{HOLD_READY}")?;
    output.flush()?;
    io::copy(input, &mut io::sink()).map(drop)
}

/// `process_vm_readv` of one byte of `pid`. The access check comes before
/// the copy, so `EFAULT` (the address is not mapped there) means the check
/// let the call through, the same as a success.
fn process_vm_read(pid: u32) -> io::Result<()> {
    let pid = target_pid(pid)?;
    let mut byte = [0u8; 1];
    // Only read by the kernel in the other process, after its access check.
    let remote = RemoteIoVec {
        base: 0x1000,
        len: 1,
    };
    match process_vm_readv(pid, &mut [IoSliceMut::new(&mut byte)], &[remote]) {
        Ok(_) | Err(Errno::EFAULT) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// `PTRACE_ATTACH` to `pid`; a success is undone at once.
fn ptrace_attach(pid: u32) -> io::Result<()> {
    let pid = target_pid(pid)?;
    ptrace::attach(pid)?;
    // Waits for the attach stop of the tracee just attached.
    let _ = waitpid(pid, Some(WaitPidFlag::__WALL));
    let _ = ptrace::detach(pid, None);
    Ok(())
}

/// `pid` as the kernel takes it; one past `pid_t` is no process (`ESRCH`).
fn target_pid(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .map(Pid::from_raw)
        .map_err(|_| Errno::ESRCH.into())
}

/// `prctl(PR_SET_PTRACER, ptracer)`, which nix 0.32 has no wrapper for.
fn set_ptracer(ptracer: c_ulong) -> nix::Result<()> {
    // SAFETY: PR_SET_PTRACER takes an integer argument, no pointers.
    let rc = unsafe { libc::prctl(PR_SET_PTRACER, ptracer) };
    Errno::result(rc).map(drop)
}

/// `Some(precondition)` when this process lacks `CAP_NET_RAW` (raw and
/// packet sockets would be refused for that, proving nothing).
fn missing_net_raw() -> Option<Outcome> {
    const CAP_NET_RAW: u32 = 13;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
    (effective & (1 << CAP_NET_RAW) == 0).then(|| Outcome::Precondition {
        why: "the daemon has no CAP_NET_RAW, so the kernel refuses this before any program runs"
            .into(),
    })
}

fn udp_for(addr: SocketAddr) -> io::Result<UdpSocket> {
    match addr {
        SocketAddr::V4(_) => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

fn socket(
    family: AddressFamily,
    kind: SockType,
    protocol: Option<SockProtocol>,
) -> io::Result<OwnedFd> {
    Ok(sock::socket(
        family,
        kind,
        SockFlag::SOCK_CLOEXEC,
        protocol,
    )?)
}

/// `setsockopt(2)` with raw option bytes, for the options nix 0.32 has no
/// typed wrapper for (`IPV6_RTHDR`, `IP_OPTIONS`).
fn set_option_bytes(fd: impl AsFd, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    let len = socklen_t::try_from(value.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: value lives across the call and len is its length; the fd is
    // borrowed for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            len,
        )
    };
    Ok(Errno::result(rc).map(drop)?)
}

/// A socket address as the C API takes it: a `sockaddr_in` or a
/// `sockaddr_in6` (flow info 0), each with its own length.
enum CAddr {
    V4(SockaddrIn),
    V6(SockaddrIn6),
}

impl CAddr {
    fn new(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(v4) => Self::V4(v4.into()),
            SocketAddr::V6(v6) => {
                Self::V6(SocketAddrV6::new(*v6.ip(), v6.port(), 0, v6.scope_id()).into())
            }
        }
    }

    fn get(&self) -> &dyn SockaddrLike {
        match self {
            Self::V4(sin) => sin,
            Self::V6(sin6) => sin6,
        }
    }
}

fn family(addr: SocketAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// `sendto(MSG_FASTOPEN)`: connect and send in one call.
fn tcp_fastopen(addr: SocketAddr) -> io::Result<()> {
    let fd = socket(family(addr), SockType::Stream, None)?;
    let data = b"enforcer-selftest";
    let flags = MsgFlags::from_bits_retain(MSG_FASTOPEN);
    sock::sendto(fd.as_raw_fd(), data, CAddr::new(addr).get(), flags)?;
    Ok(())
}

fn bind_fd(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    Ok(sock::bind(fd.as_raw_fd(), CAddr::new(addr).get())?)
}

fn listen_fd(fd: &OwnedFd) -> io::Result<()> {
    Ok(sock::listen(fd, Backlog::new(8)?)?)
}

fn local_port(fd: &OwnedFd) -> io::Result<u16> {
    let addr: SockaddrStorage = sock::getsockname(fd.as_raw_fd())?;
    if let Some(sin) = addr.as_sockaddr_in() {
        Ok(sin.port())
    } else if let Some(sin6) = addr.as_sockaddr_in6() {
        Ok(sin6.port())
    } else {
        Err(Errno::EAFNOSUPPORT.into())
    }
}

/// Whether `[::]:port` with `IPV6_V6ONLY` can be bound now: the
/// `v6only_wildcard` attempt needs it free beside the decoy's
/// `127.0.0.1:port` (an IPv6-only socket elsewhere on that port, e.g. on
/// `[::1]`, would make the attempt fail with EADDRINUSE and prove nothing).
pub fn v6_wildcard_free(port: u16) -> bool {
    let Ok(fd) = socket(AddressFamily::Inet6, SockType::Stream, None) else {
        return false;
    };
    sock::setsockopt(&fd, sockopt::Ipv6V6Only, &true).is_ok()
        && bind_fd(&fd, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).is_ok()
}

/// bind `[::]:port` with `IPV6_V6ONLY` and listen, then connect
/// `127.0.0.1:port`, where the daemon's decoy listens.
fn v6only_wildcard(port: u16) -> io::Result<()> {
    let own = socket(AddressFamily::Inet6, SockType::Stream, None)?;
    sock::setsockopt(&own, sockopt::Ipv6V6Only, &true)?;
    bind_fd(&own, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))?;
    listen_fd(&own)?;
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), IO_TIMEOUT).map(drop)
}

/// bind `127.0.0.1:0` with `SO_REUSEADDR`, never listen; hand the port to
/// the daemon, which listens there; then connect to it.
fn squat(input: &mut impl BufRead, output: &mut impl Write) -> io::Result<()> {
    let squatter = socket(AddressFamily::Inet, SockType::Stream, None)?;
    sock::setsockopt(&squatter, sockopt::ReuseAddr, &true)?;
    bind_fd(&squatter, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let port = local_port(&squatter)?;
    writeln!(output, "{SQUAT_PREFIX}{port}")?;
    output.flush()?;
    let mut line = String::new();
    input.read_line(&mut line)?;
    if line.trim() != "go" {
        return Err(io::Error::other(format!(
            "the daemon could not listen on the squatted port: {}",
            line.trim()
        )));
    }
    let result =
        TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), IO_TIMEOUT)
            .map(drop);
    drop(squatter);
    result
}

/// `setsockopt(IPV6_RTHDR)`: a type-4 segment-routing header whose only
/// segment is `::1` (never an address off this host).
fn routing_header() -> io::Result<()> {
    let fd = socket(AddressFamily::Inet6, SockType::Datagram, None)?;
    // nexthdr, hdrlen (8-octet units past the first 8), type 4,
    // segments_left 1, last_entry 1, flags, tag; two segments.
    let mut srh = vec![0, 4, 4, 1, 1, 0, 0, 0];
    srh.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    srh.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    set_option_bytes(&fd, IPPROTO_IPV6, IPV6_RTHDR, &srh)
}

/// `setsockopt(IP_OPTIONS)`: NOP, then a loose source route via 127.0.0.1.
fn source_route() -> io::Result<()> {
    let fd = socket(AddressFamily::Inet, SockType::Datagram, None)?;
    let mut options = vec![1, 131, 7, 4];
    options.extend_from_slice(&Ipv4Addr::LOCALHOST.octets());
    set_option_bytes(&fd, IPPROTO_IP, IP_OPTIONS, &options)
}

fn own_ip(v6: bool) -> std::net::IpAddr {
    if v6 {
        Ipv6Addr::LOCALHOST.into()
    } else {
        Ipv4Addr::LOCALHOST.into()
    }
}

/// A server of its own, a client to it, one byte each way.
fn own_tcp_server(v6: bool) -> io::Result<()> {
    let listener = TcpListener::bind((own_ip(v6), 0))?;
    let mut client = TcpStream::connect_timeout(&listener.local_addr()?, IO_TIMEOUT)?;
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.write_all(b"q")?;
    let (mut accepted, _) = listener.accept()?;
    accepted.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut byte = [0u8; 1];
    accepted.read_exact(&mut byte)?;
    accepted.write_all(b"a")?;
    client.read_exact(&mut byte)
}

/// A UDP server of its own, one datagram each way.
fn own_udp_server(v6: bool) -> io::Result<()> {
    let server = UdpSocket::bind((own_ip(v6), 0))?;
    let client = UdpSocket::bind((own_ip(v6), 0))?;
    server.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.send_to(b"q", server.local_addr()?)?;
    let mut byte = [0u8; 1];
    let (_, from) = server.recv_from(&mut byte)?;
    server.send_to(b"a", from)?;
    client.recv_from(&mut byte).map(drop)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Outside any enforced cgroup: its own servers work, a refused
    /// connect reports its errno, and the squat hand-off is one line each way.
    #[test]
    fn the_probe_reports_each_attempt_in_order() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let plan = ProbePlan {
            attempts: vec![
                PlannedAttempt {
                    id: "own".into(),
                    action: Action::OwnTcpServer { v6: false },
                },
                PlannedAttempt {
                    id: "own_udp".into(),
                    action: Action::OwnUdpServer { v6: false },
                },
                PlannedAttempt {
                    id: "refused".into(),
                    action: Action::TcpConnect { addr: closed_addr },
                },
                PlannedAttempt {
                    id: "squat".into(),
                    action: Action::SquatTcp {},
                },
            ],
        };
        let mut input = format!("{}\nno\n", serde_json::to_string(&plan).unwrap());
        input.push('\n');
        let mut output = Vec::new();
        run(&mut io::Cursor::new(input.into_bytes()), &mut output).unwrap();
        let text = String::from_utf8(output).unwrap();
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with(SQUAT_PREFIX), "{text}");
        let report: ProbeReport = serde_json::from_str(lines.next().unwrap()).unwrap();
        let outcomes: Vec<&Outcome> = report.results.iter().map(|r| &r.outcome).collect();
        assert_eq!(outcomes[0], &Outcome::Ok {});
        assert_eq!(outcomes[1], &Outcome::Ok {});
        assert!(
            matches!(outcomes[2], Outcome::Err { errno, .. } if *errno == Errno::ECONNREFUSED as i32),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[3], Outcome::Err { .. }),
            "the daemon said no"
        );
    }

    /// The raw `setsockopt(2)` wrapper reports the kernel's errno.
    #[test]
    fn raw_setsockopt_on_a_non_socket_is_enotsock() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let error = set_option_bytes(&file, IPPROTO_IP, IP_OPTIONS, &[1]).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(Errno::ENOTSOCK as i32));
    }

    /// EINVAL with Yama (no such process) and without (unknown option).
    #[test]
    fn raw_prctl_set_ptracer_to_no_process_is_einval() {
        let no_process = c_ulong::try_from(i32::MAX).unwrap();
        assert_eq!(set_ptracer(no_process), Err(Errno::EINVAL));
    }
}
