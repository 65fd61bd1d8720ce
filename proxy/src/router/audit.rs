//! Router audit events: one [`RouterEvent`] per request, emitted when its
//! fate is settled (the router refused it, or the relayed response ended,
//! was cut, or the client went away), handed to a [`RouterAuditSink`].
//!
//! The CONNECT proxy's [`crate::audit::AuditEvent`] describes tunnels
//! (SNI, upstream address, handshake time) and does not fit a routed HTTP
//! request, so the router has its own event type and sink trait; the client
//! is described with the proxy's [`Peer`] so both kinds of events name
//! clients the same way.
//!
//! Metadata only: lane, model, provider host, method, path without its
//! query, status, byte counts, times. Never a header value, a query string,
//! a body byte or a credential.

use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::attribution::ClientIdentity;
pub use crate::audit::Peer;
use crate::reason::Reason;

/// One routed (or refused) request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouterEvent {
    /// When the request arrived (serialised as Unix milliseconds).
    #[serde(serialize_with = "unix_millis")]
    pub time: SystemTime,
    /// The client.
    pub client: Peer,
    /// The process behind the client, as far as the daemon could tell
    /// ([`crate::attribution`]); serialised flat (`cgroup_id`, `pid`, ...).
    #[serde(flatten)]
    pub identity: ClientIdentity,
    /// HTTP method.
    pub method: String,
    /// Request path, without the query string.
    pub path: String,
    /// The top-level `model` of the body, when there was one.
    pub model: Option<String>,
    /// The lane (provider name), once chosen.
    pub lane: Option<String>,
    /// The provider's `host[:port]`, once chosen.
    pub provider_host: Option<String>,
    /// Upstream HTTP version (`HTTP/1.1`, `HTTP/2`) when a response came.
    pub upstream_version: Option<&'static str>,
    /// Status sent to the client (the provider's, or the router's own).
    pub status: Option<u16>,
    /// How it ended (serialised as `outcome`): `completed`, or why not.
    #[serde(rename = "outcome")]
    pub reason: Reason,
    /// Request body bytes forwarded upstream (0 when refused).
    pub bytes_up: u64,
    /// Response body bytes relayed to the client.
    pub bytes_down: u64,
    /// From arrival until the provider's response head (serialised as µs).
    #[serde(serialize_with = "opt_micros")]
    pub ttfb: Option<Duration>,
    /// From arrival until the end (serialised as µs).
    #[serde(serialize_with = "micros")]
    pub duration: Duration,
    /// Version of the policy snapshot used.
    pub policy_version: String,
}

fn unix_millis<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let millis = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    s.serialize_u64(millis)
}

fn as_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn micros<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(as_micros(*d))
}

fn opt_micros<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&as_micros(*d)),
        None => s.serialize_none(),
    }
}

/// Where router events go. Called on the request's task (often from a
/// `Drop`): implementations must return quickly and never block.
pub trait RouterAuditSink: Send + Sync {
    /// Takes one event.
    fn record(&self, event: RouterEvent);
}

/// A sink that drops every event (the router still logs each one).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl RouterAuditSink for NullSink {
    fn record(&self, _event: RouterEvent) {}
}

/// Writes `event` as one structured `tracing` line: info for completed
/// requests, warn otherwise. Values in fields, never in the message.
pub fn log_event(event: &RouterEvent) {
    let lane = event.lane.as_deref().unwrap_or("");
    let model = event.model.as_deref().unwrap_or("");
    let host = event.provider_host.as_deref().unwrap_or("");
    let status = event.status.unwrap_or(0);
    let ttfb_us = event.ttfb.map_or(0, as_micros);
    let duration_us = as_micros(event.duration);
    let version = event.upstream_version.unwrap_or("");
    let pid = event.identity.pid.unwrap_or(0);
    let comm = event.identity.comm.as_deref().unwrap_or("");
    let uid = event.identity.uid.map(i64::from).unwrap_or(-1);
    let cgroup = event.identity.cgroup_id.unwrap_or(0);
    if event.reason.is_allow() {
        tracing::info!(
            outcome = event.reason.as_str(),
            client = %event.client,
            pid,
            comm,
            uid,
            cgroup,
            method = %event.method,
            path = %event.path,
            model,
            lane,
            host,
            upstream_version = version,
            status,
            bytes_up = event.bytes_up,
            bytes_down = event.bytes_down,
            ttfb_us,
            duration_us,
            "router request"
        );
    } else {
        tracing::warn!(
            outcome = event.reason.as_str(),
            client = %event.client,
            pid,
            comm,
            uid,
            cgroup,
            method = %event.method,
            path = %event.path,
            model,
            lane,
            host,
            upstream_version = version,
            status,
            bytes_up = event.bytes_up,
            bytes_down = event.bytes_down,
            ttfb_us,
            duration_us,
            "router request"
        );
    }
}

/// An in-memory sink keeping the last `capacity` router events (status
/// views, tests): the proxy's generic sink.
pub type MemorySink = crate::audit::MemorySink<RouterEvent>;

impl RouterAuditSink for MemorySink {
    fn record(&self, event: RouterEvent) {
        self.push(event);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn serialises_metadata_with_stable_names() {
        let e = RouterEvent {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_001),
            client: Peer::Tcp {
                addr: "127.0.0.1:5000".parse().unwrap(),
            },
            identity: ClientIdentity {
                pid: Some(99),
                comm: Some("claude".into()),
                ..ClientIdentity::default()
            },
            method: "POST".into(),
            path: "/v1/messages".into(),
            model: Some("claude-haiku-4-5".into()),
            lane: Some("zai".into()),
            provider_host: Some("api.z.ai".into()),
            upstream_version: Some("HTTP/2"),
            status: Some(200),
            reason: Reason::IdleTimeout,
            bytes_up: 10,
            bytes_down: 20,
            ttfb: Some(Duration::from_micros(1500)),
            duration: Duration::from_micros(2500),
            policy_version: "2025-10-21.1".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["outcome"], "idle_timeout");
        assert_eq!(v["time"], 1_700_000_000_001u64);
        assert_eq!(v["ttfb"], 1500);
        assert_eq!(v["duration"], 2500);
        assert_eq!(v["client"]["kind"], "tcp");
        assert_eq!(v["pid"], 99);
        assert_eq!(v["comm"], "claude");
        let sink = MemorySink::new(1);
        sink.record(e.clone());
        sink.record(e);
        assert_eq!(sink.events().len(), 1);
    }
}
