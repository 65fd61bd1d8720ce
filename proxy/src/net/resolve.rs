//! Name resolution for every dial the daemon makes (CONNECT upstreams, lane
//! providers, policy fetches, direct entries): operator pins
//! ([`ResolveOverrides`], `--resolve`), the system resolver, or a plain DNS
//! client to `--dns-upstream`.
//!
//! The proxy resolves an allowed name once and dials exactly the addresses
//! it checked. [`Resolved::source`] says where the addresses came from:
//! [`AddrSource::Pinned`] addresses are the operator's own decision and skip
//! the address-class check; [`AddrSource::Dns`] answers (system resolver or
//! upstream server) and [`AddrSource::Literal`] IP-literal hosts never do.
//!
//! The upstream client sends A and AAAA queries over UDP from a connected
//! socket (only the server's address is read), with a random id, matches the
//! id and the question, follows CNAMEs inside the answer, retries once on
//! timeout, and repeats a truncated query over TCP.
//!
//! The DNS filter ([`crate::dns`]) asks for one family at a time with
//! [`Resolver::resolve_family`], which keeps each address's TTL: the
//! smallest TTL along the CNAME chain for DNS answers, [`UNTIMED_TTL`] for
//! pins and system-resolver answers (which carry none).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use policy::host::parse_port;
use policy::{Host, HostError, normalize_host};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

// === impl ResolveOverrides ===

/// Why a `--resolve` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// Not `HOST:PORT:ADDR`.
    #[error(
        "`{input}` is not HOST:PORT:ADDR (e.g. `policy.example.com:443:127.0.0.1` or `h:443:[::1]`)"
    )]
    Syntax {
        /// The entry as given.
        input: String,
    },
    /// The host part is invalid.
    #[error("`{input}`: {source}")]
    Host {
        /// The entry as given.
        input: String,
        /// What is wrong with the host.
        source: HostError,
    },
}

/// The `--resolve HOST:PORT:ADDR` map (like curl's): pins a name and port
/// to addresses for every connection made through it. Hosts are stored
/// normalised, so `Example.COM.` and `example.com` are one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolveOverrides {
    map: HashMap<(Host, u16), Vec<IpAddr>>,
}

impl ResolveOverrides {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one `HOST:PORT:ADDR` entry (ADDR may be bracketed IPv6); repeated
    /// entries for one HOST:PORT add addresses in order.
    pub fn add_entry(&mut self, entry: &str) -> Result<(), PinError> {
        let syntax = || PinError::Syntax {
            input: entry.to_owned(),
        };
        let (host, rest) = if entry.starts_with('[') {
            let close = entry.find(']').ok_or_else(syntax)?;
            (
                &entry[..=close],
                entry[close + 1..].strip_prefix(':').ok_or_else(syntax)?,
            )
        } else {
            entry.split_once(':').ok_or_else(syntax)?
        };
        let (port, addr) = rest.split_once(':').ok_or_else(syntax)?;
        let port = parse_port(port).ok_or_else(syntax)?;
        let addr = addr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr);
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let host = normalize_host(host).map_err(|source| PinError::Host {
            input: entry.to_owned(),
            source,
        })?;
        self.insert(host, port, addr);
        Ok(())
    }

    /// Pin `host:port` to `addr` (appended to earlier addresses).
    pub fn insert(&mut self, host: Host, port: u16, addr: IpAddr) {
        self.map.entry((host, port)).or_default().push(addr);
    }

    /// The pinned addresses for a normalised host and port, if any.
    pub fn lookup(&self, host: &Host, port: u16) -> Option<&[IpAddr]> {
        self.map.get(&(host.clone(), port)).map(Vec::as_slice)
    }

    /// The pinned addresses of a normalised host on any port (ports in
    /// ascending order, each address once), or `None` when no port of it
    /// is pinned. The DNS filter answers a pinned name with these.
    pub fn lookup_host(&self, host: &Host) -> Option<Vec<IpAddr>> {
        let mut ports: Vec<(u16, &Vec<IpAddr>)> = self
            .map
            .iter()
            .filter(|((pinned, _), _)| pinned == host)
            .map(|((_, port), addrs)| (*port, addrs))
            .collect();
        if ports.is_empty() {
            return None;
        }
        ports.sort_by_key(|(port, _)| *port);
        let mut out: Vec<IpAddr> = Vec::new();
        for addr in ports.into_iter().flat_map(|(_, addrs)| addrs.iter()) {
            if !out.contains(addr) {
                out.push(*addr);
            }
        }
        Some(out)
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

// === impl Resolver ===

/// Where resolved addresses came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddrSource {
    /// Pinned by the operator with `--resolve`: not class-checked.
    Pinned,
    /// Answered by DNS (system resolver or `--dns-upstream`): class-checked.
    Dns,
    /// The host was an IP literal (only when the policy does not block
    /// them): class-checked like a DNS answer.
    Literal,
}

/// The addresses a name resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Addresses in dial order.
    pub addrs: Vec<IpAddr>,
    /// Where they came from.
    pub source: AddrSource,
}

/// The TTL of addresses that come without one: `--resolve` pins and
/// system-resolver (`getaddrinfo`) answers. One minute: short enough that
/// a changed pin or a changed system answer reaches clients soon, long
/// enough that clients do not ask again for every connection.
pub const UNTIMED_TTL: Duration = Duration::from_secs(60);

/// An address family, i.e. the record type of an address question.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`A` records).
    V4,
    /// IPv6 (`AAAA` records).
    V6,
}

impl Family {
    /// The record type asked for.
    pub fn record_type(self) -> RecordType {
        match self {
            Self::V4 => RecordType::A,
            Self::V6 => RecordType::AAAA,
        }
    }

    /// Whether `ip` is of this family.
    pub fn contains(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip),
            (Self::V4, IpAddr::V4(_)) | (Self::V6, IpAddr::V6(_))
        )
    }
}

/// The addresses of one family a name resolved to, each with its TTL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedResolved {
    /// Addresses in answer order, each with how long it may be cached.
    pub addrs: Vec<(IpAddr, Duration)>,
    /// Where they came from.
    pub source: AddrSource,
}

/// Why a name did not resolve.
#[derive(Debug, Error)]
pub enum ResolveError {
    /// The name is not a valid DNS name.
    #[error("{host:?} is not a valid DNS name")]
    BadName {
        /// The name.
        host: String,
    },
    /// The name does not exist.
    #[error("{host} does not exist (NXDOMAIN from {server})")]
    NxDomain {
        /// The name.
        host: String,
        /// Who said so.
        server: String,
    },
    /// The name exists but has no A/AAAA records.
    #[error("{host} has no A or AAAA records ({server})")]
    NoAddresses {
        /// The name.
        host: String,
        /// Who answered.
        server: String,
    },
    /// The DNS server answered with an error code.
    #[error("DNS server {server} answered {rcode} for {host}")]
    ServerFailure {
        /// The name.
        host: String,
        /// The server.
        server: SocketAddr,
        /// The response code.
        rcode: String,
    },
    /// No answer in time.
    #[error("no answer for {host} from {server} within {timeout:?}")]
    Timeout {
        /// The name.
        host: String,
        /// The server (`system` for the system resolver).
        server: String,
        /// The time waited per attempt.
        timeout: Duration,
    },
    /// The answer could not be parsed or did not match the question.
    #[error("bad DNS answer for {host} from {server}: {what}")]
    BadAnswer {
        /// The name.
        host: String,
        /// The server.
        server: SocketAddr,
        /// What was wrong.
        what: &'static str,
    },
    /// A socket error talking to the resolver.
    #[error("resolving {host} via {server}: {source}")]
    Io {
        /// The name.
        host: String,
        /// The server (`system` for the system resolver).
        server: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Where DNS questions go.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// The system resolver (`getaddrinfo`), bounded by a timeout.
    System {
        /// Bound on one lookup.
        timeout: Duration,
    },
    /// A plain DNS server (`--dns-upstream ADDR:PORT`).
    Dns(DnsClient),
}

/// The proxy's resolver: pins first, then the upstream.
#[derive(Clone, Debug)]
pub struct Resolver {
    pins: ResolveOverrides,
    upstream: Upstream,
}

impl Resolver {
    /// A resolver with the operator's `--resolve` pins over `upstream`.
    pub fn new(pins: ResolveOverrides, upstream: Upstream) -> Self {
        Self { pins, upstream }
    }

    /// The operator's `--resolve` pins.
    pub fn pins(&self) -> &ResolveOverrides {
        &self.pins
    }

    /// The system resolver with a 5 s bound and no pins.
    pub fn system() -> Self {
        Self::new(
            ResolveOverrides::new(),
            Upstream::System {
                timeout: Duration::from_secs(5),
            },
        )
    }

    /// Resolves a normalised `host` for `port`: its pin if the operator set
    /// one, the literal address for an IP literal, else the upstream.
    pub async fn resolve(&self, host: &Host, port: u16) -> Result<Resolved, ResolveError> {
        if let Some(addrs) = self.pins.lookup(host, port) {
            return Ok(Resolved {
                addrs: addrs.to_vec(),
                source: AddrSource::Pinned,
            });
        }
        let name = match host {
            Host::Ip(_) => {
                return match host.ip() {
                    Some(ip) => Ok(Resolved {
                        addrs: vec![ip],
                        source: AddrSource::Literal,
                    }),
                    None => Err(ResolveError::BadName {
                        host: host.to_string(),
                    }),
                };
            }
            Host::Domain(name) => name.as_str(),
        };
        let addrs = match &self.upstream {
            Upstream::System { timeout } => system_lookup(name, port, *timeout).await?,
            Upstream::Dns(client) => client.lookup(name).await?,
        };
        Ok(Resolved {
            addrs,
            source: AddrSource::Dns,
        })
    }
}

impl Resolver {
    /// The addresses of one `family` for a normalised `host`, with TTLs:
    /// its pins on any port if the operator pinned it (then no upstream is
    /// asked, and a family with no pins is an empty answer), the literal
    /// for an IP literal, else the upstream's records (DNS: the record
    /// TTLs, smallest along the CNAME chain; system resolver:
    /// [`UNTIMED_TTL`]). A name with no addresses of that family is an
    /// empty list, not an error.
    pub async fn resolve_family(
        &self,
        host: &Host,
        family: Family,
    ) -> Result<TimedResolved, ResolveError> {
        let untimed = |addrs: Vec<IpAddr>, source| TimedResolved {
            addrs: addrs
                .into_iter()
                .filter(|ip| family.contains(*ip))
                .map(|ip| (ip, UNTIMED_TTL))
                .collect(),
            source,
        };
        if let Some(addrs) = self.pins.lookup_host(host) {
            return Ok(untimed(addrs, AddrSource::Pinned));
        }
        let name = match host {
            Host::Ip(_) => {
                let ip = host.ip().ok_or_else(|| ResolveError::BadName {
                    host: host.to_string(),
                })?;
                return Ok(untimed(vec![ip], AddrSource::Literal));
            }
            Host::Domain(name) => name.as_str(),
        };
        match &self.upstream {
            Upstream::System { timeout } => match system_lookup(name, 0, *timeout).await {
                Ok(addrs) => Ok(untimed(addrs, AddrSource::Dns)),
                Err(ResolveError::NoAddresses { .. }) => Ok(untimed(Vec::new(), AddrSource::Dns)),
                Err(error) => Err(error),
            },
            Upstream::Dns(client) => Ok(TimedResolved {
                addrs: client.query_family(name, family).await?,
                source: AddrSource::Dns,
            }),
        }
    }
}

async fn system_lookup(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<IpAddr>, ResolveError> {
    let lookup = tokio::net::lookup_host((host, port));
    let addrs = tokio::time::timeout(timeout, lookup)
        .await
        .map_err(|_| ResolveError::Timeout {
            host: host.to_string(),
            server: "system".to_string(),
            timeout,
        })?
        .map_err(|source| ResolveError::Io {
            host: host.to_string(),
            server: "system".to_string(),
            source,
        })?;
    let mut out: Vec<IpAddr> = Vec::new();
    for addr in addrs {
        if !out.contains(&addr.ip()) {
            out.push(addr.ip());
        }
    }
    if out.is_empty() {
        return Err(ResolveError::NoAddresses {
            host: host.to_string(),
            server: "system".to_string(),
        });
    }
    Ok(out)
}

// === impl DnsClient ===

/// A plain DNS (UDP, TCP on truncation) client for one server.
#[derive(Clone, Debug)]
pub struct DnsClient {
    server: SocketAddr,
    timeout: Duration,
    attempts: u32,
}

impl DnsClient {
    /// A client for `server`, waiting 2 s per attempt, 2 attempts.
    pub fn new(server: SocketAddr) -> Self {
        Self {
            server,
            timeout: Duration::from_secs(2),
            attempts: 2,
        }
    }

    /// Sets the per-attempt timeout and the number of attempts (at least 1).
    pub fn with_timeout(mut self, timeout: Duration, attempts: u32) -> Self {
        self.timeout = timeout;
        self.attempts = attempts.max(1);
        self
    }

    /// The server questions go to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// A and AAAA for `host`, IPv4 first.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let name = fqdn(host)?;
        let (v4, v6) = tokio::join!(
            self.query(host, &name, RecordType::A),
            self.query(host, &name, RecordType::AAAA)
        );
        let mut addrs = Vec::new();
        let mut first_error = None;
        for result in [v4, v6] {
            match result {
                Ok(found) => addrs.extend(found),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if !addrs.is_empty() {
            return Ok(addrs);
        }
        Err(first_error.unwrap_or(ResolveError::NoAddresses {
            host: host.to_string(),
            server: self.server.to_string(),
        }))
    }

    /// The `family` records for `host` with their TTLs (each the smallest
    /// TTL along the CNAME chain that led to it), following CNAMEs inside
    /// the answer; an empty list when the name has none of that family.
    pub async fn query_family(
        &self,
        host: &str,
        family: Family,
    ) -> Result<Vec<(IpAddr, Duration)>, ResolveError> {
        let name = fqdn(host)?;
        self.query_timed(host, &name, family.record_type()).await
    }

    async fn query(
        &self,
        host: &str,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Vec<IpAddr>, ResolveError> {
        let timed = self.query_timed(host, name, rtype).await?;
        Ok(timed.into_iter().map(|(ip, _)| ip).collect())
    }

    async fn query_timed(
        &self,
        host: &str,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Vec<(IpAddr, Duration)>, ResolveError> {
        let id = random_id();
        let mut message = Message::new();
        message
            .set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(name.clone(), rtype));
        let bytes = message.to_vec().map_err(|_| ResolveError::BadName {
            host: host.to_string(),
        })?;
        let mut response = None;
        for _ in 0..self.attempts {
            match tokio::time::timeout(self.timeout, self.exchange_udp(host, &bytes, id)).await {
                Ok(result) => {
                    response = Some(result?);
                    break;
                }
                Err(_) => continue,
            }
        }
        let Some(mut response) = response else {
            return Err(ResolveError::Timeout {
                host: host.to_string(),
                server: self.server.to_string(),
                timeout: self.timeout,
            });
        };
        if response.truncated() {
            response = tokio::time::timeout(self.timeout, self.exchange_tcp(host, &bytes))
                .await
                .map_err(|_| ResolveError::Timeout {
                    host: host.to_string(),
                    server: self.server.to_string(),
                    timeout: self.timeout,
                })??;
        }
        self.answer_addrs(host, name, rtype, id, &response)
    }

    fn io_error(&self, host: &str, source: io::Error) -> ResolveError {
        ResolveError::Io {
            host: host.to_string(),
            server: self.server.to_string(),
            source,
        }
    }

    async fn exchange_udp(
        &self,
        host: &str,
        query: &[u8],
        id: u16,
    ) -> Result<Message, ResolveError> {
        let bind: SocketAddr = if self.server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(|e| self.io_error(host, e))?;
        socket
            .connect(self.server)
            .await
            .map_err(|e| self.io_error(host, e))?;
        socket
            .send(query)
            .await
            .map_err(|e| self.io_error(host, e))?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = socket
                .recv(&mut buf)
                .await
                .map_err(|e| self.io_error(host, e))?;
            // Ignore datagrams that are not an answer to this question (late
            // answers to an earlier attempt, spoofing attempts).
            match Message::from_vec(&buf[..n]) {
                Ok(message)
                    if message.id() == id && message.message_type() == MessageType::Response =>
                {
                    return Ok(message);
                }
                _ => continue,
            }
        }
    }

    async fn exchange_tcp(&self, host: &str, query: &[u8]) -> Result<Message, ResolveError> {
        let mut stream = TcpStream::connect(self.server)
            .await
            .map_err(|e| self.io_error(host, e))?;
        let len = u16::try_from(query.len()).map_err(|_| ResolveError::BadName {
            host: host.to_string(),
        })?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        stream
            .write_all(&framed)
            .await
            .map_err(|e| self.io_error(host, e))?;
        let mut len = [0u8; 2];
        stream
            .read_exact(&mut len)
            .await
            .map_err(|e| self.io_error(host, e))?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| self.io_error(host, e))?;
        Message::from_vec(&buf).map_err(|_| ResolveError::BadAnswer {
            host: host.to_string(),
            server: self.server,
            what: "the TCP answer does not parse",
        })
    }

    fn answer_addrs(
        &self,
        host: &str,
        name: &Name,
        rtype: RecordType,
        id: u16,
        response: &Message,
    ) -> Result<Vec<(IpAddr, Duration)>, ResolveError> {
        let bad = |what| ResolveError::BadAnswer {
            host: host.to_string(),
            server: self.server,
            what,
        };
        if response.id() != id {
            return Err(bad("the answer's id does not match the question"));
        }
        match response.queries() {
            [q] if q.name() == name && q.query_type() == rtype => {}
            _ => return Err(bad("the answer's question does not match")),
        }
        match response.response_code() {
            ResponseCode::NoError => {}
            ResponseCode::NXDomain => {
                return Err(ResolveError::NxDomain {
                    host: host.to_string(),
                    server: self.server.to_string(),
                });
            }
            rcode => {
                return Err(ResolveError::ServerFailure {
                    host: host.to_string(),
                    server: self.server,
                    rcode: rcode.to_string(),
                });
            }
        }
        Ok(chain_records(name, rtype, response.answers()))
    }
}

/// The `rtype` addresses an answer gives for `name`, following CNAMEs
/// inside it (bounded by its size, loops ignored), each with the smallest
/// TTL along the chain that reached it (its own included).
fn chain_records(name: &Name, rtype: RecordType, answers: &[Record]) -> Vec<(IpAddr, Duration)> {
    // Each name reached, with the smallest TTL on the way to it.
    let mut names: Vec<(Name, u32)> = vec![(name.clone(), u32::MAX)];
    for _ in 0..answers.len() {
        let before = names.len();
        for record in answers {
            if let RData::CNAME(target) = record.data()
                && let Some(ttl) = reached(&names, record.name())
                && reached(&names, &target.0).is_none()
            {
                names.push((target.0.clone(), ttl.min(record.ttl())));
            }
        }
        if names.len() == before {
            break;
        }
    }
    answers
        .iter()
        .filter_map(|record| {
            let ttl = reached(&names, record.name())?.min(record.ttl());
            let ip = match (record.data(), rtype) {
                (RData::A(a), RecordType::A) => IpAddr::V4(a.0),
                (RData::AAAA(aaaa), RecordType::AAAA) => IpAddr::V6(aaaa.0),
                _ => return None,
            };
            Some((ip, Duration::from_secs(u64::from(ttl))))
        })
        .collect()
}

/// The TTL on the way to `name`, if the chain reached it.
fn reached(names: &[(Name, u32)], name: &Name) -> Option<u32> {
    names.iter().find(|(n, _)| n == name).map(|(_, ttl)| *ttl)
}

fn fqdn(host: &str) -> Result<Name, ResolveError> {
    let mut name = Name::from_ascii(host).map_err(|_| ResolveError::BadName {
        host: host.to_string(),
    })?;
    name.set_fqdn(true);
    Ok(name)
}

/// A random 16-bit query id from the kernel's CSPRNG.
fn random_id() -> u16 {
    let mut buf = [0u8; 2];
    if getrandom::getrandom(&mut buf).is_err() {
        // getrandom(2) does not fail for 2 bytes once the pool is ready; if it
        // ever does, fall back to the clock (the id is defence in depth: the
        // socket is connected to the server).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return (nanos & 0xffff) as u16;
    }
    u16::from_be_bytes(buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "../../tests/common/mock_dns.rs"]
mod mock_dns;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::mock_dns::MockDns;
    use super::*;

    #[test]
    fn resolve_entries() {
        let mut r = ResolveOverrides::new();
        r.add_entry("Policy.Example.com.:443:127.0.0.1").unwrap();
        r.add_entry("policy.example.com:443:[::1]").unwrap();
        r.add_entry("[::1]:8443:127.0.0.2").unwrap();
        let h = normalize_host("policy.example.com").unwrap();
        assert_eq!(
            r.lookup(&h, 443).unwrap(),
            &[
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(r.lookup(&h, 80).is_none());
        for bad in [
            "a:443",
            "a:x:127.0.0.1",
            "a:443:nothost",
            "a b:443:127.0.0.1",
            "a:0:127.0.0.1",
        ] {
            assert!(r.add_entry(bad).is_err(), "{bad}");
        }
    }

    fn host(name: &str) -> Host {
        policy::normalize_host(name).unwrap()
    }

    #[tokio::test]
    async fn pins_win_and_are_marked_pinned() {
        let mut pins = ResolveOverrides::new();
        pins.add_entry("A.Test.:443:127.0.0.9").unwrap();
        // The upstream is unreachable on purpose: a pinned name must not ask it.
        let resolver = Resolver::new(
            pins,
            Upstream::Dns(
                DnsClient::new("127.0.0.1:9".parse().unwrap())
                    .with_timeout(Duration::from_millis(50), 1),
            ),
        );
        let resolved = resolver.resolve(&host("a.test"), 443).await.unwrap();
        assert_eq!(resolved.source, AddrSource::Pinned);
        assert_eq!(resolved.addrs, vec!["127.0.0.9".parse::<IpAddr>().unwrap()]);
        // Another port of the same host is not pinned.
        assert!(resolver.resolve(&host("a.test"), 444).await.is_err());
    }

    #[tokio::test]
    async fn ip_literals_resolve_to_themselves_and_stay_checkable() {
        let resolved = Resolver::system()
            .resolve(&host("127.1"), 443)
            .await
            .unwrap();
        assert_eq!(resolved.source, AddrSource::Literal);
        assert_eq!(resolved.addrs, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[tokio::test]
    async fn upstream_answers_a_aaaa_and_cname_chains() {
        let dns = MockDns::start().await;
        dns.answer("direct.test", &["127.0.0.1", "::1"]);
        dns.cname("alias.test", "target.test");
        dns.answer("target.test", &["169.254.169.254"]);
        let client = DnsClient::new(dns.addr());
        let resolver = Resolver::new(ResolveOverrides::new(), Upstream::Dns(client.clone()));
        let resolved = resolver.resolve(&host("direct.test"), 443).await.unwrap();
        assert_eq!(resolved.source, AddrSource::Dns);
        assert_eq!(
            resolved.addrs,
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(
            client.lookup("ALIAS.test.").await.unwrap(),
            vec!["169.254.169.254".parse::<IpAddr>().unwrap()]
        );
        assert!(matches!(
            client.lookup("missing.test").await,
            Err(ResolveError::NxDomain { .. })
        ));
    }

    #[tokio::test]
    async fn truncated_udp_answers_are_repeated_over_tcp() {
        let dns = MockDns::start().await;
        dns.answer("big.test", &["127.0.0.7"]);
        dns.truncate_udp(true);
        let addrs = DnsClient::new(dns.addr()).lookup("big.test").await.unwrap();
        assert_eq!(addrs, vec!["127.0.0.7".parse::<IpAddr>().unwrap()]);
        assert!(dns.tcp_queries() >= 1);
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = DnsClient::new(silent.local_addr().unwrap())
            .with_timeout(Duration::from_millis(100), 2);
        assert!(matches!(
            client.lookup("a.test").await,
            Err(ResolveError::Timeout { .. })
        ));
    }

    #[tokio::test]
    async fn answers_with_a_wrong_id_are_ignored() {
        let dns = MockDns::start().await;
        dns.answer("a.test", &["127.0.0.1"]);
        dns.wrong_id(true);
        let client = DnsClient::new(dns.addr()).with_timeout(Duration::from_millis(100), 1);
        assert!(matches!(
            client.lookup("a.test").await,
            Err(ResolveError::Timeout { .. })
        ));
    }

    #[tokio::test]
    async fn system_resolver_resolves_localhost() {
        let resolved = Resolver::system()
            .resolve(&host("localhost"), 80)
            .await
            .unwrap();
        assert_eq!(resolved.source, AddrSource::Dns);
        assert!(!resolved.addrs.is_empty(), "{resolved:?}");
        assert!(
            resolved.addrs.iter().all(IpAddr::is_loopback),
            "{resolved:?}"
        );
    }

    #[test]
    fn a_host_is_found_on_any_pinned_port() {
        let mut r = ResolveOverrides::new();
        r.add_entry("a.test:8443:127.0.0.2").unwrap();
        r.add_entry("a.test:443:127.0.0.1").unwrap();
        r.add_entry("a.test:443:[::1]").unwrap();
        r.add_entry("a.test:8443:127.0.0.1").unwrap();
        r.add_entry("b.test:443:127.0.0.3").unwrap();
        assert_eq!(
            r.lookup_host(&host("A.test.")).unwrap(),
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap(),
                "127.0.0.2".parse().unwrap()
            ],
            "ports ascending, each address once"
        );
        assert!(r.lookup_host(&host("c.test")).is_none());
    }

    fn record(owner: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(Name::from_ascii(owner).unwrap(), ttl, data)
    }

    fn cname(target: &str) -> RData {
        RData::CNAME(hickory_proto::rr::rdata::CNAME(
            Name::from_ascii(target).unwrap(),
        ))
    }

    fn a(ip: &str) -> RData {
        RData::A(hickory_proto::rr::rdata::A(ip.parse().unwrap()))
    }

    #[test]
    fn ttls_are_the_smallest_along_the_cname_chain() {
        let answers = vec![
            record("Alias.test.", 30, cname("mid.test.")),
            record("mid.test.", 600, cname("end.test.")),
            record("end.test.", 300, a("192.0.2.1")),
            record("end.test.", 10, a("192.0.2.2")),
            // Not on the chain: ignored.
            record("other.test.", 5, a("192.0.2.9")),
            // A loop back to the start changes nothing.
            record("end.test.", 1, cname("alias.test.")),
        ];
        let got = chain_records(
            &Name::from_ascii("alias.test.").unwrap(),
            RecordType::A,
            &answers,
        );
        assert_eq!(
            got,
            vec![
                ("192.0.2.1".parse().unwrap(), Duration::from_secs(30)),
                ("192.0.2.2".parse().unwrap(), Duration::from_secs(10)),
            ]
        );
        // AAAA asked: the A records are not answers.
        assert!(
            chain_records(
                &Name::from_ascii("alias.test.").unwrap(),
                RecordType::AAAA,
                &answers
            )
            .is_empty()
        );
    }

    #[tokio::test]
    async fn families_resolve_with_ttls_from_pins_and_upstream() {
        let dns = MockDns::start().await;
        dns.cname("alias.test", "target.test");
        dns.ttl("alias.test", 40);
        dns.answer("target.test", &["192.0.2.7", "2001:db8::7"]);
        dns.ttl("target.test", 90);
        let mut pins = ResolveOverrides::new();
        pins.add_entry("pinned.test:8443:127.0.0.9").unwrap();
        let resolver = Resolver::new(pins, Upstream::Dns(DnsClient::new(dns.addr())));
        let v4 = resolver
            .resolve_family(&host("alias.test"), Family::V4)
            .await
            .unwrap();
        assert_eq!(v4.source, AddrSource::Dns);
        assert_eq!(
            v4.addrs,
            vec![("192.0.2.7".parse().unwrap(), Duration::from_secs(40))]
        );
        let v6 = resolver
            .resolve_family(&host("target.test"), Family::V6)
            .await
            .unwrap();
        assert_eq!(
            v6.addrs,
            vec![("2001:db8::7".parse().unwrap(), Duration::from_secs(90))]
        );
        let pinned = resolver
            .resolve_family(&host("pinned.test"), Family::V4)
            .await
            .unwrap();
        assert_eq!(pinned.source, AddrSource::Pinned);
        assert_eq!(
            pinned.addrs,
            vec![("127.0.0.9".parse().unwrap(), UNTIMED_TTL)]
        );
        let pinned_v6 = resolver
            .resolve_family(&host("pinned.test"), Family::V6)
            .await
            .unwrap();
        assert!(
            pinned_v6.addrs.is_empty(),
            "a pinned name is not asked upstream"
        );
        assert!(matches!(
            resolver
                .resolve_family(&host("missing.test"), Family::V4)
                .await,
            Err(ResolveError::NxDomain { .. })
        ));
    }
}
