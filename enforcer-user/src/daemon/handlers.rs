//! The control socket's commands: each takes its request's fields and
//! returns its typed result (see [`super::protocol`]) or a [`ControlError`].

use std::time::{Duration, SystemTime};

use policy::{
    Grant, GrantScope, HostPortPattern, Origin,
    allowlist::GrantError,
    grants::{GrantsFileError, live_grants, save_grants},
};

use super::{
    control::Handler,
    credential_names, paths,
    protocol::{
        AllowResponse, GrantStatus, OriginStatus, PolicyStatus, ReloadResponse, Request, Response,
        RevokeResponse, StatusResponse,
    },
    state::Daemon,
};
use crate::{
    audit::{AuditRecord, Reason},
    kernel::FamilyEnforcement,
    policy_source::RefreshOutcome,
};

/// Why a command was refused. The text is the whole message the operator
/// sees (it crosses the socket as text, so causes are part of it).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// `allow` got a target or TTL that makes no grant.
    #[error("{0}")]
    InvalidGrant(GrantError),
    /// `revoke` got a target that is not `HOST[:PORT]`.
    #[error("{0}")]
    InvalidTarget(policy::HostError),
    /// `revoke` found nothing to remove.
    #[error("no live grant for {target}")]
    NoLiveGrant {
        /// As the operator wrote it.
        target: String,
    },
    /// The grants file could not be written; nothing changed.
    #[error("could not persist the {change}: {error}")]
    Persist {
        /// `grant` or `revocation`.
        change: &'static str,
        /// The cause.
        error: GrantsFileError,
    },
    /// `reload` fetched a pack that was refused.
    #[error("the new pack was refused and the active policy stays: {refusal}")]
    PackRefused {
        /// Why, as the policy store said.
        refusal: String,
    },
    /// `events` is answered by the stream, not by a handler.
    #[error("events are streamed")]
    Streamed,
}

impl Handler for Daemon {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status {} => Response::ok(&self.status()),
            Request::Allow {
                target,
                ttl_seconds,
                reason,
                direct,
            } => Response::from_result(
                self.allow(&target, Duration::from_secs(ttl_seconds), reason, direct)
                    .await,
            ),
            Request::Revoke { target } => Response::from_result(self.revoke(&target).await),
            Request::Reload {} => Response::from_result(self.reload().await),
            Request::Metrics {} => Response::ok(&self.metrics_text()),
            Request::Selftest { cgroup } => {
                Response::from_result(self.selftest.run(cgroup.as_deref()).await)
            }
            Request::Events {} => Response::error(ControlError::Streamed.to_string()),
        }
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<AuditRecord> {
        self.bridge.writer().subscribe()
    }
}

// === impl Daemon: commands ===

impl Daemon {
    /// `status`.
    fn status(&self) -> StatusResponse {
        let snapshot = self.store.current();
        let origin = match snapshot.origin() {
            Origin::Signed {
                key_id,
                source,
                sha256,
            } => OriginStatus::Signed {
                key_id: key_id.to_string(),
                source: source.clone(),
                sha256: sha256.clone(),
            },
            Origin::Fallback { reason } => OriginStatus::Fallback {
                why: reason.clone(),
            },
        };
        let grants = snapshot
            .grants()
            .iter()
            .map(|grant| GrantStatus {
                target: grant.pattern.to_string(),
                scope: grant.scope.as_str().to_owned(),
                expires_at: policy::format_timestamp(grant.expires_at()),
                reason: grant.reason.clone(),
            })
            .collect();
        StatusResponse {
            pid: std::process::id(),
            cgroup: self.cgroup.relative.display().to_string(),
            cgroup_id: self.cgroup_id,
            listeners: self.listeners,
            egress_mode: self.egress_mode,
            families_enforced: self.families == FamilyEnforcement::Enforced,
            policy: PolicyStatus {
                version: snapshot.policy().version.to_string(),
                generation: snapshot.generation(),
                expires_at: snapshot.expires_at().map(policy::format_timestamp),
                origin,
            },
            grants,
            credential_names: credential_names(&snapshot),
            open_tunnels: self.proxy.active_tunnels(),
            dns: self.dns.as_ref().map(proxy::dns::DnsFilter::stats),
            kernel: self.maps.counters().ok(),
            state_dir: self.state_dir.display().to_string(),
        }
    }

    /// `allow`: persist, apply to the proxy and the kernel, then answer.
    async fn allow(
        &self,
        target: &str,
        ttl: Duration,
        reason: Option<String>,
        direct: bool,
    ) -> Result<AllowResponse, ControlError> {
        let _guard = self.grant_lock.lock().await;
        let now = SystemTime::now();
        let scope = if direct {
            GrantScope::Direct
        } else {
            GrantScope::Proxy
        };
        let mut grant = Grant::new(target, scope, now, ttl).map_err(ControlError::InvalidGrant)?;
        grant.reason = reason.clone();
        let mut grants = live_grants(self.store.current().grants(), now);
        grants.retain(|g| !(g.pattern == grant.pattern && g.scope == grant.scope));
        grants.push(grant.clone());
        save_grants(&paths::grants_file(&self.state_dir), &grants).map_err(|error| {
            ControlError::Persist {
                change: "grant",
                error,
            }
        })?;
        let snapshot = self.store.set_grants(grants);
        // The kernel side is in place before the operator hears "allowed".
        self.sync_maps(&snapshot, now).await;
        let expires_at = policy::format_timestamp(grant.expires_at());
        tracing::info!(decision = Reason::Grant.decision().as_str(), reason = Reason::Grant.as_str(), host = %grant.pattern, scope = scope.as_str(), expires_at = %expires_at, "grant added");
        self.bridge.control(
            Reason::Grant,
            Some(grant.pattern.to_string()),
            serde_json::json!({ "scope": scope.as_str(), "expires_at": expires_at, "note": reason }),
        );
        Ok(AllowResponse {
            target: grant.pattern.to_string(),
            scope: scope.as_str().to_owned(),
            expires_at,
        })
    }

    /// `revoke`: remove every live grant for the target, both scopes.
    async fn revoke(&self, target: &str) -> Result<RevokeResponse, ControlError> {
        let _guard = self.grant_lock.lock().await;
        let now = SystemTime::now();
        let pattern = HostPortPattern::parse(target).map_err(ControlError::InvalidTarget)?;
        let mut grants = live_grants(self.store.current().grants(), now);
        let before = grants.len();
        grants.retain(|g| g.pattern != pattern);
        let removed = before - grants.len();
        if removed == 0 {
            return Err(ControlError::NoLiveGrant {
                target: target.to_owned(),
            });
        }
        save_grants(&paths::grants_file(&self.state_dir), &grants).map_err(|error| {
            ControlError::Persist {
                change: "revocation",
                error,
            }
        })?;
        let snapshot = self.store.set_grants(grants);
        self.sync_maps(&snapshot, now).await;
        tracing::info!(decision = Reason::Revoke.decision().as_str(), reason = Reason::Revoke.as_str(), host = %pattern, "grant revoked");
        self.bridge.control(
            Reason::Revoke,
            Some(pattern.to_string()),
            serde_json::json!({ "removed": removed }),
        );
        Ok(RevokeResponse {
            target: pattern.to_string(),
            removed,
        })
    }

    /// `reload`: fetch and verify the source again.
    async fn reload(&self) -> Result<ReloadResponse, ControlError> {
        match self.loader.refresh(SystemTime::now()).await {
            RefreshOutcome::Applied(snapshot) => Ok(ReloadResponse::Applied {
                version: snapshot.policy().version.to_string(),
            }),
            RefreshOutcome::Unchanged => Ok(ReloadResponse::Unchanged),
            RefreshOutcome::NoSource => Ok(ReloadResponse::NoSource {
                note: "no --policy was given; the active policy stays".to_owned(),
            }),
            RefreshOutcome::Refused(refusal) => {
                self.bridge.control(
                    Reason::PolicyRefused,
                    None,
                    serde_json::json!({ "why": refusal.to_string() }),
                );
                Err(ControlError::PackRefused {
                    refusal: refusal.to_string(),
                })
            }
        }
    }
}
