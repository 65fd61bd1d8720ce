//! enforcer-probe: makes one network attempt and reports what the kernel said.
//!
//! Kernel tests and `cargo xtask demo` start it inside an enforced cgroup.
//! It prints exactly one line on stdout: `ok` or `err <errno> <message>`,
//! and exits 0 either way (exit 2 means it was called wrongly).
//!
//! ```text
//! enforcer-probe tcp-connect ADDR          connect(2) a TCP socket
//! enforcer-probe udp-connect ADDR          connect(2) a UDP socket
//! enforcer-probe udp-sendto ADDR           sendto(2) on an unconnected UDP socket
//! enforcer-probe dns ADDR                  a DNS query for example.com by sendto(2)
//! enforcer-probe tcp-fastopen ADDR         sendto(MSG_FASTOPEN) on a fresh TCP socket
//! enforcer-probe raw4 | raw6               socket(AF_INET/AF_INET6, SOCK_RAW, IPPROTO_ICMP)
//! enforcer-probe udplite                   socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE)
//! enforcer-probe packet                    socket(AF_PACKET, SOCK_RAW, ETH_P_ALL)
//! enforcer-probe vsock                     socket(AF_VSOCK, SOCK_STREAM, 0) (never connected)
//! enforcer-probe serve-self ADDR           bind+listen on ADDR, then connect to it
//! enforcer-probe listen ADDR               bind+listen, print `listening PORT`, wait for stdin EOF
//! enforcer-probe connect-loop ADDR [COUNT]  connect(2) COUNT times, or until stdin closes;
//!                                           prints `attempts=N successes=M eperm=K` (kernel tests' prober)
//! enforcer-probe v6only-connect tcp|udp PORT
//!                                           bind [::]:PORT with IPV6_V6ONLY=1 (TCP: and listen),
//!                                           then connect 127.0.0.1:PORT and send one byte
//! enforcer-probe own-server KIND ADDR      a server of its own on ADDR (port 0 = any), a client
//!                                           to it, one byte each way; KIND: tcp (SO_REUSEADDR),
//!                                           tcp-noreuse, udp, udp-reuse (SO_REUSEADDR)
//! enforcer-probe rthdr-sockopt SEGMENT     bind UDP [::1]:0, then from a second socket with an
//!                                           IPv6 segment-routing header (IPV6_RTHDR, type 4, one
//!                                           segment = SEGMENT) sendto that [::1] port
//! enforcer-probe lsrr-sockopt HOP           the same for IPv4: 127.0.0.1, IP_OPTIONS with a loose
//!                                           source route via HOP
//! enforcer-probe lsrr-cmsg HOP              the loose source route as sendmsg ancillary data
//!                                           (IP_RETOPTS), which no setsockopt check sees
//! enforcer-probe big-sockopt                setsockopt(SO_SNDBUF) with a 12 KiB value (> a page)
//! enforcer-probe squat-tcp                  bind a TCP socket to 127.0.0.1:0 with SO_REUSEADDR,
//!                                           never listen; print `bound PORT`, wait for one stdin
//!                                           line, then connect 127.0.0.1:PORT and send one byte
//! enforcer-probe tcp-hold ADDR              connect(2) to ADDR, print `connected LOCAL_ADDR`, keep
//!                                           the connection until one stdin line, then close it
//!                                           (client attribution tests: the server looks it up)
//! enforcer-probe unix-hold PATH             the same on a unix stream socket at PATH (`connected`)
//! enforcer-probe unix-connect KIND ADDR    a unix socket to ADDR (a path, or @name for an abstract
//!                                           name); KIND: stream (connect), dgram (connect),
//!                                           dgram-sendto (sendto on an unconnected socket)
//! enforcer-probe unix-own-server PATH      bind+listen a unix stream server at PATH, connect to it,
//!                                           one byte each way (the socket file is removed after)
//! enforcer-probe ptrace-attach PID         PTRACE_ATTACH to PID (detached again at once)
//! enforcer-probe process-vm-read PID       process_vm_readv of 1 byte at PID's auxv-free stack top
//!                                           (any address: EFAULT still means access was granted)
//! enforcer-probe ptrace-child              fork a child and PTRACE_ATTACH to it
//! enforcer-probe traceable                 let any process trace it (PR_SET_PTRACER_ANY, so Yama
//!                                           does not decide), print `ready`, wait for stdin EOF
//! enforcer-probe exchange KIND ADDR         send `q` to ADDR and read one reply byte (2 s timeout);
//!                                           KIND: tcp, udp-sendto, udp-connect
//! enforcer-probe hold-tcp ADDR              connect ADDR, one byte each way, print `connected`,
//!                                           wait for one stdin line, one byte each way again
//! enforcer-probe unjudged KIND FIRST SECOND  one socket: send to FIRST (judged by the connect/
//!                                           sendmsg programs), print `judged ok|err ERRNO`, wait
//!                                           for one stdin line, then send one byte to SECOND on the
//!                                           same socket; KIND: udp-sendto, udp-connect (connect
//!                                           again), tcp (connect again after FIRST refused; 2 s)
//! enforcer-probe tls-hello ADDR SNI        connect(2) to ADDR, print `peer PEERNAME` (getpeername),
//!                                           send a TLS ClientHello naming SNI, print `reply TEXT`
//!                                           (what came back before EOF or 3 s, lossy UTF-8, may be
//!                                           empty); the transparent-listener tests' client
//! enforcer-probe http-get ADDR HOST         the same with `GET /probe HTTP/1.1` and `Host: HOST`
//! enforcer-probe dns-ask KIND ADDR NAME [TYPE]
//!                                           one DNS query for NAME (A, AAAA or TXT; default A) to
//!                                           ADDR over KIND (udp-sendto: unconnected; udp-connect;
//!                                           tcp: length-framed); prints `from ADDR` (recvfrom's
//!                                           source, or getpeername), `rcode N` and `answer IP TTL`
//!                                           per address; 3 s for the answer
//! ```
//!
//! With `ENFORCER_PROBE_USER=UID:GID` in its environment the probe drops to
//! that user (supplementary groups cleared) before doing anything: the
//! attacks are made as an unprivileged user, as an agent would.
use std::{
    io::{self, BufRead as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::ExitCode,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(error) = drop_privileges() {
        eprintln!("enforcer-probe: dropping privileges: {error}");
        return ExitCode::from(2);
    }
    let Some(command) = args.first() else {
        eprintln!("usage: enforcer-probe COMMAND [ADDR] (see the source's header)");
        return ExitCode::from(2);
    };
    let addr = || -> Result<SocketAddr, String> {
        let text = args
            .get(1)
            .ok_or_else(|| format!("{command} needs an ADDR"))?;
        text.parse()
            .map_err(|_| format!("{text:?} is not ADDR:PORT"))
    };
    let result = match command.as_str() {
        "tcp-connect" => addr().map(|a| TcpStream::connect(a).map(drop)),
        "udp-connect" => addr().map(|a| udp_for(a).and_then(|s| s.connect(a))),
        "udp-sendto" => addr().map(|a| udp_for(a).and_then(|s| s.send_to(b"probe", a).map(drop))),
        "dns" => addr().map(|a| udp_for(a).and_then(|s| s.send_to(&dns_query(), a).map(drop))),
        "tcp-fastopen" => addr().map(tcp_fastopen),
        "raw4" => Ok(socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)),
        "raw6" => Ok(socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)),
        "udplite" => Ok(socket(
            libc::AF_INET,
            libc::SOCK_DGRAM,
            libc::IPPROTO_UDPLITE,
        )),
        "packet" => Ok(socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        )),
        "vsock" => Ok(socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0)),
        "serve-self" => addr().map(serve_self),
        "listen" => addr().map(listen_until_eof),
        "connect-loop" => addr().map(|a| connect_loop(a, args.get(2).and_then(|n| n.parse().ok()))),
        "v6only-connect" => match (args.get(1).map(String::as_str), port_arg(&args, 2)) {
            (Some(proto @ ("tcp" | "udp")), Ok(port)) => Ok(v6only_connect(proto == "tcp", port)),
            _ => Err("v6only-connect needs tcp|udp PORT".into()),
        },
        "squat-tcp" => Ok(squat_tcp()),
        "tcp-hold" => addr().map(tcp_hold),
        "unix-hold" => args
            .get(1)
            .map(|path| unix_hold(std::path::Path::new(path)))
            .ok_or_else(|| "unix-hold needs a PATH".to_owned()),
        "rthdr-sockopt" => ip_arg(&args).map(|hop| source_routed(hop, false)),
        "lsrr-sockopt" => ip_arg(&args).map(|hop| source_routed(hop, false)),
        "lsrr-cmsg" => ip_arg(&args).map(|hop| source_routed(hop, true)),
        "big-sockopt" => Ok(big_sockopt()),
        "exchange" => match (args.get(1).map(String::as_str), addr_arg(&args, 2)) {
            (Some(kind), Ok(a)) => exchange(kind, a),
            _ => Err("exchange needs KIND ADDR".into()),
        },
        "hold-tcp" => addr().map(hold_tcp),
        "tls-hello" => match (addr(), args.get(2)) {
            (Ok(a), Some(sni)) => Ok(first_exchange(a, &client_hello(sni))),
            _ => Err("tls-hello needs ADDR SNI".into()),
        },
        "http-get" => match (addr(), args.get(2)) {
            (Ok(a), Some(host)) => Ok(first_exchange(
                a,
                format!("GET /probe HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )),
            _ => Err("http-get needs ADDR HOST".into()),
        },
        "dns-ask" => match (
            args.get(1).map(String::as_str),
            addr_arg(&args, 2),
            args.get(3),
        ) {
            (Some(kind), Ok(a), Some(name)) => {
                dns_ask(kind, a, name, args.get(4).map_or("A", String::as_str))
            }
            _ => Err("dns-ask needs KIND ADDR NAME [TYPE]".into()),
        },
        "unjudged" => match (
            args.get(1).map(String::as_str),
            addr_arg(&args, 2),
            addr_arg(&args, 3),
        ) {
            (Some(kind), Ok(first), Ok(second)) => unjudged(kind, first, second),
            _ => Err("unjudged needs KIND FIRST SECOND".into()),
        },
        "own-server" => match (args.get(1).map(String::as_str), args.get(2)) {
            (Some(kind), Some(text)) => text
                .parse()
                .map_err(|_| format!("{text:?} is not ADDR:PORT"))
                .and_then(|a| own_server(kind, a)),
            _ => Err("own-server needs KIND ADDR".into()),
        },
        "unix-connect" => match (args.get(1).map(String::as_str), args.get(2)) {
            (Some(kind), Some(target)) => unix_connect(kind, target),
            _ => Err("unix-connect needs KIND ADDR".into()),
        },
        "unix-own-server" => args
            .get(1)
            .map(|path| unix_own_server(path))
            .ok_or_else(|| "unix-own-server needs PATH".into()),
        "ptrace-attach" => port_pid(&args).map(ptrace_attach),
        "process-vm-read" => port_pid(&args).map(process_vm_read),
        "ptrace-child" => Ok(ptrace_child()),
        "traceable" => Ok(traceable_until_eof()),
        other => Err(format!("unknown command {other:?}")),
    };
    match result {
        Err(usage) => {
            eprintln!("enforcer-probe: {usage}");
            ExitCode::from(2)
        }
        Ok(Ok(())) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            println!("err {} {error}", error.raw_os_error().unwrap_or(0));
            ExitCode::SUCCESS
        }
    }
}

fn udp_for(addr: SocketAddr) -> io::Result<UdpSocket> {
    match addr {
        SocketAddr::V4(_) => UdpSocket::bind("0.0.0.0:0"),
        SocketAddr::V6(_) => UdpSocket::bind("[::]:0"),
    }
}

fn socket(family: i32, kind: i32, protocol: i32) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned and closed below.
    let fd = unsafe { libc::socket(family, kind, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// `sendto(MSG_FASTOPEN)` connects and sends in one call; the kernel's
/// connect hooks must see it like a connect().
fn tcp_fastopen(addr: SocketAddr) -> io::Result<()> {
    let (family, storage, len) = sockaddr(addr);
    // SAFETY: plain socket(2); owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let data = b"probe";
    // SAFETY: data and storage are valid for the lengths given.
    let rc = unsafe {
        libc::sendto(
            owned.as_raw_fd(),
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

fn sockaddr(addr: SocketAddr) -> (i32, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            (
                libc::AF_INET,
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
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
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            (
                libc::AF_INET6,
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as u32,
            )
        }
    }
}

/// A DNS query for example.com, type A.
fn dns_query() -> Vec<u8> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["example", "com"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

/// Binds a listener on `addr` and connects to it: a test suite talking to
/// its own local server.
fn serve_self(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let _client = TcpStream::connect(bound)?;
    let _accepted = listener.accept()?;
    Ok(())
}

/// Listens on `addr`, prints the port, and holds the socket until stdin closes.
fn listen_until_eof(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("listening {}", listener.local_addr()?.port());
    io::stdout().flush()?;
    let mut line = String::new();
    while io::stdin().lock().read_line(&mut line)? > 0 {
        line.clear();
    }
    drop(listener);
    Ok(())
}

/// Connects to `addr` over and over: `count` times, or until stdin closes.
/// Success or failure is what the caller counts, so this always returns Ok.
fn connect_loop(addr: SocketAddr, count: Option<u64>) -> io::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    if count.is_none() {
        std::thread::spawn(|| {
            let mut sink = String::new();
            while io::stdin()
                .lock()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                sink.clear();
            }
            STOP.store(true, Ordering::SeqCst);
        });
    }
    let (mut attempts, mut successes, mut eperm) = (0u64, 0u64, 0u64);
    while count.is_none_or(|n| attempts < n) && !STOP.load(Ordering::SeqCst) {
        attempts += 1;
        match TcpStream::connect(addr) {
            Ok(_) => successes += 1,
            Err(error) if error.raw_os_error() == Some(libc::EPERM) => eperm += 1,
            Err(_) => {}
        }
    }
    eprintln!("attempts={attempts} successes={successes} eperm={eperm}");
    println!("attempts={attempts} successes={successes} eperm={eperm}");
    io::stdout().flush()?;
    std::process::exit(0);
}

fn port_arg(args: &[String], index: usize) -> Result<u16, String> {
    args.get(index)
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| format!("argument {index} must be a port"))
}

/// Drops to `ENFORCER_PROBE_USER=UID:GID` when set.
fn drop_privileges() -> io::Result<()> {
    let Ok(spec) = std::env::var("ENFORCER_PROBE_USER") else {
        return Ok(());
    };
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{spec:?} is not UID:GID"),
        )
    };
    let (uid, gid) = spec.split_once(':').ok_or_else(invalid)?;
    let uid: libc::uid_t = uid.parse().map_err(|_| invalid())?;
    let gid: libc::gid_t = gid.parse().map_err(|_| invalid())?;
    // SAFETY: plain credential system calls on this single-threaded process.
    let failed = unsafe {
        libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
    };
    if failed {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A fresh socket as an owned fd.
fn new_socket(family: i32, kind: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_option(fd: &OwnedFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: value lives across the call; the length matches.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn bind_fd(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (_, storage, len) = sockaddr(addr);
    // SAFETY: storage holds a sockaddr of length len.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const storage).cast(), len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn local_port(fd: &OwnedFd) -> io::Result<u16> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len are valid for writing.
    let rc = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut storage).cast(), &raw mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // sin_port and sin6_port sit at the same offset, in network order.
    // SAFETY: the kernel wrote an AF_INET or AF_INET6 address.
    let sin: libc::sockaddr_in = unsafe { std::ptr::read((&raw const storage).cast()) };
    Ok(u16::from_be(sin.sin_port))
}

/// Escape 2: an IPv6 wildcard socket with `IPV6_V6ONLY` covers no IPv4
/// port, yet port bookkeeping counted it as owning `127.0.0.1:PORT`.
fn v6only_connect(tcp: bool, port: u16) -> io::Result<()> {
    let kind = if tcp {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    let own = new_socket(libc::AF_INET6, kind)?;
    set_int_option(&own, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    bind_fd(
        &own,
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
    )?;
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    if tcp {
        // SAFETY: listen(2) on a socket we own.
        if unsafe { libc::listen(own.as_raw_fd(), 8) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut stream = TcpStream::connect(target)?;
        stream.write_all(b"x")?;
    } else {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(target)?;
        socket.send(b"x")?;
    }
    Ok(())
}

/// Escape 3: bind a loopback port with `SO_REUSEADDR` and never listen;
/// once a host service listens on the same port (also `SO_REUSEADDR`),
/// connect to it.
fn squat_tcp() -> io::Result<()> {
    let squatter = new_socket(libc::AF_INET, libc::SOCK_STREAM)?;
    set_int_option(&squatter, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind_fd(&squatter, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let port = local_port(&squatter)?;
    println!("bound {port}");
    io::stdout().flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    let mut stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
    stream.write_all(b"x")?;
    drop(squatter);
    Ok(())
}

/// Connects, says from where, and holds the connection until told to close.
fn tcp_hold(addr: SocketAddr) -> io::Result<()> {
    let stream = TcpStream::connect(addr)?;
    println!("connected {}", stream.local_addr()?);
    io::stdout().flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    drop(stream);
    Ok(())
}

/// [`tcp_hold`] on a unix stream socket.
fn unix_hold(path: &std::path::Path) -> io::Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    println!("connected");
    io::stdout().flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    drop(stream);
    Ok(())
}

/// A test suite's own local server: bind, connect, one byte each way.
fn own_server(kind: &str, addr: SocketAddr) -> Result<io::Result<()>, String> {
    use std::io::Read as _;
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let (tcp, reuse) = match kind {
        "tcp" => (true, true),
        "tcp-noreuse" => (true, false),
        "udp" => (false, false),
        "udp-reuse" => (false, true),
        other => return Err(format!("unknown own-server kind {other:?}")),
    };
    let run = || -> io::Result<()> {
        let server = new_socket(
            family,
            if tcp {
                libc::SOCK_STREAM
            } else {
                libc::SOCK_DGRAM
            },
        )?;
        if reuse {
            set_int_option(&server, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        }
        bind_fd(&server, addr)?;
        let bound = SocketAddr::new(addr.ip(), local_port(&server)?);
        if tcp {
            // SAFETY: listen(2) on a socket we own.
            if unsafe { libc::listen(server.as_raw_fd(), 8) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let listener = TcpListener::from(server);
            let mut client = TcpStream::connect(bound)?;
            client.write_all(b"q")?;
            let (mut accepted, _) = listener.accept()?;
            let mut byte = [0u8; 1];
            accepted.read_exact(&mut byte)?;
            accepted.write_all(b"a")?;
            client.read_exact(&mut byte)?;
        } else {
            let server = UdpSocket::from(server);
            let client = udp_for(bound)?;
            client.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
            server.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
            client.send_to(b"q", bound)?;
            let mut byte = [0u8; 1];
            let (_, from) = server.recv_from(&mut byte)?;
            server.send_to(b"a", from)?;
            client.recv_from(&mut byte)?;
        }
        Ok(())
    };
    Ok(run())
}

fn ip_arg(args: &[String]) -> Result<std::net::IpAddr, String> {
    let text = args.get(1).ok_or("needs an address")?;
    text.parse()
        .map_err(|_| format!("{text:?} is not an IP address"))
}

/// Escape 1: a datagram to a loopback port the cgroup owns, but carrying a
/// route through `hop` (an IPv6 segment-routing header for an IPv6 `hop`,
/// an IPv4 loose source route for an IPv4 one), set with setsockopt or, for
/// IPv4 with `ancillary`, as sendmsg ancillary data.
fn source_routed(hop: std::net::IpAddr, ancillary: bool) -> io::Result<()> {
    let (family, level, own) = match hop {
        std::net::IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_IPV6, "[::1]:0"),
        std::net::IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_IP, "127.0.0.1:0"),
    };
    let receiver = UdpSocket::bind(own)?;
    let target = receiver.local_addr()?;
    let (name, value): (i32, Vec<u8>) = match hop {
        std::net::IpAddr::V6(segment) => {
            // struct ipv6_sr_hdr: nexthdr, hdrlen (8-octet units past the
            // first 8), type 4, segments_left 1, last_entry 1, flags, tag;
            // segments[0] is filled in by the kernel with the sendto address,
            // segments[1] becomes the packet's destination.
            let mut srh = vec![0, 4, 4, 1, 1, 0, 0, 0];
            srh.extend_from_slice(&[0u8; 16]);
            srh.extend_from_slice(&segment.octets());
            (libc::IPV6_RTHDR, srh)
        }
        std::net::IpAddr::V4(via) => {
            // NOP, then LSRR: type 131, length 7, pointer 4, one hop.
            let mut options = vec![1, 131, 7, 4];
            options.extend_from_slice(&via.octets());
            (
                if ancillary {
                    libc::IP_RETOPTS
                } else {
                    libc::IP_OPTIONS
                },
                options,
            )
        }
    };
    let sender = new_socket(family, libc::SOCK_DGRAM)?;
    let (_, storage, len) = sockaddr(target);
    let mut payload = *b"x";
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw const storage).cast_mut().cast();
    msg.msg_namelen = len;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    let mut control = vec![0u64; 16];
    if ancillary {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations.
        let (space, cmsg_len) = unsafe {
            (
                libc::CMSG_SPACE(value.len() as u32),
                libc::CMSG_LEN(value.len() as u32),
            )
        };
        msg.msg_control = control.as_mut_ptr().cast();
        // The field types differ between glibc (usize) and musl (u32).
        msg.msg_controllen = space as _;
        // SAFETY: control is 128 bytes, more than CMSG_SPACE of <= 40 bytes;
        // CMSG_FIRSTHDR/CMSG_DATA point inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            (*cmsg).cmsg_level = level;
            (*cmsg).cmsg_type = name;
            (*cmsg).cmsg_len = cmsg_len as _;
            std::ptr::copy_nonoverlapping(value.as_ptr(), libc::CMSG_DATA(cmsg), value.len());
        }
    } else {
        // SAFETY: value lives across the call; the length matches.
        let rc = unsafe {
            libc::setsockopt(
                sender.as_raw_fd(),
                level,
                name,
                value.as_ptr().cast(),
                value.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: msg and everything it points to are valid for the call.
    let rc = unsafe { libc::sendmsg(sender.as_raw_fd(), &raw const msg, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A socket option value larger than a page: the setsockopt program must
/// hand it to the kernel untouched.
fn big_sockopt() -> io::Result<()> {
    let socket = new_socket(libc::AF_INET, libc::SOCK_STREAM)?;
    let mut value = vec![0u8; 3 * 4096];
    value[..4].copy_from_slice(&65_536i32.to_ne_bytes());
    // SAFETY: value lives across the call; the length matches.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// === unix sockets and ptrace (issue 14) ===

fn unix_addr(target: &str) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt as _;
    match target.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()),
        None => std::os::unix::net::SocketAddr::from_pathname(target),
    }
}

fn unix_connect(kind: &str, target: &str) -> Result<io::Result<()>, String> {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    let attempt = |addr: std::os::unix::net::SocketAddr| match kind {
        "stream" => UnixStream::connect_addr(&addr).map(drop),
        "dgram" => UnixDatagram::unbound().and_then(|s| s.connect_addr(&addr)),
        "dgram-sendto" => {
            UnixDatagram::unbound().and_then(|s| s.send_to_addr(b"probe", &addr).map(drop))
        }
        _ => Err(io::Error::other("unknown kind")),
    };
    if !["stream", "dgram", "dgram-sendto"].contains(&kind) {
        return Err(format!(
            "unix-connect KIND must be stream, dgram or dgram-sendto, not {kind:?}"
        ));
    }
    Ok(unix_addr(target).and_then(attempt))
}

fn unix_own_server(path: &str) -> io::Result<()> {
    use std::io::Read as _;
    use std::os::unix::net::{UnixListener, UnixStream};
    let listener = UnixListener::bind(path)?;
    let result = (|| {
        let mut client = UnixStream::connect(path)?;
        let (mut server, _) = listener.accept()?;
        client.write_all(b"x")?;
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte)?;
        server.write_all(b"y")?;
        client.read_exact(&mut byte)?;
        Ok(())
    })();
    let _ = std::fs::remove_file(path);
    result
}

fn port_pid(args: &[String]) -> Result<libc::pid_t, String> {
    let text = args.get(1).ok_or("needs a PID")?;
    text.parse().map_err(|_| format!("{text:?} is not a pid"))
}

fn ptrace_attach(pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: PTRACE_ATTACH takes no pointers; a success is undone below.
    let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut status = 0;
    // SAFETY: waits for the attach stop of the tracee we just attached to.
    unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    // SAFETY: detaching the tracee we attached; no pointers.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize) };
    Ok(())
}

fn process_vm_read(pid: libc::pid_t) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let local = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Any address: the access check comes before the read, so EFAULT (an
    // unmapped address) still means the check let us through.
    let remote = libc::iovec {
        iov_base: 0x1000 as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: local points at one writable byte; remote is only read by
    // the kernel from the other process (and checked there).
    let rc = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if rc < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EFAULT) {
            return Ok(());
        }
        return Err(error);
    }
    Ok(())
}

fn traceable_until_eof() -> io::Result<()> {
    // SAFETY: PR_SET_PTRACER takes an integer, no pointers.
    if unsafe { libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY) } != 0 {
        let error = io::Error::last_os_error();
        // EINVAL: no Yama, nothing to lift.
        if error.raw_os_error() != Some(libc::EINVAL) {
            return Err(error);
        }
    }
    println!("ready");
    io::stdout().flush()?;
    let mut line = String::new();
    while io::stdin().lock().read_line(&mut line)? > 0 {
        line.clear();
    }
    Ok(())
}

fn ptrace_child() -> io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe(2) writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = fds;
    // SAFETY: the child makes only async-signal-safe calls until killed.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // A probe that dropped its uid after exec is not dumpable, and
        // neither is its child: undo that, or only root could trace it.
        // SAFETY: prctl, write and pause are async-signal-safe; the byte
        // written is a local.
        unsafe {
            libc::prctl(libc::PR_SET_DUMPABLE, 1);
            libc::write(write_end, b"r".as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    let mut byte = 0u8;
    // SAFETY: reads one byte into a local; both pipe ends are ours.
    unsafe {
        libc::close(write_end);
        libc::read(read_end, (&raw mut byte).cast(), 1);
        libc::close(read_end);
    }
    let result = ptrace_attach(pid);
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    result
}

fn addr_arg(args: &[String], index: usize) -> Result<SocketAddr, String> {
    let text = args
        .get(index)
        .ok_or_else(|| format!("argument {index} must be ADDR:PORT"))?;
    text.parse()
        .map_err(|_| format!("{text:?} is not ADDR:PORT"))
}

const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One byte there and one back: TCP, unconnected UDP (`sendto`) or
/// connected UDP (`connect` + `send`).
fn exchange(kind: &str, addr: SocketAddr) -> Result<io::Result<()>, String> {
    use std::io::Read as _;
    let mut byte = [0u8; 1];
    Ok(match kind {
        "tcp" => (|| {
            let mut stream = TcpStream::connect(addr)?;
            stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
            stream.write_all(b"q")?;
            stream.read_exact(&mut byte)
        })(),
        "udp-sendto" => (|| {
            let socket = udp_for(addr)?;
            socket.set_read_timeout(Some(REPLY_TIMEOUT))?;
            socket.send_to(b"q", addr)?;
            socket.recv_from(&mut byte).map(drop)
        })(),
        "udp-connect" => (|| {
            let socket = udp_for(addr)?;
            socket.set_read_timeout(Some(REPLY_TIMEOUT))?;
            socket.connect(addr)?;
            socket.send(b"q")?;
            socket.recv(&mut byte).map(drop)
        })(),
        other => return Err(format!("unknown exchange kind {other:?}")),
    })
}

fn wait_for_go() -> io::Result<()> {
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(())
}

/// A TCP connection that stays open across a pause the caller controls.
fn hold_tcp(addr: SocketAddr) -> io::Result<()> {
    use std::io::Read as _;
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut byte = [0u8; 1];
    stream.write_all(b"1")?;
    stream.read_exact(&mut byte)?;
    println!("connected");
    io::stdout().flush()?;
    wait_for_go()?;
    stream.write_all(b"2")?;
    stream.read_exact(&mut byte)
}

/// Connects to `addr`, prints the peer name, sends `first`, prints what
/// comes back (`tls-hello`, `http-get`).
fn first_exchange(addr: SocketAddr, first: &[u8]) -> io::Result<()> {
    use std::io::Read as _;
    let mut stream = TcpStream::connect(addr)?;
    println!("peer {}", stream.peer_addr()?);
    stream.write_all(first)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 256];
    while reply.len() < 4096 {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            // A reset or the timeout ends the reply; what came is reported.
            Err(_) => break,
        }
    }
    let reply = String::from_utf8_lossy(&reply).replace(['\r', '\n'], " ");
    println!("reply {reply}");
    Ok(())
}

/// Builds the `dns-ask` query; the I/O is [`ask`].
fn dns_ask(
    kind: &str,
    addr: SocketAddr,
    name: &str,
    qtype: &str,
) -> Result<io::Result<()>, String> {
    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query},
        rr::{Name, RecordType},
    };
    let record_type = match qtype {
        "A" => RecordType::A,
        "AAAA" => RecordType::AAAA,
        "TXT" => RecordType::TXT,
        other => return Err(format!("unknown TYPE {other:?}")),
    };
    let name = Name::from_ascii(name).map_err(|error| error.to_string())?;
    let mut message = Message::new();
    message
        .set_id(0x4242)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    message.add_query(Query::query(name, record_type));
    let query = message.to_vec().map_err(|error| error.to_string())?;
    if !matches!(kind, "udp-sendto" | "udp-connect" | "tcp") {
        return Err(format!("unknown KIND {kind:?}"));
    }
    Ok(ask(kind, addr, &query))
}

/// Sends `query` to `addr` over `kind` and prints what came back.
fn ask(kind: &str, addr: SocketAddr, query: &[u8]) -> io::Result<()> {
    use hickory_proto::{op::Message, rr::RData};
    use std::io::Read as _;
    let timeout = Some(std::time::Duration::from_secs(3));
    let mut buf = vec![0u8; 65_535];
    let (reply, from) = match kind {
        "udp-sendto" => {
            let socket = udp_for(addr)?;
            socket.set_read_timeout(timeout)?;
            socket.send_to(query, addr)?;
            let (n, from) = socket.recv_from(&mut buf)?;
            (buf[..n].to_vec(), from)
        }
        "udp-connect" => {
            let socket = udp_for(addr)?;
            socket.connect(addr)?;
            socket.set_read_timeout(timeout)?;
            socket.send(query)?;
            let n = socket.recv(&mut buf)?;
            (buf[..n].to_vec(), socket.peer_addr()?)
        }
        _ => {
            let mut stream = TcpStream::connect(addr)?;
            stream.set_read_timeout(timeout)?;
            let mut framed = u16::try_from(query.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes()
                .to_vec();
            framed.extend_from_slice(query);
            stream.write_all(&framed)?;
            let mut length = [0u8; 2];
            stream.read_exact(&mut length)?;
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(length))];
            stream.read_exact(&mut reply)?;
            (reply, stream.peer_addr()?)
        }
    };
    println!("from {from}");
    let message = Message::from_vec(&reply).map_err(io::Error::other)?;
    println!("rcode {}", u16::from(message.response_code()));
    for record in message.answers() {
        match record.data() {
            RData::A(a) => println!("answer {} {}", a.0, record.ttl()),
            RData::AAAA(a) => println!("answer {} {}", a.0, record.ttl()),
            _ => {}
        }
    }
    Ok(())
}

/// A minimal TLS 1.3-style ClientHello (one record) naming `sni`: enough
/// for the proxy's reader; no real handshake follows.
fn client_hello(sni: &str) -> Vec<u8> {
    fn with_len16(body: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(body.len())
            .unwrap_or(0)
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(body);
        out
    }
    let name = sni.as_bytes();
    let mut entry = vec![0u8];
    entry.extend(with_len16(name));
    let mut extension = vec![0, 0];
    extension.extend(with_len16(&with_len16(&entry)));
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x5a; 32]);
    body.push(0);
    body.extend(with_len16(&[0x13, 0x01]));
    body.extend_from_slice(&[1, 0]);
    body.extend(with_len16(&extension));
    let len = u32::try_from(body.len()).unwrap_or(0).to_be_bytes();
    let mut handshake = vec![1, len[1], len[2], len[3]];
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(with_len16(&handshake));
    record
}

fn connect_fd(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (_, storage, len) = sockaddr(addr);
    // SAFETY: storage holds a sockaddr of length len.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const storage).cast(), len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connects `fd` (a TCP socket) to `addr`, giving up after [`REPLY_TIMEOUT`].
fn connect_fd_timeout(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    match connect_fd(fd, addr) {
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
        other => return other,
    }
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let millis = i32::try_from(REPLY_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: poll on one valid pollfd.
    let ready = unsafe { libc::poll(&raw mut poll, 1, millis) };
    if ready == 0 {
        return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
    }
    let mut error: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: error and len are valid for writing.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut error).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if error != 0 {
        return Err(io::Error::from_raw_os_error(error));
    }
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) };
    Ok(())
}

fn send_fd(fd: &OwnedFd, to: Option<SocketAddr>) -> io::Result<()> {
    let data = b"x";
    let rc = match to {
        Some(addr) => {
            let (_, storage, len) = sockaddr(addr);
            // SAFETY: data and storage are valid for the lengths given.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    0,
                    (&raw const storage).cast(),
                    len,
                )
            }
        }
        // SAFETY: data is valid for its length.
        None => unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) },
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The judged-destination escape's probe: one socket is judged for `first`
/// and then sends to `second`. With the connect/sendmsg program of that step
/// detached by the test, only the packet-level check stands between the
/// byte and `second`.
fn unjudged(kind: &str, first: SocketAddr, second: SocketAddr) -> Result<io::Result<()>, String> {
    let family = if second.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let (socket_type, tcp, connected) = match kind {
        "udp-sendto" => (libc::SOCK_DGRAM, false, false),
        "udp-connect" => (libc::SOCK_DGRAM, false, true),
        "tcp" => (libc::SOCK_STREAM, true, true),
        other => return Err(format!("unknown unjudged kind {other:?}")),
    };
    Ok((|| {
        let fd = new_socket(family, socket_type)?;
        // A blocking connect: a refused non-blocking one leaves the socket
        // `SS_CONNECTING`, and the next connect fails ECONNABORTED.
        let judged = if connected {
            connect_fd(&fd, first).and_then(|()| send_fd(&fd, None))
        } else {
            send_fd(&fd, Some(first))
        };
        match judged {
            Ok(()) => println!("judged ok"),
            Err(error) => println!("judged err {}", error.raw_os_error().unwrap_or(0)),
        }
        io::stdout().flush()?;
        wait_for_go()?;
        if tcp {
            connect_fd_timeout(&fd, second)?;
            send_fd(&fd, None)
        } else if connected {
            connect_fd(&fd, second)?;
            send_fd(&fd, None)
        } else {
            send_fd(&fd, Some(second))
        }
    })())
}
