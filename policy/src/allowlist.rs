//! The TTL allowlist: pack entries plus runtime grants, and the one
//! decision function every caller uses.
//!
//! Pack entries live from the pack's `issuedAt` for their TTL (and never
//! past the pack's own expiry); runtime grants (`enforcer allow HOST:PORT
//! --ttl 1h`) live from their grant time. An entry is live while
//! `now < expires_at`; the expiry instants are exposed so the daemon can
//! remove kernel map entries at the same moment the proxy stops allowing.

use std::time::{Duration, SystemTime};

use crate::host::{Host, HostPattern, HostPort, HostPortPattern, normalize_host};
use crate::model::Fronting;
pub use enforcer_ebpf::Reason;

// === impl Grant ===

/// What a runtime grant opens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum GrantScope {
    /// The proxy allowlist (CONNECT / transparent / DNS filter).
    #[default]
    Proxy,
    /// A direct kernel allow entry (exact host or IP, no wildcard).
    Direct,
}

impl GrantScope {
    /// `proxy` or `direct`.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantScope::Proxy => "proxy",
            GrantScope::Direct => "direct",
        }
    }
}

/// Why a grant could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The target does not parse.
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    /// A wildcard for a direct grant.
    #[error("`{target}`: a direct grant needs one exact host or address, not a wildcard")]
    WildcardDirect {
        /// The target as given.
        target: String,
    },
    /// Zero or over-long TTL, or an expiry that overflows.
    #[error("grant for `{target}`: ttl must be between 1 second and 100 years")]
    BadTtl {
        /// The target as given.
        target: String,
    },
}

/// A runtime allow entry made by an operator; lives from `granted_at` for `ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// What is allowed.
    pub pattern: HostPortPattern,
    /// Proxy allowlist or direct kernel entry.
    pub scope: GrantScope,
    /// When the grant was made.
    pub granted_at: SystemTime,
    /// How long it lives.
    pub ttl: Duration,
    /// Also allow plain HTTP (proxy scope only).
    pub allow_plain_http: bool,
    /// Operator's note (`--reason`); never a secret.
    pub reason: Option<String>,
}

impl Grant {
    /// Make a grant for `target` (`host[:port]`, `*.domain[:port]` for the
    /// proxy scope) from `granted_at` for `ttl`.
    pub fn new(
        target: &str,
        scope: GrantScope,
        granted_at: SystemTime,
        ttl: Duration,
    ) -> Result<Grant, GrantError> {
        let pattern = HostPortPattern::parse(target)?;
        if scope == GrantScope::Direct && matches!(pattern.host, HostPattern::Subdomains(_)) {
            return Err(GrantError::WildcardDirect {
                target: target.to_owned(),
            });
        }
        if ttl.is_zero()
            || ttl > crate::duration::MAX_DURATION
            || granted_at.checked_add(ttl).is_none()
        {
            return Err(GrantError::BadTtl {
                target: target.to_owned(),
            });
        }
        Ok(Grant {
            pattern,
            scope,
            granted_at,
            ttl,
            allow_plain_http: false,
            reason: None,
        })
    }

    /// When the grant stops: `granted_at + ttl`.
    pub fn expires_at(&self) -> SystemTime {
        // Checked in `new`; saturate for grants built by hand.
        self.granted_at
            .checked_add(self.ttl)
            .unwrap_or(self.granted_at)
    }

    /// Whether the grant is live at `now`.
    pub fn is_live(&self, now: SystemTime) -> bool {
        now < self.expires_at()
    }
}

// === impl AllowlistMatch ===

/// Where a rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleSource {
    /// `fronting.allowlist[index]` or `egress.direct[index]` of the pack.
    Pack {
        /// Index in the pack's list.
        index: usize,
    },
    /// The runtime grant at this index of the snapshot's grants.
    Grant {
        /// Index in [`crate::Snapshot::grants`].
        index: usize,
    },
}

/// One allowlist rule (pack entry or proxy grant) with its effective expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// The pattern.
    pub pattern: HostPortPattern,
    /// Where it came from.
    pub source: RuleSource,
    /// When it stops; `None`: never (embedded fallback).
    pub expires_at: Option<SystemTime>,
    /// Plain-HTTP requests allowed too.
    pub allow_plain_http: bool,
}

impl AllowRule {
    /// Whether the rule is live at `now`.
    pub fn is_live(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|t| now < t)
    }
}

/// One direct kernel allow entry (pack `egress.direct` or direct grant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectRule {
    /// Destination; the map writer resolves names (honouring `--resolve`).
    pub target: HostPort,
    /// Where it came from.
    pub source: RuleSource,
    /// When it stops; `None`: never.
    pub expires_at: Option<SystemTime>,
}

impl DirectRule {
    /// Whether the rule is live at `now`.
    pub fn is_live(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|t| now < t)
    }
}

/// The result of [`Allowlist::decide`]: the reason (from the one shared
/// vocabulary) and the rule that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowlistMatch {
    /// Allowed or not.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// The normalised host, when it parsed.
    pub host: Option<Host>,
    /// The port asked for.
    pub port: u16,
    /// The rule that decided: the live match for allows, the latest-expired
    /// match for `Expired`, the live match without plain HTTP for
    /// `PlainHttpDenied`.
    pub rule: Option<AllowRule>,
}

impl AllowlistMatch {
    fn deny(reason: Reason, host: Option<Host>, port: u16, rule: Option<AllowRule>) -> Self {
        AllowlistMatch {
            allowed: false,
            reason,
            host,
            port,
            rule,
        }
    }
}

// === impl Allowlist ===

/// Pack entries plus proxy grants, compiled for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    rules: Vec<AllowRule>,
    block_ip_literal: bool,
}

/// Later expiry wins; `None` (never) is the latest.
fn later(a: Option<SystemTime>, b: Option<SystemTime>) -> bool {
    match (a, b) {
        (None, Some(_)) => true,
        (Some(_), None) | (None, None) => false,
        (Some(x), Some(y)) => x > y,
    }
}

impl Allowlist {
    /// Compile the pack's allowlist and the proxy-scope grants.
    pub fn new(fronting: &Fronting, grants: &[Grant]) -> Allowlist {
        let mut rules: Vec<AllowRule> = fronting
            .allowlist
            .iter()
            .enumerate()
            .map(|(index, e)| AllowRule {
                pattern: e.pattern.clone(),
                source: RuleSource::Pack { index },
                expires_at: e.expires_at,
                allow_plain_http: e.allow_plain_http,
            })
            .collect();
        rules.extend(
            grants
                .iter()
                .enumerate()
                .filter(|(_, g)| g.scope == GrantScope::Proxy)
                .map(|(index, g)| AllowRule {
                    pattern: g.pattern.clone(),
                    source: RuleSource::Grant { index },
                    expires_at: Some(g.expires_at()),
                    allow_plain_http: g.allow_plain_http,
                }),
        );
        Allowlist {
            rules,
            block_ip_literal: fronting.block_ip_literal,
        }
    }

    /// All rules, live or not, with their expiry instants.
    pub fn rules(&self) -> &[AllowRule] {
        &self.rules
    }

    /// The decision for a TLS tunnel to `host:port` at `now`: normalise the
    /// host, refuse invalid hosts and (with `blockIPLiteral`) IP literals,
    /// then allow if a live rule matches.
    pub fn decide(&self, host: &str, port: u16, now: SystemTime) -> AllowlistMatch {
        self.decide_inner(host, port, now, false)
    }

    /// As [`Allowlist::decide`], for a plain-HTTP request: the matching live
    /// rule must also have `allowPlainHTTP`.
    pub fn decide_plain_http(&self, host: &str, port: u16, now: SystemTime) -> AllowlistMatch {
        self.decide_inner(host, port, now, true)
    }

    fn decide_inner(&self, host: &str, port: u16, now: SystemTime, plain: bool) -> AllowlistMatch {
        let host = match normalize_host(host) {
            Ok(h) => h,
            Err(_) => return AllowlistMatch::deny(Reason::InvalidHost, None, port, None),
        };
        if self.block_ip_literal && matches!(host, Host::Ip(_)) {
            return AllowlistMatch::deny(Reason::IpLiteral, Some(host), port, None);
        }
        let mut live: Option<&AllowRule> = None;
        let mut live_no_plain: Option<&AllowRule> = None;
        let mut expired: Option<&AllowRule> = None;
        for r in self.rules.iter().filter(|r| r.pattern.matches(&host, port)) {
            let slot = if !r.is_live(now) {
                &mut expired
            } else if plain && !r.allow_plain_http {
                &mut live_no_plain
            } else {
                &mut live
            };
            if slot.is_none_or(|s| later(r.expires_at, s.expires_at)) {
                *slot = Some(r);
            }
        }
        match (live, live_no_plain, expired) {
            (Some(r), _, _) => AllowlistMatch {
                allowed: true,
                reason: match r.source {
                    RuleSource::Pack { .. } => Reason::Allowlisted,
                    RuleSource::Grant { .. } => Reason::Granted,
                },
                host: Some(host),
                port,
                rule: Some(r.clone()),
            },
            (None, Some(r), _) => {
                AllowlistMatch::deny(Reason::PlainHttpDenied, Some(host), port, Some(r.clone()))
            }
            (None, None, Some(r)) => {
                AllowlistMatch::deny(Reason::Expired, Some(host), port, Some(r.clone()))
            }
            (None, None, None) => {
                AllowlistMatch::deny(Reason::NotAllowlisted, Some(host), port, None)
            }
        }
    }

    /// The earliest rule expiry strictly after `now`.
    pub fn next_expiry(&self, now: SystemTime) -> Option<SystemTime> {
        self.rules
            .iter()
            .filter_map(|r| r.expires_at)
            .filter(|t| *t > now)
            .min()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::model::{ValidationMode, parse_pack};
    use std::time::UNIX_EPOCH;

    const DAY: u64 = 86_400;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Pack issued at t=1000 days, lives 30 days.
    fn fronting(entries: &str) -> Fronting {
        let json = format!(
            r#"{{"schema":"ccp.policy.v1","version":"1","issuedAt":"1972-09-27T00:00:00Z",
                "ttlSeconds":{},"fronting":{{"allowlist":[{entries}]}}}}"#,
            30 * DAY
        );
        parse_pack(json.as_bytes(), ValidationMode::Signed)
            .unwrap()
            .fronting
    }

    const T0: u64 = 1000 * DAY; // 1972-09-27

    #[test]
    fn pack_entries_live_from_issued_at() {
        let f = fronting(r#"{"hostport":"api.example.com:443","ttl":"P7D"}"#);
        let a = Allowlist::new(&f, &[]);
        let d = a.decide("API.example.com.", 443, at(T0 + DAY));
        assert!(d.allowed);
        assert_eq!(d.reason, Reason::Allowlisted);
        assert_eq!(d.rule.unwrap().expires_at, Some(at(T0 + 7 * DAY)));
        let d = a.decide("api.example.com", 443, at(T0 + 7 * DAY));
        assert!(!d.allowed);
        assert_eq!(d.reason, Reason::Expired);
        assert_eq!(
            a.decide("api.example.com", 444, at(T0)).reason,
            Reason::NotAllowlisted
        );
        assert_eq!(a.next_expiry(at(T0)), Some(at(T0 + 7 * DAY)));
        assert_eq!(a.next_expiry(at(T0 + 7 * DAY)), None);
    }

    #[test]
    fn entries_never_outlive_the_pack() {
        let f =
            fronting(r#"{"hostport":"a.example.com","ttl":"P90D"},{"hostport":"b.example.com"}"#);
        for r in Allowlist::new(&f, &[]).rules() {
            assert_eq!(r.expires_at, Some(at(T0 + 30 * DAY)));
        }
    }

    #[test]
    fn grants_live_from_grant_time() {
        let f = fronting("");
        let g = Grant::new(
            "*.example.org:8443",
            GrantScope::Proxy,
            at(T0 + 5 * DAY),
            Duration::from_secs(3600),
        )
        .unwrap();
        let a = Allowlist::new(&f, &[g]);
        assert_eq!(
            a.decide("x.example.org", 8443, at(T0)).reason,
            Reason::Granted
        );
        let d = a.decide("x.example.org", 8443, at(T0 + 5 * DAY + 3600));
        assert_eq!(d.reason, Reason::Expired);
        assert_eq!(
            a.decide("example.org", 8443, at(T0)).reason,
            Reason::NotAllowlisted
        );
    }

    #[test]
    fn ip_literals_and_invalid_hosts() {
        let f = fronting(r#"{"hostport":"api.example.com"}"#);
        let a = Allowlist::new(&f, &[]);
        for h in [
            "127.1",
            "0x7f.0.0.1",
            "2130706433",
            "[::ffff:127.0.0.1]",
            "[fe80::1%25eth0]",
        ] {
            assert_eq!(a.decide(h, 443, at(T0)).reason, Reason::IpLiteral, "{h}");
        }
        for h in ["", "a..b", "1.2.3.999", "x y"] {
            assert_eq!(a.decide(h, 443, at(T0)).reason, Reason::InvalidHost, "{h}");
        }
    }

    #[test]
    fn plain_http_needs_the_flag() {
        let f = fronting(
            r#"{"hostport":"deb.example.net:80","allowPlainHTTP":true},{"hostport":"api.example.com:80"}"#,
        );
        let a = Allowlist::new(&f, &[]);
        assert!(a.decide_plain_http("deb.example.net", 80, at(T0)).allowed);
        let d = a.decide_plain_http("api.example.com", 80, at(T0));
        assert_eq!(d.reason, Reason::PlainHttpDenied);
        assert!(a.decide("api.example.com", 80, at(T0)).allowed);
    }

    #[test]
    fn latest_expiry_wins() {
        let f = fronting(
            r#"{"hostport":"a.example.com","ttl":"P1D"},{"hostport":"*.example.com","ttl":"P3D"}"#,
        );
        let a = Allowlist::new(&f, &[]);
        let d = a.decide("a.example.com", 443, at(T0));
        assert_eq!(d.rule.unwrap().source, RuleSource::Pack { index: 1 });
        let d = a.decide("a.example.com", 443, at(T0 + 2 * DAY));
        assert!(d.allowed);
    }

    #[test]
    fn grant_validation() {
        assert!(matches!(
            Grant::new(
                "*.example.com:22",
                GrantScope::Direct,
                at(0),
                Duration::from_secs(1)
            ),
            Err(GrantError::WildcardDirect { .. })
        ));
        assert!(matches!(
            Grant::new("example.com", GrantScope::Proxy, at(0), Duration::ZERO),
            Err(GrantError::BadTtl { .. })
        ));
        assert!(
            Grant::new(
                "exa mple.com",
                GrantScope::Proxy,
                at(0),
                Duration::from_secs(1)
            )
            .is_err()
        );
    }
}
