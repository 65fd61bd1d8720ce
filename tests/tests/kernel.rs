//! Kernel enforcement tests: real programs on real (test-made) cgroups.
//!
//! Every attempt is made by an enforcer-probe child placed in the test's own
//! cgroup; targets are listeners on loopback or this host's own address,
//! owned by the test process (outside the cgroup). Each deny must come with
//! EPERM and a matching ring-buffer event. These tests need root and fail
//! (never skip) without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use enforcer::kernel::{
    self, AttachOptions, Attachment, CgroupMount, DenyRecord, EndpointSpec, FamilyEnforcement,
    events::{EventReader, boot_now_ns},
    maps::Transport,
    peers::PeerTable,
};
use enforcer_tests::{
    Decoy, HeldListener, PacketWatch, ProbeOutcome, StagedProbe, TestCgroup, enforcer_bin,
    host_address, probe_bin, require_root, unprivileged_user,
};

// === issue 14: unix sockets and ptrace (tests/kernel/{unix_sockets,ptrace}.rs) ===
#[path = "kernel/ptrace.rs"]
mod ptrace;
#[path = "kernel/unix_sockets.rs"]
mod unix_sockets;

// === issue 15: egress mode `redirect` (tests/kernel/transparent.rs) ===
#[path = "kernel/transparent.rs"]
mod transparent;

// === issue 15: the DNS filter (tests/kernel/dns_filter.rs) ===
#[path = "kernel/dns_filter.rs"]
mod dns_filter;

/// A test cgroup with the programs attached through the library API.
/// Fields drop in order: events, attachment, then the cgroup guard (which
/// detaches and removes everything).
struct Enforced {
    events: EventReader,
    attachment: Attachment,
    cgroup: TestCgroup,
}

impl Enforced {
    fn new(label: &str, endpoints: Vec<EndpointSpec>) -> Self {
        require_root();
        let cgroup = TestCgroup::new(label);
        let mount = CgroupMount::find().unwrap();
        let path = mount.resolve(&cgroup.name).unwrap();
        let mut attachment = kernel::attach(
            &path,
            &AttachOptions {
                endpoints,
                debug_log: false,
                ..AttachOptions::default()
            },
        )
        .unwrap();
        let events = attachment.take_events().unwrap();
        Self {
            events,
            attachment,
            cgroup,
        }
    }

    /// Runs a probe inside; asserts EPERM and a matching event.
    fn assert_denied(&mut self, args: &[&str], reason: &str, hook: &str) -> DenyRecord {
        let (outcome, pid) = self.cgroup.probe(args);
        assert!(
            outcome.is_eperm(),
            "{args:?} inside the cgroup: expected EPERM, got {outcome:?}"
        );
        let record = self.wait_event(pid);
        assert_eq!(record.reason, reason, "{args:?}: {record}");
        assert_eq!(record.hook, hook, "{args:?}: {record}");
        assert_eq!(record.cgroup_id, self.cgroup.id(), "{args:?}: {record}");
        record
    }

    /// Asserts that the probe `pid`, run with `args`, got EPERM and left a
    /// matching deny event.
    fn expect_denied(
        &mut self,
        outcome: &ProbeOutcome,
        pid: u32,
        args: &[&str],
        reason: &str,
        hook: &str,
    ) -> DenyRecord {
        assert!(
            outcome.is_eperm(),
            "{args:?} inside the cgroup: expected EPERM, got {outcome:?}"
        );
        let record = self.wait_event(pid);
        assert_eq!(record.reason, reason, "{args:?}: {record}");
        assert_eq!(record.hook, hook, "{args:?}: {record}");
        assert_eq!(record.cgroup_id, self.cgroup.id(), "{args:?}: {record}");
        record
    }

    /// Waits for the deny event of process `pid`.
    fn wait_event(&mut self, pid: u32) -> DenyRecord {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for event in self.events.drain() {
                if event.tgid == pid {
                    return DenyRecord::from_event(&event);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no deny event for pid {pid} within 5 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A TCP listener outside the cgroup (the test process is never in it).
fn outside_listener(addr: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(addr).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn assert_ok(outcome: &ProbeOutcome, what: &str) {
    assert_eq!(*outcome, ProbeOutcome::Ok, "{what}");
}

#[test]
fn tcp_to_other_loopback_address_is_denied() {
    let mut enforced = Enforced::new("tcp4", vec![]);
    let (_listener, addr) = outside_listener("127.0.0.2:0");
    assert_ok(
        &TestCgroup::probe_outside(&["tcp-connect", &addr.to_string()]),
        "outside control",
    );
    let record = enforced.assert_denied(
        &["tcp-connect", &addr.to_string()],
        "loopback_port_not_owned",
        "connect4",
    );
    assert_eq!(record.destination, Some(addr));
    assert_eq!(record.family, "inet");
    assert_eq!(record.comm, "enforcer-probe");
}

#[test]
fn tcp_v6_is_denied() {
    let mut enforced = Enforced::new("tcp6", vec![]);
    let (_listener, addr) = outside_listener("[::1]:0");
    assert_ok(
        &TestCgroup::probe_outside(&["tcp-connect", &addr.to_string()]),
        "outside control",
    );
    let record = enforced.assert_denied(
        &["tcp-connect", &addr.to_string()],
        "loopback_port_not_owned",
        "connect6",
    );
    assert_eq!(record.destination, Some(addr));
    assert_eq!(record.family, "inet6");
}

#[test]
fn v4_mapped_v6_is_judged_as_ipv4() {
    let mut enforced = Enforced::new("mapped", vec![]);
    let (_listener, addr) = outside_listener("127.0.0.2:0");
    let mapped = format!("[::ffff:127.0.0.2]:{}", addr.port());
    assert_ok(
        &TestCgroup::probe_outside(&["tcp-connect", &mapped]),
        "outside control",
    );
    let record = enforced.assert_denied(
        &["tcp-connect", &mapped],
        "loopback_port_not_owned",
        "connect6",
    );
    assert_eq!(
        record.destination,
        Some(addr),
        "shown as the IPv4 address it stands for"
    );
}

#[test]
fn unspecified_and_foreign_loopback_ports_are_denied() {
    let mut enforced = Enforced::new("loopback", vec![]);
    let (_listener, addr) = outside_listener("127.0.0.1:0");
    let port = addr.port();
    assert_ok(
        &TestCgroup::probe_outside(&["tcp-connect", &addr.to_string()]),
        "outside control",
    );
    enforced.assert_denied(
        &["tcp-connect", &addr.to_string()],
        "loopback_port_not_owned",
        "connect4",
    );
    enforced.assert_denied(
        &["tcp-connect", &format!("0.0.0.0:{port}")],
        "loopback_port_not_owned",
        "connect4",
    );
}

#[test]
fn host_own_address_is_denied() {
    let mut enforced = Enforced::new("hostaddr", vec![]);
    let ip = host_address(false).expect(
        "this host has no global IPv4 address to test with (`ip -4 addr show scope global` is empty)",
    );
    let (_listener, addr) = outside_listener("0.0.0.0:0");
    let target = SocketAddr::new(ip, addr.port()).to_string();
    assert_ok(
        &TestCgroup::probe_outside(&["tcp-connect", &target]),
        "outside control",
    );
    enforced.assert_denied(
        &["tcp-connect", &target],
        "destination_not_allowed",
        "connect4",
    );
}

#[test]
fn udp_sendto_and_connected_udp_are_denied() {
    let mut enforced = Enforced::new("udp", vec![]);
    let socket = UdpSocket::bind("127.0.0.2:0").unwrap();
    let target = socket.local_addr().unwrap().to_string();
    assert_ok(
        &TestCgroup::probe_outside(&["udp-sendto", &target]),
        "outside control",
    );
    enforced.assert_denied(
        &["udp-sendto", &target],
        "loopback_port_not_owned",
        "sendmsg4",
    );
    enforced.assert_denied(
        &["udp-connect", &target],
        "loopback_port_not_owned",
        "connect4",
    );
    let socket6 = UdpSocket::bind("[::1]:0").unwrap();
    let target6 = socket6.local_addr().unwrap().to_string();
    enforced.assert_denied(
        &["udp-sendto", &target6],
        "loopback_port_not_owned",
        "sendmsg6",
    );
}

#[test]
fn dns_to_an_outside_resolver_is_denied() {
    let mut enforced = Enforced::new("dns", vec![]);
    let record = enforced.assert_denied(&["dns", "127.0.0.2:53"], "dns_not_enforcer", "sendmsg4");
    assert_eq!(record.destination, Some("127.0.0.2:53".parse().unwrap()));
    enforced.assert_denied(
        &["udp-connect", "127.0.0.2:53"],
        "dns_not_enforcer",
        "connect4",
    );
}

#[test]
fn tcp_fast_open_is_denied() {
    let mut enforced = Enforced::new("tfo", vec![]);
    let (_listener, addr) = outside_listener("127.0.0.2:0");
    assert_ok(
        &TestCgroup::probe_outside(&["tcp-fastopen", &addr.to_string()]),
        "outside control",
    );
    enforced.assert_denied(
        &["tcp-fastopen", &addr.to_string()],
        "loopback_port_not_owned",
        "connect4",
    );
}

#[test]
fn raw_sockets_and_other_inet_protocols_are_denied() {
    let mut enforced = Enforced::new("raw", vec![]);
    // As root the probe holds CAP_NET_RAW: outside, the same sockets open.
    for (probe, reason) in [
        ("raw4", "raw_socket"),
        ("raw6", "raw_socket"),
        ("udplite", "protocol_not_tcp_udp"),
    ] {
        assert_ok(
            &TestCgroup::probe_outside(&[probe]),
            &format!("{probe} outside"),
        );
        enforced.assert_denied(&[probe], reason, "sock_create");
    }
}

#[test]
fn packet_and_vsock_sockets_are_denied_or_reported_unenforced() {
    let mut enforced = Enforced::new("families", vec![]);
    assert_ok(
        &TestCgroup::probe_outside(&["packet"]),
        "packet socket outside",
    );
    match enforced.attachment.families.clone() {
        FamilyEnforcement::Enforced => {
            enforced.assert_denied(&["packet"], "socket_family", "lsm_socket_create");
            enforced.assert_denied(&["vsock"], "socket_family", "lsm_socket_create");
        }
        FamilyEnforcement::NotEnforced { reason } => {
            // The VM's kernel (Debian 6.1) has BPF-LSM: there it must enforce.
            assert!(
                std::env::var_os("ENFORCER_EXPECT_BPF_LSM").is_none(),
                "BPF-LSM was expected to load here but did not: {reason}"
            );
            eprintln!("BPF-LSM not available here ({reason}); checking that status says so");
            let output = Command::new(enforcer_bin())
                .args(["status", "--json"])
                .output()
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            let ours = status["cgroups"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["cgroup_id"] == enforced.cgroup.id())
                .expect("our cgroup in status");
            assert_eq!(ours["families_enforced"], false);
            let missing = ours["families_not_enforced"].to_string();
            assert!(
                missing.contains("vsock") && missing.contains("packet"),
                "{missing}"
            );
            let text = Command::new(enforcer_bin()).arg("status").output().unwrap();
            assert!(
                String::from_utf8_lossy(&text.stdout).contains("socket families: NOT enforced"),
                "{text:?}"
            );
        }
    }
}

#[test]
fn allowed_endpoint_own_server_and_outside_process_are_unaffected() {
    let (endpoint, endpoint_addr) = outside_listener("127.0.0.1:0");
    let enforced = Enforced::new("positive", vec![EndpointSpec::tcp(endpoint_addr)]);
    enforced
        .attachment
        .maps()
        .unwrap()
        .tag_daemon_socket(&endpoint)
        .unwrap();
    let (outcome, _) = enforced
        .cgroup
        .probe(&["tcp-connect", &endpoint_addr.to_string()]);
    assert_ok(&outcome, "connect to an enforcer endpoint");
    let (outcome, _) = enforced.cgroup.probe(&["serve-self", "127.0.0.1:0"]);
    assert_ok(&outcome, "a server the process binds on 127.0.0.1 itself");
    let (outcome, _) = enforced.cgroup.probe(&["serve-self", "[::1]:0"]);
    assert_ok(&outcome, "a server the process binds on ::1 itself");
    let (_other, other_addr) = outside_listener("127.0.0.2:0");
    assert_ok(
        &TestCgroup::probe_outside(&["tcp-connect", &other_addr.to_string()]),
        "a process outside the cgroup is unaffected",
    );
    let counters = enforced.attachment.maps().unwrap().counters().unwrap();
    assert!(counters.allowed >= 3, "{counters:?}");
}

/// An agent's own loopback servers keep working: TCP and UDP, IPv4 and
/// IPv6, with and without `SO_REUSEADDR`, as the unprivileged user.
#[test]
fn own_loopback_servers_work_for_every_transport_and_family() {
    let enforced = Enforced::new("ownsrv", vec![]);
    assert!(
        enforced.cgroup.pin_dir().join("maps/SOCK_TAGS").exists(),
        "the socket-tag map is pinned, so tags outlive a re-attach"
    );
    for kind in ["tcp", "tcp-noreuse", "udp", "udp-reuse"] {
        for addr in [
            "127.0.0.1:0",
            "[::1]:0",
            "127.0.0.5:0",
            "0.0.0.0:0",
            "[::]:0",
        ] {
            let (outcome, _) = enforced.cgroup.probe_as_user(&["own-server", kind, addr]);
            assert_ok(&outcome, &format!("own {kind} server on {addr}"));
        }
    }
    // A server that predates a re-attach (daemon restart) stays reachable:
    // its tag lives in the pinned map the new programs read.
    let held = HeldListener::start(&enforced.cgroup, "127.0.0.1:0");
    let path = CgroupMount::find()
        .unwrap()
        .resolve(&enforced.cgroup.name)
        .unwrap();
    drop(kernel::attach(&path, &AttachOptions::default()).unwrap());
    let (outcome, _) = enforced
        .cgroup
        .probe_as_user(&["tcp-connect", &format!("127.0.0.1:{}", held.port)]);
    assert_ok(&outcome, "own listener after a re-attach");
    held.stop();
}

#[test]
fn port_of_a_released_server_is_forgotten() {
    let mut enforced = Enforced::new("stale", vec![]);
    let held = HeldListener::start(&enforced.cgroup, "127.0.0.1:0");
    let target = format!("127.0.0.1:{}", held.port);
    let (outcome, _) = enforced.cgroup.probe(&["tcp-connect", &target]);
    assert_ok(&outcome, "a listener of the same cgroup is reachable");
    held.stop();
    // Now a process outside binds the same port: no longer the cgroup's.
    let _outside = TcpListener::bind(&target).unwrap();
    assert_ok(
        &TestCgroup::probe_outside(&["tcp-connect", &target]),
        "outside control",
    );
    enforced.assert_denied(
        &["tcp-connect", &target],
        "loopback_port_not_owned",
        "connect4",
    );
}

#[test]
fn direct_entry_expires_in_the_kernel_with_no_enforcer_running() {
    require_root();
    let (_listener, addr) = outside_listener("127.0.0.2:0");
    let cgroup = TestCgroup::new("ttl");
    {
        let path = CgroupMount::find().unwrap().resolve(&cgroup.name).unwrap();
        let attachment = kernel::attach(&path, &AttachOptions::default()).unwrap();
        // Live for an hour: the allowing probe has all the time it needs.
        attachment
            .maps()
            .unwrap()
            .set_direct(addr, Transport::Tcp, boot_now_ns() + 3_600_000_000_000)
            .unwrap();
        // The attachment (and every fd this process had on the object) goes
        // away here: only the pins remain.
    }
    let (outcome, _) = cgroup.probe(&["tcp-connect", &addr.to_string()]);
    assert_ok(&outcome, "a live direct entry allows");
    // Now a short expiry through the pins alone; once the kernel's own
    // clock is past it, the entry (still in the map) no longer allows.
    let pins = enforcer::kernel::paths::PinDirs::for_cgroup(cgroup.id());
    let expires = boot_now_ns() + 200_000_000;
    enforcer::kernel::PinnedMaps::open(&pins)
        .unwrap()
        .set_direct(addr, Transport::Tcp, expires)
        .unwrap();
    while boot_now_ns() <= expires {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (outcome, _) = cgroup.probe(&["tcp-connect", &addr.to_string()]);
    assert!(
        outcome.is_eperm(),
        "after its TTL the entry no longer allows: {outcome:?}"
    );
    assert!(
        enforcer::kernel::PinnedMaps::open(&pins)
            .unwrap()
            .direct_entries()
            .unwrap()
            .iter()
            .any(|entry| entry.addr == addr),
        "the entry is still in the map: its expiry, not its removal, refused"
    );
    let maps = enforcer::kernel::PinnedMaps::open(&enforcer::kernel::paths::PinDirs::for_cgroup(
        cgroup.id(),
    ))
    .unwrap();
    let counters = maps.counters().unwrap();
    let expired = counters
        .denied
        .iter()
        .find(|(r, _)| r == "direct_entry_expired")
        .unwrap()
        .1;
    assert_eq!(expired, 1, "{counters:?}");
}

/// Runs `enforcer attach` for `cgroup` in the background and waits until
/// it answers on its control socket, which it binds only once every
/// program is attached and pinned (a socket left by a killed predecessor
/// refuses connections until then).
/// How long a test waits for `enforcer attach` to serve its control socket.
const ATTACH_DEADLINE: Duration = Duration::from_secs(120);

fn spawn_attach(cgroup: &TestCgroup, state: &std::path::Path) -> Child {
    let socket = state.join("control.sock");
    let mut child = Command::new(enforcer_bin())
        .args(["attach", "--cgroup", &cgroup.name])
        .args([
            "--proxy-listen",
            "127.0.0.1:0",
            "--router-listen",
            "127.0.0.1:0",
        ])
        .arg("--control-socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A deadline, not a timing claim: start-up (with its self-test) under
    // QEMU's TCG on a busy 2-core host has taken over 30 s.
    let deadline = Instant::now() + ATTACH_DEADLINE;
    loop {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return child;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("enforcer attach exited early with {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "enforcer attach did not come up within {} s",
                ATTACH_DEADLINE.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Programs bpftool lists on the cgroup, as (attach type, name).
fn bpftool_programs(cgroup: &TestCgroup) -> Vec<(String, String)> {
    let output = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&cgroup.path)
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((fields.get(1)?.to_string(), fields.last()?.to_string()))
        })
        .collect()
}

#[test]
fn enforcement_survives_sigkill_and_reattach_leaves_one_program_per_hook() {
    require_root();
    let cgroup = TestCgroup::new("persist");
    let (_listener, addr) = outside_listener("127.0.0.2:0");
    let target = addr.to_string();

    let state = tempfile::tempdir().unwrap();
    let mut first = spawn_attach(&cgroup, state.path());
    first.kill().unwrap();
    first.wait().unwrap();
    let (outcome, _) = cgroup.probe(&["tcp-connect", &target]);
    assert!(
        outcome.is_eperm(),
        "still enforced after SIGKILL: {outcome:?}"
    );

    let mut second = spawn_attach(&cgroup, state.path());
    second.kill().unwrap();
    second.wait().unwrap();
    let programs = bpftool_programs(&cgroup);
    let mut hooks: Vec<&str> = programs.iter().map(|(_, name)| name.as_str()).collect();
    hooks.sort_unstable();
    let mut expected = vec![
        "connect4",
        "connect6",
        "getpeername4",
        "getpeername6",
        "recvmsg4",
        "recvmsg6",
        "sendmsg4",
        "sendmsg6",
        "setsockopt",
        "skb_egress",
        "sock_create",
        "sock_peers",
    ];
    if cgroup.pin_dir().join("links/socket_create").exists() {
        // bpftool names an lsm_cgroup attachment after its BTF function.
        expected.push("bpf_lsm_socket_create");
    }
    if cgroup.pin_dir().join("links/ptrace_access_check").exists() {
        expected.push("bpf_lsm_ptrace_access_check");
    }
    expected.sort_unstable();
    assert_eq!(
        hooks, expected,
        "exactly one program per hook after re-attach: {programs:?}"
    );
    let (outcome, _) = cgroup.probe(&["tcp-connect", &target]);
    assert!(
        outcome.is_eperm(),
        "still enforced after re-attach and SIGKILL: {outcome:?}"
    );

    let detach = Command::new(enforcer_bin())
        .args(["detach", "--cgroup", &cgroup.name])
        .output()
        .unwrap();
    assert!(detach.status.success(), "{detach:?}");
    assert!(
        bpftool_programs(&cgroup).is_empty(),
        "detach leaves no program"
    );
    assert!(!cgroup.pin_dir().exists(), "detach removes every pin");
    assert!(cgroup.path.exists(), "detach leaves the cgroup directory");
    let (outcome, _) = cgroup.probe(&["tcp-connect", &target]);
    assert_ok(&outcome, "after detach the cgroup is no longer enforced");
}

#[test]
fn status_shows_counters_and_recent_denies_without_a_daemon() {
    let mut enforced = Enforced::new("status", vec![]);
    let (_listener, addr) = outside_listener("127.0.0.2:0");
    let (outcome, pid) = enforced.cgroup.probe(&["tcp-connect", &addr.to_string()]);
    assert!(outcome.is_eperm());
    enforced.wait_event(pid);
    let output = Command::new(enforcer_bin())
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ours = status["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cgroup_id"] == enforced.cgroup.id())
        .expect("our cgroup in status")
        .clone();
    assert_eq!(ours["cgroup"], enforced.cgroup.name.as_str());
    let denies = ours["recent_denies"].as_array().unwrap();
    assert!(
        denies
            .iter()
            .any(|d| d["tgid"] == pid && d["destination"] == addr.to_string()),
        "{denies:?}"
    );
    let text = String::from_utf8_lossy(
        &Command::new(enforcer_bin())
            .arg("status")
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(text.contains(&format!("pid={pid}")), "{text}");
    assert!(
        text.contains("denied 1 (loopback_port_not_owned 1)"),
        "{text}"
    );
}

#[test]
fn attaching_to_the_root_cgroup_is_refused() {
    require_root();
    let mount = CgroupMount::find().unwrap();
    for name in [".".to_string(), mount.path.display().to_string()] {
        // Bounded: a regression that attached would stay running as a
        // daemon on the root cgroup; it is killed and its pins removed.
        let output = enforcer_tests::output_within_or_unpin_root(
            Command::new(enforcer_bin()).args(["attach", "--cgroup", &name]),
            std::time::Duration::from_secs(30),
        );
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("refusing to attach to the root cgroup"),
            "{stderr}"
        );
    }
}

/// A decoy on 127.0.0.1 of the given transport.
fn loopback_decoy(tcp: bool) -> Decoy {
    if tcp {
        Decoy::tcp(TcpListener::bind("127.0.0.1:0").unwrap())
    } else {
        Decoy::udp(UdpSocket::bind("127.0.0.1:0").unwrap())
    }
}

/// Escape 2 of issue 12: bind `[::]:P` with `IPV6_V6ONLY=1`, then connect
/// `127.0.0.1:P` (TCP or UDP): the IPv6-only wildcard covers no IPv4
/// address, so the connect reaches whatever a process outside the cgroup
/// serves on `127.0.0.1:P` unless ownership is judged by the socket the
/// kernel would deliver to.
#[test]
fn v6only_wildcard_does_not_open_the_ipv4_loopback_port() {
    let mut enforced = Enforced::new("v6only", vec![]);
    for proto in ["tcp", "udp"] {
        let control = loopback_decoy(proto == "tcp");
        let port = control.addr.port().to_string();
        assert_ok(
            &TestCgroup::probe_outside(&["v6only-connect", proto, &port]),
            &format!("{proto} outside control"),
        );
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            control.hits() > 0,
            "{proto}: the control attempt reached its decoy"
        );

        let decoy = loopback_decoy(proto == "tcp");
        let port = decoy.addr.port().to_string();
        let args = ["v6only-connect", proto, &port];
        let (outcome, pid) = enforced.cgroup.probe_as_user(&args);
        decoy.assert_untouched(&format!("{proto} V6ONLY wildcard then 127.0.0.1"));
        let record =
            enforced.expect_denied(&outcome, pid, &args, "loopback_port_not_owned", "connect4");
        assert_eq!(record.destination, Some(decoy.addr));
    }
}

/// Escape 3 of issue 12: bind `127.0.0.1:P` with `SO_REUSEADDR` and never
/// listen; a host service that later binds and listens on P (also
/// `SO_REUSEADDR`) must not become reachable from the cgroup.
#[test]
fn squatting_a_loopback_port_does_not_open_a_later_host_listener() {
    let mut enforced = Enforced::new("squat", vec![]);
    let mut probe = StagedProbe::start(&enforced.cgroup, &["squat-tcp"]);
    let line = probe.read_line();
    let port: u16 = line
        .strip_prefix("bound ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("squat-tcp printed {line:?}"));
    // std's TcpListener binds with SO_REUSEADDR, as a typical host service does.
    let host = TcpListener::bind(("127.0.0.1", port))
        .expect("a host service binds the squatted port with SO_REUSEADDR");
    let decoy = Decoy::tcp(host);
    let pid = probe.pid();
    let outcome = probe.proceed();
    decoy.assert_untouched("connect to a squatted port a host service listens on");
    let record = enforced.expect_denied(
        &outcome,
        pid,
        &["squat-tcp"],
        "loopback_port_not_owned",
        "connect4",
    );
    assert_eq!(record.destination, Some(decoy.addr));
}

/// This host's own address of the family, the routing-header segment / the
/// source-route hop (never another host's).
fn own_hop(v6: bool) -> std::net::IpAddr {
    host_address(v6).unwrap_or_else(|| {
        panic!(
            "this host has no global IPv{} address to use as a segment (set ENFORCER_TEST_HOST_ADDR{})",
            if v6 { 6 } else { 4 },
            if v6 { "6" } else { "" }
        )
    })
}

/// The attack of escape 1 outside the cgroup: it works, and the watcher
/// sees the source-routed packet (so the checks inside can fail).
fn source_route_control(probe: &str, hop: std::net::IpAddr, watch: &PacketWatch) {
    watch.clear();
    assert_ok(
        &TestCgroup::probe_outside(&[probe, &hop.to_string()]),
        &format!("{probe} outside control"),
    );
    assert!(
        watch.source_routed_to(hop) > 0,
        "{probe} outside: a source-routed packet to {hop} went out"
    );
}

/// Escape 1 of issue 12: an IPv6 segment-routing header set with
/// `IPV6_RTHDR` on a UDP socket sending to a `[::1]` port the cgroup owns
/// sends the packet to the segment instead. As an unprivileged user.
#[test]
fn ipv6_routing_header_set_with_setsockopt_is_refused() {
    let mut enforced = Enforced::new("rthdr", vec![]);
    let hop = own_hop(true);
    let watch = PacketWatch::loopback();
    source_route_control("rthdr-sockopt", hop, &watch);
    let args = ["rthdr-sockopt", &hop.to_string()];
    let (outcome, pid) = enforced.cgroup.probe_as_user(&args);
    assert_eq!(
        watch.source_routed_to(hop),
        0,
        "no segment-routed packet leaves the cgroup"
    );
    enforced.expect_denied(&outcome, pid, &args, "source_route", "setsockopt");
}

/// The IPv4 form of escape 1 (as root, as the issue found it): `IP_OPTIONS`
/// with a loose source route.
#[test]
fn ipv4_source_route_option_is_refused() {
    let mut enforced = Enforced::new("lsrr", vec![]);
    let hop = own_hop(false);
    let watch = PacketWatch::loopback();
    source_route_control("lsrr-sockopt", hop, &watch);
    let args = ["lsrr-sockopt", &hop.to_string()];
    let (outcome, pid) = enforced.cgroup.probe(&args);
    assert_eq!(
        watch.source_routed_to(hop),
        0,
        "no LSRR packet leaves the cgroup"
    );
    enforced.expect_denied(&outcome, pid, &args, "source_route", "setsockopt");
}

/// A source route in sendmsg ancillary data never meets a setsockopt
/// check: the packet-level program drops it.
#[test]
fn source_route_in_ancillary_data_is_dropped_at_egress() {
    let mut enforced = Enforced::new("lsrrcmsg", vec![]);
    let hop = own_hop(false);
    let watch = PacketWatch::loopback();
    source_route_control("lsrr-cmsg", hop, &watch);
    let args = ["lsrr-cmsg", &hop.to_string()];
    let (outcome, pid) = enforced.cgroup.probe(&args);
    assert_eq!(
        watch.source_routed_to(hop),
        0,
        "no LSRR packet leaves the cgroup"
    );
    let record = enforced.expect_denied(&outcome, pid, &args, "source_route", "skb_egress");
    assert_eq!(record.destination.map(|d| d.ip()), Some(hop), "{record}");
}

/// The packet-level check stands on its own: with the setsockopt program
/// detached, a routing header that gets set is still dropped on the way out.
#[test]
fn ipv6_routing_header_is_dropped_at_egress_without_the_setsockopt_check() {
    let mut enforced = Enforced::new("rthdrskb", vec![]);
    let link = enforced.cgroup.pin_dir().join("links/setsockopt");
    let detach = Command::new("bpftool")
        .args(["link", "detach", "pinned"])
        .arg(&link)
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(detach.status.success(), "{detach:?}");
    let hop = own_hop(true);
    let watch = PacketWatch::loopback();
    let args = ["rthdr-sockopt", &hop.to_string()];
    let (outcome, pid) = enforced.cgroup.probe_as_user(&args);
    assert_eq!(
        watch.source_routed_to(hop),
        0,
        "no segment-routed packet leaves the cgroup"
    );
    let record = enforced.expect_denied(&outcome, pid, &args, "source_route", "skb_egress");
    assert_eq!(record.destination.map(|d| d.ip()), Some(hop), "{record}");
}

/// Option values larger than a page pass the setsockopt program untouched
/// (it sets optlen = 0; without that, 6.1 fails them with EFAULT).
#[test]
fn socket_option_values_larger_than_a_page_pass_through() {
    let enforced = Enforced::new("bigopt", vec![]);
    assert_ok(
        &TestCgroup::probe_outside(&["big-sockopt"]),
        "outside control",
    );
    let (outcome, _) = enforced.cgroup.probe_as_user(&["big-sockopt"]);
    assert_ok(&outcome, "a 12 KiB SO_SNDBUF value inside the cgroup");
}

/// Escape 4 of issue 12, at the library level: an endpoint whose listener
/// is not the daemon's tagged socket (here an untagged listener of the test,
/// standing for an impostor) is denied.
#[test]
fn endpoint_served_by_an_untagged_listener_is_denied() {
    let impostor = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = impostor.local_addr().unwrap();
    let decoy = Decoy::tcp(impostor);
    let mut enforced = Enforced::new("impostor", vec![EndpointSpec::tcp(addr)]);
    let args = ["tcp-connect", &addr.to_string()];
    let (outcome, pid) = enforced.cgroup.probe_as_user(&args);
    decoy.assert_untouched("an endpoint port served by a socket that is not the daemon's");
    enforced.expect_denied(&outcome, pid, &args, "endpoint_not_owned", "connect4");
}

/// A free loopback TCP port (bound and released at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Escape 4 of issue 12, as a user meets it: kill the daemon of an attached
/// cgroup, bind its router port from another user's process, and a request
/// from inside the cgroup fails with EPERM; the restarted daemon says who
/// holds the port, exits non-zero, and the kernel keeps denying.
#[test]
fn router_port_taken_while_the_daemon_is_down_stays_denied_and_is_reported() {
    require_root();
    let cgroup = TestCgroup::new("hijack");
    let state = tempfile::tempdir().unwrap();
    let (proxy, router) = (free_port(), free_port());
    let daemon = || {
        let mut command = Command::new(enforcer_bin());
        command
            .args(["attach", "--cgroup", &cgroup.name])
            .args(["--proxy-listen", &format!("127.0.0.1:{proxy}")])
            .args(["--router-listen", &format!("127.0.0.1:{router}")])
            .arg("--control-socket")
            .arg(state.path().join("control.sock"))
            .arg("--state-dir")
            .arg(state.path());
        command
    };
    let socket = state.path().join("control.sock");
    let mut first = daemon()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + ATTACH_DEADLINE;
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            first.try_wait().unwrap().is_none(),
            "enforcer attach exited early"
        );
        assert!(Instant::now() < deadline, "enforcer attach did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let target = format!("127.0.0.1:{router}");
    let (outcome, _) = cgroup.probe_as_user(&["tcp-connect", &target]);
    assert_ok(
        &outcome,
        "the router is reachable while the daemon serves it",
    );
    first.kill().unwrap();
    first.wait().unwrap();

    // Another local user takes the router port.
    let mut impostor = Command::new(probe_bin())
        .env("ENFORCER_PROBE_USER", unprivileged_user())
        .args(["listen", &target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(impostor.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("listening "), "impostor printed {line:?}");

    let (outcome, pid) = cgroup.probe_as_user(&["tcp-connect", &target]);
    assert!(
        outcome.is_eperm(),
        "the impostor's router port is denied: {outcome:?}"
    );
    let status = Command::new(enforcer_bin())
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let ours = status["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cgroup_id"] == cgroup.id())
        .expect("our cgroup in status")
        .clone();
    assert!(
        ours["recent_denies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["tgid"] == pid && d["reason"] == "endpoint_not_owned"),
        "{ours}"
    );

    let restarted = daemon().output().unwrap();
    assert!(
        !restarted.status.success(),
        "the daemon must not start on a taken port"
    );
    let stderr = String::from_utf8_lossy(&restarted.stderr);
    assert!(
        stderr.contains(&format!("held by pid {} (enforcer-probe", impostor.id())),
        "the daemon names the holder: {stderr}"
    );
    let (outcome, _) = cgroup.probe_as_user(&["tcp-connect", &target]);
    assert!(
        outcome.is_eperm(),
        "still denied after the failed restart: {outcome:?}"
    );
    drop(impostor.stdin.take());
    let _ = impostor.kill();
    let _ = impostor.wait();
}

// === client attribution (issue 13) ===

/// `UID` of [`unprivileged_user`] (`UID:GID`).
fn unprivileged_uid() -> u32 {
    unprivileged_user()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A child cgroup of `parent` (what `enforcer run` makes for each command);
/// declared after `parent`'s guard it is removed first.
fn child_cgroup(parent: &TestCgroup, name: &str) -> TestCgroup {
    let child = TestCgroup {
        name: format!("{}/{name}", parent.name),
        path: parent.path.join(name),
    };
    std::fs::create_dir(&child.path).unwrap();
    child
}

/// The peer address a held client printed (`connected ADDR`).
fn held_address(probe: &mut StagedProbe) -> SocketAddr {
    let line = probe.read_line();
    line.strip_prefix("connected ")
        .unwrap_or_else(|| panic!("probe said {line:?}"))
        .parse()
        .unwrap()
}

/// The kernel names the process behind a client connection of the cgroup
/// by the client's own address and port — before the server reads a byte —
/// and forgets it once the connection is closed; a client outside the
/// cgroup has no entry. IPv4 and IPv6.
#[test]
fn peers_name_the_connecting_process_and_are_forgotten_on_close() {
    let (listener4, addr4) = outside_listener("127.0.0.1:0");
    let (listener6, addr6) = outside_listener("[::1]:0");
    let enforced = Enforced::new(
        "peers",
        vec![EndpointSpec::tcp(addr4), EndpointSpec::tcp(addr6)],
    );
    let maps = enforced.attachment.maps().unwrap();
    maps.tag_daemon_socket(&listener4).unwrap();
    maps.tag_daemon_socket(&listener6).unwrap();
    let peers = PeerTable::open(&enforced.attachment.pins).unwrap();
    for (listener, addr) in [(&listener4, addr4), (&listener6, addr6)] {
        let mut probe = StagedProbe::start(&enforced.cgroup, &["tcp-hold", &addr.to_string()]);
        let client = held_address(&mut probe);
        let (stream, peer) = listener.accept().unwrap();
        assert_eq!(peer, client, "{addr}");
        let task = peers
            .lookup(peer, Transport::Tcp)
            .unwrap()
            .unwrap_or_else(|| panic!("no PEERS entry for the client at {peer}"));
        assert_eq!(task.pid, probe.pid(), "{addr}: {task:?}");
        assert_eq!(task.comm, "enforcer-probe", "{addr}: {task:?}");
        assert_eq!(task.cgroup_id, enforced.cgroup.id(), "{addr}: {task:?}");
        assert_eq!(task.uid, unprivileged_uid(), "{addr}: {task:?}");
        assert_ok(&probe.proceed(), "the held connection");
        drop(stream);
        let deadline = Instant::now() + Duration::from_secs(5);
        while peers.lookup(peer, Transport::Tcp).unwrap().is_some() {
            assert!(
                Instant::now() < deadline,
                "{addr}: the entry of the closed client {peer} is still there after 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let outside = std::net::TcpStream::connect(addr).unwrap();
        let (_stream, peer) = listener.accept().unwrap();
        assert_eq!(peer, outside.local_addr().unwrap());
        assert_eq!(
            peers.lookup(peer, Transport::Tcp).unwrap(),
            None,
            "{addr}: a client outside the cgroup has no entry"
        );
    }
}

/// `SO_PEERCRED` of a unix-socket connection: (pid, uid).
fn peer_cred(stream: &std::os::unix::net::UnixStream) -> (i32, u32) {
    use std::os::fd::AsRawFd as _;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for the call; the fd is open.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    (cred.pid, cred.uid)
}

/// The daemon's attribution: a client in the enforced cgroup or a cgroup
/// below it (`enforcer run`'s) is enforced and named — pid, uid, comm,
/// cgroup — over TCP and over a unix socket; the same clients outside (as
/// root, as another user) are not.
#[test]
fn attribution_admits_the_cgroup_and_its_children_and_nobody_outside() {
    use enforcer::daemon::attribution::KernelAttribution;
    use proxy::{attribution::ClientAttribution as _, audit::Peer};

    let (listener, addr) = outside_listener("127.0.0.1:0");
    let enforced = Enforced::new("attribution", vec![EndpointSpec::tcp(addr)]);
    enforced
        .attachment
        .maps()
        .unwrap()
        .tag_daemon_socket(&listener)
        .unwrap();
    let child = child_cgroup(&enforced.cgroup, "run-1");
    let mount = CgroupMount::find().unwrap();
    let attribution = KernelAttribution::new(
        PeerTable::open(&enforced.attachment.pins).unwrap(),
        mount.path.clone(),
        enforced.cgroup.name.clone().into(),
        enforced.cgroup.path.clone(),
        enforced.cgroup.id(),
    );
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("proxy.sock");
    let unix = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket_arg = socket.to_str().unwrap();
    // The unix-socket programs (issue 14) deny host sockets: this stand-in
    // for the proxy's unix listener is allowed like an egress.unix entry.
    enforcer::kernel::unix::set_rules(
        &enforced.attachment.pins,
        0,
        &[policy::UnixSocketPattern::parse(socket_arg).unwrap()],
    )
    .unwrap();

    for cgroup in [&enforced.cgroup, &child] {
        // TCP, inside.
        let mut probe = StagedProbe::start(cgroup, &["tcp-hold", &addr.to_string()]);
        let client = held_address(&mut probe);
        let (_stream, peer) = listener.accept().unwrap();
        assert_eq!(peer, client);
        let seen = attribution.attribute(&Peer::Tcp { addr: peer }, Some(addr));
        assert!(seen.enforced, "{}: {seen:?}", cgroup.name);
        assert_eq!(seen.identity.pid, Some(probe.pid()), "{seen:?}");
        assert_eq!(seen.identity.comm.as_deref(), Some("enforcer-probe"));
        assert_eq!(seen.identity.uid, Some(unprivileged_uid()));
        assert_eq!(seen.identity.cgroup_id, Some(cgroup.id()));
        assert_ok(&probe.proceed(), "TCP client inside");
        // Unix socket, inside.
        let mut probe = StagedProbe::start(cgroup, &["unix-hold", socket_arg]);
        assert_eq!(probe.read_line(), "connected");
        let (stream, _) = unix.accept().unwrap();
        let (pid, uid) = peer_cred(&stream);
        let seen = attribution.attribute(
            &Peer::Unix {
                pid: Some(pid),
                uid: Some(uid),
            },
            None,
        );
        assert!(seen.enforced, "unix {}: {seen:?}", cgroup.name);
        assert_eq!(seen.identity.pid, Some(probe.pid()), "{seen:?}");
        assert_eq!(seen.identity.comm.as_deref(), Some("enforcer-probe"));
        assert_eq!(seen.identity.uid, Some(unprivileged_uid()));
        assert_eq!(seen.identity.cgroup_id, Some(cgroup.id()));
        assert_ok(&probe.proceed(), "unix client inside");
    }

    // Outside, as root (this test process) and as the unprivileged user.
    let outside = std::net::TcpStream::connect(addr).unwrap();
    let (_stream, peer) = listener.accept().unwrap();
    assert_eq!(peer, outside.local_addr().unwrap());
    let seen = attribution.attribute(&Peer::Tcp { addr: peer }, Some(addr));
    assert!(!seen.enforced, "root outside: {seen:?}");
    assert!(seen.identity.is_unknown(), "{seen:?}");
    let mut as_user = Command::new(probe_bin())
        .env("ENFORCER_PROBE_USER", unprivileged_user())
        .args(["unix-hold", socket_arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (stream, _) = unix.accept().unwrap();
    let (pid, uid) = peer_cred(&stream);
    let seen = attribution.attribute(
        &Peer::Unix {
            pid: Some(pid),
            uid: Some(uid),
        },
        None,
    );
    assert!(!seen.enforced, "another user outside: {seen:?}");
    assert_eq!(seen.identity.pid, Some(as_user.id()));
    assert_eq!(seen.identity.uid, Some(unprivileged_uid()));
    drop(as_user.stdin.take());
    as_user.wait().unwrap();
    let mut as_user = Command::new(probe_bin())
        .env("ENFORCER_PROBE_USER", unprivileged_user())
        .args(["tcp-hold", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (_stream, peer) = listener.accept().unwrap();
    let seen = attribution.attribute(&Peer::Tcp { addr: peer }, Some(addr));
    assert!(!seen.enforced, "another user outside over TCP: {seen:?}");
    drop(as_user.stdin.take());
    as_user.wait().unwrap();
}

// === judged destinations (issue 12d) ===

/// A server of the test (outside the cgroup) that answers every byte or
/// datagram with one byte: the allowed destination of the judged-destination
/// tests.
struct Echo {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn tcp(addr: &str) -> Self {
        use std::io::{Read as _, Write as _};
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        Self::run(addr, move || match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                std::thread::spawn(move || {
                    let mut byte = [0u8; 1];
                    while matches!(stream.read(&mut byte), Ok(1)) {
                        if stream.write_all(b"a").is_err() {
                            break;
                        }
                    }
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        })
    }

    fn udp(addr: &str) -> Self {
        let socket = UdpSocket::bind(addr).unwrap();
        let addr = socket.local_addr().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        Self::run(addr, move || {
            let mut buf = [0u8; 64];
            if let Ok((_, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(b"a", from);
            }
        })
    }

    fn run(addr: SocketAddr, mut step: impl FnMut() + Send + 'static) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    step();
                }
            })
        };
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Enforced {
    /// Detaches one of this cgroup's programs (its pinned link), as if that
    /// layer were absent; the guard's cleanup still removes the pin.
    fn detach_program(&self, program: &str) {
        let link = self.cgroup.pin_dir().join("links").join(program);
        let detach = Command::new("bpftool")
            .args(["link", "detach", "pinned"])
            .arg(&link)
            .output()
            .expect("bpftool (installed by cargo xtask setup)");
        assert!(detach.status.success(), "{detach:?}");
    }

    fn allow_direct(&self, addr: SocketAddr, transport: Transport) {
        self.attachment
            .maps()
            .unwrap()
            .set_direct(addr, transport, enforcer_ebpf::NEVER_EXPIRES)
            .unwrap();
    }

    fn denied_count(&self, reason: &str) -> u64 {
        let counters = self.attachment.maps().unwrap().counters().unwrap();
        counters
            .denied
            .iter()
            .find(|(name, _)| name == reason)
            .unwrap_or_else(|| panic!("no counter {reason}: {counters:?}"))
            .1
    }
}

/// The judged-destination escape: a socket judged for one destination
/// whose packets go to another. Shown here with the layer that judges
/// that step detached (no kernel tested on lets an unprivileged socket
/// change its destination without a connect/sendmsg program seeing it,
/// beyond the source routes dropped above), so only the packet-level check
/// (`cgroup_skb/egress` comparing each packet with the destination kept
/// in the socket's `JUDGED` storage) stands between the byte and the
/// decoy. As the unprivileged user; IPv4, IPv6, unconnected and
/// connected UDP, TCP.
#[test]
fn packets_to_a_destination_other_than_the_judged_one_are_dropped() {
    let cases: [(&str, &str, &str, bool); 4] = [
        ("udp-sendto", "127.0.0.2:0", "sendmsg4", false),
        ("udp-sendto", "[::1]:0", "sendmsg6", true),
        ("udp-connect", "127.0.0.2:0", "connect4", false),
        ("tcp", "127.0.0.2:0", "connect4", false),
    ];
    for (kind, first, detached, v6) in cases {
        let tcp = kind == "tcp";
        let mut enforced = Enforced::new("judged", vec![]);
        // The judged destination: an allowed UDP server, or for TCP an
        // allowed port nothing listens on (the connect is refused, and the
        // socket may connect again).
        let (first, _echo) = if tcp {
            let port = TcpListener::bind(first)
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            (
                SocketAddr::new(first.parse::<SocketAddr>().unwrap().ip(), port),
                None,
            )
        } else {
            let echo = Echo::udp(first);
            (echo.addr, Some(echo))
        };
        let what = format!("{kind} judged for {first}, {detached} detached");
        let transport = if tcp { Transport::Tcp } else { Transport::Udp };
        enforced.allow_direct(first, transport);
        let decoy_at = if v6 { "[::1]:0" } else { "127.0.0.1:0" };
        let new_decoy = || {
            if tcp {
                Decoy::tcp(TcpListener::bind(decoy_at).unwrap())
            } else {
                Decoy::udp(UdpSocket::bind(decoy_at).unwrap())
            }
        };

        // Control: the same steps outside the cgroup reach a decoy.
        let control = new_decoy();
        let (first_text, control_text) = (first.to_string(), control.addr.to_string());
        let mut probe = Command::new(probe_bin())
            .args(["unjudged", kind, &first_text, &control_text])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            let mut stdin = probe.stdin.take().unwrap();
            stdin.write_all(b"go\n").unwrap();
        }
        let output = probe.wait_with_output().unwrap();
        assert!(
            String::from_utf8_lossy(&output.stdout).ends_with("ok\n"),
            "{what}: outside control: {output:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        assert!(control.hits() > 0, "{what}: the control reached its decoy");

        let decoy = new_decoy();
        let decoy_text = decoy.addr.to_string();
        let args = ["unjudged", kind, &first_text, &decoy_text];
        let mut probe = StagedProbe::start(&enforced.cgroup, &args);
        let judged = probe.read_line();
        let expected = if tcp {
            format!("judged err {}", libc::ECONNREFUSED)
        } else {
            "judged ok".to_owned()
        };
        assert_eq!(
            judged, expected,
            "{what}: the first destination is allowed (TCP: refused at once by the closed port)"
        );
        enforced.detach_program(detached);
        let pid = probe.pid();
        let outcome = probe.proceed();
        decoy.assert_untouched(&what);
        assert!(
            outcome != ProbeOutcome::Ok,
            "{what}: the send to the decoy failed"
        );
        let record = enforced.wait_event(pid);
        assert_eq!(record.reason, "destination_mismatch", "{what}: {record}");
        assert_eq!(record.hook, "skb_egress", "{what}: {record}");
        assert_eq!(record.cgroup_id, enforced.cgroup.id(), "{what}: {record}");
        assert_eq!(record.destination, Some(decoy.addr), "{what}: {record}");
        assert_eq!(record.comm, "enforcer-probe", "{what}: {record}");
        if !tcp {
            assert!(outcome.is_eperm(), "{what}: {outcome:?}");
        }
    }
}

/// What the packet-level check must leave alone: TCP and UDP (unconnected
/// and connected) to allowed destinations, IPv4, IPv6, IPv4-mapped and the
/// unspecified addresses the programs turn into loopback, one byte each way;
/// a refused connect to an allowed closed port is still refused at once.
#[test]
fn packets_to_the_judged_destination_pass() {
    let enforced = Enforced::new("judgedok", vec![]);
    let servers = [
        (Echo::tcp("127.0.0.2:0"), Transport::Tcp),
        (Echo::tcp("[::1]:0"), Transport::Tcp),
        (Echo::tcp("127.0.0.1:0"), Transport::Tcp),
        (Echo::udp("127.0.0.2:0"), Transport::Udp),
        (Echo::udp("[::1]:0"), Transport::Udp),
        (Echo::udp("127.0.0.1:0"), Transport::Udp),
    ];
    for (echo, transport) in &servers {
        enforced.allow_direct(echo.addr, *transport);
    }
    for (echo, transport) in &servers {
        let port = echo.addr.port();
        let mut targets = vec![echo.addr.to_string()];
        match echo.addr.ip().to_string().as_str() {
            "127.0.0.2" => targets.push(format!("[::ffff:127.0.0.2]:{port}")),
            "127.0.0.1" => targets.push(format!("0.0.0.0:{port}")),
            _ => targets.push(format!("[::]:{port}")),
        }
        let kinds: &[&str] = if *transport == Transport::Tcp {
            &["tcp"]
        } else {
            &["udp-sendto", "udp-connect"]
        };
        for target in &targets {
            for kind in kinds {
                let (outcome, _) = enforced.cgroup.probe_as_user(&["exchange", kind, target]);
                assert_ok(&outcome, &format!("{kind} exchange with {target}"));
            }
        }
    }
    let closed = SocketAddr::from(([127, 0, 0, 2], free_port()));
    enforced.allow_direct(closed, Transport::Tcp);
    let (outcome, _) = enforced
        .cgroup
        .probe_as_user(&["tcp-connect", &closed.to_string()]);
    assert!(
        matches!(outcome, ProbeOutcome::Err(errno, _) if errno == libc::ECONNREFUSED),
        "an allowed closed port refuses the connect: {outcome:?}"
    );
    assert_eq!(enforced.denied_count("destination_mismatch"), 0);
}

/// Expiry of a direct entry stops new connects only: a TCP connection
/// made while the entry was live keeps working after it expires, and a new
/// connect to the same destination is denied.
#[test]
fn a_live_connection_outlives_the_expiry_of_its_direct_entry() {
    let mut enforced = Enforced::new("judgedttl", vec![]);
    let echo = Echo::tcp("127.0.0.2:0");
    let expires = boot_now_ns() + 2_000_000_000;
    enforced
        .attachment
        .maps()
        .unwrap()
        .set_direct(echo.addr, Transport::Tcp, expires)
        .unwrap();
    let target = echo.addr.to_string();
    let mut held = StagedProbe::start(&enforced.cgroup, &["hold-tcp", &target]);
    assert_eq!(held.read_line(), "connected", "the connection is made");
    // Wait past the expiry by the kernel's own clock.
    while boot_now_ns() < expires + 100_000_000 {
        std::thread::sleep(Duration::from_millis(50));
    }
    enforced.assert_denied(
        &["tcp-connect", &target],
        "direct_entry_expired",
        "connect4",
    );
    assert_ok(
        &held.proceed(),
        "the live connection still carries bytes both ways",
    );
    assert_eq!(enforced.denied_count("destination_mismatch"), 0);
}
