//! A running daemon's shared state: what the background tasks and the
//! control handlers both read and change.

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use policy::{Origin, PolicyStore, Snapshot};

use crate::{audit::Reason, policy_source::Loader};
use proxy::{dns::DnsFilter, server::ConnectProxy};
use tokio::sync::Mutex;

use super::{
    Listeners, bridge::AuditBridge, learned::LearnedNames, mapsync::MapSync, metrics::Gauges,
};
use crate::kernel::{CgroupPath, FamilyEnforcement, PinnedMaps, redirect::Mode};

/// A running daemon's shared state (what the control socket serves).
pub struct Daemon {
    /// The enforced cgroup.
    pub(super) cgroup: CgroupPath,
    /// Its id.
    pub(super) cgroup_id: u64,
    /// Whether BPF-LSM enforces socket families.
    pub(super) families: FamilyEnforcement,
    /// Where the proxy and the router listen.
    pub(super) listeners: Listeners,
    /// The active policy and grants.
    pub(super) store: Arc<PolicyStore>,
    /// Fetches and verifies the policy source.
    pub(super) loader: Arc<Loader>,
    /// The state directory (grants file).
    pub(super) state_dir: PathBuf,
    /// Audit log and metrics.
    pub(super) bridge: AuditBridge,
    /// The pinned maps (counters for status and metrics).
    pub(super) maps: PinnedMaps,
    /// The direct-map writer; one sync at a time.
    pub(super) mapsync: Mutex<MapSync>,
    /// The CONNECT proxy (open tunnels).
    pub(super) proxy: ConnectProxy,
    /// Serialises grant changes (read, change, persist, apply).
    pub(super) grant_lock: Mutex<()>,
    /// Runs self-tests; holds the last report.
    pub(super) selftest: super::selftest::SelftestRunner,
    /// The egress mode the kernel was told at start-up.
    pub(super) egress_mode: Mode,
    /// The DNS filter (`egress.dns = "filtered"`), for its counters.
    pub(super) dns: Option<DnsFilter>,
    /// What the DNS filter answered for direct names (the map writer's
    /// source for them, and what wakes it).
    pub(super) learned: Option<Arc<LearnedNames>>,
}

impl Daemon {
    /// Writes `snapshot`'s direct rules to the kernel maps.
    pub(super) async fn sync_maps(&self, snapshot: &Snapshot, now: SystemTime) {
        match self.mapsync.lock().await.sync(snapshot, now).await {
            Ok(report) => {
                for (target, why) in &report.skipped {
                    tracing::warn!(decision = Reason::DirectUnresolved.decision().as_str(), reason = Reason::DirectUnresolved.as_str(), host = %target, why = %why, "direct entry not written");
                    self.bridge.control(
                        Reason::DirectUnresolved,
                        Some(target.clone()),
                        serde_json::json!({ "why": why }),
                    );
                }
                tracing::debug!(
                    written = report.written.len(),
                    removed = report.removed,
                    "direct maps synced"
                );
            }
            Err(error) => tracing::error!(error = %error, "syncing the direct maps"),
        }
        // Redirected ports follow the allowlist (entries expire, packs and
        // grants change); in proxy-only mode nothing reads them.
        if let Err(error) = self.maps.set_redirect_ports(&snapshot.redirect_ports(now)) {
            tracing::error!(error = %error, "syncing the redirected ports");
        }
        // Unix sockets: the pack's egress.unix, for every cgroup (id 0).
        let pins = crate::kernel::paths::PinDirs::for_cgroup(self.cgroup_id);
        if let Err(error) = crate::kernel::unix::set_rules(&pins, 0, &snapshot.policy().egress.unix)
        {
            tracing::error!(error = %error, "syncing the unix socket rules");
        }
    }

    /// The Prometheus text: the bridge's counters plus the gauges read now.
    pub(super) fn metrics_text(&self) -> String {
        let snapshot = self.store.current();
        let counters = self.maps.counters().ok();
        let gauges = Gauges {
            open_tunnels: self.proxy.active_tunnels() as u64,
            ring_buffer_lost: counters.as_ref().map_or(0, |c| c.events_lost),
            redirected: counters.as_ref().map_or(0, |c| c.redirected),
            egress_mode: self.egress_mode.as_str(),
            audit_dropped: self
                .bridge
                .writer()
                .stats()
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            policy_version: snapshot.policy().version.to_string(),
            policy_fallback: matches!(snapshot.origin(), Origin::Fallback { .. }),
            policy_expiry: snapshot
                .expires_at()
                .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
            selftest: self.selftest.metrics(),
            dns: self.dns.as_ref().map(DnsFilter::stats),
            dns_redirected: counters.as_ref().map_or(0, |c| c.dns_redirected),
        };
        self.bridge.metrics().render(&gauges)
    }
}
