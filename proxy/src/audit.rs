//! Audit events: one [`AuditEvent`] per proxy decision, handed to an
//! [`AuditSink`] that the daemon implements (SQLite, event stream).
//!
//! An event is emitted once per client connection, when its fate is
//! settled: at the denial, or when an allowed tunnel ends (so byte counts
//! and durations are final). The proxy itself does not log decisions: the
//! sink does, with [`log_event`] (one structured `tracing` line), so every
//! decision is logged exactly once; [`LogSink`] does only that.
//! Events carry metadata only: never a header value, a path, a query string
//! or a byte of payload.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::attribution::ClientIdentity;
use crate::net::addr_class::AddressClass;
use crate::net::resolve::AddrSource;
use crate::reason::{Decision, Reason, Verdict};
use crate::relay::TunnelEnd;

/// Who connected to the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Peer {
    /// A TCP client.
    Tcp {
        /// Its address.
        addr: SocketAddr,
    },
    /// A UDP client (the DNS filter): the datagram's source address. The
    /// daemon looks it up in the kernel's `PEERS` map as UDP.
    Udp {
        /// Its address.
        addr: SocketAddr,
    },
    /// A unix-socket client, with its credentials when the kernel gave them.
    Unix {
        /// Process id (`SO_PEERCRED`).
        pid: Option<i32>,
        /// User id (`SO_PEERCRED`).
        uid: Option<u32>,
    },
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp { addr } => write!(f, "{addr}"),
            Self::Udp { addr } => write!(f, "udp:{addr}"),
            Self::Unix { pid: Some(pid), .. } => write!(f, "unix:pid={pid}"),
            Self::Unix { pid: None, .. } => f.write_str("unix"),
        }
    }
}

/// What kind of request the event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// A CONNECT tunnel.
    Connect,
    /// A plain-HTTP absolute-form request.
    PlainHttp,
    /// A connection the kernel redirected to the transparent listener
    /// (egress mode `redirect`): the SNI is the host.
    Transparent,
    /// A DNS query to the DNS filter ([`crate::dns`]): the query name is
    /// the host, the record type is in [`AuditEvent::dns_type`].
    Dns,
    /// The request could not be parsed far enough to tell.
    Unknown,
}

impl RequestKind {
    /// The stable name (`connect`, `plain_http`, `transparent`, `dns`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::PlainHttp => "plain_http",
            Self::Transparent => "transparent",
            Self::Dns => "dns",
            Self::Unknown => "unknown",
        }
    }
}

/// One proxy decision with everything known about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// When the client connection was accepted (Unix epoch; serialised as
    /// milliseconds).
    #[serde(serialize_with = "unix_millis")]
    pub time: SystemTime,
    /// The client.
    pub client: Peer,
    /// The process behind the client, as far as the daemon could tell
    /// ([`crate::attribution`]); serialised flat (`cgroup_id`, `pid`, ...).
    #[serde(flatten)]
    pub identity: ClientIdentity,
    /// CONNECT or plain HTTP.
    pub kind: RequestKind,
    /// The requested host as the client wrote it (brackets kept for IPv6);
    /// `None` when the request did not parse.
    pub host: Option<String>,
    /// The requested port.
    pub port: Option<u16>,
    /// For [`RequestKind::Transparent`]: the address the client's
    /// `connect()` named, as the kernel recorded it (never dialled).
    pub original_destination: Option<SocketAddr>,
    /// Every server name in the ClientHello (usually one).
    pub sni: Vec<String>,
    /// The ClientHello carried an `encrypted_client_hello` extension.
    pub ech: bool,
    /// Allow or deny, and why (serialised as `decision`).
    #[serde(rename = "decision")]
    pub verdict: Verdict,
    /// For `forbidden_address`: the class of the refused address.
    pub address_class: Option<AddressClass>,
    /// The upstream address dialled (or refused, for `forbidden_address`).
    pub upstream: Option<SocketAddr>,
    /// Whether the upstream address was pinned by the operator or from DNS.
    pub upstream_source: Option<AddrSource>,
    /// Bytes client → upstream (ClientHello included).
    pub bytes_up: u64,
    /// Bytes upstream → client.
    pub bytes_down: u64,
    /// From accept until the tunnel was set up (request read, ClientHello
    /// checked, upstream dialled) or the attempt was refused.
    #[serde(serialize_with = "micros")]
    pub handshake: Duration,
    /// From accept until the connection closed.
    #[serde(serialize_with = "micros")]
    pub total: Duration,
    /// How an allowed tunnel ended.
    pub end: Option<TunnelEnd>,
    /// The version of the policy snapshot the decision used.
    pub policy_version: Option<String>,
    /// For [`RequestKind::Dns`]: the query's record type (`A`, `AAAA`,
    /// `TXT`, ...); `None` for every other kind.
    pub dns_type: Option<String>,
}

impl AuditEvent {
    /// The event of a connection just accepted: nothing decided yet (its
    /// verdict says `client_error` until a phase says otherwise).
    pub fn accepted(
        time: SystemTime,
        client: Peer,
        identity: ClientIdentity,
        policy_version: Option<String>,
    ) -> Self {
        Self {
            time,
            client,
            identity,
            kind: RequestKind::Unknown,
            host: None,
            port: None,
            original_destination: None,
            sni: Vec::new(),
            ech: false,
            verdict: Verdict::deny(Reason::ClientError),
            address_class: None,
            upstream: None,
            upstream_source: None,
            bytes_up: 0,
            bytes_down: 0,
            handshake: Duration::ZERO,
            total: Duration::ZERO,
            end: None,
            policy_version,
            dns_type: None,
        }
    }
}

fn unix_millis<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let millis = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    s.serialize_u64(millis)
}

fn micros<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX))
}

/// Where audit events go. Called on the connection's task: implementations
/// must return quickly and never block (queue to a writer task), and should
/// call [`log_event`] so the decision is also in the log.
pub trait AuditSink: Send + Sync {
    /// Takes one event.
    fn record(&self, event: AuditEvent);
}

/// Writes `event` as one structured `tracing` line (info for allow, warn
/// for deny); values in fields, never in the message.
pub fn log_event(event: &AuditEvent) {
    let host = event.host.as_deref().unwrap_or("");
    let dns_type = event.dns_type.as_deref().unwrap_or("");
    let sni = event.sni.join(",");
    let upstream = event.upstream.map(|a| a.to_string()).unwrap_or_default();
    let original = event
        .original_destination
        .map(|a| a.to_string())
        .unwrap_or_default();
    let class = event.address_class.map_or("", AddressClass::as_str);
    let end = event.end.map_or("", TunnelEnd::as_str);
    let cgroup = event.identity.cgroup_id.unwrap_or(0);
    let pid = event.identity.pid.unwrap_or(0);
    let comm = event.identity.comm.as_deref().unwrap_or("");
    let uid = event.identity.uid.map(i64::from).unwrap_or(-1);
    let handshake_us = u64::try_from(event.handshake.as_micros()).unwrap_or(u64::MAX);
    let total_us = u64::try_from(event.total.as_micros()).unwrap_or(u64::MAX);
    match event.verdict.decision {
        Decision::Allow => tracing::info!(
            decision = event.verdict.decision.as_str(),
            reason = event.verdict.reason.as_str(),
            kind = event.kind.as_str(),
            client = %event.client,
            pid,
            comm,
            uid,
            cgroup,
            host,
            port = event.port.unwrap_or(0),
            sni,
            original_destination = original,
            ech = event.ech,
            upstream,
            bytes_up = event.bytes_up,
            bytes_down = event.bytes_down,
            handshake_us,
            total_us,
            end,
            "proxy decision"
        ),
        Decision::Deny => tracing::warn!(
            decision = event.verdict.decision.as_str(),
            reason = event.verdict.reason.as_str(),
            kind = event.kind.as_str(),
            dns_type,
            client = %event.client,
            pid,
            comm,
            uid,
            cgroup,
            host,
            port = event.port.unwrap_or(0),
            sni,
            original_destination = original,
            ech = event.ech,
            address_class = class,
            upstream,
            handshake_us,
            total_us,
            "proxy decision"
        ),
    }
}

/// A sink that only logs ([`log_event`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogSink;

impl AuditSink for LogSink {
    fn record(&self, event: AuditEvent) {
        log_event(&event);
    }
}

/// An in-memory sink keeping the last `capacity` events (for `status`-style
/// "recent decisions" views and tests). Generic over the event type so the
/// CONNECT proxy and the lane router share it.
#[derive(Debug)]
pub struct MemorySink<E = AuditEvent> {
    capacity: usize,
    events: Mutex<VecDeque<E>>,
}

impl<E: Clone> MemorySink<E> {
    /// A sink keeping at most `capacity` events (oldest dropped first).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            events: Mutex::new(VecDeque::new()),
        }
    }

    /// A copy of the kept events, oldest first.
    pub fn events(&self) -> Vec<E> {
        match self.events.lock() {
            Ok(events) => events.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
        }
    }

    /// Keeps `event`, dropping the oldest beyond the capacity.
    pub fn push(&self, event: E) {
        let mut events = match self.events.lock() {
            Ok(events) => events,
            Err(poisoned) => poisoned.into_inner(),
        };
        if self.capacity == 0 {
            return;
        }
        while events.len() >= self.capacity {
            events.pop_front();
        }
        events.push_back(event);
    }
}

impl AuditSink for MemorySink<AuditEvent> {
    fn record(&self, event: AuditEvent) {
        self.push(event);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::reason::Reason;

    fn event(reason: Reason) -> AuditEvent {
        AuditEvent {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: Peer::Tcp {
                addr: "127.0.0.1:40000".parse().unwrap(),
            },
            identity: ClientIdentity {
                cgroup_id: Some(42),
                pid: Some(1234),
                tid: Some(1235),
                uid: Some(1000),
                comm: Some("curl".into()),
            },
            kind: RequestKind::Connect,
            host: Some("api.example.test".into()),
            port: Some(443),
            original_destination: None,
            sni: vec!["other.test".into()],
            ech: false,
            verdict: Verdict::deny(reason),
            address_class: None,
            upstream: None,
            upstream_source: None,
            bytes_up: 0,
            bytes_down: 0,
            handshake: Duration::from_micros(1500),
            total: Duration::from_micros(1600),
            end: None,
            policy_version: Some("2025-10-21.1".into()),
            dns_type: None,
        }
    }

    #[test]
    fn events_serialise_with_stable_machine_readable_names() {
        let json = serde_json::to_value(event(Reason::SniMismatch)).unwrap();
        assert_eq!(json["decision"]["verdict"], "deny");
        assert_eq!(json["decision"]["reason"], "sni_mismatch");
        assert_eq!(json["time"], 1_700_000_000_123u64);
        assert_eq!(json["handshake"], 1500);
        assert_eq!(json["client"]["kind"], "tcp");
        assert_eq!(json["cgroup_id"], 42);
        assert_eq!(json["pid"], 1234);
        assert_eq!(json["comm"], "curl");
    }

    #[test]
    fn memory_sink_keeps_the_newest() {
        let sink = MemorySink::new(2);
        sink.record(event(Reason::NotAllowlisted));
        sink.record(event(Reason::IpLiteral));
        sink.record(event(Reason::Ech));
        let reasons: Vec<_> = sink.events().iter().map(|e| e.verdict.reason).collect();
        assert_eq!(reasons, vec![Reason::IpLiteral, Reason::Ech]);
    }
}
