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
//! ```
use std::{
    io::{self, BufRead as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::ExitCode,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
