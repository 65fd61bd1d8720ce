//! Fuzzes the DNS filter's input path without sockets: bytes → parse →
//! decide against a fixed policy snapshot → answer bytes. Never panics;
//! whatever is answered echoes the query id, fits the transport's limit,
//! and is itself a response (which the filter would never answer).
#![no_main]

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use policy::{Origin, Snapshot, ValidationMode, parse_pack};
use proxy::dns::wire::{QueryError, Reply, TCP_LIMIT, parse_query, respond};
use proxy::dns::{DnsDecision, decide};
use proxy::net::resolve::Family;

/// Issued 2025-01-01T00:00:00Z; the fuzzer decides a minute later.
const ISSUED: u64 = 1_735_689_600;

static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    let json = r#"{"schema":"ccp.policy.v1","version":"1","issuedAt":"2025-01-01T00:00:00Z","ttlSeconds":86400,
        "routing":{"matchers":[{"pattern":"claude-*","lane":"llm"}]},
        "providers":{"llm":{"baseURL":"https://llm.provider.test/v1","authHeader":{"mode":"bearer","passthrough":true}}},
        "fronting":{"allowlist":[{"hostport":"api.example.test"},{"hostport":"*.cdn.test:8443"}]},
        "egress":{"mode":"redirect","dns":"filtered","loopback":"own-cgroup",
            "direct":[{"hostport":"git.example.test:22"}]}}"#;
    let policy = parse_pack(json.as_bytes(), ValidationMode::Signed).expect("the fuzz pack parses");
    Snapshot::new(
        Arc::new(policy),
        Origin::Fallback {
            reason: "fuzz".into(),
        },
        Arc::from(Vec::new()),
        1,
    )
});

fuzz_target!(|data: &[u8]| {
    let now: SystemTime = UNIX_EPOCH + Duration::from_secs(ISSUED + 60);
    let query = match parse_query(data) {
        Ok(query) => query,
        Err(error) => {
            if let Some(reply) = error.reply() {
                assert!(reply.len() >= 12);
                assert_eq!(reply[..2], data[..2], "the id is echoed");
                assert_eq!(parse_query(&reply), Err(QueryError::IsResponse));
            }
            return;
        }
    };
    let reply = match decide(&query.question, &SNAPSHOT, now) {
        DnsDecision::Resolve { family, .. } => {
            let ip: IpAddr = match family {
                Family::V4 => "93.184.215.14".parse().expect("an IPv4 literal"),
                Family::V6 => "2606:4700::1".parse().expect("an IPv6 literal"),
            };
            Reply::Addresses(vec![(ip, 300); 1 + usize::from(data[0] % 64)])
        }
        DnsDecision::Empty { .. } => Reply::NoData,
        DnsDecision::Refuse { .. } => Reply::Refused,
    };
    for limit in [query.udp_limit(), TCP_LIMIT] {
        // Encoding may fail (hickory refuses the message): the server then
        // sends nothing, which is fine; a success must be well-formed.
        if let Ok(answer) = respond(&query, &reply, limit) {
            assert!(answer.len() <= limit.max(512), "{} > {limit}", answer.len());
            assert_eq!(answer[..2], query.id.to_be_bytes());
            assert_eq!(parse_query(&answer), Err(QueryError::IsResponse));
        }
    }
});
