//! The control socket's wire format: one [`Request`] per line in, one
//! [`Response`] per line out (or, after `events`, one [`StreamItem`] per line).
//!
//! Each command has its own result type ([`StatusResponse`],
//! [`AllowResponse`], [`RevokeResponse`], [`ReloadResponse`], the metrics
//! text). A result travels in the envelope's `result` as a JSON value, so
//! its keys are written in serde_json's map order (sorted): the bytes the
//! wire had before these types existed, pinned by the tests below.

use serde::{Deserialize, Serialize};

use super::Listeners;
use crate::kernel::redirect::Mode;
use crate::{audit::AuditRecord, kernel::maps::Counters};

/// A request to the daemon.
///
/// Commands without arguments are empty struct variants (`Status {}`), not
/// unit variants: serde ignores unknown fields on unit variants of an
/// internally tagged enum, and a misspelt field must be refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// What the daemon enforces.
    Status {},
    /// Open `target` (`HOST[:PORT]`) for `ttl_seconds`.
    Allow {
        /// `HOST[:PORT]`, `*.domain[:PORT]` for the proxy scope.
        target: String,
        /// Lifetime in seconds from now.
        ttl_seconds: u64,
        /// Operator's note.
        reason: Option<String>,
        /// A direct kernel entry instead of a proxy allowlist entry.
        direct: bool,
    },
    /// Remove every grant for `target`.
    Revoke {
        /// As given to `allow`.
        target: String,
    },
    /// Fetch and verify the policy source again.
    Reload {},
    /// Stream audit records as they are stored.
    Events {},
    /// Prometheus text.
    Metrics {},
    /// Run the self-test now; the result is a
    /// [`crate::selftest::SelftestReport`] (a failed run is a result with
    /// `passed: false`, not an error).
    Selftest {
        /// Run the probe under this cgroup (the enforced one or below it;
        /// default: the enforced one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cgroup: Option<String>,
    },
}

/// The daemon's answer (the envelope).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// True on success.
    pub ok: bool,
    /// What went wrong, for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result: one of the per-command result types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Response {
    /// A success carrying `result`.
    pub fn ok(result: &impl Serialize) -> Self {
        match serde_json::to_value(result) {
            Ok(value) => Self {
                ok: true,
                error: None,
                result: Some(value),
            },
            Err(error) => Self::error(format!("the daemon could not encode its answer: {error}")),
        }
    }

    /// A failure.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            result: None,
        }
    }

    /// A success or a failure.
    pub fn from_result<T: Serialize, E: std::fmt::Display>(result: Result<T, E>) -> Self {
        match result {
            Ok(value) => Self::ok(&value),
            Err(error) => Self::error(error.to_string()),
        }
    }
}

// === status ===

/// `status`: what the daemon enforces.
#[derive(Debug, Clone, Serialize)]
pub struct StatusResponse {
    /// The daemon's process id.
    pub pid: u32,
    /// The enforced cgroup, relative to the cgroup v2 mount.
    pub cgroup: String,
    /// Its cgroup id.
    pub cgroup_id: u64,
    /// Where the proxy and the router listen.
    pub listeners: Listeners,
    /// The egress mode the kernel enforces (`proxy-only` or `redirect`).
    pub egress_mode: Mode,
    /// Whether BPF-LSM enforces socket families.
    pub families_enforced: bool,
    /// The active policy.
    pub policy: PolicyStatus,
    /// Live runtime grants.
    pub grants: Vec<GrantStatus>,
    /// Credential variables the policy's lanes use (names only).
    pub credential_names: Vec<String>,
    /// Tunnels open in the proxy.
    pub open_tunnels: usize,
    /// The DNS filter's counters (absent: no filter, `egress.dns = "deny"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<proxy::dns::DnsStatsSnapshot>,
    /// The kernel counters (`null` when the maps cannot be read).
    pub kernel: Option<Counters>,
    /// The state directory (its `audit.db` is where `enforcer run` under
    /// this daemon reads its summary from).
    pub state_dir: String,
}

/// The active policy in [`StatusResponse`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// The pack's version.
    pub version: String,
    /// Bumped on every swap (pack or grants).
    pub generation: u64,
    /// RFC 3339; `null`: never.
    pub expires_at: Option<String>,
    /// Where it came from.
    pub origin: OriginStatus,
}

/// Where the active policy came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OriginStatus {
    /// A pack whose signature verified.
    Signed {
        /// The signing key's id.
        key_id: String,
        /// File path or URL.
        source: String,
        /// SHA-256 of the pack bytes, hex.
        sha256: String,
    },
    /// The embedded fallback.
    Fallback {
        /// Why no signed pack is active.
        why: String,
    },
}

/// One live grant in [`StatusResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantStatus {
    /// `HOST:PORT` pattern.
    pub target: String,
    /// `proxy` or `direct`.
    pub scope: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Operator's note.
    pub reason: Option<String>,
}

// === allow / revoke / reload ===

/// `allow`: the grant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowResponse {
    /// The normalised `HOST:PORT` pattern.
    pub target: String,
    /// `proxy` or `direct`.
    pub scope: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// `revoke`: what was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeResponse {
    /// The normalised `HOST:PORT` pattern.
    pub target: String,
    /// How many grants were removed.
    pub removed: usize,
}

/// `reload`: what the new fetch did (a refused pack is an error instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadResponse {
    /// A new pack is active.
    Applied {
        /// Its version.
        version: String,
    },
    /// The source holds the active pack.
    Unchanged,
    /// No `--policy` was given.
    NoSource {
        /// For the operator.
        note: String,
    },
}

// === events ===

/// The `result` of the answer to `events`, before the stream starts.
pub const STREAMING: &str = "streaming";

/// One line of the `events` stream after the first answer.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum StreamItem {
    /// A stored audit record.
    Record(Box<AuditRecord>),
    /// The client fell behind; this many records were skipped.
    Lagged {
        /// Records skipped.
        lagged: u64,
    },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let request = Request::Allow {
            target: "example.com:443".into(),
            ttl_seconds: 3600,
            reason: Some("ticket 42".into()),
            direct: false,
        };
        let text = serde_json::to_string(&request).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"command":"allow","target":"example.com:443","ttl_seconds":3600,"reason":"ticket 42","direct":false}"#
        );
        let misspelt =
            r#"{"command":"allow","targett":"x","ttl_seconds":1,"reason":null,"direct":false}"#;
        assert!(serde_json::from_str::<Request>(misspelt).is_err());
    }

    #[test]
    fn unit_requests_parse_and_unknown_commands_are_refused() {
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"status"}"#).unwrap(),
            Request::Status {}
        );
        assert_eq!(
            serde_json::to_string(&Request::Reload {}).unwrap(),
            r#"{"command":"reload"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"stat"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"selftest"}"#).unwrap(),
            Request::Selftest { cgroup: None }
        );
        assert_eq!(
            serde_json::to_string(&Request::Selftest {
                cgroup: Some("agents.slice/a".into())
            })
            .unwrap(),
            r#"{"command":"selftest","cgroup":"agents.slice/a"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"selftest","cgrup":"x"}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"command":"status","verbose":true}"#).is_err(),
            "unknown fields are refused on unit commands too"
        );
    }

    /// The exact bytes the daemon sent when these answers were built with `json!`.
    #[test]
    fn response_bytes_are_unchanged() {
        let line = |response: &Response| serde_json::to_string(response).unwrap();
        let status = StatusResponse {
            pid: 7,
            cgroup: "agents.slice".into(),
            cgroup_id: 42,
            listeners: Listeners {
                proxy: "127.0.0.1:3128".parse().unwrap(),
                router: "127.0.0.1:8787".parse().unwrap(),
                transparent: None,
                transparent6: None,
                dns: None,
                dns6: None,
            },
            egress_mode: Mode::ProxyOnly,
            families_enforced: true,
            policy: PolicyStatus {
                version: "2026-11-22.1".into(),
                generation: 3,
                expires_at: None,
                origin: OriginStatus::Signed {
                    key_id: "k1".into(),
                    source: "/etc/enforcer/policy.pack.json".into(),
                    sha256: "ab".into(),
                },
            },
            grants: vec![GrantStatus {
                target: "example.com:443".into(),
                scope: "proxy".into(),
                expires_at: "2026-11-22T10:00:00Z".into(),
                reason: None,
            }],
            credential_names: vec!["ANTHROPIC_API_KEY".into()],
            open_tunnels: 0,
            dns: None,
            kernel: Some(Counters {
                allowed: 5,
                events_lost: 1,
                redirected: 0,
                dns_redirected: 0,
                denied: vec![("not_allowlisted".into(), 2)],
            }),
            state_dir: "/var/lib/enforcer".into(),
        };
        assert_eq!(
            line(&Response::ok(&status)),
            concat!(
                r#"{"ok":true,"result":{"cgroup":"agents.slice","cgroup_id":42,"credential_names":["ANTHROPIC_API_KEY"],"#,
                r#""egress_mode":"proxy-only","families_enforced":true,"grants":[{"expires_at":"2026-11-22T10:00:00Z","reason":null,"scope":"proxy","target":"example.com:443"}],"#,
                r#""kernel":{"allowed":5,"denied":[["not_allowlisted",2]],"dns_redirected":0,"events_lost":1,"redirected":0},"#,
                r#""listeners":{"proxy":"127.0.0.1:3128","router":"127.0.0.1:8787"},"open_tunnels":0,"pid":7,"#,
                r#""policy":{"expires_at":null,"generation":3,"origin":{"key_id":"k1","kind":"signed","sha256":"ab","source":"/etc/enforcer/policy.pack.json"},"version":"2026-11-22.1"},"state_dir":"/var/lib/enforcer"}}"#
            )
        );
        // The same answer as the old handler built it, inline.
        let old = serde_json::json!({
            "pid": 7,
            "cgroup": "agents.slice",
            "cgroup_id": 42,
            "listeners": status.listeners,
            "families_enforced": true,
            "policy": {
                "version": "2026-11-22.1",
                "generation": 3,
                "expires_at": Option::<String>::None,
                "origin": serde_json::json!({
                    "kind": "signed", "key_id": "k1", "source": "/etc/enforcer/policy.pack.json", "sha256": "ab",
                }),
            },
            "grants": [serde_json::json!({
                "target": "example.com:443",
                "scope": "proxy",
                "expires_at": "2026-11-22T10:00:00Z",
                "reason": Option::<String>::None,
            })],
            "credential_names": ["ANTHROPIC_API_KEY"],
            "open_tunnels": 0,
            "kernel": status.kernel,
            // Added with `enforcer run`'s summary (the rest is unchanged).
            "state_dir": "/var/lib/enforcer",
            // Added with egress mode `redirect` (issue 15).
            "egress_mode": "proxy-only",
        });
        assert_eq!(
            line(&Response::ok(&status)),
            serde_json::to_string(&Response {
                ok: true,
                error: None,
                result: Some(old)
            })
            .unwrap()
        );
        let fallback = OriginStatus::Fallback {
            why: "no pack".into(),
        };
        assert_eq!(
            serde_json::to_value(&fallback).unwrap().to_string(),
            r#"{"kind":"fallback","why":"no pack"}"#
        );
        let allow = AllowResponse {
            target: "example.com:443".into(),
            scope: "direct".into(),
            expires_at: "2026-11-22T10:00:00Z".into(),
        };
        assert_eq!(
            line(&Response::ok(&allow)),
            r#"{"ok":true,"result":{"expires_at":"2026-11-22T10:00:00Z","scope":"direct","target":"example.com:443"}}"#
        );
        let revoke = RevokeResponse {
            target: "example.com:443".into(),
            removed: 2,
        };
        assert_eq!(
            line(&Response::ok(&revoke)),
            r#"{"ok":true,"result":{"removed":2,"target":"example.com:443"}}"#
        );
        for (reload, bytes) in [
            (
                ReloadResponse::Applied {
                    version: "2".into(),
                },
                r#"{"ok":true,"result":{"outcome":"applied","version":"2"}}"#,
            ),
            (
                ReloadResponse::Unchanged,
                r#"{"ok":true,"result":{"outcome":"unchanged"}}"#,
            ),
            (
                ReloadResponse::NoSource { note: "n".into() },
                r#"{"ok":true,"result":{"note":"n","outcome":"no_source"}}"#,
            ),
        ] {
            assert_eq!(line(&Response::ok(&reload)), bytes);
        }
        assert_eq!(
            line(&Response::ok(&"text")),
            r#"{"ok":true,"result":"text"}"#
        );
        assert_eq!(
            line(&Response::error("no live grant for x")),
            r#"{"ok":false,"error":"no live grant for x"}"#
        );
        assert_eq!(
            serde_json::to_string(&StreamItem::Lagged { lagged: 3 }).unwrap(),
            r#"{"lagged":3}"#
        );
    }

    #[test]
    fn typed_results_read_back() {
        let value = serde_json::to_value(ReloadResponse::NoSource { note: "n".into() }).unwrap();
        assert_eq!(
            serde_json::from_value::<ReloadResponse>(value).unwrap(),
            ReloadResponse::NoSource { note: "n".into() }
        );
    }
}
