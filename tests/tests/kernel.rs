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
};
use enforcer_tests::{
    HeldListener, ProbeOutcome, TestCgroup, enforcer_bin, host_address, require_root,
};

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
    let (_endpoint, endpoint_addr) = outside_listener("127.0.0.1:0");
    let enforced = Enforced::new("positive", vec![EndpointSpec::tcp(endpoint_addr)]);
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
    assert!(
        enforced
            .attachment
            .maps()
            .unwrap()
            .local_ports()
            .unwrap()
            .is_empty()
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
    let deadline = Instant::now() + Duration::from_secs(30);
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
            panic!("enforcer attach did not come up within 30 s");
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
        "post_bind4",
        "post_bind6",
        "sendmsg4",
        "sendmsg6",
        "sock_create",
        "sock_release",
    ];
    if cgroup.pin_dir().join("links/socket_create").exists() {
        // bpftool names an lsm_cgroup attachment after its BTF function.
        expected.push("bpf_lsm_socket_create");
        expected.sort_unstable();
    }
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
