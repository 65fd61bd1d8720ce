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
    io::{self, BufRead, Read as _, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
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
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, PROBE_COMM.as_ptr()) };
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
            socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP).map(drop)
        }
        Action::PacketSocket {} => {
            if let Some(missing) = missing_net_raw() {
                return missing;
            }
            let protocol = i32::from((libc::ETH_P_ALL as u16).to_be());
            socket(libc::AF_PACKET, libc::SOCK_RAW, protocol).map(drop)
        }
        Action::VsockSocket {} => socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0).map(drop),
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
    // SAFETY: PR_SET_PTRACER takes an integer argument, no pointers.
    if unsafe { libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY) } != 0 {
        let error = io::Error::last_os_error();
        // EINVAL: Yama is not built in, so nothing needs lifting.
        if error.raw_os_error() != Some(libc::EINVAL) {
            return Err(error);
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
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let mut byte = [0u8; 1];
    let local = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let remote = libc::iovec {
        iov_base: 0x1000 as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: `local` points at one writable byte of ours; `remote` is only
    // read by the kernel in the other process, after its access check.
    let copied = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if copied < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EFAULT) {
            return Ok(());
        }
        return Err(error);
    }
    Ok(())
}

/// `PTRACE_ATTACH` to `pid`; a success is undone at once.
fn ptrace_attach(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: PTRACE_ATTACH takes no pointers.
    if unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut status = 0;
    // SAFETY: waits for the attach stop of the tracee just attached;
    // status is a valid out pointer.
    unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    // SAFETY: detaches the tracee just attached; no pointers.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize) };
    Ok(())
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

fn socket(family: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_option(fd: &OwnedFd, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    let len = libc::socklen_t::try_from(value.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: value lives across the call and len is its length.
    let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A socket address as the C API takes it.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a sockaddr_in fits in a sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: a sockaddr_in6 fits in a sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, libc::socklen_t::try_from(len).unwrap_or(0))
}

fn family(addr: SocketAddr) -> i32 {
    if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// `sendto(MSG_FASTOPEN)`: connect and send in one call.
fn tcp_fastopen(addr: SocketAddr) -> io::Result<()> {
    let fd = socket(family(addr), libc::SOCK_STREAM, 0)?;
    let (storage, len) = sockaddr(addr);
    let data = b"enforcer-selftest";
    // SAFETY: data and storage are valid for the lengths given.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_FASTOPEN,
            (&raw const storage).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn bind_fd(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage holds a sockaddr of length len.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const storage).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn listen_fd(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: listen(2) on a socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 8) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn local_port(fd: &OwnedFd) -> io::Result<u16> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_storage>())
        .unwrap_or(libc::socklen_t::MAX);
    // SAFETY: storage and len are valid for writing.
    let rc = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut storage).cast(), &raw mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote an AF_INET or AF_INET6 address; their ports
    // sit at the same offset.
    let sin: libc::sockaddr_in = unsafe { std::ptr::read((&raw const storage).cast()) };
    Ok(u16::from_be(sin.sin_port))
}

const ONE: [u8; 4] = 1i32.to_ne_bytes();

/// Whether `[::]:port` with `IPV6_V6ONLY` can be bound now: the
/// `v6only_wildcard` attempt needs it free beside the decoy's
/// `127.0.0.1:port` (an IPv6-only socket elsewhere on that port, e.g. on
/// `[::1]`, would make the attempt fail with EADDRINUSE and prove nothing).
pub fn v6_wildcard_free(port: u16) -> bool {
    let Ok(fd) = socket(libc::AF_INET6, libc::SOCK_STREAM, 0) else {
        return false;
    };
    set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &ONE).is_ok()
        && bind_fd(&fd, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).is_ok()
}

/// bind `[::]:port` with `IPV6_V6ONLY` and listen, then connect
/// `127.0.0.1:port`, where the daemon's decoy listens.
fn v6only_wildcard(port: u16) -> io::Result<()> {
    let own = socket(libc::AF_INET6, libc::SOCK_STREAM, 0)?;
    set_option(&own, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &ONE)?;
    bind_fd(&own, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))?;
    listen_fd(&own)?;
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), IO_TIMEOUT).map(drop)
}

/// bind `127.0.0.1:0` with `SO_REUSEADDR`, never listen; hand the port to
/// the daemon, which listens there; then connect to it.
fn squat(input: &mut impl BufRead, output: &mut impl Write) -> io::Result<()> {
    let squatter = socket(libc::AF_INET, libc::SOCK_STREAM, 0)?;
    set_option(&squatter, libc::SOL_SOCKET, libc::SO_REUSEADDR, &ONE)?;
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
    let fd = socket(libc::AF_INET6, libc::SOCK_DGRAM, 0)?;
    // nexthdr, hdrlen (8-octet units past the first 8), type 4,
    // segments_left 1, last_entry 1, flags, tag; two segments.
    let mut srh = vec![0, 4, 4, 1, 1, 0, 0, 0];
    srh.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    srh.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &srh)
}

/// `setsockopt(IP_OPTIONS)`: NOP, then a loose source route via 127.0.0.1.
fn source_route() -> io::Result<()> {
    let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut options = vec![1, 131, 7, 4];
    options.extend_from_slice(&Ipv4Addr::LOCALHOST.octets());
    set_option(&fd, libc::IPPROTO_IP, libc::IP_OPTIONS, &options)
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
            matches!(outcomes[2], Outcome::Err { errno, .. } if *errno == libc::ECONNREFUSED),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[3], Outcome::Err { .. }),
            "the daemon said no"
        );
    }
}
