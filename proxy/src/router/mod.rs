//! The lane router: an Anthropic-compatible reverse proxy that sends each
//! request to the provider ("lane") its model is routed to, with that
//! lane's credential, and relays the answer unbuffered (DESIGN.md §5).
//!
//! The agent gets `ANTHROPIC_BASE_URL=http://127.0.0.1:8787` (or a unix
//! socket). For every request inside the API surface ([`surface`]: the
//! Anthropic API by default, widened per lane by `providers.*.paths`), the router reads the
//! body (up to `limits.maxRequestBytes`), finds its top-level `model`
//! without re-serialising, picks the first `routing.matchers` pattern that
//! matches, strips every credential the client sent, injects the lane's,
//! and forwards the original bytes to the lane's `baseURL` + path + query.
//!
//! One module per concern:
//! - [`model`]: the top-level `model` scanner (pure);
//! - [`lane`]: lane choice, default lane and upstream URI (pure);
//! - [`credentials`]: credential sources and the per-lane credential
//!   decision;
//! - [`headers`]: header isolation (pure);
//! - [`body`]: reading the request body under limits;
//! - [`upstream`]: the pooled HTTPS client (rustls, ALPN h2/http1.1,
//!   `--resolve`, `--extra-ca`);
//! - [`stream`]: frame-by-frame relay under size/idle/total limits;
//! - [`error`]: the router's own errors in Anthropic's JSON shape;
//! - [`audit`]: one metadata-only event per request;
//! - [`surface`]: what is forwarded at all (methods, paths, encodings);
//! - [`pipeline`]: the phases of one request;
//! - [`server`]: TCP and unix listeners, graceful shutdown.
//!
//! The daemon's use:
//! ```no_run
//! # async fn run(
//! #     store: &policy::PolicyStore,
//! #     sink: std::sync::Arc<dyn proxy::router::RouterAuditSink>,
//! #     shutdown: impl std::future::Future<Output = ()>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use proxy::net::resolve::Resolver;
//! use proxy::router::{CredentialSource, Router, RouterConfig};
//!
//! let mut config = RouterConfig::new(Resolver::system(), CredentialSource::from_process());
//! config.add_extra_ca_file(std::path::Path::new("/etc/enforcer/extra-ca.pem"))?;
//! let router = Router::new(config, store.subscribe(), sink)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//! router.serve_tcp(listener, shutdown).await?;
//! # Ok(()) }
//! ```

pub mod audit;
pub mod body;
pub mod credentials;
pub mod error;
pub mod headers;
pub mod lane;
pub mod model;
pub mod pipeline;
pub mod server;
pub mod stream;
pub mod surface;
pub mod upstream;

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;

use policy::Snapshot;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

pub use crate::net::tls::TrustError;
pub use audit::{MemorySink, NullSink, RouterAuditSink, RouterEvent};
pub use credentials::CredentialSource;
pub use error::RouteError;

use crate::admission::Admission;
use crate::net::resolve::Resolver;
use pipeline::RouterState;

/// The default TCP listen address (`--router-listen`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// What the router needs besides the policy: how to resolve provider
/// names, which extra CAs to trust, where credentials live.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Resolver for provider names (`--resolve` pins, `--dns-upstream`).
    pub resolver: Resolver,
    /// CA certificates trusted on top of the webpki roots (`--extra-ca`).
    pub extra_ca: Vec<CertificateDer<'static>>,
    /// Where lane credentials come from.
    pub credentials: CredentialSource,
}

impl RouterConfig {
    /// A configuration with no extra CA.
    pub fn new(resolver: Resolver, credentials: CredentialSource) -> Self {
        Self {
            resolver,
            extra_ca: Vec::new(),
            credentials,
        }
    }

    /// Trusts the PEM CA certificates in `path` too; returns how many.
    pub fn add_extra_ca_file(&mut self, path: &Path) -> Result<usize, TrustError> {
        let certs = crate::net::tls::read_ca_file(path)?;
        let n = certs.len();
        self.extra_ca.extend(certs);
        Ok(n)
    }
}

/// The lane router. Cheap to clone; clones share the upstream pool.
#[derive(Clone)]
pub struct Router {
    shared: Arc<RouterState>,
}

impl Router {
    /// Builds the router: TLS trust, the pooled client, credentials, and the
    /// policy subscription (every request uses the snapshot current when it
    /// arrives).
    pub fn new(
        config: RouterConfig,
        policy: watch::Receiver<Arc<Snapshot>>,
        sink: Arc<dyn RouterAuditSink>,
    ) -> Result<Self, TrustError> {
        let tls =
            crate::net::tls::client_config(&config.extra_ca, crate::net::tls::ALPN_H2_HTTP11)?;
        let connector = upstream::Connector::new(Arc::new(config.resolver), tls, policy.clone());
        Ok(Self {
            shared: Arc::new(RouterState {
                policy,
                client: upstream::client(connector),
                credentials: config.credentials,
                sink,
                admission: Admission::new(),
                gate: None,
            }),
        })
    }

    /// Attributes every client on accept and answers `403
    /// permission_error` (`client_not_enforced`) to each request of a
    /// client the gate refuses, before reading its body. Without a gate
    /// every client is served. Call before serving.
    pub fn with_client_gate(mut self, gate: crate::attribution::ClientGate) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.gate = Some(gate),
            None => {
                // A clone is serving already; build a state of our own.
                let shared = &self.shared;
                self.shared = Arc::new(RouterState {
                    policy: shared.policy.clone(),
                    client: shared.client.clone(),
                    credentials: shared.credentials.clone(),
                    sink: shared.sink.clone(),
                    admission: shared.admission.clone(),
                    gate: Some(gate),
                });
            }
        }
        self
    }

    /// Requests in flight now (admitted and not yet finished).
    pub fn in_flight(&self) -> usize {
        self.shared.admission.active()
    }

    /// Serves on `listener` until `shutdown` resolves, then drains in-flight
    /// requests and returns. Drop the future to abort everything at once.
    pub async fn serve_tcp(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        server::serve_tcp(self.shared.clone(), listener, shutdown).await
    }

    /// As [`Router::serve_tcp`], on a unix socket.
    pub async fn serve_unix(
        &self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        server::serve_unix(self.shared.clone(), listener, shutdown).await
    }
}
