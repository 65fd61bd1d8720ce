//! `enforcer attach` as the bench runs it: the embedded default pack (a
//! fresh state directory has no cached one), the upstream's public name
//! pinned to the loopback stand-in, the bench CA trusted, a resolver that
//! never answers, on a cgroup of the bench's own.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use enforcer::daemon::{
    control::{ClientError, ControlClient},
    protocol::Request,
};
use enforcer_tests::TestCgroup;

/// A running `enforcer attach`; SIGTERM and wait on drop.
pub struct Daemon {
    child: Child,
    control: ControlClient,
    pub proxy: SocketAddr,
    pub router: SocketAddr,
    /// How long from spawn until its control socket answered.
    pub started_in: Duration,
}

impl Daemon {
    /// Starts `enforcer` on `cgroup` in `mode` with `extra` arguments;
    /// `state` is its own directory (its log is `attach.log` there).
    pub fn start(
        enforcer: &Path,
        cgroup: &TestCgroup,
        mode: &str,
        state: &Path,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        Self::start_logging(enforcer, cgroup, mode, state, extra, "info")
    }

    /// [`Daemon::start`] with `RUST_LOG` set to `filter`.
    pub fn start_logging(
        enforcer: &Path,
        cgroup: &TestCgroup,
        mode: &str,
        state: &Path,
        extra: &[String],
        filter: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state)?;
        let socket = state.join("control.sock");
        let log = std::fs::File::create(state.join("attach.log"))?;
        let begun = Instant::now();
        let child = Command::new(enforcer)
            .args(["attach", "--cgroup", &cgroup.name, "--egress-mode", mode])
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
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", enforcer.display()))?;
        let mut daemon = Self {
            child,
            control: ControlClient::new(socket),
            proxy: SocketAddr::from(([0, 0, 0, 0], 0)),
            router: SocketAddr::from(([0, 0, 0, 0], 0)),
            started_in: Duration::ZERO,
        };
        let deadline = begun + Duration::from_secs(120);
        loop {
            if let Ok(status) = daemon.call(&Request::Status {}) {
                let listener = |name: &str| -> anyhow::Result<SocketAddr> {
                    status["listeners"][name]
                        .as_str()
                        .with_context(|| format!("status has no {name} listener: {status}"))?
                        .parse()
                        .context("listener address")
                };
                daemon.proxy = listener("proxy")?;
                daemon.router = listener("router")?;
                daemon.started_in = begun.elapsed();
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "enforcer attach exited with {status}: {}",
                    std::fs::read_to_string(state.join("attach.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("enforcer attach did not answer on its control socket within 120 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One control request's result (an error while it does not answer,
    /// or when it refuses).
    pub fn call(&self, request: &Request) -> Result<serde_json::Value, ClientError> {
        self.control.call(request)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: a signal to our own child, by its pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
