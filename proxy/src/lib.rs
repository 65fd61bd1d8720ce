//! enforcer's egress proxy: a CONNECT proxy that lets HTTPS through only to
//! allowlisted `host:port`, only when the TLS ClientHello's SNI names that same
//! host, and only to addresses it resolved and checked itself; and the lane
//! router ([`router`]), which sends the agent's Anthropic API calls to the
//! provider each model is routed to, with that provider's credential; and
//! the DNS filter ([`dns`]), which answers only names the policy allows.
//!
//! Layout, one concern per module (DESIGN.md §4):
//! - [`server`]: [`server::ConnectProxy`], the phases of one connection (I/O edge);
//! - [`decide`]: the decisions, pure functions of (request facts, policy snapshot, now);
//! - [`request`]: strict CONNECT / absolute-form request parsing (pure);
//! - [`client_hello`]: incremental, bounded ClientHello reader (pure);
//! - [`net`]: outbound networking: resolve (pins, system, `--dns-upstream`),
//!   address classes, the one dial loop, TLS client trust;
//! - [`relay`]: the splice(2) data path with half-close and timeouts;
//! - [`admission`]: the concurrent-tunnel limit;
//! - [`attribution`]: who is behind a client connection, and whether it is served;
//! - [`forward`]: rewriting allowed plain-HTTP requests for the origin;
//! - [`reason`]: the decision vocabulary;
//! - [`response`]: the proxy's own HTTP responses;
//! - [`audit`]: one event per decision, handed to an [`audit::AuditSink`];
//! - [`router`]: the lane router, one module per concern inside;
//! - [`transparent`]: the original destination of a kernel-redirected client;
//! - [`dns`]: the DNS filter (port 53 of the enforced cgroup, redirected by
//!   the kernel): wire parsing, the name decision, the UDP/TCP server.
//!
//! The lane router (DESIGN.md §5) lives in [`router`].
#![deny(missing_docs)]

pub mod admission;
pub mod attribution;
pub mod audit;
pub mod client_hello;
pub mod decide;
pub mod dns;
pub mod forward;
pub mod net;
pub mod reason;
pub mod relay;
pub mod request;
pub mod response;
pub mod router;
pub mod server;
pub mod transparent;
