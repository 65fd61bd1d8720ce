//! One audit record shape for every source.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::kernel::DenyRecord;

/// Which part of enforcer made the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A kernel program (ring-buffer event).
    Kernel,
    /// The CONNECT proxy.
    Proxy,
    /// The lane router.
    Router,
    /// The daemon itself (grants, revokes, reloads).
    Control,
}

impl Source {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Proxy => "proxy",
            Self::Router => "router",
            Self::Control => "control",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "kernel" => Self::Kernel,
            "proxy" => Self::Proxy,
            "router" => Self::Router,
            "control" => Self::Control,
            _ => return None,
        })
    }
}

pub use enforcer_ebpf::{Decision, Reason};

/// One decision. Fields a source does not know stay `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Row id once stored (0 before).
    #[serde(default)]
    pub id: i64,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Who decided.
    pub source: Source,
    /// What was decided.
    pub decision: Decision,
    /// Machine-readable reason (the shared reason vocabulary).
    pub reason: String,
    /// cgroup v2 id of the process, when known.
    pub cgroup_id: Option<u64>,
    /// Process id (tgid), when known.
    pub pid: Option<u32>,
    /// Command name, when known.
    pub comm: Option<String>,
    /// The client's address (proxy/router).
    pub client: Option<String>,
    /// Requested host (CONNECT host, router provider host) or the
    /// destination address of a kernel deny.
    pub host: Option<String>,
    /// Requested or destination port.
    pub port: Option<u16>,
    /// TLS SNI seen by the proxy.
    pub sni: Option<String>,
    /// Router lane.
    pub lane: Option<String>,
    /// Router model.
    pub model: Option<String>,
    /// HTTP status answered (router, proxy).
    pub status: Option<u16>,
    /// Upstream address dialled.
    pub upstream: Option<String>,
    /// Bytes client -> upstream.
    pub bytes_up: Option<u64>,
    /// Bytes upstream -> client.
    pub bytes_down: Option<u64>,
    /// Milliseconds to first byte or to the checked handshake.
    pub first_byte_ms: Option<f64>,
    /// Total milliseconds.
    pub duration_ms: Option<f64>,
    /// Source-specific extras as JSON (hook, family, protocol, ...).
    pub detail: Option<String>,
}

impl AuditRecord {
    /// A record with the required fields and nothing else.
    pub fn new(time: SystemTime, source: Source, decision: Decision, reason: Reason) -> Self {
        Self::with_reason_name(time, source, decision, reason.as_str())
    }

    /// As [`AuditRecord::new`], with the reason already as its stored name
    /// (a kernel event's reason byte decoded in [`DenyRecord`]).
    fn with_reason_name(
        time: SystemTime,
        source: Source,
        decision: Decision,
        reason: &str,
    ) -> Self {
        Self {
            id: 0,
            time_ms: millis(time),
            source,
            decision,
            reason: reason.to_owned(),
            cgroup_id: None,
            pid: None,
            comm: None,
            client: None,
            host: None,
            port: None,
            sni: None,
            lane: None,
            model: None,
            status: None,
            upstream: None,
            bytes_up: None,
            bytes_down: None,
            first_byte_ms: None,
            duration_ms: None,
            detail: None,
        }
    }

    /// A kernel deny.
    pub fn from_kernel(deny: &DenyRecord) -> Self {
        let time = UNIX_EPOCH + std::time::Duration::from_secs_f64(deny.time.max(0.0));
        let mut record = Self::with_reason_name(time, Source::Kernel, Decision::Deny, &deny.reason);
        record.cgroup_id = Some(deny.cgroup_id);
        record.pid = Some(deny.tgid);
        record.comm = Some(deny.comm.clone());
        record.host = deny.destination.map(|d| d.ip().to_string());
        record.port = deny.destination.map(|d| d.port());
        // A unix deny's "host" is the socket's address (issue 14).
        if record.host.is_none() {
            record.host.clone_from(&deny.unix_address);
        }
        record.detail = Some(
            serde_json::json!({
                "hook": deny.hook,
                "family": deny.family,
                "protocol": deny.protocol,
                "socket_type": deny.socket_type,
                "uid": deny.uid,
                "thread": deny.pid,
            })
            .to_string(),
        );
        record
    }

    /// One human-readable line.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{} {:<7} {:<4} {}",
            humantime::format_rfc3339_millis(
                UNIX_EPOCH
                    + std::time::Duration::from_millis(u64::try_from(self.time_ms).unwrap_or(0))
            ),
            self.source.as_str(),
            self.decision.as_str(),
            self.reason
        );
        let mut push = |label: &str, value: Option<String>| {
            if let Some(value) = value {
                line.push_str(&format!(" {label}={value}"));
            }
        };
        push(
            "dst",
            self.host.as_ref().map(|host| match self.port {
                Some(port) if host.contains(':') => format!("[{host}]:{port}"),
                Some(port) => format!("{host}:{port}"),
                None => host.clone(),
            }),
        );
        push("sni", self.sni.clone());
        push("lane", self.lane.clone());
        push("model", self.model.clone());
        push("status", self.status.map(|s| s.to_string()));
        push("pid", self.pid.map(|p| p.to_string()));
        push("comm", self.comm.clone());
        push("client", self.client.clone());
        push("cgroup", self.cgroup_id.map(|c| c.to_string()));
        line
    }
}

/// Milliseconds since the Unix epoch.
pub fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
