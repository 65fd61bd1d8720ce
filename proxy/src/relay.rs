//! The data path: bytes both ways between client and upstream with
//! `splice(2)` through one pipe per direction, so payload never enters user
//! space.
//!
//! Each direction fills its pipe from the source socket (up to the pipe's
//! capacity) and drains it completely into the destination before reading
//! again, so a direction holds at most one pipe's worth of data in the
//! kernel and nothing in the proxy: memory per tunnel is bounded by two
//! pipes ([`DEFAULT_PIPE_SIZE`] each by default, pages held only while data
//! is in flight) plus the socket buffers. When a source
//! reaches EOF the destination's write side is shut down (half-close) and
//! the other direction carries on; the tunnel ends when both directions
//! have ended, on an error, when no byte moved for the idle timeout, or at
//! the total deadline.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl};
use nix::sys::socket::{Shutdown, shutdown};
use nix::unistd::pipe2;
use serde::Serialize;
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

/// How a tunnel's relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelEnd {
    /// Both sides closed their sending direction.
    Closed,
    /// No byte moved in either direction for the idle timeout.
    IdleTimeout,
    /// The total timeout ran out.
    TotalTimeout,
    /// A socket error (reset, broken pipe, …) on either side.
    Error,
    /// The connection's task ended before the relay did (daemon shutdown
    /// past its drain deadline, a cancelled task): bytes moved are unknown.
    Aborted,
}

impl TunnelEnd {
    /// The stable machine-readable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::IdleTimeout => "idle_timeout",
            Self::TotalTimeout => "total_timeout",
            Self::Error => "error",
            Self::Aborted => "aborted",
        }
    }
}

/// Bounds on one relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// End the tunnel after this long without a byte in either direction.
    pub idle_timeout: Duration,
    /// End the tunnel at this instant whatever is happening.
    pub deadline: Instant,
    /// Pipe capacity to ask for per direction. Larger pipes move more per
    /// pair of syscalls; pages are only held while data is in flight. The
    /// kernel may grant less (`/proc/sys/fs/pipe-max-size`, per-user pipe
    /// limits) and the granted size is then used.
    pub pipe_size: usize,
}

/// What a relay moved and how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayOutcome {
    /// Bytes client → upstream.
    pub bytes_up: u64,
    /// Bytes upstream → client.
    pub bytes_down: u64,
    /// How it ended.
    pub end: TunnelEnd,
}

/// A stream socket the relay can splice from and to (TCP or unix).
pub trait SpliceStream: AsFd + Send + Sync {
    /// Waits until the socket may be ready for `interest`.
    fn wait_ready(&self, interest: Interest) -> impl Future<Output = io::Result<()>> + Send;
    /// Runs a non-blocking operation, clearing readiness on `WouldBlock`.
    fn try_io_with<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R>;
}

impl SpliceStream for TcpStream {
    async fn wait_ready(&self, interest: Interest) -> io::Result<()> {
        self.ready(interest).await.map(|_| ())
    }
    fn try_io_with<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        self.try_io(interest, f)
    }
}

impl SpliceStream for UnixStream {
    async fn wait_ready(&self, interest: Interest) -> io::Result<()> {
        self.ready(interest).await.map(|_| ())
    }
    fn try_io_with<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        self.try_io(interest, f)
    }
}

/// Relays between `client` and `upstream` until both directions end, an
/// error in either (which ends both at once), the idle timeout or the deadline.
pub async fn relay<C: SpliceStream>(
    client: &C,
    upstream: &TcpStream,
    limits: RelayLimits,
) -> RelayOutcome {
    let start = Instant::now();
    let last_activity = AtomicU64::new(0);
    let up_bytes = AtomicU64::new(0);
    let down_bytes = AtomicU64::new(0);
    let end = {
        let both = async {
            let result = tokio::try_join!(
                pump(
                    client,
                    upstream,
                    limits.pipe_size,
                    &up_bytes,
                    &last_activity,
                    start
                ),
                pump(
                    upstream,
                    client,
                    limits.pipe_size,
                    &down_bytes,
                    &last_activity,
                    start
                ),
            );
            match result {
                Ok(_) => TunnelEnd::Closed,
                Err(_) => TunnelEnd::Error,
            }
        };
        tokio::select! {
            end = both => end,
            () = idle_watch(&last_activity, start, limits.idle_timeout) => TunnelEnd::IdleTimeout,
            () = tokio::time::sleep_until(limits.deadline) => TunnelEnd::TotalTimeout,
        }
    };
    RelayOutcome {
        bytes_up: up_bytes.load(Ordering::Relaxed),
        bytes_down: down_bytes.load(Ordering::Relaxed),
        end,
    }
}

/// Resolves once no activity was recorded for `idle`.
async fn idle_watch(last_activity: &AtomicU64, start: Instant, idle: Duration) {
    loop {
        let last = start + Duration::from_millis(last_activity.load(Ordering::Relaxed));
        let wake = last + idle;
        if Instant::now() >= wake {
            return;
        }
        tokio::time::sleep_until(wake).await;
    }
}

fn touch(last_activity: &AtomicU64, start: Instant) {
    let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    last_activity.fetch_max(elapsed, Ordering::Relaxed);
}

/// One direction: `src` → pipe → `dst`, until EOF on `src` (then `dst`'s
/// write side is shut down) or an error.
async fn pump<S: SpliceStream, D: SpliceStream>(
    src: &S,
    dst: &D,
    pipe_size: usize,
    bytes: &AtomicU64,
    last_activity: &AtomicU64,
    start: Instant,
) -> io::Result<()> {
    let pipe = Pipe::new(pipe_size)?;
    let chunk = pipe.capacity;
    loop {
        let filled = loop {
            src.wait_ready(Interest::READABLE).await?;
            match src.try_io_with(Interest::READABLE, || splice(src, &pipe.write, chunk)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            shutdown_write(dst)?;
            return Ok(());
        }
        let mut left = filled;
        while left > 0 {
            dst.wait_ready(Interest::WRITABLE).await?;
            match dst.try_io_with(Interest::WRITABLE, || splice(&pipe.read, dst, left)) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    left -= n;
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                    touch(last_activity, start);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// The default pipe capacity asked for ([`RelayLimits::pipe_size`]).
pub const DEFAULT_PIPE_SIZE: usize = 1024 * 1024;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes the pipe holds when full.
    capacity: usize,
}

impl Pipe {
    fn new(size: usize) -> io::Result<Self> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let asked = i32::try_from(size).unwrap_or(i32::MAX);
        // F_SETPIPE_SZ returns the granted size; past the per-user limit it
        // fails, and the pipe keeps the size it has.
        let capacity = match fcntl(&write, FcntlArg::F_SETPIPE_SZ(asked)) {
            Ok(granted) if granted > 0 => usize::try_from(granted).unwrap_or(64 * 1024),
            _ => fcntl(&write, FcntlArg::F_GETPIPE_SZ)
                .ok()
                .and_then(|current| usize::try_from(current).ok())
                .filter(|&current| current > 0)
                .unwrap_or(64 * 1024),
        };
        Ok(Self {
            read,
            write,
            capacity,
        })
    }
}

fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    Ok(nix::fcntl::splice(from, None, to, None, len, flags)?)
}

fn shutdown_write(socket: impl AsFd) -> io::Result<()> {
    match shutdown(socket.as_fd().as_raw_fd(), Shutdown::Write) {
        // The peer may already be gone; that is the end we wanted.
        Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected TCP pairs: (client peer, proxy's client side) and
    /// (proxy's upstream side, upstream peer).
    async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        async fn pair() -> (TcpStream, TcpStream) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let connect = TcpStream::connect(listener.local_addr().unwrap());
            let (connected, accepted) = tokio::join!(connect, listener.accept());
            (connected.unwrap(), accepted.unwrap().0)
        }
        (pair().await, pair().await)
    }

    fn limits(idle_ms: u64, total_ms: u64) -> RelayLimits {
        RelayLimits {
            idle_timeout: Duration::from_millis(idle_ms),
            deadline: Instant::now() + Duration::from_millis(total_ms),
            pipe_size: DEFAULT_PIPE_SIZE,
        }
    }

    #[tokio::test]
    async fn half_close_is_respected_both_ways() {
        let ((mut client_peer, client_side), (upstream_side, mut upstream_peer)) = pairs().await;
        let relay = tokio::spawn(async move {
            relay(&client_side, &upstream_side, limits(60_000, 600_000)).await
        });
        client_peer.write_all(b"hello").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // The client's write side is closed; the reply still flows back.
        upstream_peer.write_all(b"world!").await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        let outcome = relay.await.unwrap();
        assert_eq!(
            outcome,
            RelayOutcome {
                bytes_up: 5,
                bytes_down: 6,
                end: TunnelEnd::Closed
            }
        );
    }

    #[tokio::test]
    async fn bulk_data_arrives_intact_in_both_directions_at_once() {
        let ((client_peer, client_side), (upstream_side, upstream_peer)) = pairs().await;
        let relay = tokio::spawn(async move {
            relay(&client_side, &upstream_side, limits(60_000, 600_000)).await
        });
        const LEN: usize = 8 * 1024 * 1024;
        let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        let send_recv = |mut stream: TcpStream, data: Vec<u8>| async move {
            let (mut r, mut w) = stream.split();
            let write = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let read = async {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            };
            let ((), got) = tokio::join!(write, read);
            got
        };
        let (from_upstream, from_client) = tokio::join!(
            send_recv(client_peer, data.clone()),
            send_recv(upstream_peer, data.iter().rev().copied().collect())
        );
        assert!(from_client == data, "client → upstream corrupted");
        assert!(
            from_upstream.iter().rev().eq(data.iter()),
            "upstream → client corrupted"
        );
        let outcome = relay.await.unwrap();
        assert_eq!(outcome.bytes_up, LEN as u64);
        assert_eq!(outcome.bytes_down, LEN as u64);
        assert_eq!(outcome.end, TunnelEnd::Closed);
    }

    #[tokio::test]
    async fn idle_tunnels_end() {
        let ((_client_peer, client_side), (upstream_side, _upstream_peer)) = pairs().await;
        let outcome = relay(&client_side, &upstream_side, limits(100, 600_000)).await;
        assert_eq!(outcome.end, TunnelEnd::IdleTimeout);
    }

    #[tokio::test]
    async fn the_total_deadline_ends_a_busy_tunnel() {
        let ((mut client_peer, client_side), (upstream_side, mut upstream_peer)) = pairs().await;
        let trickle = tokio::spawn(async move {
            let mut sink = [0u8; 16];
            loop {
                if client_peer.write_all(b"x").await.is_err() {
                    return;
                }
                let _ = upstream_peer.read(&mut sink).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let outcome = relay(&client_side, &upstream_side, limits(1_000, 300)).await;
        assert_eq!(outcome.end, TunnelEnd::TotalTimeout);
        assert!(outcome.bytes_up > 0);
        trickle.abort();
    }

    #[tokio::test]
    async fn a_reset_ends_the_tunnel_as_an_error() {
        let ((_client_peer, client_side), (upstream_side, upstream_peer)) = pairs().await;
        let relay = tokio::spawn(async move {
            relay(&client_side, &upstream_side, limits(60_000, 600_000)).await
        });
        socket2::SockRef::from(&upstream_peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(upstream_peer);
        assert_eq!(relay.await.unwrap().end, TunnelEnd::Error);
    }

    #[tokio::test]
    async fn unix_stream_clients_relay_too() {
        let (mut client_peer, client_side) = UnixStream::pair().unwrap();
        let ((_unused_peer, _unused_side), (upstream_side, mut upstream_peer)) = pairs().await;
        let relay = tokio::spawn(async move {
            relay(&client_side, &upstream_side, limits(60_000, 600_000)).await
        });
        client_peer.write_all(b"over unix").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"over unix");
        drop(upstream_peer);
        let outcome = relay.await.unwrap();
        assert_eq!(outcome.bytes_up, 9);
    }
}
