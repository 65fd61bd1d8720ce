//! The router's listeners: TCP (default `127.0.0.1:8787`) and unix
//! sockets, HTTP/1.1 and HTTP/2 (prior knowledge) on each connection,
//! graceful shutdown.
//!
//! `serve_*` accepts until `shutdown` resolves, then stops accepting, asks
//! every connection to finish its in-flight requests (HTTP/1.1: close after
//! the current response; HTTP/2: GOAWAY) and returns when they have. The
//! daemon puts its own deadline on that: dropping the `serve_*` future
//! aborts every connection task it owns.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;

use super::audit::Peer;
use super::pipeline::{RouterState, handle};
use crate::attribution::Admitted;

/// Pause after a failed `accept` (e.g. out of file descriptors) before
/// trying again, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves one accepted connection until it closes or shutdown is signalled.
/// The client is attributed first, once per connection; a client the gate
/// refuses gets a `403` for each request it sends, and nothing is forwarded.
async fn serve_connection<IO>(
    shared: Arc<RouterState>,
    io: IO,
    peer: Peer,
    local: Option<std::net::SocketAddr>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let admitted: Arc<Admitted> = Arc::new(crate::attribution::check(
        shared.gate.as_ref(),
        &peer,
        local,
    ));
    let header_timeout = shared.policy.borrow().policy().limits.header_read_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let shared = shared.clone();
        let peer = peer.clone();
        let admitted = admitted.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req, peer, &admitted).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "router connection ended with an error");
    }
}

/// A source of client connections.
trait Accept {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The stream, its peer, and our local address (TCP).
    async fn accept_one(&self) -> io::Result<(Self::Io, Peer, Option<std::net::SocketAddr>)>;
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<(Self::Io, Peer, Option<std::net::SocketAddr>)> {
        let (stream, addr) = self.accept().await?;
        // Without Nagle, small responses and SSE frames leave at once.
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        Ok((stream, Peer::Tcp { addr }, local))
    }
}

impl Accept for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<(Self::Io, Peer, Option<std::net::SocketAddr>)> {
        let (stream, _) = self.accept().await?;
        let cred = stream.peer_cred().ok();
        let peer = Peer::Unix {
            pid: cred.as_ref().and_then(|c| c.pid()),
            uid: cred.as_ref().map(|c| c.uid()),
        };
        Ok((stream, peer, None))
    }
}

async fn serve<L: Accept>(
    shared: Arc<RouterState>,
    listener: L,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept_one() => match accepted {
                Ok((io, peer, local)) => {
                    let watcher = graceful.watcher();
                    tasks.spawn(serve_connection(shared.clone(), io, peer, local, watcher));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "router accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!(connections = graceful.count(), "router draining");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = async { while tasks.join_next().await.is_some() {} } => {}
    }
    Ok(())
}

/// Serves on a TCP listener until `shutdown` resolves, then drains.
pub async fn serve_tcp(
    shared: Arc<RouterState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve(shared, listener, shutdown).await
}

/// Serves on a unix-socket listener until `shutdown` resolves, then drains.
pub async fn serve_unix(
    shared: Arc<RouterState>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve(shared, listener, shutdown).await
}
