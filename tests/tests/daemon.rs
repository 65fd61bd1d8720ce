//! The daemon as a user runs it: `enforcer attach` and `enforcer run` as
//! child processes, on real cgroups, with real sockets, a real SQLite file
//! and real clients (curl). Needs root; fails without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{TestCgroup, enforcer_bin, probe_bin, require_root};

#[path = "../../proxy/tests/common/mock_dns.rs"]
#[allow(clippy::all, clippy::pedantic)]
mod mock_dns;

#[path = "common/daemon.rs"]
mod common;
use common::{Daemon, state_dir};

fn events(state: &Path, extra: &[&str]) -> String {
    let output = Command::new(enforcer_bin())
        .args(["events", "--state-dir"])
        .arg(state)
        .args(extra)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The cgroup's kernel deny counter (all reasons), read from its pinned maps.
fn kernel_denies(cgroup: &TestCgroup) -> u64 {
    enforcer::kernel::PinnedMaps::open(&enforcer::kernel::paths::PinDirs::for_cgroup(cgroup.id()))
        .unwrap()
        .counters()
        .unwrap()
        .denied_total()
}

/// Waits (30 s at most) until the kernel has denied more than `than`
/// attempts in `cgroup`; returns the new count.
fn wait_for_denies(cgroup: &TestCgroup, than: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let denied = kernel_denies(cgroup);
        if denied > than {
            return denied;
        }
        assert!(
            Instant::now() < deadline,
            "no new kernel deny within 30 s {what} (still {denied})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed and reaped on drop, so a failing test leaves
/// nothing running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn restart_leaves_no_unenforced_moment_and_sigterm_exits_zero() {
    require_root();
    let cgroup = TestCgroup::new("restart");
    let state = state_dir("restart");
    let target = TcpListener::bind("127.0.0.2:0").unwrap();
    let target_addr = target.local_addr().unwrap().to_string();
    let first = Daemon::start(&cgroup, state.path(), &[]);
    let mut prober = KillOnDrop(
        cgroup
            .command(probe_bin())
            .args(["connect-loop", &target_addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The prober is being refused before, between and after the daemons:
    // each phase waits for new denies in the kernel's own counter.
    let denied = wait_for_denies(&cgroup, 0, "before the first stop");
    let status = first.stop();
    assert!(
        status.success(),
        "SIGTERM ends the daemon with exit 0, got {status}"
    );
    assert!(
        cgroup.pin_dir().join("links/connect4").exists(),
        "the programs stay pinned"
    );
    let denied = wait_for_denies(&cgroup, denied, "with no daemon running");
    let second = Daemon::start(&cgroup, state.path(), &[]);
    wait_for_denies(&cgroup, denied, "after the restart");
    drop(prober.0.stdin.take());
    let mut report = String::new();
    prober
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    prober.0.wait().unwrap();
    let tally = parse_loop(&report);
    assert!(
        tally.attempts > 0,
        "the prober ran across the restart: {report}"
    );
    assert_eq!(
        tally.successes, 0,
        "a connect got through during the restart: {report}"
    );
    assert_eq!(
        tally.eperm, tally.attempts,
        "every attempt was refused by the kernel (EPERM), not failing otherwise: {report}"
    );
    drop(second);
}

/// What `enforcer-probe connect-loop` reported.
struct LoopTally {
    attempts: u64,
    successes: u64,
    eperm: u64,
}

fn parse_loop(report: &str) -> LoopTally {
    let field = |key: &str| -> u64 {
        report
            .split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {report:?}"))
    };
    LoopTally {
        attempts: field("attempts="),
        successes: field("successes="),
        eperm: field("eperm="),
    }
}

#[test]
fn run_passes_exit_status_sets_env_drops_privileges_and_cleans_up() {
    require_root();
    let state = state_dir("run");
    let mount = enforcer_tests::cgroup_mount();
    // The last line is the transient cgroup's id (its directory's inode),
    // to check that its pins are gone afterwards, not only the directory.
    let script = format!(
        "id -u; echo \"$HTTPS_PROXY|$HTTP_PROXY|$ALL_PROXY|$NO_PROXY|$ANTHROPIC_BASE_URL\"; cat /proc/self/cgroup | grep '^0::'; stat -c %i \"{}$(sed -n 's/^0:://p' /proc/self/cgroup)\"; exit 7",
        mount.display()
    );
    let child = Command::new(enforcer_bin())
        .args(["run", "--user", "enforcer-test", "--state-dir"])
        .arg(state.path())
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(7),
        "exit status passed through: {output:?}"
    );
    let mut lines = stdout.lines();
    assert_ne!(lines.next().unwrap(), "0", "not root");
    let env: Vec<&str> = lines.next().unwrap().split('|').collect();
    assert!(env[0].starts_with("http://127.0.0.1:"), "{env:?}");
    assert_eq!(env[0], env[1]);
    assert_eq!(env[0], env[2]);
    assert!(env[3].contains("127.0.0.1"), "{env:?}");
    assert!(env[4].starts_with("http://127.0.0.1:"), "{env:?}");
    let cgroup_line = lines.next().unwrap();
    assert!(
        cgroup_line.contains(&format!("enforcer-run-{pid}")),
        "{cgroup_line}"
    );
    assert!(
        !mount.join(format!("enforcer-run-{pid}")).exists(),
        "the transient cgroup is removed"
    );
    let cgroup_id: u64 = lines.next().unwrap().trim().parse().unwrap();
    let pins = Path::new("/sys/fs/bpf/enforcer").join(cgroup_id.to_string());
    assert!(
        !pins.exists(),
        "the transient cgroup's pins are removed: {} remains",
        pins.display()
    );

    let signalled = Command::new(enforcer_bin())
        .args(["run", "--user", "enforcer-test", "--state-dir"])
        .arg(state.path())
        .args(["--", "sh", "-c", "kill -TERM $$"])
        .output()
        .unwrap();
    assert_eq!(signalled.status.code(), Some(128 + 15), "{signalled:?}");

    let as_root = Command::new(enforcer_bin())
        .args(["run", "--state-dir"])
        .arg(state.path())
        .args(["--", "true"])
        .env_remove("SUDO_UID")
        .output()
        .unwrap();
    assert!(as_root.status.success());
    assert!(
        String::from_utf8_lossy(&as_root.stderr).contains("WARNING"),
        "{as_root:?}"
    );
}

#[test]
fn run_applies_the_seccomp_baseline() {
    require_root();
    let state = state_dir("seccomp");
    // As root on purpose: only the filter stands between it and unshare.
    let refused = Command::new(enforcer_bin())
        .args(["run", "--state-dir"])
        .arg(state.path())
        .args(["--", "unshare", "-n", "true"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Operation not permitted"),
        "{refused:?}"
    );
    let allowed = Command::new(enforcer_bin())
        .args(["run", "--user", "enforcer-test", "--state-dir"])
        .arg(state.path())
        .args(["--", "python3", "-c", "print(1)"])
        .output()
        .unwrap();
    assert!(allowed.status.success(), "{allowed:?}");
    assert_eq!(String::from_utf8_lossy(&allowed.stdout), "1\n");
    let unfiltered = Command::new(enforcer_bin())
        .args(["run", "--seccomp", "off", "--state-dir"])
        .arg(state.path())
        .args(["--", "unshare", "-n", "true"])
        .output()
        .unwrap();
    assert!(
        unfiltered.status.success(),
        "the rule, not something else, refused it: {unfiltered:?}"
    );
}

#[test]
fn run_with_the_fallback_policy_refuses_example_com_and_records_it() {
    require_root();
    let state = state_dir("fallback");
    // The proxy refuses before resolving anything: nothing leaves the machine.
    let output = Command::new(enforcer_bin())
        .args(["run", "--user", "enforcer-test", "--state-dir"])
        .arg(state.path())
        .args([
            "--",
            "curl",
            "-sS",
            "-v",
            "--max-time",
            "10",
            "https://example.com",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("403"), "{stderr}");
    assert!(
        stderr.contains("not_allowlisted"),
        "curl -v shows the reason: {stderr}"
    );
    let log = events(state.path(), &["--decision", "deny"]);
    assert!(
        log.lines().any(|l| l.contains("proxy")
            && l.contains("not_allowlisted")
            && l.contains("example.com:443")),
        "{log}"
    );
}

/// A loopback upstream that hangs up at once (curl's TLS fails fast, after
/// the proxy decided), a listener for direct grants, and the `--resolve`
/// pin naming `granted.test` at the upstream.
struct GrantTargets {
    direct: TcpListener,
    upstream_port: u16,
    pin: String,
}

impl GrantTargets {
    fn new(direct_ip: &str, upstream_ip: &str) -> Self {
        let direct = TcpListener::bind(format!("{direct_ip}:0")).unwrap();
        let upstream = TcpListener::bind(format!("{upstream_ip}:0")).unwrap();
        let upstream_port = upstream.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in upstream.incoming() {
                drop(stream);
            }
        });
        Self {
            direct,
            upstream_port,
            pin: format!("granted.test:{upstream_port}:{upstream_ip}"),
        }
    }

    fn proxy_target(&self) -> String {
        format!("granted.test:{}", self.upstream_port)
    }

    fn direct_target(&self) -> String {
        self.direct.local_addr().unwrap().to_string()
    }
}

/// The proxy's answer to CONNECT `target` (curl's `%{http_connect}`) from
/// inside `cgroup`.
fn connect_code(cgroup: &TestCgroup, daemon: &Daemon, target: &str) -> String {
    let output = cgroup
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "--max-time",
            "5",
            "-x",
        ])
        .arg(format!("http://{}", daemon.proxy))
        .arg(format!("https://{target}/"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn grants_persist_across_restarts_and_revoking_closes_proxy_and_kernel() {
    require_root();
    let cgroup = TestCgroup::new("grants");
    let state = state_dir("grants");
    let targets = GrantTargets::new("127.0.0.3", "127.0.0.4");
    let (proxy_target, direct_target) = (targets.proxy_target(), targets.direct_target());
    let daemon = Daemon::start(&cgroup, state.path(), &["--resolve", &targets.pin]);
    assert_eq!(
        connect_code(&cgroup, &daemon, &proxy_target),
        "403",
        "not allowlisted before the grant"
    );
    let (outcome, _) = cgroup.probe(&["tcp-connect", &direct_target]);
    assert!(outcome.is_eperm(), "no direct entry yet: {outcome:?}");
    // Long TTLs: this test is about persistence, not expiry.
    let allowed = daemon.cli(&["allow", &proxy_target, "--ttl", "1h", "--reason", "test"]);
    assert!(allowed.status.success(), "{allowed:?}");
    let allowed = daemon.cli(&["allow", &direct_target, "--ttl", "1h", "--direct"]);
    assert!(allowed.status.success(), "{allowed:?}");
    assert_eq!(
        connect_code(&cgroup, &daemon, &proxy_target),
        "200",
        "the proxy grant opens the CONNECT"
    );
    let (outcome, _) = cgroup.probe(&["tcp-connect", &direct_target]);
    assert_eq!(
        outcome,
        enforcer_tests::ProbeOutcome::Ok,
        "the direct grant opens the kernel"
    );

    // Restart: the grants come back from the state directory.
    assert!(daemon.stop().success());
    let daemon = Daemon::start(&cgroup, state.path(), &["--resolve", &targets.pin]);
    let status = daemon.try_control(r#"{"command":"status"}"#).unwrap();
    let grants = status["result"]["grants"].to_string();
    assert!(
        grants.contains("granted.test") && grants.contains("127.0.0.3"),
        "{grants}"
    );
    assert_eq!(
        connect_code(&cgroup, &daemon, &proxy_target),
        "200",
        "still allowed after the restart"
    );
    let (outcome, _) = cgroup.probe(&["tcp-connect", &direct_target]);
    assert_eq!(
        outcome,
        enforcer_tests::ProbeOutcome::Ok,
        "the direct grant still opens the kernel after the restart"
    );

    // Revoking a live grant closes it at once: 403 in the proxy, EPERM in the kernel.
    let revoked = daemon.cli(&["revoke", &proxy_target]);
    assert!(revoked.status.success(), "{revoked:?}");
    assert_eq!(
        connect_code(&cgroup, &daemon, &proxy_target),
        "403",
        "a revoked proxy grant no longer opens the CONNECT"
    );
    let revoked = daemon.cli(&["revoke", &direct_target]);
    assert!(revoked.status.success(), "{revoked:?}");
    let (outcome, _) = cgroup.probe(&["tcp-connect", &direct_target]);
    assert!(
        outcome.is_eperm(),
        "a revoked direct grant no longer opens the kernel: {outcome:?}"
    );
    let revoked = daemon.cli(&["revoke", &proxy_target]);
    assert!(!revoked.status.success(), "nothing live left to revoke");
    drop(daemon);
}

#[test]
fn grants_expire_in_proxy_and_kernel() {
    require_root();
    let cgroup = TestCgroup::new("expiry");
    let state = state_dir("expiry");
    let targets = GrantTargets::new("127.0.0.6", "127.0.0.7");
    let (proxy_target, direct_target) = (targets.proxy_target(), targets.direct_target());
    let daemon = Daemon::start(&cgroup, state.path(), &["--resolve", &targets.pin]);
    let allowed = daemon.cli(&["allow", &proxy_target, "--ttl", "10s"]);
    assert!(allowed.status.success(), "{allowed:?}");
    let allowed = daemon.cli(&["allow", &direct_target, "--ttl", "10s", "--direct"]);
    assert!(allowed.status.success(), "{allowed:?}");
    assert_eq!(
        connect_code(&cgroup, &daemon, &proxy_target),
        "200",
        "the proxy grant opens the CONNECT"
    );
    let (outcome, _) = cgroup.probe(&["tcp-connect", &direct_target]);
    assert_eq!(
        outcome,
        enforcer_tests::ProbeOutcome::Ok,
        "the direct grant opens the kernel"
    );
    // Past the TTL both stop by themselves (the proxy by its clock, the
    // kernel by its own): polled, with a generous deadline.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut proxy_closed = false;
    let mut kernel_closed = false;
    while !(proxy_closed && kernel_closed) {
        assert!(
            Instant::now() < deadline,
            "10 s grants still open after 90 s: proxy closed {proxy_closed}, kernel closed {kernel_closed}"
        );
        std::thread::sleep(Duration::from_millis(250));
        if !proxy_closed {
            proxy_closed = connect_code(&cgroup, &daemon, &proxy_target) == "403";
        }
        if !kernel_closed {
            let (outcome, _) = cgroup.probe(&["tcp-connect", &direct_target]);
            kernel_closed = outcome.is_eperm();
        }
    }
    let revoked = daemon.cli(&["revoke", &proxy_target]);
    assert!(!revoked.status.success(), "an expired grant is not live");
}

#[test]
fn a_direct_grant_by_name_refuses_rebinding_answers() {
    require_root();
    let cgroup = TestCgroup::new("rebind");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dns = runtime.block_on(mock_dns::MockDns::start());
    // A rebinding answer: loopback and the metadata address.
    dns.answer("rebind.test", &["127.0.0.1", "169.254.169.254"]);
    // The control: a public address the same resolver gives, which is
    // written (a map entry only; nothing connects to it).
    dns.answer("public.test", &["192.88.99.77"]);
    // With `dns: deny` the map writer resolves names itself (with the DNS
    // filter serving, names take only the filter's answers: clients.rs).
    let mut spec = common::Spec::new(&[], &[], common::ModeFrom::ProxyOnly);
    spec.egress = r#""dns":"deny""#.to_owned();
    spec.dns_upstream = Some(dns.addr());
    let setup = common::Setup::build("rebind", &spec);
    let daemon = setup.start(&cgroup);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let rebind = format!("rebind.test:{port}");
    let allowed = daemon.cli(&["allow", &rebind, "--ttl", "1h", "--direct"]);
    let control = format!("public.test:{port}");
    let allowed_control = daemon.cli(&["allow", &control, "--ttl", "1h", "--direct"]);
    assert!(allowed_control.status.success(), "{allowed_control:?}");
    let entries: Vec<std::net::SocketAddr> = enforcer::kernel::PinnedMaps::open(
        &enforcer::kernel::paths::PinDirs::for_cgroup(cgroup.id()),
    )
    .unwrap()
    .direct_entries()
    .unwrap()
    .into_iter()
    .map(|entry| entry.addr)
    .collect();
    assert_eq!(
        entries,
        vec![format!("192.88.99.77:{port}").parse().unwrap()],
        "only the public answer is written (allow rebind.test said {allowed:?})"
    );
    assert!(
        dns.udp_queries() + dns.tcp_queries() >= 2,
        "both names went to the mock DNS"
    );
    let (outcome, _) = cgroup.probe(&["tcp-connect", &format!("127.0.0.1:{port}")]);
    assert!(
        outcome.is_eperm(),
        "the rebinding answer opened nothing: {outcome:?}"
    );
    drop(daemon);
    drop(runtime);
}

#[test]
fn reload_applies_a_newly_signed_pack_and_keeps_it_when_the_next_is_bad() {
    require_root();
    let cgroup = TestCgroup::new("reload");
    let state = state_dir("reload");
    let dir = state.path();
    let key = dir.join("key");
    let pack = dir.join("pack.json");
    let run = |args: &[&str]| {
        let output = Command::new(enforcer_bin()).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
    };
    run(&["policy", "keygen", "--out", key.to_str().unwrap()]);
    let write_pack = |version: &str| {
        std::fs::write(
            &pack,
            format!(
                r#"{{"schema":"ccp.policy.v1","version":"{version}","ttlSeconds":3600,
                "fronting":{{"allowlist":[{{"hostport":"one.test:443"}}]}}}}"#
            ),
        )
        .unwrap();
        run(&[
            "policy",
            "sign",
            pack.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
    };
    write_pack("1");
    let pubkey = format!("{}.pub", key.display());
    let daemon = Daemon::start(
        &cgroup,
        &dir.join("daemon"),
        &[
            "--policy",
            pack.to_str().unwrap(),
            "--policy-pubkey",
            &pubkey,
        ],
    );
    let version = |daemon: &Daemon| {
        daemon.try_control(r#"{"command":"status"}"#).unwrap()["result"]["policy"]["version"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(version(&daemon), "1");
    write_pack("2");
    let reloaded = daemon.cli(&["reload"]);
    assert!(reloaded.status.success(), "{reloaded:?}");
    assert_eq!(version(&daemon), "2");
    // A tampered pack is refused and version 2 stays.
    let text = std::fs::read_to_string(&pack)
        .unwrap()
        .replace("\"2\"", "\"3\"");
    std::fs::write(&pack, text).unwrap();
    let refused = daemon.cli(&["reload"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("signature"),
        "{refused:?}"
    );
    assert_eq!(version(&daemon), "2");
    let log = events(&daemon.state, &["--decision", "deny"]);
    assert!(log.contains("policy_refused"), "{log}");
}

#[test]
fn a_tunnel_cut_at_the_drain_deadline_is_stored_exactly_once() {
    require_root();
    let cgroup = TestCgroup::new("abort");
    let state = state_dir("abort");
    // An upstream that accepts and then says nothing: the tunnel stays open
    // (curl waits for a ServerHello) until the daemon cuts it.
    let upstream = TcpListener::bind("127.0.0.5:0").unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in upstream.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    let pin = format!("held.test:{upstream_port}:127.0.0.5");
    let daemon = Daemon::start(&cgroup, state.path(), &["--resolve", &pin, "--drain", "1s"]);
    let target = format!("held.test:{upstream_port}");
    let allowed = daemon.cli(&["allow", &target, "--ttl", "1h"]);
    assert!(allowed.status.success(), "{allowed:?}");
    let mut curl = cgroup
        .command("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "60", "-x"])
        .arg(format!("http://{}", daemon.proxy))
        .arg(format!("https://held.test:{upstream_port}/"))
        .spawn()
        .unwrap();
    // Wait until the proxy has dialled the upstream: the tunnel is open.
    let deadline = Instant::now() + Duration::from_secs(30);
    while held.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the tunnel never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM: the drain deadline passes with the tunnel still open, and the
    // daemon cuts it.
    assert!(daemon.stop().success());
    let _ = curl.kill();
    let _ = curl.wait();
    let store =
        enforcer::audit::AuditStore::open_read_only(&state.path().join("audit.db")).unwrap();
    let rows: Vec<_> = store
        .query(&enforcer::audit::EventFilter::default())
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.source == enforcer::audit::Source::Proxy && r.host.as_deref() == Some("held.test")
        })
        .collect();
    assert_eq!(rows.len(), 1, "one audit row for the cut tunnel: {rows:?}");
    assert_eq!(rows[0].reason, "granted", "{rows:?}");
    assert_eq!(rows[0].decision, enforcer::audit::Decision::Allow);
}

#[test]
fn attach_warns_about_a_uid_with_processes_inside_and_outside() {
    use std::os::unix::process::CommandExt as _;
    require_root();
    let cgroup = TestCgroup::new("shareduid");
    let state = state_dir("shareduid");
    let user = enforcer_tests::unprivileged_user();
    let (uid, gid) = user.split_once(':').unwrap();
    let (uid, gid): (u32, u32) = (uid.parse().unwrap(), gid.parse().unwrap());
    // The same uid inside the cgroup and outside it.
    let mut inside = cgroup
        .command("sleep")
        .arg("120")
        .uid(uid)
        .gid(gid)
        .spawn()
        .unwrap();
    let mut outside = Command::new("sleep")
        .arg("120")
        .uid(uid)
        .gid(gid)
        .spawn()
        .unwrap();
    let daemon = Daemon::start(&cgroup, state.path(), &[]);
    let warned = log_of(state.path());
    let _ = inside.kill();
    let _ = outside.kill();
    let _ = inside.wait();
    let _ = outside.wait();
    assert!(daemon.stop().success());
    let line = warned
        .lines()
        .find(|l| l.contains("also has processes outside it"))
        .unwrap_or_else(|| panic!("no shared-uid warning in the log:\n{warned}"));
    assert!(line.contains(&format!("uid={uid}")), "{line}");
    assert!(line.contains(&outside.id().to_string()), "{line}");

    // A uid only inside: no warning.
    let cgroup = TestCgroup::new("owneduid");
    let state = state_dir("owneduid");
    let mut alone = cgroup
        .command("sleep")
        .arg("120")
        .uid(uid)
        .gid(gid)
        .spawn()
        .unwrap();
    let daemon = Daemon::start(&cgroup, state.path(), &[]);
    let quiet = log_of(state.path());
    let _ = alone.kill();
    let _ = alone.wait();
    assert!(daemon.stop().success());
    assert!(!quiet.contains("also has processes outside it"), "{quiet}");
}

/// Everything the daemons started on `state` logged.
fn log_of(state: &Path) -> String {
    std::fs::read_dir(state)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("attach-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

#[test]
fn events_follow_streams_decisions_live() {
    require_root();
    let cgroup = TestCgroup::new("follow");
    let state = state_dir("follow");
    let daemon = Daemon::start(&cgroup, state.path(), &[]);
    let mut follower = KillOnDrop(
        Command::new(enforcer_bin())
            .args([
                "events",
                "--follow",
                "--json",
                "--decision",
                "deny",
                "--limit",
                "0",
                "--state-dir",
            ])
            .arg(&daemon.state)
            .arg("--control-socket")
            .arg(&daemon.socket)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (lines, receiver) = std::sync::mpsc::channel();
    let stdout = follower.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The follower subscribes some time after it starts: deny again until
    // one of this test's probes shows up, within a deadline.
    let target = TcpListener::bind("127.0.0.2:0").unwrap();
    let target = target.local_addr().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pids = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no kernel record for probes {pids:?} within 30 s"
        );
        let (outcome, pid) = cgroup.probe(&["tcp-connect", &target]);
        assert!(outcome.is_eperm(), "{outcome:?}");
        pids.push(pid);
        let Ok(line) = receiver.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(record["source"], "kernel", "{record}");
        assert_eq!(record["decision"], "deny", "{record}");
        let pid = record["pid"].as_u64().unwrap();
        assert!(
            pids.iter().any(|p| u64::from(*p) == pid),
            "a record for one of this test's probes {pids:?}: {record}"
        );
        break;
    }
}

#[test]
fn a_burst_of_kernel_denies_is_fully_accounted_for() {
    require_root();
    const BURST: u64 = 100_000;
    let cgroup = TestCgroup::new("burst");
    let state = state_dir("burst");
    let daemon = Daemon::start(&cgroup, state.path(), &[]);
    let target = TcpListener::bind("127.0.0.2:0").unwrap();
    // The start-up self-test's own denies (issue 19) come before the burst.
    let denied_before = kernel_denied(&daemon);
    let output = cgroup
        .command(probe_bin())
        .args([
            "connect-loop",
            &target.local_addr().unwrap().to_string(),
            &BURST.to_string(),
        ])
        .output()
        .unwrap();
    let tally = parse_loop(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(
        (tally.attempts, tally.successes, tally.eperm),
        (BURST, 0, BURST)
    );
    // generated (kernel counter) = stored + lost in the ring buffer + dropped by the writer.
    let db = state.path().join("audit.db");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (generated, stored, lost, dropped) = loop {
        let status = daemon.try_control(r#"{"command":"status"}"#).unwrap();
        let kernel = &status["result"]["kernel"];
        let generated: u64 = kernel["denied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_u64().unwrap())
            .sum();
        let lost = kernel["events_lost"].as_u64().unwrap();
        let connection = rusqlite_count(&db);
        if generated >= BURST + denied_before && connection.0 + lost + connection.1 >= generated {
            break (generated, connection.0, lost, connection.1);
        }
        assert!(
            Instant::now() < deadline,
            "not accounted within 60 s: generated {generated}, stored {}, lost {lost}, dropped {}",
            connection.0,
            connection.1
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "burst of {BURST}: generated {generated}, stored {stored}, ring-buffer lost {lost}, writer dropped {dropped}"
    );
    assert_eq!(generated - denied_before, BURST);
    assert_eq!(stored + lost + dropped, generated);
}

/// The kernel's deny counters, summed, as the daemon's status shows them.
fn kernel_denied(daemon: &Daemon) -> u64 {
    let status = daemon.try_control(r#"{"command":"status"}"#).unwrap();
    status["result"]["kernel"]["denied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_u64().unwrap())
        .sum()
}

/// (kernel records stored, kernel records recorded as dropped) in the audit database.
fn rusqlite_count(db: &Path) -> (u64, u64) {
    use enforcer::audit::{AuditStore, Source};
    match AuditStore::open_read_only(db) {
        Ok(store) => (
            store.count(Source::Kernel).unwrap_or(0),
            store.dropped(Source::Kernel).unwrap_or(0),
        ),
        Err(_) => (0, 0),
    }
}

#[test]
fn metrics_on_the_control_socket_and_a_loopback_listener() {
    require_root();
    let cgroup = TestCgroup::new("metrics");
    let state = state_dir("metrics");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&cgroup, state.path(), &["--metrics-listen", &listen]);
    let series = "enforcer_decisions_total{source=\"kernel\",decision=\"deny\",reason=\"loopback_port_not_owned\"} ";
    let count = |text: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    let metrics = || {
        daemon.try_control(r#"{"command":"metrics"}"#).unwrap()["result"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // The start-up self-test's own denies (issue 19) are counted too and
    // arrive through the ring buffer: take the baseline once it stands still.
    let before = {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = count(&metrics());
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = count(&metrics());
            if now == last {
                break now;
            }
            assert!(Instant::now() < deadline, "the deny count never settled");
            last = now;
        }
    };
    let target = TcpListener::bind("127.0.0.2:0").unwrap();
    let (outcome, _) = cgroup.probe(&["tcp-connect", &target.local_addr().unwrap().to_string()]);
    assert!(outcome.is_eperm());
    // The deny reaches the metrics through the ring buffer: poll until it
    // shows, then it must be exactly the one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let text = metrics();
        if count(&text) > before {
            break count(&text);
        }
        assert!(
            Instant::now() < deadline,
            "no kernel deny in the metrics within 30 s: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(after, before + 1, "one probe, one deny");
    let output = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://{listen}/metrics"))
        .output()
        .unwrap();
    let scraped = String::from_utf8_lossy(&output.stdout);
    for name in [
        "enforcer_open_tunnels",
        "enforcer_relayed_bytes_total",
        "enforcer_router_first_byte_seconds_bucket",
        "enforcer_ring_buffer_lost_total",
        "enforcer_policy_info",
        "enforcer_policy_expiry_seconds",
        "enforcer_selftest_passed",
        "enforcer_selftest_duration_seconds",
        "enforcer_selftest_last_run_timestamp_seconds",
    ] {
        assert!(scraped.contains(name), "{name} missing from {scraped}");
    }
}

#[test]
fn systemd_units_verify() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let binary = enforcer_bin();
    for unit in ["enforcer.service", "agents.slice"] {
        let text = std::fs::read_to_string(root.join("dist/systemd").join(unit)).unwrap();
        std::fs::write(
            dir.path().join(unit),
            text.replace("/usr/local/bin/enforcer", binary.to_str().unwrap()),
        )
        .unwrap();
    }
    // An agent unit picks up the slice-mode drop-in by its name prefix; a
    // drop-in systemd cannot parse would be complained about here.
    let dropin_dir = dir.path().join("agent-.service.d");
    std::fs::create_dir(&dropin_dir).unwrap();
    std::fs::copy(
        root.join("dist/systemd/agent-.service.d/enforcer-sandbox.conf"),
        dropin_dir.join("enforcer-sandbox.conf"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("agent-test.service"),
        "[Unit]\nDescription=an agent\n[Service]\nExecStart=/bin/true\nDynamicUser=yes\n",
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("enforcer.service"))
        .arg(dir.path().join("agents.slice"))
        .arg(dir.path().join("agent-test.service"))
        .output()
        .expect("systemd-analyze");
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );
}

/// A stand-in for the provider and for CONNECT upstreams at `addr`: counts
/// the connections it accepts and hangs up at once.
fn counting_upstream(addr: &str) -> std::sync::Arc<std::sync::atomic::AtomicU32> {
    let listener = TcpListener::bind(addr).unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    hits
}

/// `curl` arguments for one lane-router request: headers and body on
/// stdout, then the status.
fn router_request(router: SocketAddr) -> Vec<String> {
    [
        "-s",
        "-D",
        "-",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "10",
        "-H",
        "x-api-key: test-key",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"model":"claude-sonnet-4-5","max_tokens":1,"messages":[]}"#,
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .chain([format!("http://{router}/v1/messages")])
    .collect()
}

/// `curl` arguments for one CONNECT through the proxy: the CONNECT status.
fn proxy_request(proxy: SocketAddr) -> Vec<String> {
    [
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect}",
        "--max-time",
        "10",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .chain([
        "-x".to_owned(),
        format!("http://{proxy}"),
        "https://api.anthropic.com/".to_owned(),
    ])
    .collect()
}

/// Audit rows (JSON) from `enforcer events --json` with `extra` filters,
/// once at least `want` of them are there.
fn wait_rows(state: &Path, extra: &[&str], want: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let rows: Vec<serde_json::Value> = events(state, &args)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if rows.len() >= want {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {want} rows for {extra:?} after 10 s: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 13: a local user outside the enforced cgroup — root or another
/// uid — gets `403 client_not_enforced` from the lane router (Anthropic's
/// error shape) and from the proxy, is audited, and the provider sees
/// nothing; a process inside is served, and its rows name its pid and comm
/// (`enforcer events --comm curl`, `--pid`, `--cgroup`).
#[test]
fn clients_outside_the_cgroup_are_refused_and_clients_inside_are_named() {
    require_root();
    let cgroup = TestCgroup::new("clients");
    let state = state_dir("clients");
    let provider = counting_upstream("127.0.0.77:443");
    let daemon = Daemon::start(
        &cgroup,
        state.path(),
        &["--resolve", "api.anthropic.com:443:127.0.0.77"],
    );
    // Only what this test does: the start-up self-test's probe closes its
    // proxy connection at once, and when it is gone before the proxy looks
    // it up, its row is an unattributed client_not_enforced too.
    let since = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let (uid, gid) = {
        let user = enforcer_tests::unprivileged_user();
        let (uid, gid) = user.split_once(':').unwrap();
        (uid.to_owned(), gid.to_owned())
    };
    let as_other_user = |args: &[String]| {
        Command::new("setpriv")
            .args(["--reuid", &uid, "--regid", &gid, "--clear-groups", "curl"])
            .args(args)
            .output()
            .unwrap()
    };

    // Outside: root (the test process) and another uid.
    for (who, output) in [
        (
            "root",
            Command::new("curl")
                .args(router_request(daemon.router))
                .output()
                .unwrap(),
        ),
        ("other uid", as_other_user(&router_request(daemon.router))),
    ] {
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.ends_with("\n403"), "router, {who} outside: {text}");
        assert!(
            text.contains("x-enforcer-error: client_not_enforced"),
            "{who}: {text}"
        );
        let body = text.lines().rev().nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["type"], "error", "{body}");
        assert_eq!(json["error"]["type"], "permission_error", "{body}");
    }
    for (who, output) in [
        (
            "root",
            Command::new("curl")
                .args(proxy_request(daemon.proxy))
                .output()
                .unwrap(),
        ),
        ("other uid", as_other_user(&proxy_request(daemon.proxy))),
    ] {
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "403",
            "proxy, {who} outside"
        );
    }
    assert_eq!(
        provider.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the provider for a refused client"
    );
    let refused = wait_rows(state.path(), &["--decision", "deny", "--since", &since], 4);
    let refused: Vec<_> = refused
        .iter()
        .filter(|r| r["reason"] == "client_not_enforced")
        .collect();
    assert_eq!(refused.len(), 4, "{refused:?}");
    for source in ["router", "proxy"] {
        assert_eq!(
            refused.iter().filter(|r| r["source"] == source).count(),
            2,
            "{refused:?}"
        );
    }
    for row in &refused {
        assert!(
            row["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "the refused client is named by its address: {row}"
        );
    }

    // Inside: served (the stand-in provider hangs up, so the router answers
    // 502 after forwarding, and the tunnel opens), and named.
    let router_curl = cgroup
        .command("curl")
        .args(router_request(daemon.router))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let router_pid = router_curl.id();
    let text = String::from_utf8(router_curl.wait_with_output().unwrap().stdout).unwrap();
    assert!(text.ends_with("\n502"), "router, inside: {text}");
    assert!(text.contains("upstream_connect_failed"), "{text}");
    let proxy_curl = cgroup
        .command("curl")
        .args(proxy_request(daemon.proxy))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let proxy_pid = proxy_curl.id();
    let text = String::from_utf8(proxy_curl.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(text, "200", "proxy, inside");
    assert!(provider.load(std::sync::atomic::Ordering::SeqCst) >= 2);

    // curl's own kernel denies (glibc asking nscd over a unix socket) are
    // curl rows too; the proxy's and router's are the ones that name it here.
    let deadline = Instant::now() + Duration::from_secs(10);
    let named: Vec<serde_json::Value> = loop {
        let rows: Vec<serde_json::Value> =
            wait_rows(state.path(), &["--since", "5m", "--comm", "curl"], 2)
                .into_iter()
                .filter(|r| r["source"] != "kernel")
                .collect();
        if rows.len() >= 2 || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        named.len(),
        2,
        "only the clients inside are curl rows: {named:?}"
    );
    let router_row = named.iter().find(|r| r["source"] == "router").unwrap();
    assert_eq!(router_row["pid"], router_pid, "{router_row}");
    assert_eq!(router_row["cgroup_id"], cgroup.id(), "{router_row}");
    let proxy_row = named.iter().find(|r| r["source"] == "proxy").unwrap();
    assert_eq!(proxy_row["pid"], proxy_pid, "{proxy_row}");
    assert_eq!(proxy_row["reason"], "allowlisted", "{proxy_row}");
    // The router's row, and curl's own kernel denies (nscd), share the pid.
    let by_pid: Vec<serde_json::Value> =
        wait_rows(state.path(), &["--pid", &router_pid.to_string()], 1)
            .into_iter()
            .filter(|r| r["source"] != "kernel")
            .collect();
    assert_eq!(by_pid.len(), 1, "{by_pid:?}");
    assert_eq!(by_pid[0]["source"], "router");
    let by_cgroup = wait_rows(state.path(), &["--cgroup", &cgroup.id().to_string()], 2);
    assert!(
        by_cgroup.iter().all(|r| r["cgroup_id"] == cgroup.id()),
        "{by_cgroup:?}"
    );
    drop(daemon);
}

/// `--serve-outside-clients` opens the router and the proxy to clients
/// outside the cgroup again, still attributed (as unattributed) and audited.
#[test]
fn serve_outside_clients_serves_a_client_outside() {
    require_root();
    let cgroup = TestCgroup::new("outside-ok");
    let state = state_dir("outside-ok");
    let daemon = Daemon::start(&cgroup, state.path(), &["--serve-outside-clients"]);
    let output = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "--max-time",
            "10",
            "-x",
        ])
        .arg(format!("http://{}", daemon.proxy))
        .arg("https://not-allowlisted.test/")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "403");
    let rows = wait_rows(state.path(), &["--decision", "deny"], 1);
    assert!(
        rows.iter().any(|r| r["reason"] == "not_allowlisted"),
        "past the client check, refused for its destination: {rows:?}"
    );
    assert!(
        !rows.iter().any(|r| r["reason"] == "client_not_enforced"),
        "{rows:?}"
    );
    drop(daemon);
}
