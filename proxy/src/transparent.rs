//! The transparent listener's one outside fact: where a redirected client
//! asked to go. In egress mode `redirect` the kernel rewrites a TCP
//! `connect()` to an allowlisted port so that it reaches the transparent
//! listener instead, and records the address the application named; the
//! daemon implements [`OriginalDestinations`] from that record (the
//! `REDIRECTS` map, keyed by the client socket's own address and port).
//!
//! The listener itself ([`crate::server::ConnectProxy::serve_transparent`])
//! runs the CONNECT path's phases with the SNI as the host and the original
//! port as the port; the original address is only ever audited, never
//! dialled ([`crate::decide::decide_transparent`]).

use std::net::SocketAddr;

/// Finds where a redirected client asked to connect (implemented by the daemon).
///
/// Called once per accepted connection, before anything is read: it must
/// be quick (one map lookup).
pub trait OriginalDestinations: Send + Sync {
    /// The destination the client socket whose own address is `client`
    /// named in its `connect()`; `None` when the kernel did not redirect it.
    fn original(&self, client: SocketAddr) -> Option<SocketAddr>;
}
