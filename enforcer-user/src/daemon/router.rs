//! Glue between the daemon and the lane router (`proxy::router`): its
//! configuration from the daemon's flags, and its events into the audit log.

use std::{future::Future, path::PathBuf, sync::Arc};

use policy::PolicyStore;
use proxy::{
    attribution::ClientGate,
    net::resolve::Resolver,
    router::{CredentialSource, Router, RouterAuditSink, RouterConfig, audit::RouterEvent},
};
use tokio::net::TcpListener;

use super::bridge::AuditBridge;
use crate::audit::{AuditRecord, Decision, Source};

/// The router's event as an audit record: metadata only.
pub fn router_record(event: &RouterEvent) -> AuditRecord {
    let decision = if event.reason.is_allow() || event.status.is_some_and(|s| s < 400) {
        Decision::Allow
    } else {
        Decision::Deny
    };
    let mut record = AuditRecord::new(event.time, Source::Router, decision, event.reason);
    record.client = Some(event.client.to_string());
    record.cgroup_id = event.identity.cgroup_id;
    record.pid = event.identity.pid;
    record.comm = event.identity.comm.clone();
    record.host = event.provider_host.clone();
    record.lane = event.lane.clone();
    record.model = event.model.clone();
    record.status = event.status;
    record.bytes_up = Some(event.bytes_up);
    record.bytes_down = Some(event.bytes_down);
    record.first_byte_ms = event.ttfb.map(|d| d.as_secs_f64() * 1000.0);
    record.duration_ms = Some(event.duration.as_secs_f64() * 1000.0);
    record.detail = Some(
        serde_json::json!({
            "method": event.method,
            "path": event.path,
            "upstream_version": event.upstream_version,
            "policy_version": event.policy_version,
            "uid": event.identity.uid,
            "thread": event.identity.tid,
        })
        .to_string(),
    );
    record
}

impl RouterAuditSink for AuditBridge {
    fn record(&self, event: RouterEvent) {
        self.router(router_record(&event));
    }
}

/// Serves the lane router on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    store: Arc<PolicyStore>,
    resolver: Resolver,
    extra_ca: Option<PathBuf>,
    bridge: AuditBridge,
    gate: ClientGate,
    shutdown: impl Future<Output = ()>,
) {
    let mut config = RouterConfig::new(resolver, CredentialSource::from_process());
    if let Some(path) = &extra_ca
        && let Err(error) = config.add_extra_ca_file(path)
    {
        tracing::error!(error = %error, path = %path.display(), "lane router: cannot read --extra-ca; not serving");
        return;
    }
    let router = match Router::new(config, store.subscribe(), Arc::new(bridge)) {
        Ok(router) => router.with_client_gate(gate),
        Err(error) => {
            tracing::error!(error = %error, "lane router: TLS trust could not be built; not serving");
            return;
        }
    };
    if let Err(error) = router.serve_tcp(listener, shutdown).await {
        tracing::error!(error = %error, "lane router stopped");
    }
}
