//! The proxy's decisions as pure functions of (request facts, policy
//! snapshot, now), in the order of DESIGN.md §4:
//!
//! 1. [`decide_request`] (before `200`): IP literal (every spelling the
//!    policy crate detects) → not allowlisted / expired → plain HTTP allowed
//!    for that host?
//! 2. [`decide_client_hello`] (after `200`): missing SNI → several names →
//!    ECH unless `fronting.allowECH` → SNI ≠ CONNECT host after normalisation.
//! 3. after resolving, [`crate::net::addr_class::select_addresses`] drops
//!    every DNS answer in a refused class; pinned (`--resolve`) addresses
//!    pass as they are (the dial in [`crate::net::dial`] applies it).
//!
//! Malformed requests and non-TLS bytes are refused by the parsers before
//! these run. Sockets, clocks and resolvers stay in `server`.

use std::time::SystemTime;

use policy::{Fronting, Host, Snapshot, normalize_host};

use crate::client_hello::ClientHelloInfo;
use crate::reason::{Reason, Verdict};
use crate::request::{Authority, Target};

/// The outcome of [`decide_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestDecision {
    /// Refuse before any tunnel exists (`403`, or `400` for an invalid host).
    Deny(Reason),
    /// Answer `200` and go on to the ClientHello.
    Tunnel {
        /// The normalised CONNECT host (a name, or an IP literal when the
        /// policy does not block them).
        host: Host,
        /// The port.
        port: u16,
        /// Why the allowlist allowed it (`allowlisted` or `granted`).
        reason: Reason,
    },
    /// Forward one plain-HTTP request.
    PlainHttp {
        /// The normalised host.
        host: Host,
        /// The port.
        port: u16,
    },
}

/// Step 1: the request target against the allowlist at `now`.
pub fn decide_request(target: &Target, snapshot: &Snapshot, now: SystemTime) -> RequestDecision {
    let authority = target.authority();
    let host_text = authority.host_for_display();
    let plain = matches!(target, Target::AbsoluteHttp { .. });
    let decision = if plain {
        snapshot.decide_plain_http(&host_text, authority.port, now)
    } else {
        snapshot.decide(&host_text, authority.port, now)
    };
    let reason = decision.reason;
    match (decision.allowed, decision.host) {
        (true, Some(host)) if plain => RequestDecision::PlainHttp {
            host,
            port: authority.port,
        },
        (true, Some(host)) => RequestDecision::Tunnel {
            host,
            port: authority.port,
            reason,
        },
        // An allow without a host cannot happen; refuse rather than guess.
        (true, None) => RequestDecision::Deny(Reason::InvalidHost),
        (false, _) => RequestDecision::Deny(reason),
    }
}

/// Step 2: the ClientHello against the CONNECT host and `fronting`.
/// `allow_reason` is step 1's reason, kept on success (or turned into
/// `allowlisted_ech` when an allowed ECH hello passes).
pub fn decide_client_hello(
    connect_host: &Host,
    hello: &ClientHelloInfo,
    fronting: &Fronting,
    allow_reason: Reason,
) -> Verdict {
    if hello.server_names.is_empty() && fronting.require_sni {
        return Verdict::deny(Reason::MissingSni);
    }
    if hello.server_names.len() > 1 {
        return Verdict::deny(Reason::MultipleSni);
    }
    if hello.ech && !fronting.allow_ech {
        return Verdict::deny(Reason::Ech);
    }
    if fronting.require_host_eq_sni
        && let Some(sni) = hello.server_names.first()
    {
        let same = match normalize_host(sni) {
            Ok(sni_host) => matches!(sni_host, Host::Domain(_)) && &sni_host == connect_host,
            Err(_) => false,
        };
        if !same {
            return Verdict::deny(Reason::SniMismatch);
        }
    }
    if hello.ech {
        Verdict::allow(Reason::AllowlistedEch)
    } else {
        Verdict::allow(allow_reason)
    }
}

/// The outcome of [`decide_transparent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransparentDecision {
    /// Close the connection.
    Deny(Reason),
    /// Dial what `host` resolves to on `port`, forward the ClientHello.
    Tunnel {
        /// The normalised SNI.
        host: Host,
        /// The original destination's port.
        port: u16,
        /// Why (`allowlisted`, `granted`, `allowlisted_ech`).
        verdict: Verdict,
    },
}

/// The transparent listener's decision for a redirected connection: its
/// ClientHello's SNI is the host, the original destination's port the
/// port, and the two are judged exactly as `CONNECT <sni>:<port>` followed
/// by that ClientHello would be ([`decide_request`], then
/// [`decide_client_hello`]). The address the client chose plays no part:
/// only what the allowed name resolves to is dialled. The SNI is required
/// whatever `fronting.requireSNI` says: without it there is no name at all.
pub fn decide_transparent(
    original_port: u16,
    hello: &ClientHelloInfo,
    snapshot: &Snapshot,
    now: SystemTime,
) -> TransparentDecision {
    let Some(sni) = hello.server_names.first() else {
        return TransparentDecision::Deny(Reason::MissingSni);
    };
    let target = Target::Connect(Authority {
        host: sni.clone(),
        port: original_port,
        bracketed: false,
    });
    match decide_request(&target, snapshot, now) {
        RequestDecision::Tunnel { host, port, reason } => {
            let verdict = decide_client_hello(&host, hello, &snapshot.policy().fronting, reason);
            if verdict.is_allow() {
                TransparentDecision::Tunnel {
                    host,
                    port,
                    verdict,
                }
            } else {
                TransparentDecision::Deny(verdict.reason)
            }
        }
        RequestDecision::Deny(reason) => TransparentDecision::Deny(reason),
        // A CONNECT target is never plain HTTP; refuse rather than guess.
        RequestDecision::PlainHttp { .. } => TransparentDecision::Deny(Reason::InvalidHost),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::net::addr_class::{AddressClass, LocalAddrs, Refused, select_addresses};
    use crate::net::resolve::{AddrSource, Resolved};
    use crate::request::{HeadScanner, RequestLimits, parse_head};
    use policy::{Origin, ValidationMode, parse_pack};
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    /// 2025-01-01T00:00:00Z
    const ISSUED: u64 = 1_735_689_600;

    fn snapshot(fronting: &str) -> Snapshot {
        let json = format!(
            r#"{{"schema":"ccp.policy.v1","version":"2025-01-01.1","issuedAt":"2025-01-01T00:00:00Z","ttlSeconds":86400,"fronting":{fronting}}}"#
        );
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

    fn default_snapshot() -> Snapshot {
        snapshot(
            r#"{"allowlist":[{"hostport":"api.allowed.test:443"},{"hostport":"*.wild.test:8443"},{"hostport":"plain.test:80","allowPlainHTTP":true},{"hostport":"short.test:443","ttl":"PT1H"}]}"#,
        )
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(ISSUED + 60)
    }

    fn target(head: &str) -> Target {
        let bytes = head.as_bytes();
        let len = HeadScanner::new(RequestLimits::default())
            .scan(bytes)
            .unwrap()
            .unwrap();
        parse_head(&bytes[..len]).unwrap().target
    }

    fn connect(hostport: &str) -> Target {
        target(&format!("CONNECT {hostport} HTTP/1.1\r\n\r\n"))
    }

    fn host(name: &str) -> Host {
        normalize_host(name).unwrap()
    }

    #[test]
    fn allowlisted_connect_tunnels_with_the_normalised_host() {
        let snap = default_snapshot();
        assert_eq!(
            decide_request(&connect("API.Allowed.TEST.:443"), &snap, now()),
            RequestDecision::Tunnel {
                host: host("api.allowed.test"),
                port: 443,
                reason: Reason::Allowlisted
            }
        );
        assert!(matches!(
            decide_request(&connect("a.wild.test:8443"), &snap, now()),
            RequestDecision::Tunnel { .. }
        ));
    }

    #[test]
    fn ip_literals_in_every_spelling_are_refused() {
        let snap = default_snapshot();
        for literal in [
            "127.0.0.3:443",
            "2130706691:443",
            "0x7f.0.0.3:443",
            "127.3:443",
            "0177.0.0.3:443",
            "[::ffff:127.0.0.3]:443",
            "[::1]:443",
        ] {
            assert_eq!(
                decide_request(&connect(literal), &snap, now()),
                RequestDecision::Deny(Reason::IpLiteral),
                "{literal}"
            );
        }
        assert_eq!(
            decide_request(&connect("1.2.3.999:443"), &snap, now()),
            RequestDecision::Deny(Reason::InvalidHost)
        );
    }

    #[test]
    fn not_allowlisted_expired_and_wrong_port_are_refused() {
        let snap = default_snapshot();
        assert_eq!(
            decide_request(&connect("other.test:443"), &snap, now()),
            RequestDecision::Deny(Reason::NotAllowlisted)
        );
        assert_eq!(
            decide_request(&connect("api.allowed.test:8443"), &snap, now()),
            RequestDecision::Deny(Reason::NotAllowlisted)
        );
        // Subdomains only, not the apex.
        assert_eq!(
            decide_request(&connect("wild.test:8443"), &snap, now()),
            RequestDecision::Deny(Reason::NotAllowlisted)
        );
        let later = UNIX_EPOCH + Duration::from_secs(ISSUED + 2 * 3600);
        assert_eq!(
            decide_request(&connect("short.test:443"), &snap, later),
            RequestDecision::Deny(Reason::Expired)
        );
        assert!(matches!(
            decide_request(&connect("short.test:443"), &snap, now()),
            RequestDecision::Tunnel { .. }
        ));
    }

    #[test]
    fn plain_http_needs_the_entry_to_allow_it() {
        let snap = default_snapshot();
        assert_eq!(
            decide_request(
                &target("GET http://plain.test/x HTTP/1.1\r\n\r\n"),
                &snap,
                now()
            ),
            RequestDecision::PlainHttp {
                host: host("plain.test"),
                port: 80
            }
        );
        assert_eq!(
            decide_request(
                &target("GET http://api.allowed.test:443/ HTTP/1.1\r\n\r\n"),
                &snap,
                now()
            ),
            RequestDecision::Deny(Reason::PlainHttpDenied)
        );
        assert_eq!(
            decide_request(
                &target("GET http://nowhere.test/ HTTP/1.1\r\n\r\n"),
                &snap,
                now()
            ),
            RequestDecision::Deny(Reason::NotAllowlisted)
        );
    }

    fn hello(names: &[&str], ech: bool) -> ClientHelloInfo {
        ClientHelloInfo {
            server_names: names.iter().map(|n| n.to_string()).collect(),
            ech,
            ..ClientHelloInfo::default()
        }
    }

    #[test]
    fn client_hello_checks_in_order() {
        let snap = default_snapshot();
        let fronting = &snap.policy().fronting;
        let connect_host = host("api.allowed.test");
        let decide = |h: &ClientHelloInfo| {
            decide_client_hello(&connect_host, h, fronting, Reason::Allowlisted)
        };
        assert_eq!(
            decide(&hello(&["api.allowed.test"], false)),
            Verdict::allow(Reason::Allowlisted)
        );
        // Normalisation: case and trailing dot.
        assert_eq!(
            decide(&hello(&["API.allowed.test."], false)),
            Verdict::allow(Reason::Allowlisted)
        );
        assert_eq!(
            decide(&hello(&[], false)),
            Verdict::deny(Reason::MissingSni)
        );
        assert_eq!(
            decide(&hello(&["api.allowed.test", "x.test"], false)),
            Verdict::deny(Reason::MultipleSni)
        );
        assert_eq!(
            decide(&hello(&["api.allowed.test"], true)),
            Verdict::deny(Reason::Ech)
        );
        assert_eq!(
            decide(&hello(&["other.test"], false)),
            Verdict::deny(Reason::SniMismatch)
        );
        assert_eq!(
            decide(&hello(&["127.0.0.1"], false)),
            Verdict::deny(Reason::SniMismatch)
        );
        assert_eq!(
            decide(&hello(&["bad..name"], false)),
            Verdict::deny(Reason::SniMismatch)
        );
        // Several names win over ECH (order of DESIGN §4).
        assert_eq!(
            decide(&hello(&["a.test", "b.test"], true)),
            Verdict::deny(Reason::MultipleSni)
        );
    }

    #[test]
    fn idna_sni_matches_its_unicode_connect_host() {
        let snap = default_snapshot();
        let connect_host = host("bücher.test");
        assert_eq!(
            decide_client_hello(
                &connect_host,
                &hello(&["xn--bcher-kva.test"], false),
                &snap.policy().fronting,
                Reason::Allowlisted
            ),
            Verdict::allow(Reason::Allowlisted)
        );
    }

    #[test]
    fn fronting_flags_relax_the_checks() {
        let snap = snapshot(
            r#"{"requireSNI":false,"requireHostEqSNI":false,"allowECH":true,"allowlist":[]}"#,
        );
        let fronting = &snap.policy().fronting;
        let connect_host = host("api.allowed.test");
        let decide =
            |h: &ClientHelloInfo| decide_client_hello(&connect_host, h, fronting, Reason::Granted);
        assert_eq!(decide(&hello(&[], false)), Verdict::allow(Reason::Granted));
        assert_eq!(
            decide(&hello(&["other.test"], false)),
            Verdict::allow(Reason::Granted)
        );
        assert_eq!(
            decide(&hello(&["api.allowed.test"], true)),
            Verdict::allow(Reason::AllowlistedEch)
        );
        // Several names stay refused whatever the flags.
        assert_eq!(
            decide(&hello(&["a.test", "b.test"], false)),
            Verdict::deny(Reason::MultipleSni)
        );
    }

    // select_addresses (net::addr_class) as the CONNECT path uses it: step 3.

    fn resolved(addrs: &[&str], source: AddrSource) -> Resolved {
        Resolved {
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            source,
        }
    }

    #[test]
    fn dns_answers_are_class_checked_and_pins_are_not() {
        let snap = default_snapshot();
        let fronting = &snap.policy().fronting;
        let local = LocalAddrs::default();
        assert_eq!(
            select_addresses(&resolved(&["127.0.0.1"], AddrSource::Dns), fronting, &local),
            Err(Refused {
                addr: "127.0.0.1".parse().unwrap(),
                class: AddressClass::Loopback
            })
        );
        assert_eq!(
            select_addresses(
                &resolved(&["169.254.169.254"], AddrSource::Dns),
                fronting,
                &local
            )
            .unwrap_err()
            .class,
            AddressClass::Metadata
        );
        assert_eq!(
            select_addresses(
                &resolved(&["127.0.0.1"], AddrSource::Literal),
                fronting,
                &local
            )
            .unwrap_err()
            .class,
            AddressClass::Loopback
        );
        // Mixed answers: only what passed is dialled.
        assert_eq!(
            select_addresses(
                &resolved(&["127.0.0.1", "93.184.216.34", "10.0.0.1"], AddrSource::Dns),
                fronting,
                &local
            ),
            Ok(vec!["93.184.216.34".parse().unwrap()])
        );
        assert_eq!(
            select_addresses(
                &resolved(&["127.0.0.1", "169.254.169.254"], AddrSource::Pinned),
                fronting,
                &local
            ),
            Ok(vec![
                "127.0.0.1".parse().unwrap(),
                "169.254.169.254".parse().unwrap()
            ])
        );
    }

    #[test]
    fn private_ranges_open_only_what_the_pack_names() {
        let snap = snapshot(r#"{"allowlist":[],"allowPrivateRanges":["10.20.0.0/16"]}"#);
        let fronting = &snap.policy().fronting;
        let local = LocalAddrs::default();
        assert!(
            select_addresses(&resolved(&["10.20.1.1"], AddrSource::Dns), fronting, &local).is_ok()
        );
        assert_eq!(
            select_addresses(&resolved(&["10.21.1.1"], AddrSource::Dns), fronting, &local)
                .unwrap_err()
                .class,
            AddressClass::Private
        );
    }

    #[test]
    fn transparent_judges_the_sni_on_the_original_port() {
        let snap = default_snapshot();
        let decide =
            |port, names: &[&str], ech| decide_transparent(port, &hello(names, ech), &snap, now());
        assert_eq!(
            decide(443, &["API.Allowed.test."], false),
            TransparentDecision::Tunnel {
                host: host("api.allowed.test"),
                port: 443,
                verdict: Verdict::allow(Reason::Allowlisted)
            }
        );
        // The port is the original destination's: the entry names 443 only.
        assert_eq!(
            decide(8443, &["api.allowed.test"], false),
            TransparentDecision::Deny(Reason::NotAllowlisted)
        );
        assert!(matches!(
            decide(8443, &["a.wild.test"], false),
            TransparentDecision::Tunnel { port: 8443, .. }
        ));
        assert_eq!(
            decide(443, &["other.test"], false),
            TransparentDecision::Deny(Reason::NotAllowlisted)
        );
        // No name, an address for a name, several names, ECH.
        assert_eq!(
            decide(443, &[], false),
            TransparentDecision::Deny(Reason::MissingSni)
        );
        assert_eq!(
            decide(443, &["127.0.0.3"], false),
            TransparentDecision::Deny(Reason::IpLiteral)
        );
        assert_eq!(
            decide(443, &["api.allowed.test", "other.test"], false),
            TransparentDecision::Deny(Reason::MultipleSni)
        );
        assert_eq!(
            decide(443, &["api.allowed.test"], true),
            TransparentDecision::Deny(Reason::Ech)
        );
        // Expired entries stay expired.
        let later = UNIX_EPOCH + Duration::from_secs(ISSUED + 2 * 3600);
        assert_eq!(
            decide_transparent(443, &hello(&["short.test"], false), &snap, later),
            TransparentDecision::Deny(Reason::Expired)
        );
    }

    #[test]
    fn transparent_needs_an_sni_even_where_connect_does_not() {
        let snap =
            snapshot(r#"{"allowlist":[{"hostport":"api.allowed.test:443"}],"requireSNI":false}"#);
        assert_eq!(
            decide_transparent(443, &hello(&[], false), &snap, now()),
            TransparentDecision::Deny(Reason::MissingSni)
        );
    }
}
