//! Turns every source's decisions into audit records and metrics: the
//! proxy's [`AuditEvent`]s (through its `AuditSink` trait) and the kernel's
//! ring-buffer denies.

use std::sync::Arc;

use proxy::audit::{AuditEvent, AuditSink};

use super::metrics::Metrics;
use crate::{
    audit::Decision,
    audit::{AuditRecord, AuditWriter, Reason, Source},
    kernel::DenyRecord,
};

/// Where every decision goes: the audit writer and the metrics.
#[derive(Clone)]
pub struct AuditBridge {
    writer: AuditWriter,
    metrics: Arc<Metrics>,
}

impl AuditBridge {
    /// A bridge to `writer` and `metrics`.
    pub fn new(writer: AuditWriter, metrics: Arc<Metrics>) -> Self {
        Self { writer, metrics }
    }

    /// The writer (for the control socket's live stream).
    pub fn writer(&self) -> &AuditWriter {
        &self.writer
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Records a kernel deny (also one structured log line).
    pub fn kernel_deny(&self, deny: &DenyRecord) {
        tracing::info!(
            decision = "deny",
            reason = %deny.reason,
            source = "kernel",
            hook = %deny.hook,
            pid = deny.tgid,
            comm = %deny.comm,
            cgroup_id = deny.cgroup_id,
            family = %deny.family,
            destination = deny.destination.map(|d| d.to_string()),
            unix_address = deny.unix_address.as_deref(),
            "kernel deny"
        );
        self.metrics
            .decision(Source::Kernel, Decision::Deny, &deny.reason);
        self.writer.submit(AuditRecord::from_kernel(deny));
    }

    /// Records something the daemon itself decided (grants, reloads); the
    /// decision is the reason's own ([`Reason::decision`]).
    pub fn control(&self, reason: Reason, host: Option<String>, detail: serde_json::Value) {
        let decision = reason.decision();
        let mut record = AuditRecord::new(
            std::time::SystemTime::now(),
            Source::Control,
            decision,
            reason,
        );
        record.host = host;
        record.detail = Some(detail.to_string());
        self.metrics
            .decision(Source::Control, decision, reason.as_str());
        self.writer.submit(record);
    }

    /// Records one lane-router request.
    pub fn router(&self, record: AuditRecord) {
        self.metrics
            .decision(Source::Router, record.decision, &record.reason);
        self.metrics
            .bytes(record.bytes_up.unwrap_or(0), record.bytes_down.unwrap_or(0));
        if let Some(first_byte) = record.first_byte_ms {
            self.metrics.router_latency(first_byte / 1000.0);
        }
        self.writer.submit(record);
    }
}

/// The proxy's event as an audit record.
pub fn proxy_record(event: &AuditEvent) -> AuditRecord {
    let mut record = AuditRecord::new(
        event.time,
        Source::Proxy,
        event.verdict.decision,
        event.verdict.reason,
    );
    record.cgroup_id = event.identity.cgroup_id;
    record.pid = event.identity.pid;
    record.comm = event.identity.comm.clone();
    record.client = Some(event.client.to_string());
    record.host = event.host.clone();
    record.port = event.port;
    record.sni = (!event.sni.is_empty()).then(|| event.sni.join(","));
    record.upstream = event.upstream.map(|addr| addr.to_string());
    record.bytes_up = Some(event.bytes_up);
    record.bytes_down = Some(event.bytes_down);
    record.first_byte_ms = Some(event.handshake.as_secs_f64() * 1000.0);
    record.duration_ms = Some(event.total.as_secs_f64() * 1000.0);
    record.detail = Some(
        serde_json::json!({
            "kind": event.kind.as_str(),
            "dns_type": event.dns_type,
            "ech": event.ech,
            "original_destination": event.original_destination.map(|addr| addr.to_string()),
            "address_class": event.address_class.map(|class| class.as_str()),
            "policy_version": event.policy_version,
            "uid": event.identity.uid,
            "thread": event.identity.tid,
        })
        .to_string(),
    );
    record
}

impl AuditSink for AuditBridge {
    fn record(&self, event: AuditEvent) {
        proxy::audit::log_event(&event);
        let record = proxy_record(&event);
        self.metrics
            .decision(Source::Proxy, record.decision, &record.reason);
        self.metrics.bytes(event.bytes_up, event.bytes_down);
        self.writer.submit(record);
    }
}
