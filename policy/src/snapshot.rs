//! An immutable snapshot of the active policy plus runtime grants: what the
//! proxy, the lane router and the map writer read. A new snapshot replaces
//! the old one atomically (see [`crate::PolicyStore`]); users that hold an
//! `Arc<Snapshot>` keep a consistent view until they drop it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use crate::allowlist::{
    AllowRule, Allowlist, AllowlistMatch, DirectRule, Grant, GrantScope, RuleSource,
};
use crate::host::{Host, normalize_host};
use crate::model::Policy;
use crate::signing::KeyId;

/// Where the active policy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A pack whose signature verified.
    Signed {
        /// The key that signed it.
        key_id: KeyId,
        /// File path or URL it was loaded from (`cache:` prefix for the state-dir copy).
        source: String,
        /// SHA-256 of the pack bytes, hex.
        sha256: String,
    },
    /// The embedded fallback pack (Anthropic API only).
    Fallback {
        /// Why no signed pack is active.
        reason: String,
    },
}

/// The active policy, runtime grants and the compiled rules.
#[derive(Debug)]
pub struct Snapshot {
    policy: Arc<Policy>,
    origin: Origin,
    grants: Arc<[Grant]>,
    allowlist: Allowlist,
    direct: Vec<DirectRule>,
    generation: u64,
}

impl Snapshot {
    /// Build a snapshot; `generation` increases with every swap.
    pub fn new(policy: Arc<Policy>, origin: Origin, grants: Arc<[Grant]>, generation: u64) -> Self {
        let allowlist = Allowlist::new(&policy.fronting, &grants);
        let mut direct: Vec<DirectRule> = policy
            .egress
            .direct
            .iter()
            .enumerate()
            .map(|(index, e)| DirectRule {
                target: e.target.clone(),
                source: RuleSource::Pack { index },
                expires_at: e.expires_at,
            })
            .collect();
        for (index, g) in grants.iter().enumerate() {
            if g.scope != GrantScope::Direct {
                continue;
            }
            // Direct grants are exact by construction; skip anything else.
            let host = match &g.pattern.host {
                crate::host::HostPattern::Exact(d) => Host::Domain(d.clone()),
                crate::host::HostPattern::Ip(a) => Host::Ip(crate::host::IpLiteral {
                    addr: *a,
                    zone: None,
                }),
                crate::host::HostPattern::Subdomains(_) => continue,
            };
            direct.push(DirectRule {
                target: crate::host::HostPort {
                    host,
                    port: g.pattern.port,
                },
                source: RuleSource::Grant { index },
                expires_at: Some(g.expires_at()),
            });
        }
        Snapshot {
            policy,
            origin,
            grants,
            allowlist,
            direct,
            generation,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Where it came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Whether this is the embedded fallback.
    pub fn is_fallback(&self) -> bool {
        matches!(self.origin, Origin::Fallback { .. })
    }

    /// Runtime grants in this snapshot.
    pub fn grants(&self) -> &Arc<[Grant]> {
        &self.grants
    }

    /// Swap counter (1 for the first snapshot a store publishes).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When the pack itself expires (`None` for the fallback).
    pub fn expires_at(&self) -> Option<SystemTime> {
        match self.origin {
            Origin::Fallback { .. } => None,
            Origin::Signed { .. } => self.policy.expires_at(),
        }
    }

    /// The allowlist (pack entries and proxy grants).
    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    /// The one allowlist decision for a TLS tunnel to `host:port` (see
    /// [`Allowlist::decide`]).
    pub fn decide(&self, host: &str, port: u16, now: SystemTime) -> AllowlistMatch {
        self.allowlist.decide(host, port, now)
    }

    /// The decision for a plain-HTTP request (see [`Allowlist::decide_plain_http`]).
    pub fn decide_plain_http(&self, host: &str, port: u16, now: SystemTime) -> AllowlistMatch {
        self.allowlist.decide_plain_http(host, port, now)
    }

    /// For the DNS filter: whether `name` may be resolved at `now`, i.e. a
    /// live allowlist rule matches it on any port, or a live direct rule
    /// names it.
    pub fn name_allowed(&self, name: &str, now: SystemTime) -> bool {
        let Ok(host @ Host::Domain(_)) = normalize_host(name) else {
            return false;
        };
        self.allowlist
            .rules()
            .iter()
            .any(|r| r.is_live(now) && r.pattern.host.matches(&host))
            || self
                .direct
                .iter()
                .any(|d| d.is_live(now) && d.target.host == host)
    }

    /// For the DNS filter: whether `host` (normalised) is the host of a
    /// lane provider's `baseURL`. Lanes have no TTL: they live as long as
    /// the pack.
    pub fn is_provider_host(&self, host: &Host) -> bool {
        self.policy
            .providers
            .values()
            .any(|provider| provider.base_url.host() == host)
    }

    /// The TCP ports the kernel redirects to the transparent listener in
    /// egress mode `redirect`: every port a live allowlist rule names,
    /// except 80 unless that rule allows plain HTTP (port 80 carries
    /// plain HTTP, which only `allowPlainHTTP` entries may use).
    pub fn redirect_ports(&self, now: SystemTime) -> BTreeSet<u16> {
        self.allowlist
            .rules()
            .iter()
            .filter(|rule| rule.is_live(now))
            .filter(|rule| rule.pattern.port != 80 || rule.allow_plain_http)
            .map(|rule| rule.pattern.port)
            .collect()
    }

    /// All allowlist rules with their expiry instants.
    pub fn allow_rules(&self) -> &[AllowRule] {
        self.allowlist.rules()
    }

    /// All direct rules (pack `egress.direct` and direct grants) with their
    /// expiry instants, for the map writer.
    pub fn direct_rules(&self) -> &[DirectRule] {
        &self.direct
    }

    /// Direct rules live at `now`.
    pub fn live_direct_rules(&self, now: SystemTime) -> impl Iterator<Item = &DirectRule> {
        self.direct.iter().filter(move |d| d.is_live(now))
    }

    /// The earliest instant after `now` at which anything in this snapshot
    /// expires (an allowlist rule, a direct rule, or the pack itself), so
    /// the daemon can schedule its next map update and reload.
    pub fn next_expiry(&self, now: SystemTime) -> Option<SystemTime> {
        let direct = self
            .direct
            .iter()
            .filter_map(|d| d.expires_at)
            .filter(|t| *t > now)
            .min();
        let pack = self.expires_at().filter(|t| *t > now);
        [self.allowlist.next_expiry(now), direct, pack]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{ValidationMode, parse_pack};

    #[test]
    fn redirect_ports_are_the_live_allowlist_ports_and_80_only_with_plain_http() {
        let json = r#"{"schema":"ccp.policy.v1","version":"1","issuedAt":"2025-01-01T00:00:00Z","ttlSeconds":86400,
            "fronting":{"allowlist":[{"hostport":"a.test"},{"hostport":"b.test:8443"},
            {"hostport":"tls80.test:80"},{"hostport":"short.test:9443","ttl":"PT1H"}]}}"#;
        let policy = parse_pack(json.as_bytes(), ValidationMode::Signed).unwrap();
        let snapshot = Snapshot::new(
            Arc::new(policy),
            Origin::Fallback {
                reason: "unit test".into(),
            },
            Arc::from(Vec::new()),
            1,
        );
        let issued = UNIX_EPOCH + Duration::from_secs(1_735_689_600);
        let at = |seconds| issued + Duration::from_secs(seconds);
        assert_eq!(
            snapshot
                .redirect_ports(at(60))
                .into_iter()
                .collect::<Vec<_>>(),
            [443, 8443, 9443]
        );
        // An expired entry's port is no longer redirected.
        assert_eq!(
            snapshot
                .redirect_ports(at(7200))
                .into_iter()
                .collect::<Vec<_>>(),
            [443, 8443]
        );
        let plain = r#"{"schema":"ccp.policy.v1","version":"1","issuedAt":"2025-01-01T00:00:00Z","ttlSeconds":86400,
            "fronting":{"allowlist":[{"hostport":"plain.test:80","allowPlainHTTP":true}]}}"#;
        let policy = parse_pack(plain.as_bytes(), ValidationMode::Signed).unwrap();
        let snapshot = Snapshot::new(
            Arc::new(policy),
            Origin::Fallback {
                reason: "unit test".into(),
            },
            Arc::from(Vec::new()),
            1,
        );
        assert_eq!(
            snapshot
                .redirect_ports(at(60))
                .into_iter()
                .collect::<Vec<_>>(),
            [80]
        );
    }

    #[test]
    fn provider_hosts_are_the_lanes_base_url_hosts() {
        let json = r#"{"schema":"ccp.policy.v1","version":"1","issuedAt":"2025-01-01T00:00:00Z","ttlSeconds":86400,
            "routing":{"matchers":[{"pattern":"claude-*","lane":"a"}]},
            "providers":{"a":{"baseURL":"https://LLM.Example.test:8443/v1","authHeader":{"mode":"bearer","passthrough":true}}},
            "fronting":{"allowlist":[{"hostport":"a.test"}]}}"#;
        let policy = parse_pack(json.as_bytes(), ValidationMode::Signed).unwrap();
        let snapshot = Snapshot::new(
            Arc::new(policy),
            Origin::Fallback {
                reason: "unit test".into(),
            },
            Arc::from(Vec::new()),
            1,
        );
        let host = |name| normalize_host(name).unwrap();
        assert!(snapshot.is_provider_host(&host("llm.example.test.")));
        assert!(!snapshot.is_provider_host(&host("example.test")));
        assert!(!snapshot.is_provider_host(&host("a.test")));
        let now = UNIX_EPOCH + Duration::from_secs(1_735_689_660);
        assert!(snapshot.name_allowed("a.test", now));
        assert!(
            !snapshot.name_allowed("llm.example.test", now),
            "not on the allowlist"
        );
    }
}
