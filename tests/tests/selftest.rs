//! The daemon's start-up self-test (issue 19) as a user meets it:
//! `enforcer attach` on a test cgroup becomes ready with the per-attempt
//! results in `status --json`; with one rule broken from outside (a link
//! detached, a map entry allowing a decoy) it refuses, naming the attempt.
//! Every optional layer is checked against what this kernel has: the
//! unix-socket hooks (6.7+) and BPF-LSM (`ENFORCER_EXPECT_BPF_LSM=1` where
//! it must load, as in the VM's Debian 6.1). Needs root; fails without it.
//! Its own test binary so that `cargo xtask test-vm` runs all of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{DAEMON_START_LIMIT, TestCgroup, enforcer_bin, kernel_at_least, require_root};

#[path = "common/daemon.rs"]
mod common;
use common::{Daemon, state_dir};

/// `enforcer status --json` with the daemon's state directory.
fn status_json(state: &Path) -> serde_json::Value {
    let output = Command::new(enforcer_bin())
        .args(["status", "--json", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The verdict of attempt `id` in a self-test report.
fn verdict<'a>(report: &'a serde_json::Value, id: &str) -> &'a str {
    report["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|attempt| attempt["id"] == id)
        .unwrap_or_else(|| panic!("no attempt {id} in {report}"))["verdict"]
        .as_str()
        .unwrap()
}

/// `status --json`'s entry for `cgroup`.
fn cgroup_status(status: &serde_json::Value, cgroup: &TestCgroup) -> serde_json::Value {
    status["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["cgroup_id"] == cgroup.id())
        .unwrap_or_else(|| panic!("cgroup {} not in status: {status:#}", cgroup.name))
        .clone()
}

/// The layer a report names for the cgroup unix-socket programs.
const UNIX_LAYER: &str = "unix hooks";
/// The layer it names for `lsm_cgroup/socket_create`.
const FAMILIES_LAYER: &str = "socket_create (BPF-LSM)";
/// The layer it names for `lsm_cgroup/ptrace_access_check`.
const PTRACE_LAYER: &str = "ptrace_access_check (BPF-LSM)";

/// Checks the report's optional layers against this kernel: an attempt is
/// "not enforced" exactly where its layer is missing here (the unix hooks
/// before 6.7, BPF-LSM where it does not load), never silently absent, and
/// passes where the layer is present. `ours` is the cgroup's `status
/// --json` entry, read from the pins. Returns the expected not-enforced ids.
fn assert_layers_match_this_kernel(
    report: &serde_json::Value,
    ours: &serde_json::Value,
) -> Vec<String> {
    let unix_hooks = kernel_at_least(6, 7);
    let expect_lsm = std::env::var_os("ENFORCER_EXPECT_BPF_LSM").is_some();
    assert_eq!(
        ours["unix_enforced"], unix_hooks,
        "status and the kernel release disagree on the unix hooks: {ours:#}"
    );
    let families = ours["families_enforced"].as_bool().unwrap();
    let ptrace = ours["ptrace_enforced"].as_bool().unwrap();
    if expect_lsm {
        assert!(
            families && ptrace,
            "BPF-LSM was expected to load here (socket_create, ptrace_access_check): {ours:#}"
        );
    }
    let attempts = report["attempts"].as_array().unwrap();
    let ids_of = |layer: &str| -> Vec<&str> {
        attempts
            .iter()
            .filter(|attempt| attempt["layer"] == layer)
            .map(|attempt| attempt["id"].as_str().unwrap())
            .collect()
    };
    assert!(
        ids_of(UNIX_LAYER).contains(&"unix_host_socket"),
        "{report:#}"
    );
    let family_ids = ids_of(FAMILIES_LAYER);
    assert!(
        family_ids.contains(&"packet_socket") && family_ids.contains(&"vsock_socket"),
        "{report:#}"
    );
    let ptrace_ids = ids_of(PTRACE_LAYER);
    assert!(
        ptrace_ids.contains(&"process_vm_read_outside")
            && ptrace_ids.contains(&"ptrace_attach_outside"),
        "{report:#}"
    );
    let mut expected = Vec::new();
    for attempt in attempts {
        let id = attempt["id"].as_str().unwrap();
        let layer = attempt["layer"].as_str();
        let verdict = attempt["verdict"].as_str().unwrap();
        // Some(present) for a layer whose presence is known here; None for
        // another BPF-LSM layer on a host that need not have BPF-LSM.
        let present = match layer {
            Some(UNIX_LAYER) => Some(unix_hooks),
            Some(FAMILIES_LAYER) => Some(families),
            Some(PTRACE_LAYER) => Some(ptrace),
            Some(other) if other.ends_with("(BPF-LSM)") => expect_lsm.then_some(true),
            // The core programs and the paths that must work are always there.
            _ => Some(true),
        };
        match present {
            Some(false) => {
                assert_eq!(verdict, "not_enforced", "{id} ({layer:?}): {report:#}");
                expected.push(id.to_owned());
            }
            Some(true) if layer.is_some_and(|l| l == UNIX_LAYER || l.ends_with("(BPF-LSM)")) => {
                assert_eq!(
                    verdict, "passed",
                    "{id} ({layer:?}) is claimed here: {report:#}"
                );
            }
            Some(true) => assert_ne!(
                verdict, "not_enforced",
                "{id} ({layer:?}) is always enforced: {report:#}"
            ),
            None if verdict == "not_enforced" => expected.push(id.to_owned()),
            None => assert_eq!(verdict, "passed", "{id} ({layer:?}): {report:#}"),
        }
    }
    assert_eq!(
        report["not_enforced"],
        serde_json::json!(expected),
        "the not-enforced list is exactly the attempts whose layer this kernel lacks"
    );
    if expect_lsm && !unix_hooks {
        // The VM's Debian 6.1: BPF-LSM, no unix hooks.
        assert_eq!(
            report["not_enforced"],
            serde_json::json!(ids_of(UNIX_LAYER)),
            "on a BPF-LSM kernel without unix hooks only unix sockets are not enforced"
        );
    }
    expected
}

/// The attach log prints the table, with the not-enforced list, before
/// it says "enforcing".
fn assert_table_before_enforcing(log: &str, not_enforced: &[String]) {
    let table = log
        .find("self-test PASSED")
        .unwrap_or_else(|| panic!("no self-test table in the attach log: {log}"));
    let enforcing = log
        .lines()
        .scan(0, |offset, line| {
            let start = *offset;
            *offset += line.len() + 1;
            Some((start, line))
        })
        .find(|(_, line)| line.contains(": enforcing "))
        .map(|(start, _)| start)
        .unwrap_or_else(|| panic!("the attach log never says enforcing: {log}"));
    assert!(table < enforcing, "the table comes before enforcing: {log}");
    if !not_enforced.is_empty() {
        let line = format!("not enforced on this kernel: {}", not_enforced.join(", "));
        assert!(
            log[table..enforcing].contains(&line),
            "{line:?} missing: {log}"
        );
    }
}

#[test]
fn a_direct_entry_left_for_a_decoy_stops_the_daemon_from_becoming_ready() {
    require_root();
    let cgroup = TestCgroup::new("selftest-map");
    let state = state_dir("selftest-map");
    // Rules intact: ready, and status holds the per-attempt results.
    let daemon = Daemon::start(&cgroup, state.path(), &[]);
    let report = status_json(state.path())["selftest"].clone();
    assert_eq!(report["passed"], true, "{report:#}");
    for id in [
        "tcp4_loopback",
        "udp4_loopback_sendto",
        "raw_socket",
        "proxy_reachable",
        "own_tcp4_server",
    ] {
        assert_eq!(verdict(&report, id), "passed", "{id}: {report:#}");
    }
    let ours = cgroup_status(&status_json(state.path()), &cgroup);
    let not_enforced = assert_layers_match_this_kernel(&report, &ours);
    eprintln!(
        "start-up self-test: {} ms, not enforced: {}",
        report["duration_seconds"].as_f64().unwrap() * 1000.0,
        report["not_enforced"]
    );
    assert!(
        !cgroup.path.join("enforcer-selftest").exists(),
        "the leaf cgroup is removed"
    );
    let log = daemon.log.clone();
    assert!(daemon.stop().success());
    assert_table_before_enforcing(&std::fs::read_to_string(log).unwrap(), &not_enforced);

    // Break one rule from outside: a direct entry that allows one decoy,
    // left in the pinned map while no daemon runs (the next one adopts it
    // and only replaces it at its first map sync, after the self-test).
    let decoys: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.path().join("selftest-decoys.json")).unwrap())
            .unwrap();
    let attempt = if decoys.get("tcp4_host_address").is_some() {
        "tcp4_host_address"
    } else {
        "tcp4_loopback"
    };
    let decoy: SocketAddr = decoys[attempt].as_str().unwrap().parse().unwrap();
    let maps = enforcer::kernel::PinnedMaps::open(&enforcer::kernel::paths::PinDirs::for_cgroup(
        cgroup.id(),
    ))
    .unwrap();
    maps.set_direct(
        decoy,
        enforcer::kernel::maps::Transport::Tcp,
        enforcer_ebpf::NEVER_EXPIRES,
    )
    .unwrap();

    let log = state.path().join("refused.log");
    let mut child = Command::new(enforcer_bin())
        .args(["attach", "--cgroup", &cgroup.name])
        .args([
            "--proxy-listen",
            "127.0.0.1:0",
            "--router-listen",
            "127.0.0.1:0",
        ])
        .arg("--control-socket")
        .arg(state.path().join("control.sock"))
        .arg("--state-dir")
        .arg(state.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DAEMON_START_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon neither failed nor stopped within {DAEMON_START_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        !status.success(),
        "the daemon must refuse to become ready: {stderr}"
    );
    assert!(
        stderr.contains("self-test failed") && stderr.contains(&format!("{attempt}: BYPASS")),
        "the error names the attempt: {stderr}"
    );
    assert!(
        !stderr.contains("enforcing"),
        "it never says enforcing: {stderr}"
    );
    let report = status_json(state.path())["selftest"].clone();
    assert_eq!(report["passed"], false);
    assert_eq!(verdict(&report, attempt), "bypass", "{report:#}");
    // The kernel still denies everything else.
    assert!(cgroup.pin_dir().join("links/connect4").exists());
    let target = TcpListener::bind("127.0.0.2:0").unwrap();
    let (outcome, _) = cgroup.probe(&["tcp-connect", &target.local_addr().unwrap().to_string()]);
    assert!(outcome.is_eperm(), "{outcome:?}");
    assert!(
        !cgroup.path.join("enforcer-selftest").exists(),
        "the leaf cgroup is removed on failure too"
    );
}

/// `BPF_OBJ_GET` on a pinned link, then `BPF_LINK_DETACH`: the program is
/// off the cgroup while its pin stays.
fn detach_pinned_link(pin: &Path) {
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes()).unwrap();
    // union bpf_attr, obj_get: { __u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    let mut attr = [0u8; 64];
    attr[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    // SAFETY: attr is a zero-padded bpf_attr whose pathname outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    assert!(
        fd >= 0,
        "BPF_OBJ_GET {}: {}",
        pin.display(),
        std::io::Error::last_os_error()
    );
    let mut attr = [0u8; 64];
    attr[..4].copy_from_slice(&u32::try_from(fd).unwrap().to_ne_bytes());
    // SAFETY: attr is a zero-padded bpf_attr (link_detach: { __u32 link_fd; }).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_LINK_DETACH: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: closing the fd BPF_OBJ_GET gave us.
    unsafe { libc::close(i32::try_from(fd).unwrap()) };
}

#[test]
fn selftest_on_demand_names_what_a_detached_program_lets_through() {
    require_root();
    let cgroup = TestCgroup::new("selftest-detach");
    let state = state_dir("selftest-detach");
    let daemon = Daemon::start(&cgroup, state.path(), &[]);
    let intact = daemon.cli(&["selftest", "--json"]);
    assert!(intact.status.success(), "{intact:?}");
    let report: serde_json::Value = serde_json::from_slice(&intact.stdout).unwrap();
    assert_eq!(report["passed"], true, "{report:#}");
    assert_layers_match_this_kernel(&report, &cgroup_status(&status_json(state.path()), &cgroup));
    let table = daemon.cli(&["selftest"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("self-test PASSED") && text.contains("tcp4_loopback"),
        "{text}"
    );

    detach_pinned_link(&cgroup.pin_dir().join("links/connect4"));
    let broken = daemon.cli(&["selftest", "--json"]);
    assert!(
        !broken.status.success(),
        "a bypass makes `enforcer selftest` fail: {broken:?}"
    );
    let report: serde_json::Value = serde_json::from_slice(&broken.stdout).unwrap();
    assert_eq!(report["passed"], false);
    let failures: Vec<&str> = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for id in ["tcp4_loopback", "v6only_wildcard", "squat_reuseaddr"] {
        assert!(
            failures.contains(&id),
            "{id} goes through connect4: {failures:?}"
        );
        assert_eq!(verdict(&report, id), "bypass");
    }
    // The other programs still hold.
    for id in [
        "udp4_loopback_sendto",
        "tcp6_loopback",
        "tcp_v4mapped",
        "raw_socket",
    ] {
        assert_eq!(verdict(&report, id), "passed", "{id}: {report:#}");
    }
    let last = status_json(state.path())["selftest"].clone();
    assert_eq!(last["passed"], false);
    assert_eq!(last["failures"], report["failures"]);
    let metrics = daemon.try_control(r#"{"command":"metrics"}"#).unwrap();
    let text = metrics["result"].as_str().unwrap();
    assert!(text.contains("\nenforcer_selftest_passed 0\n"), "{text}");
    assert!(
        text.contains("enforcer_selftest_attempt_failures_total{attempt=\"tcp4_loopback\"} 1"),
        "{text}"
    );
}

#[test]
fn the_bypass_matrix_passes_in_both_egress_modes() {
    require_root();
    for (mode, transparent) in [("redirect", "passed"), ("proxy-only", "not_applicable")] {
        let cgroup = TestCgroup::new(&format!("selftest-{mode}"));
        let state = state_dir(&format!("selftest-{mode}"));
        let daemon = Daemon::start(&cgroup, state.path(), &["--egress-mode", mode]);
        let output = daemon.cli(&["selftest", "--json"]);
        assert!(output.status.success(), "{mode}: {output:?}");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["passed"], true, "{mode}: {report:#}");
        assert_layers_match_this_kernel(
            &report,
            &cgroup_status(&status_json(state.path()), &cgroup),
        );
        // DNS is filtered in both modes (the fallback pack's `dns`): the
        // direct query reaches the filter, never the decoy resolver.
        assert_eq!(
            verdict(&report, "dns_direct"),
            "passed",
            "{mode}: {report:#}"
        );
        assert_eq!(
            verdict(&report, "transparent_reachable"),
            transparent,
            "{mode}: {report:#}"
        );
        for id in [
            "tcp4_loopback",
            "tcp6_host_address",
            "v6only_wildcard",
            "ipv6_routing_header",
        ] {
            assert_eq!(verdict(&report, id), "passed", "{mode} {id}: {report:#}");
        }
        drop(daemon);
    }
}
