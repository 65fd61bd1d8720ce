//! The DNS filter's decisions, pure functions of (question, policy
//! snapshot, now) and of (resolved addresses, policy, this host's
//! addresses).
//!
//! [`decide`]: the query name, normalised like every policy host
//! ([`policy::normalize_host`]: lowercase, trailing dot stripped, IDNA),
//! is allowed iff a live allowlist rule or direct entry names it
//! ([`Snapshot::name_allowed`]) or it is a lane provider's `baseURL` host
//! ([`Snapshot::is_provider_host`]). An allowed name's A or AAAA question
//! (class IN) is resolved; its other questions get an empty answer (the
//! filter serves addresses, nothing else); every other name is refused.
//!
//! [`select_answers`]: DNS addresses are answered only if the CONNECT
//! proxy would dial them ([`addr_class::check`]): an allowed name that
//! answers `127.0.0.1` or `169.254.169.254` gets no such record. Pinned
//! addresses are the operator's and pass. TTLs are capped at
//! [`MAX_ANSWER_TTL`].

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use hickory_proto::rr::{DNSClass, RecordType};
use policy::{Fronting, Host, Snapshot, normalize_host};

use crate::net::addr_class::{self, AddressClass, LocalAddrs};
use crate::net::resolve::{AddrSource, Family, TimedResolved};
use crate::reason::{Reason, Verdict};

use super::wire::Question;

/// The longest TTL the filter answers with: 5 minutes. A client keeps an
/// answer at most this long after the policy stopped allowing its name
/// (or the kernel entry learned from it expired), whatever the upstream
/// said.
pub const MAX_ANSWER_TTL: Duration = Duration::from_secs(300);

/// What to do with one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsDecision {
    /// An A or AAAA question (class IN) for an allowed name: resolve it.
    Resolve {
        /// The normalised name.
        host: Host,
        /// Which addresses.
        family: Family,
    },
    /// Another question for an allowed name: NOERROR, no records.
    Empty {
        /// The normalised name.
        host: Host,
    },
    /// A name the policy does not allow (or that is not a domain name at
    /// all): REFUSED.
    Refuse {
        /// Why ([`Reason::DnsRefused`], or [`Reason::ClientNotEnforced`]
        /// when the server refuses the client).
        reason: Reason,
    },
}

impl DnsDecision {
    /// The verdict for audit and logs: allow `dns_answered` for answered
    /// names, deny with the reason otherwise.
    pub fn verdict(&self) -> Verdict {
        match self {
            Self::Resolve { .. } | Self::Empty { .. } => Verdict::allow(Reason::DnsAnswered),
            Self::Refuse { reason } => Verdict::deny(*reason),
        }
    }
}

/// Decides `question` under `snapshot` at `now`.
pub fn decide(question: &Question, snapshot: &Snapshot, now: SystemTime) -> DnsDecision {
    let refuse = DnsDecision::Refuse {
        reason: Reason::DnsRefused,
    };
    let Ok(host @ Host::Domain(_)) = normalize_host(&question.name_text()) else {
        return refuse;
    };
    let allowed = snapshot.is_provider_host(&host) || snapshot.name_allowed(&host.to_string(), now);
    if !allowed {
        return refuse;
    }
    let family = match (question.class, question.record_type) {
        (DNSClass::IN, RecordType::A) => Some(Family::V4),
        (DNSClass::IN, RecordType::AAAA) => Some(Family::V6),
        _ => None,
    };
    match family {
        Some(family) => DnsDecision::Resolve { host, family },
        None => DnsDecision::Empty { host },
    }
}

/// Which resolved addresses may be answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    /// The addresses to answer, in order, with TTLs capped at
    /// [`MAX_ANSWER_TTL`].
    pub answers: Vec<(IpAddr, Duration)>,
    /// The DNS addresses dropped, with their (worst) class.
    pub refused: Vec<(IpAddr, AddressClass)>,
}

/// The addresses of `resolved` the filter answers: pinned ones as they
/// are, DNS answers (and literals) only when they pass the proxy's
/// address-class check under `fronting` (`allowPrivateRanges`) and this
/// host's `local` addresses.
pub fn select_answers(
    resolved: &TimedResolved,
    fronting: &Fronting,
    local: &LocalAddrs,
) -> Selected {
    let mut selected = Selected {
        answers: Vec::new(),
        refused: Vec::new(),
    };
    for &(ip, ttl) in &resolved.addrs {
        let checked = match resolved.source {
            AddrSource::Pinned => Ok(()),
            AddrSource::Dns | AddrSource::Literal => {
                addr_class::check(ip, |ip| fronting.private_address_allowed(ip), local)
            }
        };
        match checked {
            Ok(()) => selected.answers.push((ip, ttl.min(MAX_ANSWER_TTL))),
            Err(class) => selected.refused.push((ip, class)),
        }
    }
    selected
}

/// A TTL in whole seconds for the wire (already capped by
/// [`select_answers`]; saturating all the same).
pub fn ttl_seconds(ttl: Duration) -> u32 {
    u32::try_from(ttl.min(MAX_ANSWER_TTL).as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use hickory_proto::rr::Name;
    use policy::{Origin, ValidationMode, parse_pack};

    use super::*;

    /// Issued 2025-01-01T00:00:00Z.
    const ISSUED: u64 = 1_735_689_600;

    fn snapshot() -> Snapshot {
        let json = r#"{"schema":"ccp.policy.v1","version":"1","issuedAt":"2025-01-01T00:00:00Z","ttlSeconds":86400,
            "routing":{"matchers":[{"pattern":"claude-*","lane":"llm"}]},
            "providers":{"llm":{"baseURL":"https://llm.provider.test/v1","authHeader":{"mode":"bearer","passthrough":true}}},
            "fronting":{"allowlist":[{"hostport":"api.example.test"},{"hostport":"*.cdn.test:8443"},
                {"hostport":"short.test","ttl":"PT1H"}],"allowPrivateRanges":["10.0.0.0/8"]},
            "egress":{"mode":"redirect","dns":"filtered","loopback":"own-cgroup",
                "direct":[{"hostport":"git.example.test:22"}]}}"#;
        let policy = parse_pack(json.as_bytes(), ValidationMode::Signed).unwrap();
        Snapshot::new(
            Arc::new(policy),
            Origin::Fallback {
                reason: "unit test".into(),
            },
            Arc::from(Vec::new()),
            1,
        )
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(ISSUED + seconds)
    }

    fn question(name: &str, record_type: RecordType) -> Question {
        Question {
            name: Name::from_ascii(name).unwrap(),
            record_type,
            class: DNSClass::IN,
        }
    }

    fn host(name: &str) -> Host {
        normalize_host(name).unwrap()
    }

    #[test]
    fn allowed_names_resolve_a_and_aaaa_and_get_empty_answers_otherwise() {
        let s = snapshot();
        let now = at(60);
        assert_eq!(
            decide(&question("API.Example.test.", RecordType::A), &s, now),
            DnsDecision::Resolve {
                host: host("api.example.test"),
                family: Family::V4
            }
        );
        assert_eq!(
            decide(&question("x.cdn.test", RecordType::AAAA), &s, now),
            DnsDecision::Resolve {
                host: host("x.cdn.test"),
                family: Family::V6
            }
        );
        for rtype in [
            RecordType::TXT,
            RecordType::MX,
            RecordType::ANY,
            RecordType::HTTPS,
        ] {
            let decision = decide(&question("api.example.test.", rtype), &s, now);
            assert_eq!(
                decision,
                DnsDecision::Empty {
                    host: host("api.example.test")
                },
                "{rtype}"
            );
            assert_eq!(decision.verdict(), Verdict::allow(Reason::DnsAnswered));
        }
        // Another class of an allowed name: nothing to resolve.
        let mut chaos = question("api.example.test.", RecordType::A);
        chaos.class = DNSClass::CH;
        assert!(matches!(decide(&chaos, &s, now), DnsDecision::Empty { .. }));
    }

    #[test]
    fn direct_entries_and_lane_providers_are_allowed_names() {
        let s = snapshot();
        for name in ["git.example.test.", "LLM.provider.test"] {
            assert!(
                matches!(
                    decide(&question(name, RecordType::A), &s, at(60)),
                    DnsDecision::Resolve { .. }
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn every_other_name_is_refused() {
        let s = snapshot();
        let refused = DnsDecision::Refuse {
            reason: Reason::DnsRefused,
        };
        for name in [
            "evil.test.",
            "example.test.",
            "sub.api.example.test.",
            "cdn.test.",
            "1.2.3.4.",
            "4.3.2.1.in-addr.arpa.",
            ".",
        ] {
            let decision = decide(&question(name, RecordType::A), &s, at(60));
            assert_eq!(decision, refused, "{name}");
            assert_eq!(decision.verdict(), Verdict::deny(Reason::DnsRefused));
        }
        // Expired entries stop allowing their name.
        assert!(matches!(
            decide(&question("short.test", RecordType::A), &s, at(60)),
            DnsDecision::Resolve { .. }
        ));
        assert_eq!(
            decide(&question("short.test", RecordType::A), &s, at(7200)),
            refused
        );
    }

    fn timed(source: AddrSource, addrs: &[(&str, u64)]) -> TimedResolved {
        TimedResolved {
            addrs: addrs
                .iter()
                .map(|(ip, ttl)| (ip.parse().unwrap(), Duration::from_secs(*ttl)))
                .collect(),
            source,
        }
    }

    #[test]
    fn dns_answers_in_refused_classes_are_dropped_and_ttls_capped() {
        let s = snapshot();
        let fronting = &s.policy().fronting;
        let local = LocalAddrs::new(["9.9.9.9".parse().unwrap()]);
        let resolved = timed(
            AddrSource::Dns,
            &[
                ("93.184.215.14", 30),
                ("127.0.0.1", 30),
                ("169.254.169.254", 30),
                ("192.168.1.1", 30),
                ("10.1.2.3", 86_400),
                ("::ffff:127.0.0.1", 30),
                ("9.9.9.9", 30),
                ("2606:4700::1", 600),
            ],
        );
        let selected = select_answers(&resolved, fronting, &local);
        assert_eq!(
            selected.answers,
            vec![
                ("93.184.215.14".parse().unwrap(), Duration::from_secs(30)),
                ("10.1.2.3".parse().unwrap(), MAX_ANSWER_TTL),
                ("2606:4700::1".parse().unwrap(), MAX_ANSWER_TTL),
            ],
            "public, and private inside allowPrivateRanges"
        );
        let refused: Vec<IpAddr> = selected.refused.iter().map(|(ip, _)| *ip).collect();
        assert_eq!(
            refused,
            [
                "127.0.0.1",
                "169.254.169.254",
                "192.168.1.1",
                "::ffff:127.0.0.1",
                "9.9.9.9"
            ]
            .map(|ip| ip.parse::<IpAddr>().unwrap())
        );
        // Pinned addresses are the operator's decision.
        let pinned = timed(AddrSource::Pinned, &[("127.0.0.1", 60)]);
        assert_eq!(
            select_answers(&pinned, fronting, &local).answers,
            vec![("127.0.0.1".parse().unwrap(), Duration::from_secs(60))]
        );
        assert_eq!(ttl_seconds(Duration::from_secs(86_400)), 300);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 1);
    }
}
