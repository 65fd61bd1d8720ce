//! The daemon's background loops. Each runs until its `shutdown` future
//! resolves (or its source closes) and reports problems to the log; none
//! returns an error, so one failing loop never stops the others.

use std::{future::Future, sync::Arc, time::SystemTime};

use policy::{Origin, PolicyStore, Snapshot};

use crate::{audit::Reason, policy_source::Loader};

use super::{bridge::AuditBridge, mapsync, state::Daemon};
use crate::kernel::{DenyRecord, events::EventReader};

/// Logs and audits the active policy (at start-up and after each swap).
pub fn log_policy(snapshot: &Snapshot, bridge: &AuditBridge) {
    let version = snapshot.policy().version.to_string();
    match snapshot.origin() {
        Origin::Signed { key_id, source, .. } => {
            tracing::info!(policy_version = %version, key_id = %key_id, source = %source, "policy active");
            bridge.control(
                Reason::PolicyApplied,
                None,
                serde_json::json!({ "version": version, "source": source, "key_id": key_id.to_string() }),
            );
        }
        Origin::Fallback { reason } => {
            tracing::warn!(reason = %reason, "using the embedded fallback policy (Anthropic API only)");
            bridge.control(
                Reason::PolicyFallback,
                None,
                serde_json::json!({ "version": version, "why": reason }),
            );
        }
    }
}

/// Policy swaps are logged and audited (when the version changes).
pub async fn log_swaps(
    store: Arc<PolicyStore>,
    bridge: AuditBridge,
    shutdown: impl Future<Output = ()>,
) {
    let mut receiver = store.subscribe();
    let mut last = receiver.borrow_and_update().policy().version.to_string();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            changed = receiver.changed() => {
                if changed.is_err() {
                    return;
                }
                let snapshot = receiver.borrow_and_update().clone();
                let version = snapshot.policy().version.to_string();
                if version != last {
                    log_policy(&snapshot, &bridge);
                    last = version;
                }
            }
        }
    }
}

/// Policy refresh and pack expiry (the loader's own loop).
pub async fn refresh_policy(loader: Arc<Loader>, shutdown: impl Future<Output = ()>) {
    tokio::select! {
        () = loader.run() => {}
        () = shutdown => {}
    }
}

/// Kernel denies from the ring buffer -> audit log and metrics.
pub async fn kernel_events(
    events: EventReader,
    bridge: AuditBridge,
    shutdown: impl Future<Output = ()>,
) {
    // SAFETY: the reader owns its ring-buffer fd for as long as the AsyncFd owns the reader.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
    };
    let mut events = match registered {
        Ok(events) => events,
        Err(error) => {
            tracing::error!(error = %std::io::Error::from(error), "cannot watch the kernel event ring buffer");
            return;
        }
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                // What the cgroup's last connects left in the ring buffer is
                // still recorded (`enforcer run` counts it in its summary).
                for event in &events.get_mut().drain() {
                    bridge.kernel_deny(&DenyRecord::from_event(event));
                }
                return;
            }
            batch = EventReader::next_batch(&mut events) => match batch {
                Ok(batch) => {
                    for event in &batch {
                        bridge.kernel_deny(&DenyRecord::from_event(event));
                    }
                }
                Err(error) => {
                    tracing::error!(error = %error, "reading kernel deny events");
                    return;
                }
            }
        }
    }
}

/// Policy -> kernel direct maps, on every swap and at every expiry.
pub async fn sync_maps(daemon: Arc<Daemon>, shutdown: impl Future<Output = ()>) {
    let mut receiver = daemon.store.subscribe();
    tokio::pin!(shutdown);
    loop {
        let snapshot = receiver.borrow_and_update().clone();
        let now = SystemTime::now();
        let generation = daemon.learned.as_ref().map(|learned| learned.generation());
        daemon.sync_maps(&snapshot, now).await;
        // Answers waiting for their addresses to be allowed go out now.
        if let (Some(learned), Some(generation)) = (&daemon.learned, generation) {
            learned.mark_synced(generation);
        }
        let learned_next = daemon
            .learned
            .as_ref()
            .and_then(|learned| learned.next_expiry(now));
        let wait = mapsync::until_next(&snapshot, learned_next, now);
        // A new answer for a direct name opens its entry at once.
        let learned = async {
            match (&daemon.learned, generation) {
                (Some(learned), Some(generation)) => learned.changed_since(generation).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => return,
            changed = receiver.changed() => if changed.is_err() { return },
            () = learned => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
