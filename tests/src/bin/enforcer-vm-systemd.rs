//! enforcer-vm-systemd: the test driver of `cargo xtask test-vm --systemd`.
//!
//! The VM boots a Debian rootfs with systemd as PID 1; systemd starts this
//! binary as `enforcer-vm-driver.service` (mode `driver`). It installs
//! enforcer the way docs/OPERATIONS.md tells an operator to (units from
//! `dist/systemd/`, the sandbox drop-in from `enforcer sandbox
//! systemd-dropin`, a signed pack, provider keys for `LoadCredential=`),
//! then checks the unit as a user would meet it: readiness after the
//! self-test, structured journal lines, an agent unit in `agents.slice`
//! that tries the bypass matrix and uses the proxy and the lane router,
//! the key's secrecy, `systemctl kill`/`stop` and `enforcer detach`.
//! Each check prints `check=NAME result=pass|fail ...` on the console, then
//! `summary checks=N failed=N unproven=0`, `VMTEST-RESULT`, `VMTEST-DONE`,
//! and the machine powers off.
//!
//! Mode `agent-matrix` is the agent: `agent-matrix.service` runs it as the
//! unprivileged `agent` user inside `agents.slice` with the drop-in; it
//! runs every attempt of [`MATRIX`] and prints one `attempt=` line each.
//! Mode `scan KEYFILE` (the driver, as the agent's uid) looks for the
//! provider key in every file and environment that uid can read.
//!
//! With `enforcer.vm=nolsm` on the kernel command line (the second boot,
//! whose `lsm=` lacks bpf) the driver checks that the drop-in's
//! `RestrictAddressFamilies=` alone refuses vsock and packet sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    io::Write as _,
    net::{TcpListener, UdpSocket},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    process::{Command, ExitCode, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use enforcer_tests::Decoy;

/// The agent's uid (a dedicated one, as docs/OPERATIONS.md asks).
const AGENT_USER: &str = "agent";
const AGENT_UID: u32 = 1500;
/// Decoys: where a bypass would land. TCP on every address, UDP on loopback.
const DECOY_TCP: u16 = 47001;
const DECOY_UDP: u16 = 47002;
/// A decoy a `[::]` `IPV6_V6ONLY` wildcard bind would hand 127.0.0.1 to.
const DECOY_V6ONLY: u16 = 47003;
/// This host's own addresses inside the VM (on `lo`).
const HOST_ADDRESS: &str = "192.0.2.1";
const HOST_ADDRESS6: &str = "2001:db8::1";
/// The loopback stand-ins (tests/vm/mock_servers.py, TLS from a test CA).
const UPSTREAM: &str = "upstream.vm.test:8443";
const OTHER: &str = "other.vm.test:8444";
const PROVIDER: &str = "provider.vm.test:9443";
/// The daemon's DNS upstream: a socket of ours that never answers.
const DNS_UPSTREAM: &str = "127.0.0.1:5399";
/// Where the driver keeps its files (root only, mode 0700).
const WORK: &str = "/run/vm-driver";
/// The test CA (world-readable: the agent's curl trusts it).
const CA_PEM: &str = "/etc/enforcer-vm/ca.pem";
/// What the installed pieces are copied from (put there by xtask).
const SHARE: &str = "/usr/local/share/enforcer";
const ENFORCER: &str = "/usr/local/bin/enforcer";
const PROBE: &str = "/usr/local/bin/enforcer-probe";
const SELF: &str = "/usr/local/bin/enforcer-vm-systemd";
/// The one bound on the whole run: past it the driver reports a failure
/// and powers off, so a hang never waits for xtask's wall-clock limit.
const WATCHDOG: Duration = Duration::from_secs(900);

/// What an attempt of the matrix must end in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// `enforcer-probe` printed `err <errno>` with one of these.
    Errno(&'static [i32]),
    /// `enforcer-probe` printed `ok`.
    Ok,
    /// The command exited 0 and its output contains this.
    Output(&'static str),
    /// The command exited non-zero and its output contains this (curl
    /// told 403 by the proxy).
    FailsWith(&'static str),
}

const EPERM: &[i32] = &[libc::EPERM];
/// seccomp's answer for a family `RestrictAddressFamilies=` leaves out.
const EAFNOSUPPORT: &[i32] = &[libc::EAFNOSUPPORT];

/// One attempt the agent makes: a name, a command, what it must give.
struct Attempt {
    name: &'static str,
    argv: fn() -> Vec<String>,
    expect: Expect,
}

fn probe(args: &[&str]) -> Vec<String> {
    std::iter::once(PROBE)
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect()
}

fn curl(args: &[&str]) -> Vec<String> {
    ["curl", "-sS", "--max-time", "30", "--cacert", CA_PEM]
        .into_iter()
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect()
}

/// curl through the proxy to the allowlisted stand-in.
fn proxy_get_upstream() -> Vec<String> {
    curl(&[
        "--proxy",
        "http://127.0.0.1:3128",
        &format!("https://{UPSTREAM}/"),
    ])
}

/// The bypass matrix and the paths that must work, as the agent unit
/// tries them (as `agent`, in `agents.slice`, under the drop-in).
const MATRIX: &[Attempt] = &[
    Attempt {
        name: "tcp4_loopback",
        argv: || probe(&["tcp-connect", &format!("127.0.0.1:{DECOY_TCP}")]),
        expect: Expect::Errno(EPERM),
    },
    Attempt {
        name: "tcp6_loopback",
        argv: || probe(&["tcp-connect", &format!("[::1]:{DECOY_TCP}")]),
        expect: Expect::Errno(EPERM),
    },
    Attempt {
        name: "tcp4_mapped",
        argv: || probe(&["tcp-connect", &format!("[::ffff:127.0.0.1]:{DECOY_TCP}")]),
        expect: Expect::Errno(EPERM),
    },
    Attempt {
        name: "tcp4_host_address",
        argv: || probe(&["tcp-connect", &format!("{HOST_ADDRESS}:{DECOY_TCP}")]),
        expect: Expect::Errno(EPERM),
    },
    Attempt {
        name: "tcp6_host_address",
        argv: || probe(&["tcp-connect", &format!("[{HOST_ADDRESS6}]:{DECOY_TCP}")]),
        expect: Expect::Errno(EPERM),
    },
    Attempt {
        name: "tcp_fastopen",
        argv: || probe(&["tcp-fastopen", &format!("127.0.0.1:{DECOY_TCP}")]),
        expect: Expect::Errno(EPERM),
    },
    Attempt {
        name: "udp4_sendto",
        argv: || probe(&["udp-sendto", &format!("127.0.0.1:{DECOY_UDP}")]),
        expect: Expect::Errno(EPERM),
    },
    Attempt {
        name: "udp6_sendto",
        argv: || probe(&["udp-sendto", &format!("[::1]:{DECOY_UDP}")]),
        expect: Expect::Errno(EPERM),
    },
    Attempt {
        name: "dns_host_address",
        argv: || probe(&["dns", &format!("{HOST_ADDRESS}:53")]),
        expect: Expect::Errno(EPERM),
    },
    Attempt {
        name: "dns_loopback_stub",
        argv: || probe(&["dns", "127.0.0.53:53"]),
        expect: Expect::Errno(EPERM),
    },
    Attempt {
        name: "v6only_wildcard",
        argv: || probe(&["v6only-connect", "tcp", &DECOY_V6ONLY.to_string()]),
        expect: Expect::Errno(EPERM),
    },
    Attempt {
        name: "ipv6_routing_header",
        argv: || probe(&["rthdr-sockopt", HOST_ADDRESS6]),
        expect: Expect::Errno(EPERM),
    },
    // The drop-in's RestrictAddressFamilies= (seccomp, before any LSM).
    Attempt {
        name: "vsock_socket",
        argv: || probe(&["vsock"]),
        expect: Expect::Errno(EAFNOSUPPORT),
    },
    Attempt {
        name: "packet_socket",
        argv: || probe(&["packet"]),
        expect: Expect::Errno(EAFNOSUPPORT),
    },
    // What must work.
    Attempt {
        name: "own_loopback_server",
        argv: || probe(&["own-server", "tcp", "127.0.0.1:0"]),
        expect: Expect::Ok,
    },
    Attempt {
        name: "proxy_allowlisted_host",
        argv: proxy_get_upstream,
        expect: Expect::Output("upstream-ok"),
    },
    Attempt {
        name: "proxy_other_host_refused",
        argv: || {
            curl(&[
                "--proxy",
                "http://127.0.0.1:3128",
                "-o",
                "/dev/null",
                "-w",
                "connect=%{http_connect}",
                &format!("https://{OTHER}/"),
            ])
        },
        expect: Expect::FailsWith("connect=403"),
    },
    Attempt {
        name: "router_lane",
        argv: || {
            curl(&[
                "http://127.0.0.1:8787/v1/messages",
                "-H",
                "x-api-key: placeholder-not-a-key",
                "-H",
                "anthropic-version: 2023-06-01",
                "-H",
                "content-type: application/json",
                "-d",
                r#"{"model":"claude-haiku-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
            ])
        },
        expect: Expect::Output("msg_vm_mock"),
    },
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("agent-matrix") => agent_matrix(),
        Some("scan") => match args.get(1) {
            Some(key_file) => scan(Path::new(key_file)),
            None => ExitCode::from(2),
        },
        Some("driver") => driver(),
        _ => {
            eprintln!("usage: enforcer-vm-systemd driver | agent-matrix | scan KEYFILE");
            ExitCode::from(2)
        }
    }
}

// === the agent ===

/// Runs every attempt; one line each: `attempt=NAME exit=N out=...`.
fn agent_matrix() -> ExitCode {
    let mut out = std::io::stdout().lock();
    let cgroup = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let _ = writeln!(out, "cgroup={}", one_line(&cgroup));
    for attempt in MATRIX {
        let argv = (attempt.argv)();
        let (code, text) = match Command::new(&argv[0]).args(&argv[1..]).output() {
            Ok(output) => (
                output.status.code().unwrap_or(-1),
                one_line(&String::from_utf8_lossy(&output.stdout))
                    + " | "
                    + &one_line(&String::from_utf8_lossy(&output.stderr)),
            ),
            Err(error) => (-1, format!("could not start {}: {error}", argv[0])),
        };
        let _ = writeln!(out, "attempt={} exit={code} out={text}", attempt.name);
    }
    ExitCode::SUCCESS
}

fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    joined.chars().take(300).collect()
}

/// Looks for the key (read from `key_file` before dropping to the agent's
/// uid) in every regular file and process environment the agent's uid can
/// read. Prints `found PATH` per hit and `scanned N files`; exit 1 on a hit.
fn scan(key_file: &Path) -> ExitCode {
    let Ok(key) = fs::read(key_file) else {
        println!("cannot read {}", key_file.display());
        return ExitCode::from(2);
    };
    let key = key.trim_ascii().to_vec();
    // SAFETY: plain syscalls with integer arguments; the order (groups,
    // gid, uid) is the one that leaves no privilege behind.
    let dropped = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(AGENT_UID) == 0
            && libc::setuid(AGENT_UID) == 0
    };
    if !dropped || key.len() < 16 {
        println!("could not become uid {AGENT_UID}");
        return ExitCode::from(2);
    }
    let mut found = Vec::new();
    let mut scanned = 0usize;
    for root in [
        "/etc",
        "/run",
        "/var",
        "/tmp",
        "/home",
        "/root",
        "/usr/local",
    ] {
        walk(Path::new(root), &key, &mut scanned, &mut found);
    }
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            for file in ["environ", "cmdline"] {
                let path = entry.path().join(file);
                if let Ok(bytes) = fs::read(&path) {
                    scanned += 1;
                    if contains(&bytes, &key) {
                        found.push(path.display().to_string());
                    }
                }
            }
        }
    }
    for path in &found {
        println!("found {path}");
    }
    println!("scanned {scanned} files");
    if found.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn walk(dir: &Path, key: &[u8], scanned: &mut usize, found: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, key, scanned, found);
        } else if meta.is_file()
            && meta.len() <= 8 << 20
            && let Ok(bytes) = fs::read(&path)
        {
            *scanned += 1;
            if contains(&bytes, key) {
                found.push(path.display().to_string());
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

// === the driver ===

/// The console: every line of the report goes here.
fn say(line: &str) {
    static CONSOLE: OnceLock<Mutex<Option<fs::File>>> = OnceLock::new();
    let console = CONSOLE
        .get_or_init(|| Mutex::new(fs::OpenOptions::new().write(true).open("/dev/console").ok()));
    if let Ok(mut guard) = console.lock()
        && let Some(file) = guard.as_mut()
    {
        let _ = writeln!(file, "{line}");
    }
    println!("{line}");
}

/// The checks' tally.
#[derive(Default)]
struct Report {
    checks: u32,
    failed: u32,
}

impl Report {
    fn check(&mut self, name: &str, passed: bool, detail: &str) {
        self.checks += 1;
        if !passed {
            self.failed += 1;
        }
        let result = if passed { "pass" } else { "fail" };
        say(&format!(
            "check={name} result={result} {}",
            one_line(detail)
        ));
    }
}

/// Which boot this is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Boot {
    /// BPF-LSM loaded: every check.
    Full,
    /// `lsm=` without bpf: the drop-in alone refuses socket families.
    NoLsm,
}

impl Boot {
    fn name(self) -> &'static str {
        match self {
            Self::Full => "systemd",
            Self::NoLsm => "systemd-nolsm",
        }
    }
}

fn driver() -> ExitCode {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    if words.contains(&"enforcer.probe") {
        say("VMTEST-PROBE-OK");
        power_off();
        return ExitCode::SUCCESS;
    }
    let boot = if words.contains(&"enforcer.vm=nolsm") {
        Boot::NoLsm
    } else {
        Boot::Full
    };
    std::thread::spawn(move || {
        std::thread::sleep(WATCHDOG);
        say(&format!(
            "check=watchdog result=fail the driver ran over {} s",
            WATCHDOG.as_secs()
        ));
        say(&format!("VMTEST-RESULT {} fail", boot.name()));
        say("VMTEST-DONE");
        power_off();
    });
    say(&format!("VMTEST-START {}", boot.name()));
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    say(&format!("VMTEST-KERNEL {}", kernel.trim()));
    let lsm = fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    say(&format!("VMTEST-LSM {}", lsm.trim()));
    let mut report = Report::default();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut report = Report::default();
        run_checks(boot, &mut report);
        report
    }));
    match outcome {
        Ok(done) => report = done,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            report.check("driver", false, &format!("the driver panicked: {why}"));
        }
    }
    say(&format!(
        "summary checks={} failed={} unproven=0",
        report.checks, report.failed
    ));
    let verdict = if report.failed == 0 && report.checks > 0 {
        "pass"
    } else {
        "fail"
    };
    say(&format!("VMTEST-RESULT {} {verdict}", boot.name()));
    say("VMTEST-DONE");
    power_off();
    ExitCode::SUCCESS
}

fn power_off() {
    let _ = Command::new("systemctl")
        .args(["poweroff", "--no-block", "--force"])
        .status();
    std::thread::sleep(Duration::from_secs(30));
    // SAFETY: reboot(2) with a valid command constant; no memory passed.
    unsafe {
        libc::reboot(libc::RB_POWER_OFF);
    }
}

/// A command's exit code and output, with a bound (killed past it).
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(&self) -> bool {
        self.code == 0
    }

    fn text(&self) -> String {
        format!("exit={} out={} err={}", self.code, self.stdout, self.stderr)
    }
}

fn run(argv: &[&str], limit: Duration) -> Ran {
    run_command(Command::new(argv[0]).args(&argv[1..]), limit)
}

fn run_command(command: &mut Command, limit: Duration) -> Ran {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(error) => {
            return Ran {
                code: -1,
                stdout: String::new(),
                stderr: format!("could not start {command:?}: {error}"),
            };
        }
    };
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(limit) {
        Ok(Ok(output)) => Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        },
        Ok(Err(error)) => Ran {
            code: -1,
            stdout: String::new(),
            stderr: error.to_string(),
        },
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not
            // been reaped (its waiter thread still waits for it).
            unsafe {
                libc::kill(i32::try_from(pid).unwrap_or(0), libc::SIGKILL);
            }
            Ran {
                code: -1,
                stdout: String::new(),
                stderr: format!("{command:?} ran over {} s", limit.as_secs()),
            }
        }
    }
}

const SHORT: Duration = Duration::from_secs(60);
/// `systemctl start enforcer` under TCG: loading and the self-test.
const START: Duration = Duration::from_secs(240);

fn systemctl_show(unit: &str, property: &str) -> String {
    run(
        &["systemctl", "show", unit, "-p", property, "--value"],
        SHORT,
    )
    .stdout
    .trim()
    .to_owned()
}

fn monotonic_micros() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now);
    }
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1000
}

/// The decoys of the matrix, held for the whole run.
struct Decoys {
    all: Vec<(String, Decoy)>,
}

impl Decoys {
    fn start() -> Self {
        let mut all = Vec::new();
        let mut tcp = |addr: String| {
            if let Ok(listener) = TcpListener::bind(&addr) {
                all.push((format!("tcp {addr}"), Decoy::tcp(listener)));
            } else {
                say(&format!("VMTEST-WARN no decoy on tcp {addr}"));
            }
        };
        for host in [
            "127.0.0.1",
            "[::1]",
            HOST_ADDRESS,
            &format!("[{HOST_ADDRESS6}]"),
        ] {
            tcp(format!("{host}:{DECOY_TCP}"));
        }
        tcp(format!("127.0.0.1:{DECOY_V6ONLY}"));
        for addr in [
            format!("127.0.0.1:{DECOY_UDP}"),
            format!("[::1]:{DECOY_UDP}"),
            format!("{HOST_ADDRESS}:53"),
            "127.0.0.53:53".to_owned(),
            DNS_UPSTREAM.to_owned(),
        ] {
            if let Ok(socket) = UdpSocket::bind(&addr) {
                all.push((format!("udp {addr}"), Decoy::udp(socket)));
            } else {
                say(&format!("VMTEST-WARN no decoy on udp {addr}"));
            }
        }
        Self { all }
    }

    /// The decoys a bypass would reach (the daemon's DNS upstream, which
    /// the daemon itself may ask, is not one).
    fn watched(&self) -> impl Iterator<Item = (&String, &Decoy)> {
        self.all
            .iter()
            .filter(|(name, _)| !name.ends_with(DNS_UPSTREAM))
            .map(|(name, decoy)| (name, decoy))
    }

    /// The decoys that were reached, with their hit counts, as text.
    fn reached(&self) -> String {
        self.watched()
            .filter(|(_, decoy)| decoy.hits() > 0)
            .map(|(name, decoy)| format!("{name}={}", decoy.hits()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn hits(&self) -> u32 {
        self.watched().map(|(_, decoy)| decoy.hits()).sum()
    }
}

fn run_checks(boot: Boot, report: &mut Report) {
    let setup = prepare();
    report.check(
        "install_as_operations_md",
        setup.is_ok(),
        &setup
            .clone()
            .err()
            .unwrap_or_else(|| "units, drop-in, signed pack and credentials installed".to_owned()),
    );
    let Ok(key) = setup else {
        return;
    };
    let decoys = Decoys::start();
    let mut mocks = match start_mocks() {
        Ok(child) => child,
        Err(error) => {
            report.check("mock_servers", false, &error);
            return;
        }
    };

    check_start(report);
    check_agent_matrix(report, &decoys);
    check_slice_socket_families(boot, report);
    check_journal(report);
    check_credential(report, &key);
    if boot == Boot::Full {
        check_exposure(report);
        check_kill_and_restart(report, &decoys);
        check_stop_and_detach(report, &decoys);
    }
    let _ = mocks.kill();
    let _ = mocks.wait();
}

/// What an operator does (docs/OPERATIONS.md, Install … Run): returns
/// the lane's key.
fn prepare() -> Result<String, String> {
    let step = |argv: &[&str]| -> Result<(), String> {
        let ran = run(argv, SHORT);
        if ran.ok() {
            Ok(())
        } else {
            Err(format!("{}: {}", argv.join(" "), ran.text()))
        }
    };
    let write = |path: &str, body: &str, mode: u32| -> Result<(), String> {
        fs::write(path, body)
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
            .map_err(|error| format!("writing {path}: {error}"))
    };
    fs::create_dir_all(WORK).map_err(|error| format!("creating {WORK}: {error}"))?;
    fs::set_permissions(WORK, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    // This host's own addresses, and the agent's dedicated uid.
    step(&[
        "ip",
        "addr",
        "add",
        &format!("{HOST_ADDRESS}/32"),
        "dev",
        "lo",
    ])?;
    step(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{HOST_ADDRESS6}/128"),
        "dev",
        "lo",
    ])?;
    step(&[
        "useradd",
        "--uid",
        &AGENT_UID.to_string(),
        "--user-group",
        "--create-home",
        AGENT_USER,
    ])?;
    // vsock, so a refused vsock socket is the refusal and not a missing module.
    step(&["insmod", "/usr/local/lib/enforcer-vm/vsock.ko"])?;
    certificates()?;

    // Install (docs/OPERATIONS.md).
    let dist = format!("{SHARE}/dist/systemd");
    step(&[
        "install",
        "-d",
        "-m",
        "0700",
        "/etc/enforcer",
        "/etc/enforcer/credentials",
    ])?;
    step(&[
        "install",
        "-m",
        "0644",
        &format!("{dist}/enforcer.service"),
        &format!("{dist}/agents.slice"),
        "/etc/systemd/system/",
    ])?;
    step(&["mkdir", "-p", "/etc/systemd/system/agent-.service.d"])?;
    let dropin = run(&[ENFORCER, "sandbox", "systemd-dropin"], SHORT);
    if !dropin.ok() {
        return Err(format!(
            "enforcer sandbox systemd-dropin: {}",
            dropin.text()
        ));
    }
    write(
        "/etc/systemd/system/agent-.service.d/enforcer-sandbox.conf",
        &dropin.stdout,
        0o644,
    )?;
    // A signed policy.
    let pack = pack_json()?;
    let pack_path = format!("{WORK}/policy.pack.json");
    write(&pack_path, &pack, 0o644)?;
    step(&[
        ENFORCER,
        "policy",
        "keygen",
        "--out",
        &format!("{WORK}/policy-key"),
    ])?;
    step(&[
        ENFORCER,
        "policy",
        "sign",
        &pack_path,
        "--key",
        &format!("{WORK}/policy-key"),
    ])?;
    step(&[
        "install",
        "-m",
        "0644",
        &pack_path,
        &format!("{pack_path}.sig"),
        "/etc/enforcer/",
    ])?;
    step(&[
        "install",
        "-m",
        "0644",
        &format!("{WORK}/policy-key.pub"),
        "/etc/enforcer/policy.pub",
    ])?;
    // Provider keys, one file each, mode 0600.
    let zai = format!("vmtest-zai-{}", random_hex(16)?);
    let anthropic = format!("vmtest-anth-{}", random_hex(16)?);
    write("/etc/enforcer/credentials/ZAI_API_KEY", &zai, 0o600)?;
    write(
        "/etc/enforcer/credentials/ANTHROPIC_AUTH_TOKEN",
        &anthropic,
        0o600,
    )?;
    // Extra daemon flags, the operator's way: /etc/default/enforcer.
    write(
        "/etc/default/enforcer",
        &format!(
            "# The VM's stand-ins: names pinned to loopback, their test CA, a DNS upstream that never answers.\n\
             ENFORCER_OPTS=--resolve {UPSTREAM}:127.0.0.1 --resolve {OTHER}:127.0.0.1 --resolve {PROVIDER}:127.0.0.1 --extra-ca {CA_PEM} --dns-upstream {DNS_UPSTREAM}\n"
        ),
        0o644,
    )?;
    step(&["systemctl", "daemon-reload"])?;
    Ok(zai)
}

/// The pack: the example seed with the VM's stand-ins for hosts and lanes.
fn pack_json() -> Result<String, String> {
    let seed = fs::read_to_string(format!("{SHARE}/seed.json"))
        .map_err(|error| format!("reading the seed pack: {error}"))?;
    let mut pack: serde_json::Value =
        serde_json::from_str(&seed).map_err(|error| format!("seed pack: {error}"))?;
    let object = pack
        .as_object_mut()
        .ok_or("the seed pack is not an object")?;
    object.remove("issuedAt");
    object.insert(
        "providers".into(),
        serde_json::json!({
            "zai": {"baseURL": format!("https://{}", PROVIDER),
                    "authHeader": {"mode": "x-api-key", "env": "ZAI_API_KEY"}},
            "anth": {"baseURL": format!("https://{}", PROVIDER),
                     "authHeader": {"mode": "bearer", "passthrough": true, "fallbackEnv": "ANTHROPIC_AUTH_TOKEN"}}
        }),
    );
    let fronting = object
        .get_mut("fronting")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or("the seed pack has no fronting")?;
    fronting.insert(
        "allowlist".into(),
        serde_json::json!([{"hostport": UPSTREAM, "ttl": "P7D"}]),
    );
    let egress = object
        .get_mut("egress")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or("the seed pack has no egress")?;
    egress.insert("mode".into(), "proxy-only".into());
    egress.insert("dns".into(), "deny".into());
    egress.insert("direct".into(), serde_json::json!([]));
    serde_json::to_string_pretty(&pack).map_err(|error| error.to_string())
}

fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buffer = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut buffer))
        .map_err(|error| format!("/dev/urandom: {error}"))?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// A test CA and one certificate for the three stand-in names (openssl).
fn certificates() -> Result<(), String> {
    fs::create_dir_all("/etc/enforcer-vm").map_err(|error| error.to_string())?;
    let ext = format!("{WORK}/leaf.ext");
    fs::write(
        &ext,
        "subjectAltName=DNS:upstream.vm.test,DNS:other.vm.test,DNS:provider.vm.test\n",
    )
    .map_err(|error| error.to_string())?;
    for argv in [
        vec![
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=enforcer VM test CA",
            "-keyout",
            "/run/vm-driver/ca.key",
            "-out",
            CA_PEM,
        ],
        vec![
            "openssl",
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=upstream.vm.test",
            "-keyout",
            "/run/vm-driver/leaf.key",
            "-out",
            "/run/vm-driver/leaf.csr",
        ],
        vec![
            "openssl",
            "x509",
            "-req",
            "-in",
            "/run/vm-driver/leaf.csr",
            "-CA",
            CA_PEM,
            "-CAkey",
            "/run/vm-driver/ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            "/run/vm-driver/leaf.pem",
        ],
    ] {
        let ran = run(&argv, SHORT);
        if !ran.ok() {
            return Err(format!("{}: {}", argv.join(" "), ran.text()));
        }
    }
    fs::set_permissions(CA_PEM, fs::Permissions::from_mode(0o644)).map_err(|e| e.to_string())
}

/// The stand-ins: upstream, other (never allowed) and the provider.
fn start_mocks() -> Result<std::process::Child, String> {
    let child = Command::new("python3")
        .args([
            "/usr/local/lib/enforcer-vm/mock_servers.py",
            "--cert",
            "/run/vm-driver/leaf.pem",
            "--key",
            "/run/vm-driver/leaf.key",
            "--record",
            "/run/vm-driver/requests.jsonl",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|error| format!("starting the mock servers: {error}"))?;
    let mut child = child;
    // It prints `ready` once all three listen.
    let Some(stdout) = child.stdout.take() else {
        return Err("the mock servers have no stdout".to_owned());
    };
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = sender.send(line);
    });
    match receiver.recv_timeout(SHORT) {
        Ok(line) if line.trim() == "ready" => Ok(child),
        other => {
            let _ = child.kill();
            Err(format!("the mock servers did not start: {other:?}"))
        }
    }
}

/// The mock servers' record: one JSON object per request.
fn requests() -> Vec<serde_json::Value> {
    fs::read_to_string(format!("{WORK}/requests.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn requests_to(server: &str) -> Vec<serde_json::Value> {
    requests()
        .into_iter()
        .filter(|request| request["server"] == server)
        .collect()
}

/// `systemctl enable --now` returns once the unit is active; active only
/// after the self-test passed (Type=notify, READY=1 after it).
fn check_start(report: &mut Report) {
    let before = monotonic_micros();
    let ran = run(&["systemctl", "enable", "--now", "enforcer.service"], START);
    let returned = monotonic_micros();
    let state = systemctl_show("enforcer.service", "ActiveState");
    let kind = systemctl_show("enforcer.service", "Type");
    let entered: u64 = systemctl_show("enforcer.service", "ActiveEnterTimestampMonotonic")
        .parse()
        .unwrap_or(0);
    if state != "active" {
        // What the daemon said, for whoever reads the console.
        let log = run(
            &[
                "journalctl",
                "-u",
                "enforcer.service",
                "-o",
                "cat",
                "-n",
                "60",
                "--no-pager",
            ],
            SHORT,
        );
        for line in log.stdout.lines() {
            say(&format!(
                "VMTEST-WARN enforcer: {}",
                line.chars().take(400).collect::<String>()
            ));
        }
    }
    report.check(
        "systemctl_start_active",
        ran.ok() && state == "active" && kind == "notify",
        &format!(
            "enable --now took {} ms; ActiveState={state} Type={kind} {}",
            (returned - before) / 1000,
            if ran.ok() { String::new() } else { ran.text() }
        ),
    );
    // The self-test's report (its state file, written before READY=1):
    // started after the start was asked for, finished before the unit
    // became active. Wall-clock seconds on both sides.
    let offset = realtime_seconds() - monotonic_micros() as f64 / 1e6;
    let asked = before as f64 / 1e6 + offset;
    let active = entered as f64 / 1e6 + offset;
    let report_file = fs::read_to_string("/var/lib/enforcer/selftest.json").unwrap_or_default();
    let selftest: serde_json::Value = serde_json::from_str(&report_file).unwrap_or_default();
    let started = selftest["started_at_unix"].as_f64().unwrap_or(0.0);
    let finished = started + selftest["duration_seconds"].as_f64().unwrap_or(0.0);
    let logged = journal_entries("enforcer.service").iter().any(|entry| {
        entry["MESSAGE"]
            .as_str()
            .is_some_and(|m| m.contains("self-test PASSED"))
    });
    report.check(
        "ready_only_after_selftest",
        selftest["passed"] == true && logged && started >= asked && finished <= active && state == "active",
        &format!(
            "start asked at {asked:.3}, self-test {started:.3} .. {finished:.3} (passed={}), unit active at {active:.3}; PASSED line in the journal: {logged}",
            selftest["passed"]
        ),
    );
}

fn realtime_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// The journal of one unit, as JSON objects.
fn journal_entries(unit: &str) -> Vec<serde_json::Value> {
    let _ = run(&["journalctl", "--sync"], SHORT);
    run(
        &[
            "journalctl",
            "-u",
            unit,
            "-o",
            "json",
            "--no-pager",
            "--all",
        ],
        SHORT,
    )
    .stdout
    .lines()
    .filter_map(|line| serde_json::from_str(line).ok())
    .collect()
}

/// The agent unit: in agents.slice with the drop-in; every attempt as
/// [`MATRIX`] says; no decoy reached; the lane's key injected.
fn check_agent_matrix(report: &mut Report, decoys: &Decoys) {
    let before_hits = decoys.hits();
    let ran = run(&["systemctl", "start", "agent-matrix.service"], START);
    let output = fs::read_to_string(format!("{WORK}/agent-matrix.out")).unwrap_or_default();
    // Where it ran (it is gone now: a oneshot's cgroup goes with it).
    let cgroup = output
        .lines()
        .find_map(|line| line.strip_prefix("cgroup=0::"))
        .unwrap_or("")
        .to_owned();
    let dropins = systemctl_show("agent-matrix.service", "DropInPaths");
    let user = systemctl_show("agent-matrix.service", "User");
    report.check(
        "agent_unit_in_slice_with_dropin",
        ran.ok()
            && cgroup.starts_with("/agents.slice/")
            && dropins.contains("agent-.service.d/enforcer-sandbox.conf")
            && user == AGENT_USER,
        &format!(
            "cgroup={cgroup} DropInPaths={dropins} User={user} {}",
            ran.stderr
        ),
    );
    for attempt in MATRIX {
        let line = output
            .lines()
            .find(|line| line.starts_with(&format!("attempt={} ", attempt.name)));
        let passed = line.is_some_and(|line| judge(attempt.expect, line));
        report.check(
            &format!("agent_{}", attempt.name),
            passed,
            &format!(
                "expected {:?}; {}",
                attempt.expect,
                line.unwrap_or("no line from the agent")
            ),
        );
    }
    let reached = decoys.reached();
    report.check(
        "no_decoy_reached",
        decoys.hits() == before_hits && reached.is_empty(),
        &format!("reached: [{reached}]"),
    );
    let other = requests_to("other");
    report.check(
        "refused_stand_in_untouched",
        other.is_empty(),
        &format!("{} requests reached other.vm.test", other.len()),
    );
}

/// Whether an `attempt=` line shows what was expected.
fn judge(expect: Expect, line: &str) -> bool {
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .unwrap_or("")
            .to_owned()
    };
    let exit = field("exit=");
    let out = line.split_once(" out=").map_or("", |(_, out)| out);
    match expect {
        Expect::Errno(errnos) => {
            exit == "0"
                && errnos
                    .iter()
                    .any(|errno| out.starts_with(&format!("err {errno} ")))
        }
        Expect::Ok => exit == "0" && out.starts_with("ok"),
        Expect::Output(needle) => exit == "0" && out.contains(needle),
        Expect::FailsWith(needle) => exit != "0" && out.contains(needle),
    }
}

/// vsock from the slice without the drop-in: BPF-LSM refuses it where it
/// loads; where it does not, the socket is made (so the drop-in's EAFNOSUPPORT
/// above was the drop-in alone). Outside the slice it always works.
fn check_slice_socket_families(boot: Boot, report: &mut Report) {
    let outside = run(&[PROBE, "vsock"], SHORT);
    report.check(
        "vsock_outside_works",
        outside.stdout.trim() == "ok",
        &outside.text(),
    );
    let in_slice = probe_in_slice(&["vsock"]);
    let status = run(&[ENFORCER, "status"], SHORT);
    let (name, passed) = match boot {
        Boot::Full => (
            "vsock_in_slice_denied_by_bpf_lsm",
            in_slice
                .stdout
                .starts_with(&format!("err {} ", libc::EPERM))
                && status
                    .stdout
                    .contains("socket families: enforced by BPF-LSM"),
        ),
        Boot::NoLsm => (
            "vsock_in_slice_not_enforced_without_bpf_lsm",
            in_slice.stdout.trim() == "ok"
                && status.stdout.contains("socket families: NOT enforced"),
        ),
    };
    let families = status
        .stdout
        .lines()
        .find(|line| line.contains("socket families"))
        .unwrap_or("")
        .to_owned();
    report.check(
        name,
        passed,
        &format!("{} | status: {families}", in_slice.text()),
    );
}

/// `journalctl -u enforcer -o json`: the kernel denies of the matrix as
/// structured fields; `systemctl status` shows them too.
fn check_journal(report: &mut Report) {
    std::thread::sleep(Duration::from_secs(2));
    let entries = journal_entries("enforcer.service");
    let deny = entries.iter().find_map(|entry| {
        let message: serde_json::Value = serde_json::from_str(entry["MESSAGE"].as_str()?).ok()?;
        let fields = &message["fields"];
        (fields["decision"] == "deny"
            && fields["source"] == "kernel"
            && fields["comm"] == "enforcer-probe")
            .then(|| fields.clone())
    });
    report.check(
        "journal_json_decision_fields",
        deny.as_ref().is_some_and(|fields| {
            fields["reason"].is_string() && fields["hook"].is_string() && fields["pid"].is_number()
        }),
        &format!(
            "{} journal entries; a kernel deny of the agent: {}",
            entries.len(),
            deny.map_or_else(|| "none".to_owned(), |fields| fields.to_string())
        ),
    );
    let status = run(
        &[
            "systemctl",
            "status",
            "enforcer.service",
            "--no-pager",
            "-n",
            "400",
            "-l",
        ],
        SHORT,
    );
    report.check(
        "systemctl_status_shows_decisions",
        status.stdout.contains("active (running)")
            && status.stdout.contains("\"decision\":\"deny\""),
        &status
            .stdout
            .lines()
            .find(|line| line.contains("\"decision\":\"deny\""))
            .unwrap_or(status.stdout.lines().nth(2).unwrap_or(""))
            .chars()
            .take(240)
            .collect::<String>(),
    );
}

/// The key reached the provider through the router, the placeholder did
/// not, and nothing the agent's uid can read holds the key.
fn check_credential(report: &mut Report, key: &str) {
    let provider = requests_to("provider");
    let injected = provider.iter().any(|request| request["x-api-key"] == key);
    let placeholder = provider
        .iter()
        .any(|request| request.to_string().contains("placeholder-not-a-key"));
    report.check(
        "load_credential_reaches_provider",
        injected && !placeholder,
        &format!(
            "{} provider requests; key injected={injected}; placeholder forwarded={placeholder}",
            provider.len()
        ),
    );
    // As the agent's uid: every readable file and environment.
    let scan = run_command(
        Command::new(SELF).args(["scan", "/etc/enforcer/credentials/ZAI_API_KEY"]),
        START,
    );
    // As root: the journal of every unit, the units' environments, the
    // daemon's environment.
    let journal = run(
        &["journalctl", "-o", "export", "--no-pager", "--all"],
        START,
    );
    let daemon_pid = systemctl_show("enforcer.service", "MainPID");
    let daemon_environ = fs::read(format!("/proc/{daemon_pid}/environ")).unwrap_or_default();
    let environments = format!(
        "{}{}",
        systemctl_show("enforcer.service", "Environment"),
        systemctl_show("agent-matrix.service", "Environment")
    );
    let leaks: Vec<&str> = [
        (journal.stdout.contains(key), "the journal"),
        (
            contains(&daemon_environ, key.as_bytes()),
            "the daemon's environment",
        ),
        (environments.contains(key), "a unit's Environment="),
        (!scan.ok(), "a file or environment the agent can read"),
    ]
    .into_iter()
    .filter_map(|(leaked, what)| leaked.then_some(what))
    .collect();
    report.check(
        "credential_readable_nowhere_by_agent",
        leaks.is_empty() && !journal.stdout.is_empty() && scan.stdout.contains("scanned"),
        &format!(
            "leaks: {leaks:?}; agent scan: {}; journal {} bytes",
            one_line(&scan.stdout),
            journal.stdout.len()
        ),
    );
}

/// `systemd-analyze security`: the unit's exposure score.
fn check_exposure(report: &mut Report) {
    let ran = run(
        &[
            "systemd-analyze",
            "security",
            "enforcer.service",
            "--no-pager",
        ],
        START,
    );
    let line = ran
        .stdout
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .unwrap_or("")
        .to_owned();
    // The directives it counts against the unit, for the console log.
    for flagged in ran.stdout.lines().filter(|line| line.contains('✗')) {
        say(&format!("security: {}", flagged.trim()));
    }
    let score: Option<f64> = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok());
    report.check(
        "unit_exposure_score",
        score.is_some(),
        &format!(
            "{} {}",
            line.trim(),
            if score.is_none() {
                ran.text()
            } else {
                String::new()
            }
        ),
    );
}

/// The pinned maps' ids (the maps a restarted daemon must adopt).
fn pinned_map_ids() -> Vec<(String, String)> {
    let Ok(meta) = fs::metadata("/sys/fs/cgroup/agents.slice") else {
        return Vec::new();
    };
    let dir = format!("/sys/fs/bpf/enforcer/{}/maps", meta.ino());
    let mut ids: Vec<(String, String)> = fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| {
                    let path = entry.path().display().to_string();
                    let shown = run(&["bpftool", "-j", "map", "show", "pinned", &path], SHORT);
                    let id = serde_json::from_str::<serde_json::Value>(&shown.stdout)
                        .ok()
                        .map_or_else(String::new, |value| value["id"].to_string());
                    (entry.file_name().to_string_lossy().into_owned(), id)
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// A command in agents.slice as the agent (a transient unit: no drop-in).
fn in_slice(argv: &[String]) -> Ran {
    let mut command = Command::new("systemd-run");
    command
        .args([
            "--quiet",
            "--wait",
            "--pipe",
            "--slice=agents.slice",
            "--uid=agent",
        ])
        .args(argv);
    run_command(&mut command, START)
}

/// `enforcer-probe ARGS` in agents.slice as the agent.
fn probe_in_slice(args: &[&str]) -> Ran {
    in_slice(&probe(args))
}

/// `systemctl kill -s KILL`: nothing from the slice gets through while the
/// daemon is down; systemd restarts it; it adopts the pinned maps.
fn check_kill_and_restart(report: &mut Report, decoys: &Decoys) {
    let maps_before = pinned_map_ids();
    let pid_before = systemctl_show("enforcer.service", "MainPID");
    let killed = run(
        &["systemctl", "kill", "-s", "KILL", "enforcer.service"],
        SHORT,
    );
    // Wait until the old process is gone.
    let gone = wait_for(Duration::from_secs(30), || {
        systemctl_show("enforcer.service", "MainPID") != pid_before
    });
    let down_before = systemctl_show("enforcer.service", "ActiveState");
    let hits_before = decoys.hits();
    let loop_out = probe_in_slice(&["connect-loop", &format!("127.0.0.1:{DECOY_TCP}"), "500"]);
    let dns_out = probe_in_slice(&["dns", &format!("{HOST_ADDRESS}:53")]);
    let probe_done = monotonic_micros();
    let down_after = systemctl_show("enforcer.service", "ActiveState");
    let back = wait_for(START, || {
        systemctl_show("enforcer.service", "ActiveState") == "active"
    });
    let entered: u64 = systemctl_show("enforcer.service", "ActiveEnterTimestampMonotonic")
        .parse()
        .unwrap_or(0);
    let restarts = systemctl_show("enforcer.service", "NRestarts");
    let successes_zero =
        loop_out.stdout.contains("successes=0") && loop_out.stdout.contains("eperm=500");
    report.check(
        "killed_daemon_enforcement_holds",
        killed.ok()
            && gone
            && successes_zero
            && dns_out.stdout.starts_with("err 1 ")
            && decoys.hits() == hits_before
            && down_before != "active"
            && entered > probe_done,
        &format!(
            "state while probing: {down_before} -> {down_after}; connect-loop: {}; dns: {}; decoy hits +{}; restarted daemon active at {entered} us, probes done at {probe_done} us",
            loop_out.stdout.trim(),
            dns_out.stdout.trim(),
            decoys.hits() - hits_before
        ),
    );
    let maps_after = pinned_map_ids();
    let adopted_logged = journal_entries("enforcer.service").iter().any(|entry| {
        entry["MESSAGE"]
            .as_str()
            .is_some_and(|m| m.contains("adopted the pinned maps"))
    });
    report.check(
        "restarted_by_systemd_adopts_pins",
        back && restarts == "1" && !maps_before.is_empty() && maps_before == maps_after && adopted_logged,
        &format!(
            "NRestarts={restarts}; {} pinned maps, same ids after the restart: {}; adoption logged: {adopted_logged}",
            maps_before.len(),
            maps_before == maps_after
        ),
    );
    let proxy = in_slice(&proxy_get_upstream());
    report.check(
        "proxy_works_after_restart",
        proxy.ok() && proxy.stdout.contains("upstream-ok"),
        &proxy.text(),
    );
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    done()
}

/// The programs attached to agents.slice, as bpftool lists them.
fn attached_programs() -> usize {
    let shown = run(
        &[
            "bpftool",
            "-j",
            "cgroup",
            "show",
            "/sys/fs/cgroup/agents.slice",
        ],
        SHORT,
    );
    serde_json::from_str::<serde_json::Value>(&shown.stdout)
        .ok()
        .and_then(|value| value.as_array().map(Vec::len))
        .unwrap_or(0)
}

/// `systemctl stop` leaves the slice enforced (fail-closed); `enforcer
/// detach` is what removes the programs.
fn check_stop_and_detach(report: &mut Report, decoys: &Decoys) {
    let attached_running = attached_programs();
    let stopped = run(&["systemctl", "stop", "enforcer.service"], START);
    let state = systemctl_show("enforcer.service", "ActiveState");
    let attached_stopped = attached_programs();
    let hits_before = decoys.hits();
    let denied = probe_in_slice(&["tcp-connect", &format!("127.0.0.1:{DECOY_TCP}")]);
    report.check(
        "stop_leaves_programs_attached",
        stopped.ok()
            && state == "inactive"
            && attached_stopped > 0
            && attached_stopped == attached_running
            && denied.stdout.starts_with("err 1 ")
            && decoys.hits() == hits_before,
        &format!(
            "ActiveState={state}; programs on agents.slice: {attached_running} running, {attached_stopped} stopped; probe: {}",
            denied.stdout.trim()
        ),
    );
    let detached = run(&[ENFORCER, "detach", "--cgroup", "agents.slice"], START);
    let attached_detached = attached_programs();
    let reached = probe_in_slice(&["tcp-connect", &format!("127.0.0.1:{DECOY_TCP}")]);
    report.check(
        "detach_removes_programs",
        detached.ok() && attached_detached == 0 && reached.stdout.trim() == "ok",
        &format!(
            "programs after detach: {attached_detached}; the same probe now: {} {}",
            reached.stdout.trim(),
            if detached.ok() {
                String::new()
            } else {
                detached.text()
            }
        ),
    );
}
