//! The upstream side: one pooled HTTPS client for every lane.
//!
//! - Names resolve through the daemon's [`Resolver`]: `--resolve` pins
//!   first, then `--dns-upstream` or the system resolver. Provider URLs come
//!   from the signed policy, so their addresses are not class-checked (the
//!   TLS certificate check is what authenticates the provider).
//! - Names resolve and connect through [`crate::net::dial`] (one loop for
//!   the whole daemon); TLS trust is [`crate::net::tls`]: the webpki roots
//!   plus the operator's `--extra-ca` certificates; ALPN offers `h2` and
//!   `http/1.1`, and the pool uses
//!   HTTP/2 (multiplexed) or HTTP/1.1 (one request per connection at a
//!   time) by what the provider picks.
//! - Connections are kept alive and reused per `scheme://host:port`
//!   ([`POOL_IDLE_TIMEOUT`], at most [`POOL_MAX_IDLE_PER_HOST`] idle);
//!   `TCP_NODELAY` is set so small SSE frames and
//!   request heads never wait for Nagle.
//! - `limits.connectTimeoutSeconds` bounds resolve + connect + handshake.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use policy::{Host, Snapshot, normalize_host};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::net::dial::{AddressCheck, DialError, dial};
use crate::net::resolve::Resolver;

/// How long an idle pooled upstream connection is kept. Agents send their
/// next request seconds after a response ends, so warm connections are
/// reused; a connection idle longer costs one handshake later instead of
/// its TLS state (about 40 KiB) held for minutes. (The Anthropic SDK's own
/// pool keeps idle connections 5 s; hyper's default is 90 s.) The pool
/// sweeps at this interval, so an idle connection lives at most twice it.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle connections kept per provider, as many as the Anthropic SDK keeps:
/// a burst of a thousand streams leaves at most this many behind. Under a
/// steady load of fewer concurrent requests every connection is reused;
/// fewer (8 was tried) made 32 clients churn through new handshakes and cut
/// the router's requests/s from 14k to 5k.
pub const POOL_MAX_IDLE_PER_HOST: usize = 100;

/// The request body type sent upstream: the original bytes, in one piece.
pub type UpstreamBody = Full<Bytes>;

/// The pooled client.
pub type UpstreamClient = Client<Connector, UpstreamBody>;

/// Builds the pooled client.
pub fn client(connector: Connector) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_adaptive_window(true)
        .build(connector)
}

// === impl ConnectError ===

/// Why an upstream connection could not be made. Messages name the host,
/// port and addresses, which are not secret.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URI has no usable host.
    #[error("`{host}` is not a valid host")]
    BadHost {
        /// The host as written.
        host: String,
    },
    /// Resolving or connecting failed.
    #[error("{0}")]
    Dial(#[from] DialError),
    /// The TLS handshake failed (certificate not trusted, name mismatch…).
    #[error("TLS handshake with {host} failed: {detail}")]
    Tls {
        /// The provider host.
        host: String,
        /// rustls' reason.
        detail: String,
    },
    /// Resolve + connect + handshake took longer than the connect timeout.
    #[error("no connection within {secs} s (limits.connectTimeoutSeconds)")]
    Timeout {
        /// The timeout, seconds.
        secs: u64,
    },
}

// === impl Connector ===

/// Dials providers: resolve (pins first), TCP with `TCP_NODELAY`, TLS with
/// ALPN. A `tower` service over URIs, as hyper's pooled client wants.
#[derive(Clone)]
pub struct Connector {
    resolver: Arc<Resolver>,
    tls: TlsConnector,
    policy: watch::Receiver<Arc<Snapshot>>,
}

impl Connector {
    /// A connector using `resolver`, trust `tls`, and the connect timeout
    /// of whatever policy is current when a connection is made.
    pub fn new(
        resolver: Arc<Resolver>,
        tls: Arc<rustls::ClientConfig>,
        policy: watch::Receiver<Arc<Snapshot>>,
    ) -> Self {
        Self {
            resolver,
            tls: TlsConnector::from(tls),
            policy,
        }
    }

    async fn connect(self, uri: Uri) -> Result<TokioIo<UpstreamStream>, ConnectError> {
        let timeout = self.policy.borrow().policy().limits.connect_timeout;
        tokio::time::timeout(timeout, self.dial(uri))
            .await
            .unwrap_or(Err(ConnectError::Timeout {
                secs: timeout.as_secs(),
            }))
    }

    async fn dial(self, uri: Uri) -> Result<TokioIo<UpstreamStream>, ConnectError> {
        let raw_host = uri.host().unwrap_or("");
        let host = normalize_host(raw_host).map_err(|_| ConnectError::BadHost {
            host: raw_host.to_owned(),
        })?;
        let port = uri.port_u16().unwrap_or(443);
        // Provider URLs come from the signed policy: every address passes.
        let timeout = self.policy.borrow().policy().limits.connect_timeout;
        let tcp = dial(&self.resolver, &host, port, AddressCheck::Trusted, timeout)
            .await?
            .stream;
        let server_name = match &host {
            Host::Domain(d) => {
                ServerName::try_from(d.as_str().to_owned()).map_err(|_| ConnectError::BadHost {
                    host: raw_host.to_owned(),
                })?
            }
            Host::Ip(_) => match host.ip() {
                Some(ip) => ServerName::IpAddress(ip.into()),
                None => {
                    return Err(ConnectError::BadHost {
                        host: raw_host.to_owned(),
                    });
                }
            },
        };
        let tls = self
            .tls
            .connect(server_name, tcp)
            .await
            .map_err(|e| ConnectError::Tls {
                host: format!("{host}:{port}"),
                detail: e.to_string(),
            })?;
        tracing::debug!(host = %host, port, alpn = ?alpn_name(&tls), "upstream connected");
        Ok(TokioIo::new(UpstreamStream(tls)))
    }
}

fn alpn_name(tls: &TlsStream<TcpStream>) -> Option<&str> {
    tls.get_ref()
        .1
        .alpn_protocol()
        .and_then(|p| std::str::from_utf8(p).ok())
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

// === impl UpstreamStream ===

/// A TLS connection to a provider; tells the pool whether ALPN chose h2.
pub struct UpstreamStream(TlsStream<TcpStream>);

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        let (tcp, conn) = self.0.get_ref();
        let c = tcp.connected();
        if conn.alpn_protocol() == Some(b"h2") {
            c.negotiated_h2()
        } else {
            c
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Finds the [`ConnectError`] inside a pooled-client error, if the failure
/// was in connecting.
pub fn connect_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ConnectError> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

/// A one-line description of an error and its sources (no secrets are in
/// these: they come from I/O, TLS and HTTP framing).
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let m = e.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = e.source();
    }
    s
}
