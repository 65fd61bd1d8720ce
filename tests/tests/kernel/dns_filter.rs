//! Issue 15, the DNS filter: the cgroup's port-53 traffic (UDP `sendto`,
//! connected UDP, TCP) is rewritten to the daemon's filter, which answers
//! allowed names and refuses the rest with an audit event naming the
//! query; the answer comes from the address the client asked.
//!
//! Decoy UDP and TCP listeners stand on the resolver addresses the probes
//! ask (127.0.0.153:53, [::1]:53): a byte there fails the test. The
//! daemon's `--dns-upstream` is a loopback mock that knows no names, and
//! allowed names are `--resolve` pins, so nothing leaves the machine.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    path::Path,
    process::Command,
};

use enforcer_tests::{Decoy, MockDns, ProbeOutcome, TestCgroup, enforcer_bin, require_root};

use super::transparent::common::{ModeFrom, Setup, Spec, audit_rows, detail};

/// What `enforcer-probe dns-ask` printed.
#[derive(Debug)]
struct DnsReply {
    from: String,
    rcode: u16,
    answers: Vec<(String, u32)>,
}

/// Runs `dns-ask KIND ADDR NAME TYPE` in the cgroup: the reply, or how
/// the socket call failed.
fn dns_ask(
    cgroup: &TestCgroup,
    kind: &str,
    server: SocketAddr,
    name: &str,
    qtype: &str,
) -> Result<DnsReply, ProbeOutcome> {
    let args = ["dns-ask", kind, &server.to_string(), name, qtype];
    let output = cgroup
        .command(enforcer_tests::probe_bin())
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "probe {args:?}: {output:?}");
    let outcome = ProbeOutcome::parse(&output.stdout, &args);
    if outcome != ProbeOutcome::Ok {
        return Err(outcome);
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut reply = DnsReply {
        from: String::new(),
        rcode: u16::MAX,
        answers: Vec::new(),
    };
    for line in text.lines() {
        if let Some(from) = line.strip_prefix("from ") {
            reply.from = from.trim().to_owned();
        } else if let Some(rcode) = line.strip_prefix("rcode ") {
            reply.rcode = rcode.trim().parse().unwrap();
        } else if let Some(answer) = line.strip_prefix("answer ") {
            let (ip, ttl) = answer.trim().split_once(' ').unwrap();
            reply.answers.push((ip.to_owned(), ttl.parse().unwrap()));
        }
    }
    assert_ne!(
        reply.rcode,
        u16::MAX,
        "probe {args:?} printed no rcode: {text}"
    );
    Ok(reply)
}

/// A UDP and a TCP decoy on one address (a resolver a bypass would reach).
fn resolver_decoys(addr: &str) -> (Decoy, Decoy) {
    let udp = UdpSocket::bind(addr).unwrap_or_else(|error| panic!("binding UDP {addr}: {error}"));
    let tcp = TcpListener::bind(addr).unwrap_or_else(|error| panic!("binding TCP {addr}: {error}"));
    (Decoy::udp(udp), Decoy::tcp(tcp))
}

/// The proxy's DNS audit rows.
fn dns_rows(state: &Path, want: usize) -> Vec<serde_json::Value> {
    audit_rows(state, want, |row| {
        row["source"] == "proxy" && detail(row)["kind"] == "dns"
    })
}

#[test]
fn port_53_from_the_cgroup_reaches_only_the_filter_and_only_allowed_names_resolve() {
    require_root();
    let cgroup = TestCgroup::new("dns-filter");
    let (decoy_udp, decoy_tcp) = resolver_decoys("127.0.0.153:53");
    let (decoy6_udp, decoy6_tcp) = resolver_decoys("[::1]:53");
    // The upstream knows no names: an allowed name is answered from its
    // pin, a refused one is never forwarded.
    let upstream = MockDns::start(&[]);
    let mut spec = Spec::new(
        &[r#"{"hostport":"up.test:443"}"#.to_owned()],
        &["up.test:443:127.0.0.10".to_owned()],
        // `egress.dns = "filtered"` works in proxy-only mode too.
        ModeFrom::ProxyOnly,
    );
    spec.dns_upstream = Some(upstream.addr);
    let setup = Setup::build("dns-filter", &spec);
    let daemon = setup.start(&cgroup);
    let resolver: SocketAddr = decoy_udp.addr;

    // The same allowed question over each way a stub resolver asks: the
    // answer is the pin, and it comes from the resolver that was asked.
    for kind in ["udp-sendto", "udp-connect", "tcp"] {
        let reply = dns_ask(&cgroup, kind, resolver, "up.test", "A")
            .unwrap_or_else(|outcome| panic!("{kind}: {outcome:?}"));
        assert_eq!(reply.from, resolver.to_string(), "{kind}: {reply:?}");
        assert_eq!(reply.rcode, 0, "{kind}: {reply:?}");
        assert_eq!(reply.answers.len(), 1, "{kind}: {reply:?}");
        assert_eq!(reply.answers[0].0, "127.0.0.10", "{kind}: {reply:?}");
    }
    // IPv6 resolver address: the IPv6 filter answers, as [::1]:53.
    let resolver6: SocketAddr = decoy6_udp.addr;
    let reply = dns_ask(&cgroup, "udp-sendto", resolver6, "up.test", "A").expect("IPv6 query");
    assert_eq!(reply.from, resolver6.to_string(), "{reply:?}");
    assert_eq!(reply.answers[0].0, "127.0.0.10", "{reply:?}");
    // Another record type of an allowed name: empty NOERROR.
    let reply = dns_ask(&cgroup, "udp-sendto", resolver, "up.test", "TXT").unwrap();
    assert_eq!((reply.rcode, reply.answers.len()), (0, 0), "{reply:?}");
    // A name the policy does not allow: REFUSED (5), audited by name.
    let exfil = "c2VjcmV0.exfil.test";
    let reply = dns_ask(&cgroup, "udp-sendto", resolver, exfil, "A").unwrap();
    assert_eq!(reply.rcode, 5, "{reply:?}");
    assert!(reply.answers.is_empty(), "{reply:?}");
    let reply = dns_ask(&cgroup, "tcp", resolver, exfil, "AAAA").unwrap();
    assert_eq!(reply.rcode, 5, "{reply:?}");

    let rows = dns_rows(&setup.state, 2);
    let refused: Vec<_> = rows
        .iter()
        .filter(|row| row["reason"] == "dns_refused")
        .collect();
    assert_eq!(refused.len(), 2, "{rows:?}");
    for row in &refused {
        assert_eq!(row["decision"], "deny", "{row}");
        assert_eq!(row["host"], exfil.to_lowercase(), "{row}");
        assert_eq!(row["comm"], "enforcer-probe", "the asking process: {row}");
        assert!(row["pid"].is_u64(), "{row}");
        assert_eq!(row["cgroup_id"], cgroup.id(), "{row}");
    }
    assert!(
        upstream.asked().is_empty(),
        "pinned and refused names never reach the upstream: {:?}",
        upstream.asked()
    );
    // The daemon's status counts answers and refusals; the kernel counts
    // what it rewrote.
    let status = daemon.try_control(r#"{"command":"status"}"#).unwrap();
    let dns = &status["result"]["dns"];
    assert_eq!(dns["answered"], 4, "{status}");
    assert_eq!(dns["empty"], 1, "{status}");
    assert_eq!(dns["refused"], 2, "{status}");
    assert!(
        status["result"]["kernel"]["dns_redirected"]
            .as_u64()
            .unwrap()
            >= 7,
        "{status}"
    );
    let text = Command::new(enforcer_bin())
        .arg("status")
        .arg("--control-socket")
        .arg(&daemon.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("DNS: filtered (port 53 rewritten to 127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.contains("DNS filter: answered 4, empty 1, refused 2 (0 not audited one by one)"),
        "`enforcer status` shows the daemon's DNS counts: {text}"
    );

    // With the daemon gone its sockets are gone: port 53 is denied, never
    // delivered to whoever would bind the filter's port next.
    assert!(daemon.stop().success());
    for kind in ["udp-sendto", "udp-connect", "tcp"] {
        let outcome = dns_ask(&cgroup, kind, resolver, "up.test", "A").unwrap_err();
        assert!(
            outcome.is_eperm(),
            "{kind} with the daemon down: {outcome:?}"
        );
    }
    decoy_udp.assert_untouched("UDP DNS");
    decoy_tcp.assert_untouched("TCP DNS");
    decoy6_udp.assert_untouched("IPv6 UDP DNS");
    decoy6_tcp.assert_untouched("IPv6 TCP DNS");
}

#[test]
fn dns_deny_keeps_port_53_denied() {
    require_root();
    let cgroup = TestCgroup::new("dns-deny");
    let (decoy_udp, decoy_tcp) = resolver_decoys("127.0.0.154:53");
    let mut spec = Spec::new(
        &[r#"{"hostport":"up.test:443"}"#.to_owned()],
        &["up.test:443:127.0.0.10".to_owned()],
        ModeFrom::Pack,
    );
    spec.egress = r#""dns":"deny""#.to_owned();
    let setup = Setup::build("dns-deny", &spec);
    let daemon = setup.start(&cgroup);
    for kind in ["udp-sendto", "udp-connect", "tcp"] {
        let outcome = dns_ask(&cgroup, kind, decoy_udp.addr, "up.test", "A").unwrap_err();
        assert!(outcome.is_eperm(), "{kind}: {outcome:?}");
    }
    let status = daemon.try_control(r#"{"command":"status"}"#).unwrap();
    assert!(status["result"]["dns"].is_null(), "no filter: {status}");
    assert!(status["result"]["listeners"]["dns"].is_null(), "{status}");
    decoy_udp.assert_untouched("UDP DNS with dns = deny");
    decoy_tcp.assert_untouched("TCP DNS with dns = deny");
}
