//! The one outbound TCP dial: resolve once → keep the addresses that may
//! be dialled → connect to them in order within the connect timeout.
//!
//! Every outbound connection of the daemon goes through [`dial`]: CONNECT
//! and plain-HTTP upstreams (agent-chosen names: DNS answers are
//! class-checked, [`AddressCheck::Classes`]), lane providers and policy
//! fetches (operator-chosen names from the signed policy or the command
//! line: [`AddressCheck::Trusted`], the TLS certificate authenticates them).
//! The address dialled is always one the resolver returned and the check
//! passed, never one the client chose.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use policy::{Fronting, Host};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::addr_class::{AddressClass, LocalAddrs, select_addresses};
use super::resolve::{AddrSource, ResolveError, Resolved, Resolver};
use crate::reason::Reason;

/// Which resolved addresses may be dialled.
#[derive(Clone, Copy, Debug)]
pub enum AddressCheck<'a> {
    /// Destinations the operator chose (provider `baseURL`s, the policy
    /// URL): every resolved address.
    Trusted,
    /// Destinations an agent asked for: DNS answers and IP literals must
    /// pass the address-class check (private ranges as `fronting` opens
    /// them; this host's `local` addresses refused); pins pass.
    Classes {
        /// The policy's fronting rules (`allowPrivateRanges`).
        fronting: &'a Fronting,
        /// This host's interface addresses.
        local: &'a LocalAddrs,
    },
}

/// A connected upstream and what was learnt on the way.
#[derive(Debug)]
pub struct Dialed {
    /// The connection, `TCP_NODELAY` set.
    pub stream: TcpStream,
    /// The address connected to.
    pub peer: SocketAddr,
    /// Where that address came from.
    pub source: AddrSource,
}

/// Why no upstream connection was made. Messages name the host, port and
/// addresses, which are not secret.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The name did not resolve.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// Every resolved address is in a refused class.
    #[error("{host}:{port} resolved only to refused addresses (first: {addr}, {class})")]
    Refused {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The first refused address.
        addr: SocketAddr,
        /// Its class.
        class: AddressClass,
        /// Where the address came from.
        addr_source: AddrSource,
    },
    /// No address accepted a connection.
    #[error("connecting to {addrs} failed: {detail}")]
    Connect {
        /// The addresses tried, comma separated (or the host when there were none).
        addrs: String,
        /// The last address tried.
        last: Option<SocketAddr>,
        /// The last error.
        detail: String,
        /// Where the addresses came from.
        addr_source: AddrSource,
    },
    /// The connect timeout ran out.
    #[error("no connection to {host}:{port} within {timeout:?}")]
    Timeout {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The address being tried when time ran out.
        last: SocketAddr,
        /// The timeout.
        timeout: Duration,
        /// Where the address came from.
        addr_source: AddrSource,
    },
}

impl DialError {
    /// The shared reason for this failure (audit records, `403`/`502` bodies).
    pub fn reason(&self) -> Reason {
        match self {
            Self::Resolve(_) => Reason::ResolveFailed,
            Self::Refused { .. } => Reason::ForbiddenAddress,
            Self::Connect { .. } => Reason::ConnectFailed,
            Self::Timeout { .. } => Reason::ConnectTimeout,
        }
    }

    /// The upstream address the failure is about (refused or last tried).
    pub fn upstream(&self) -> Option<SocketAddr> {
        match self {
            Self::Resolve(_) => None,
            Self::Refused { addr, .. } => Some(*addr),
            Self::Connect { last, .. } => *last,
            Self::Timeout { last, .. } => Some(*last),
        }
    }

    /// Where the addresses came from, once resolved.
    pub fn source(&self) -> Option<AddrSource> {
        match self {
            Self::Resolve(_) => None,
            Self::Refused { addr_source, .. }
            | Self::Connect { addr_source, .. }
            | Self::Timeout { addr_source, .. } => Some(*addr_source),
        }
    }

    /// For [`DialError::Refused`]: the class of the refused address.
    pub fn refused_class(&self) -> Option<AddressClass> {
        match self {
            Self::Refused { class, .. } => Some(*class),
            _ => None,
        }
    }
}

/// Resolves `host` once with `resolver`, keeps what `check` allows, and
/// connects to those addresses in order; `connect_timeout` bounds the
/// connecting (resolution has its own bound in the resolver).
pub async fn dial(
    resolver: &Resolver,
    host: &Host,
    port: u16,
    check: AddressCheck<'_>,
    connect_timeout: Duration,
) -> Result<Dialed, DialError> {
    let resolved = resolver.resolve(host, port).await?;
    let addrs = allowed_addresses(&resolved, host, port, check)?;
    let deadline = Instant::now() + connect_timeout;
    let mut last: Option<(SocketAddr, io::Error)> = None;
    for &ip in &addrs {
        let target = SocketAddr::new(ip, port);
        match tokio::time::timeout_at(deadline, TcpStream::connect(target)).await {
            Ok(Ok(stream)) => {
                // Small writes (request heads, SSE frames) must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                return Ok(Dialed {
                    stream,
                    peer: target,
                    source: resolved.source,
                });
            }
            Ok(Err(error)) => {
                tracing::debug!(error = %error, upstream = %target, "upstream connect failed");
                last = Some((target, error));
            }
            Err(_) => {
                return Err(DialError::Timeout {
                    host: host.to_string(),
                    port,
                    last: target,
                    timeout: connect_timeout,
                    addr_source: resolved.source,
                });
            }
        }
    }
    let tried: Vec<String> = addrs
        .iter()
        .map(|ip| SocketAddr::new(*ip, port).to_string())
        .collect();
    Err(DialError::Connect {
        addrs: if tried.is_empty() {
            format!("{host}:{port} (no addresses)")
        } else {
            tried.join(", ")
        },
        last: last.as_ref().map(|(addr, _)| *addr),
        detail: last.map_or_else(|| "no addresses".to_owned(), |(_, e)| e.to_string()),
        addr_source: resolved.source,
    })
}

fn allowed_addresses(
    resolved: &Resolved,
    host: &Host,
    port: u16,
    check: AddressCheck<'_>,
) -> Result<Vec<IpAddr>, DialError> {
    match check {
        AddressCheck::Trusted => Ok(resolved.addrs.clone()),
        AddressCheck::Classes { fronting, local } => select_addresses(resolved, fronting, local)
            .map_err(|refused| DialError::Refused {
                host: host.to_string(),
                port,
                addr: SocketAddr::new(refused.addr, port),
                class: refused.class,
                addr_source: resolved.source,
            }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::net::resolve::{ResolveOverrides, Upstream};
    use policy::normalize_host;

    fn pinned(host: &str, port: u16, addrs: &[&str]) -> Resolver {
        let mut pins = ResolveOverrides::new();
        for addr in addrs {
            pins.add_entry(&format!("{host}:{port}:{addr}")).unwrap();
        }
        Resolver::new(
            pins,
            Upstream::System {
                timeout: Duration::from_secs(1),
            },
        )
    }

    #[tokio::test]
    async fn dials_the_first_address_that_accepts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // 127.0.0.3 refuses (nothing listens there on this port); 127.0.0.1 accepts.
        let resolver = pinned("up.test", port, &["127.0.0.3", "127.0.0.1"]);
        let host = normalize_host("up.test").unwrap();
        let dialed = dial(
            &resolver,
            &host,
            port,
            AddressCheck::Trusted,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(dialed.peer, SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(dialed.source, AddrSource::Pinned);
        assert!(dialed.stream.nodelay().unwrap());
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error_naming_the_addresses() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let resolver = pinned("down.test", port, &["127.0.0.1"]);
        let host = normalize_host("down.test").unwrap();
        let error = dial(
            &resolver,
            &host,
            port,
            AddressCheck::Trusted,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(error.reason(), Reason::ConnectFailed);
        assert_eq!(
            error.upstream(),
            Some(SocketAddr::from(([127, 0, 0, 1], port)))
        );
        assert!(
            error.to_string().contains(&format!("127.0.0.1:{port}")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_literal_in_a_refused_class_is_refused_before_any_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let resolver = pinned("unused.test", port, &["127.0.0.1"]);
        let host = normalize_host("127.0.0.1").unwrap();
        let fronting = policy::fallback_policy().unwrap().fronting.clone();
        let local = LocalAddrs::default();
        let error = dial(
            &resolver,
            &host,
            port,
            AddressCheck::Classes {
                fronting: &fronting,
                local: &local,
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(error.reason(), Reason::ForbiddenAddress);
        assert_eq!(error.refused_class(), Some(AddressClass::Loopback));
        assert_eq!(error.source(), Some(AddrSource::Literal));
        // Nothing was dialled: the listener has no connection waiting.
        let pending = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(pending.is_err(), "a refused address was dialled");
    }
}
