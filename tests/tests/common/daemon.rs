//! The daemon as the tests start it: `enforcer attach` on a test cgroup,
//! with its control socket and state directory in a temporary directory.
//! [`Setup`] builds a signed pack and the daemon arguments around it.
//! Shared by `daemon.rs`, `selftest.rs`, `kernel/` and `clients.rs`
//! (`#[path]`-included; each test binary uses part of it).
#![allow(
    dead_code,
    reason = "each test binary that includes this uses part of it"
)]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use enforcer_tests::{DAEMON_START_LIMIT, TestCgroup, enforcer_bin};

/// A running `enforcer attach`: `stop` sends SIGTERM; drop kills it.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub state: PathBuf,
    /// Its stderr (the self-test table, the log).
    pub log: PathBuf,
    pub proxy: SocketAddr,
    pub router: SocketAddr,
}

impl Daemon {
    pub fn start(cgroup: &TestCgroup, state: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(cgroup, state, extra, &[])
    }

    /// [`Daemon::start`] with these environment variables set for it (a
    /// lane's credential, say).
    pub fn start_with_env(
        cgroup: &TestCgroup,
        state: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        std::fs::create_dir_all(state).unwrap();
        let socket = state.join("control.sock");
        // One log per start, so a restart in the same state directory
        // keeps the first one's.
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let log = state.join(format!(
            "attach-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let child = Command::new(enforcer_bin())
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
            .args(extra)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Self {
            child: Some(child),
            socket,
            state: state.to_owned(),
            log,
            proxy: "0.0.0.0:0".parse().unwrap(),
            router: "0.0.0.0:0".parse().unwrap(),
        };
        let deadline = Instant::now() + DAEMON_START_LIMIT;
        loop {
            if let Some(status) = daemon.try_control(r#"{"command":"status"}"#) {
                daemon.proxy = status["result"]["listeners"]["proxy"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                daemon.router = status["result"]["listeners"]["router"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                return daemon;
            }
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("enforcer attach exited early with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer on its control socket within {DAEMON_START_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn try_control(&self, request: &str) -> Option<serde_json::Value> {
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket).ok()?;
        stream.write_all(request.as_bytes()).ok()?;
        stream.write_all(b"\n").ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).ok()?;
        serde_json::from_str(&line).ok()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(enforcer_bin())
            .args(args)
            .arg("--control-socket")
            .arg(&self.socket)
            .output()
            .unwrap()
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let log = self.log.clone();
        let stopped =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| terminate(&mut child)));
        stopped.unwrap_or_else(|panic| {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("the daemon's log ({}):\n{text}", log.display());
            std::panic::resume_unwind(panic)
        })
    }
}

pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: sending a signal to our own child by its pid.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A temporary state directory named after the test.
pub fn state_dir(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("enforcer-{label}-"))
        .tempdir()
        .unwrap()
}

/// Where the daemon learns its egress mode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ModeFrom {
    /// `--egress-mode redirect`.
    Flag,
    /// The pack's `"egress": {"mode": "redirect"}`, no flag.
    Pack,
    /// `--egress-mode proxy-only`.
    ProxyOnly,
}

/// What a [`Setup`]'s pack and daemon arguments hold besides its allowlist.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Allowlist entries (JSON objects).
    pub entries: Vec<String>,
    /// `--resolve` pins (`HOST:PORT:ADDR`).
    pub pins: Vec<String>,
    /// Where the egress mode comes from.
    pub mode: ModeFrom,
    /// More members of the pack's `egress` object (`"dns":"deny"`), or "".
    pub egress: String,
    /// More members of the pack's `fronting` object, or "".
    pub fronting: String,
    /// `--dns-upstream`; `None`: a loopback socket that never answers.
    pub dns_upstream: Option<SocketAddr>,
}

impl Spec {
    /// A pack with these entries and pins, nothing else.
    pub fn new(entries: &[String], pins: &[String], mode: ModeFrom) -> Self {
        Self {
            entries: entries.to_vec(),
            pins: pins.to_vec(),
            mode,
            egress: String::new(),
            fronting: String::new(),
            dns_upstream: None,
        }
    }
}

/// A signed pack, its key, and the daemon arguments around it. Every
/// daemon gets `--dns-upstream` at a loopback resolver (by default one
/// that never answers): nothing under test asks the host's resolver.
pub struct Setup {
    _state: tempfile::TempDir,
    pub state: PathBuf,
    pub args: Vec<String>,
    _dns: std::net::UdpSocket,
}

impl Setup {
    /// A pack allowing `up.test:PORT` (pinned to 127.0.0.10), nothing else.
    pub fn new(label: &str, port: u16, mode: ModeFrom) -> Self {
        Self::with_entries(
            label,
            &[format!(r#"{{"hostport":"up.test:{port}"}}"#)],
            &[format!("up.test:{port}:127.0.0.10")],
            mode,
        )
    }

    /// A pack with these allowlist entries (JSON objects) and `--resolve` pins.
    pub fn with_entries(label: &str, entries: &[String], pins: &[String], mode: ModeFrom) -> Self {
        Self::build(label, &Spec::new(entries, pins, mode))
    }

    /// The pack and arguments `spec` describes.
    pub fn build(label: &str, spec: &Spec) -> Self {
        let state = state_dir(label);
        let dir = state.path().to_owned();
        let key = dir.join("key");
        let pack = dir.join("pack.json");
        let run = |args: &[&str]| {
            let output = Command::new(enforcer_bin()).args(args).output().unwrap();
            assert!(output.status.success(), "{args:?}: {output:?}");
        };
        run(&["policy", "keygen", "--out", key.to_str().unwrap()]);
        let mut egress: Vec<&str> = Vec::new();
        if spec.mode == ModeFrom::Pack {
            egress.push(r#""mode":"redirect""#);
        }
        if !spec.egress.is_empty() {
            egress.push(&spec.egress);
        }
        let mut fronting = vec![format!(r#""allowlist":[{}]"#, spec.entries.join(","))];
        if !spec.fronting.is_empty() {
            fronting.push(spec.fronting.clone());
        }
        std::fs::write(
            &pack,
            format!(
                r#"{{"schema":"ccp.policy.v1","version":"1","ttlSeconds":3600,
                "egress":{{{}}},"fronting":{{{}}}}}"#,
                egress.join(","),
                fronting.join(",")
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
        // A resolver that never answers, unless the test brings its own.
        let dns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let upstream = spec.dns_upstream.unwrap_or(dns.local_addr().unwrap());
        let mut args = vec![
            "--policy".into(),
            pack.display().to_string(),
            "--policy-pubkey".into(),
            format!("{}.pub", key.display()),
            "--dns-upstream".into(),
            upstream.to_string(),
        ];
        match spec.mode {
            ModeFrom::Flag => args.extend(["--egress-mode".to_owned(), "redirect".to_owned()]),
            ModeFrom::ProxyOnly => {
                args.extend(["--egress-mode".to_owned(), "proxy-only".to_owned()]);
            }
            ModeFrom::Pack => {}
        }
        for pin in &spec.pins {
            args.extend(["--resolve".to_owned(), pin.clone()]);
        }
        Self {
            state: dir.join("daemon"),
            _state: state,
            args,
            _dns: dns,
        }
    }

    /// `enforcer attach` on `cgroup` with this pack.
    pub fn start(&self, cgroup: &TestCgroup) -> Daemon {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Daemon::start(cgroup, &self.state, &args)
    }
}

/// The audit rows (`enforcer events --json`) of the state directory that
/// `keep` accepts, waiting up to 10 s until `want` of them are stored.
pub fn audit_rows(
    state: &Path,
    want: usize,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = Command::new(enforcer_bin())
            .args(["events", "--json", "--since", "1h", "--state-dir"])
            .arg(state)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .filter(|row| keep(row))
            .collect();
        if rows.len() >= want || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A proxy row's `detail`, parsed (`null` when it has none).
pub fn detail(row: &serde_json::Value) -> serde_json::Value {
    row["detail"]
        .as_str()
        .and_then(|detail| serde_json::from_str(detail).ok())
        .unwrap_or_default()
}
