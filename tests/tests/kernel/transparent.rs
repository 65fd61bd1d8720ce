//! Issue 15, egress mode `redirect`: the kernel rewrites a TCP connect to
//! an allowlisted port to the daemon's transparent listener, which judges
//! the ClientHello's SNI like CONNECT and dials only what the allowed name
//! resolves to.
//!
//! Every test runs `enforcer attach` in mode `redirect` (`--egress-mode
//! redirect`, or the pack's `egress.mode`) on its own cgroup with a signed
//! pack naming `up.test:PORT`, a `--resolve` pin of
//! `up.test:PORT` at a loopback upstream (127.0.0.10) and `--dns-upstream`
//! at a loopback resolver that never answers. The probes connect to
//! 127.0.0.9:PORT (and [::1]:PORT), where decoys of the test listen: a
//! decoy that receives a connection or a byte fails the test.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use enforcer_tests::{Decoy, ProbeOutcome, TestCgroup, enforcer_bin, probe_bin, require_root};

#[path = "../common/daemon.rs"]
pub(super) mod common;
use common::{ModeFrom, Setup, audit_rows, detail};

/// What the upstream answers after a ClientHello.
const UPSTREAM_REPLY: &str = "upstream-saw-client-hello";
/// What the upstream answers after a plain-HTTP request head.
const UPSTREAM_HTTP_REPLY: &str = "upstream-saw-http-request";

/// The loopback upstream standing in for `up.test`: it counts connections
/// and keeps the first bytes of each; a connection that starts with a TLS
/// handshake record gets [`UPSTREAM_REPLY`].
struct Upstream {
    connections: Arc<AtomicU32>,
    first_bytes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Upstream {
    fn start(listener: TcpListener) -> Self {
        let connections = Arc::new(AtomicU32::new(0));
        let first_bytes = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (connections.clone(), first_bytes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).unwrap_or(0);
                seen.lock().unwrap().push(buf[..n].to_vec());
                if n > 0 && buf[0] == 0x16 {
                    let _ = stream.write_all(UPSTREAM_REPLY.as_bytes());
                } else if buf[..n].starts_with(b"GET ") {
                    let _ = stream.write_all(UPSTREAM_HTTP_REPLY.as_bytes());
                }
            }
        });
        Self {
            connections,
            first_bytes,
        }
    }
}

/// A port free on 127.0.0.9, 127.0.0.10 and [::1] alike.
pub(super) fn shared_free_port() -> (TcpListener, TcpListener, TcpListener) {
    for _ in 0..64 {
        let decoy = TcpListener::bind("127.0.0.9:0").unwrap();
        let port = decoy.local_addr().unwrap().port();
        let (Ok(upstream), Ok(decoy6)) = (
            TcpListener::bind(("127.0.0.10", port)),
            TcpListener::bind(("::1", port)),
        ) else {
            continue;
        };
        return (decoy, upstream, decoy6);
    }
    panic!("no port free on 127.0.0.9, 127.0.0.10 and [::1] at once");
}

/// The probe's `tls-hello` report: `(peer, reply)`, or the connect error.
fn tls_hello(
    cgroup: &TestCgroup,
    target: SocketAddr,
    sni: &str,
) -> Result<(String, String), ProbeOutcome> {
    first_exchange(cgroup, "tls-hello", target, sni)
}

/// The probe's `tls-hello` or `http-get` report.
fn first_exchange(
    cgroup: &TestCgroup,
    command: &str,
    target: SocketAddr,
    name: &str,
) -> Result<(String, String), ProbeOutcome> {
    let args = [command, &target.to_string(), name];
    let output = cgroup.command(probe_bin()).args(args).output().unwrap();
    assert!(output.status.success(), "probe {args:?}: {output:?}");
    let outcome = ProbeOutcome::parse(&output.stdout, &args);
    if outcome != ProbeOutcome::Ok {
        return Err(outcome);
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let line = |prefix: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("probe {args:?} printed no {prefix:?} line: {text:?}"))
            .trim()
            .to_owned()
    };
    Ok((line("peer "), line("reply")))
}

/// The proxy's audit rows for the probes' transparent connections (the
/// start-up self-test's direct connect to the listener is left out).
fn transparent_rows(state: &Path, want: usize) -> Vec<serde_json::Value> {
    audit_rows(state, want, |row| {
        row["source"] == "proxy"
            && row["comm"] == "enforcer-probe"
            && detail(row)["kind"] == "transparent"
    })
}

#[test]
fn redirected_connects_reach_only_the_allowlisted_names_upstream() {
    require_root();
    let cgroup = TestCgroup::new("redirect");
    let (decoy, upstream, decoy6) = shared_free_port();
    let port = decoy.local_addr().unwrap().port();
    let decoy = Decoy::tcp(decoy);
    let decoy6 = Decoy::tcp(decoy6);
    let upstream = Upstream::start(upstream);
    let setup = Setup::new("redirect", port, ModeFrom::Flag);
    let daemon = setup.start(&cgroup);
    let status = daemon.try_control(r#"{"command":"status"}"#).unwrap();
    assert_eq!(status["result"]["egress_mode"], "redirect", "{status}");

    // An allowlisted SNI to the decoy's address: the bytes reach up.test's
    // upstream (what the pin names), getpeername still says the decoy.
    let original: SocketAddr = decoy.addr;
    let (peer, reply) = tls_hello(&cgroup, original, "up.test").expect("redirected connect");
    assert_eq!(
        peer,
        original.to_string(),
        "getpeername gives the address asked for"
    );
    assert_eq!(
        reply, UPSTREAM_REPLY,
        "the upstream answered through the tunnel"
    );
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    assert_eq!(
        upstream.first_bytes.lock().unwrap()[0][0],
        0x16,
        "a ClientHello arrived"
    );
    // The same over IPv6: [::1]:PORT is redirected to the IPv6 listener.
    let original6: SocketAddr = decoy6.addr;
    let (peer6, reply6) =
        tls_hello(&cgroup, original6, "up.test").expect("redirected IPv6 connect");
    assert_eq!(peer6, original6.to_string());
    assert_eq!(reply6, UPSTREAM_REPLY);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);

    // A name the allowlist does not have: closed, nothing dialled.
    let (_, refused) = tls_hello(&cgroup, original, "other.test").expect("connect is redirected");
    assert_eq!(refused, "", "a refused name gets no bytes");
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        2,
        "nothing dialled"
    );

    let rows = transparent_rows(&setup.state, 3);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let denied = rows
        .iter()
        .find(|row| row["decision"] == "deny")
        .unwrap_or_else(|| panic!("no denied transparent row: {rows:?}"));
    assert_eq!(denied["reason"], "not_allowlisted", "{denied}");
    assert_eq!(denied["sni"], "other.test", "{denied}");
    assert_eq!(
        detail(denied)["original_destination"],
        original.to_string(),
        "{denied}"
    );
    let allowed: Vec<_> = rows
        .iter()
        .filter(|row| row["decision"] == "allow")
        .collect();
    assert_eq!(allowed.len(), 2, "{rows:?}");
    for row in &allowed {
        assert_eq!(row["sni"], "up.test", "{row}");
        assert_eq!(row["upstream"], format!("127.0.0.10:{port}"), "{row}");
        assert!(row["pid"].is_u64(), "attributed: {row}");
    }
    let status = daemon.try_control(r#"{"command":"status"}"#).unwrap();
    assert_eq!(status["result"]["kernel"]["redirected"], 3, "{status}");
    // `enforcer status` (from the pins) says the same, and as text.
    let output = Command::new(enforcer_bin())
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let pinned: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ours = pinned["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cgroup_id"] == cgroup.id())
        .unwrap_or_else(|| panic!("no status for our cgroup: {pinned}"))
        .clone();
    assert_eq!(ours["egress_mode"], "redirect", "{ours}");
    assert_eq!(ours["counters"]["redirected"], 3, "{ours}");
    assert_eq!(ours["redirect_ports"], serde_json::json!([port]), "{ours}");
    let text = Command::new(enforcer_bin()).arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("ports {port}; redirected 3)")),
        "{text}"
    );

    decoy.assert_untouched("redirected connects");
    decoy6.assert_untouched("redirected IPv6 connects");
    drop(daemon);
}

#[test]
fn what_is_not_redirected_stays_eperm_and_nothing_is_redirected_with_the_daemon_down() {
    require_root();
    let cgroup = TestCgroup::new("redirect-eperm");
    let (decoy, upstream, _decoy6) = shared_free_port();
    let port = decoy.local_addr().unwrap().port();
    let decoy = Decoy::tcp(decoy);
    let _upstream = Upstream::start(upstream);
    // A port no entry names, outside the cgroup.
    let other = Decoy::tcp(TcpListener::bind("127.0.0.9:0").unwrap());
    let udp = Decoy::udp(UdpSocket::bind(("127.0.0.9", port)).unwrap());
    // The pack's egress.mode, no flag.
    let setup = Setup::new("redirect-eperm", port, ModeFrom::Pack);
    let daemon = setup.start(&cgroup);

    let eperm = |args: &[&str], what: &str| {
        let (outcome, _) = cgroup.probe(args);
        assert!(outcome.is_eperm(), "{what}: {args:?} gave {outcome:?}");
    };
    eperm(
        &["tcp-connect", &other.addr.to_string()],
        "TCP to a port no allowlist entry names",
    );
    eperm(
        &["udp-sendto", &udp.addr.to_string()],
        "UDP to an allowlisted port",
    );
    eperm(
        &["udp-connect", &udp.addr.to_string()],
        "connected UDP to an allowlisted port",
    );
    // Redirected while the daemon runs...
    assert!(tls_hello(&cgroup, decoy.addr, "up.test").is_ok());
    // ...and denied once it is gone: its transparent socket no longer
    // listens, so nothing else can receive the cgroup's redirected connects.
    assert!(daemon.stop().success());
    eperm(
        &["tcp-connect", &decoy.addr.to_string()],
        "TCP to an allowlisted port with the daemon down",
    );
    decoy.assert_untouched("redirect target with the daemon down");
    other.assert_untouched("a port no entry names");
    udp.assert_untouched("UDP to an allowlisted port");
}

#[test]
fn redirected_plain_http_is_judged_by_its_host_header_on_the_original_port() {
    require_root();
    let cgroup = TestCgroup::new("redirect-http");
    let (decoy, upstream, _decoy6) = shared_free_port();
    let port = decoy.local_addr().unwrap().port();
    let (tls_decoy, tls_upstream, _tls_decoy6) = shared_free_port();
    let tls_port = tls_decoy.local_addr().unwrap().port();
    let decoy = Decoy::tcp(decoy);
    let tls_decoy = Decoy::tcp(tls_decoy);
    let upstream = Upstream::start(upstream);
    let tls_upstream = Upstream::start(tls_upstream);
    let setup = Setup::with_entries(
        "redirect-http",
        &[
            format!(r#"{{"hostport":"plain.test:{port}","allowPlainHTTP":true}}"#),
            format!(r#"{{"hostport":"up.test:{tls_port}"}}"#),
        ],
        &[
            format!("plain.test:{port}:127.0.0.10"),
            format!("up.test:{tls_port}:127.0.0.10"),
        ],
        ModeFrom::Flag,
    );
    let _daemon = setup.start(&cgroup);

    // Host: plain.test on its allowPlainHTTP port: forwarded to its upstream.
    let (peer, reply) =
        first_exchange(&cgroup, "http-get", decoy.addr, "plain.test").expect("redirected");
    assert_eq!(peer, decoy.addr.to_string());
    assert_eq!(reply, UPSTREAM_HTTP_REPLY);
    let head = String::from_utf8(upstream.first_bytes.lock().unwrap()[0].clone()).unwrap();
    assert!(
        head.starts_with(&format!(
            "GET /probe HTTP/1.1\r\nHost: plain.test:{port}\r\n"
        )),
        "the origin gets an origin-form request for the name: {head:?}"
    );
    // Plain HTTP to an entry without allowPlainHTTP: closed, nothing dialled.
    let (_, refused) =
        first_exchange(&cgroup, "http-get", tls_decoy.addr, "up.test").expect("redirected");
    assert_eq!(refused, "");
    assert_eq!(tls_upstream.connections.load(Ordering::SeqCst), 0);
    let rows = transparent_rows(&setup.state, 2);
    let denied = rows
        .iter()
        .find(|row| row["decision"] == "deny")
        .unwrap_or_else(|| panic!("no denied row: {rows:?}"));
    assert_eq!(denied["reason"], "plain_http_denied", "{denied}");
    assert_eq!(
        detail(denied)["original_destination"],
        tls_decoy.addr.to_string(),
        "{denied}"
    );
    decoy.assert_untouched("redirected plain HTTP");
    tls_decoy.assert_untouched("refused plain HTTP");
}
