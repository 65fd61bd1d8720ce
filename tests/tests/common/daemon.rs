//! The daemon as the tests start it: `enforcer attach` on a test cgroup,
//! with its control socket and state directory in a temporary directory.
//! Shared by `daemon.rs` and `selftest.rs` (`#[path]`-included; each test
//! binary uses part of it).
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
        terminate(&mut child)
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
