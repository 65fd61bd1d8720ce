//! The policy rows: a signed pack with many direct entries (addresses in
//! 198.18.0.0/15, RFC 2544's benchmarking range: written to the kernel
//! map, never connected to), the time from `enforcer attach` to all of
//! them in the map, and pack swaps under a 32-client tunnel load that no
//! tunnel may notice.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use enforcer_tests::TestCgroup;

use enforcer::daemon::protocol::Request;

use crate::{enforcer::Daemon, load::Measured};

/// What one policy run measured.
pub struct PolicyRun {
    /// From spawning `enforcer attach` to its log saying every direct
    /// entry is in the map.
    pub start_to_entries: Duration,
    /// Swaps applied while the load ran.
    pub swaps: u32,
    /// The load during the swaps.
    pub load: Measured,
}

/// A keyed, signed pack with `entries` direct entries, rewritten (with a
/// new version) for every swap.
struct Pack {
    enforcer: PathBuf,
    path: PathBuf,
    key: PathBuf,
    /// The `direct` array's members, the same in every version.
    direct: String,
}

impl Pack {
    fn new(enforcer: &Path, dir: &Path, entries: u32) -> anyhow::Result<Self> {
        let direct: Vec<String> = (0..entries)
            .map(|index| {
                let [_, high, middle, low] = index.to_be_bytes();
                format!(
                    r#"{{"hostport":"198.{}.{middle}.{low}:443"}}"#,
                    18 + u32::from(high & 1)
                )
            })
            .collect();
        let pack = Self {
            enforcer: enforcer.to_owned(),
            path: dir.join("pack.json"),
            key: dir.join("key"),
            direct: direct.join(","),
        };
        pack.enforcer(&["policy", "keygen", "--out", &pack.key.display().to_string()])?;
        pack.write(1)?;
        Ok(pack)
    }

    fn enforcer(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = Command::new(&self.enforcer).args(args).output()?;
        if !output.status.success() {
            bail!(
                "enforcer {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Writes and signs version `version`.
    fn write(&self, version: u32) -> anyhow::Result<()> {
        std::fs::write(
            &self.path,
            format!(
                r#"{{"schema":"ccp.policy.v1","version":"bench-{version}","ttlSeconds":86400,
"fronting":{{"allowlist":[{{"hostport":"{name}:443"}}]}},
"egress":{{"mode":"proxy-only","direct":[{direct}]}}}}"#,
                name = crate::run::UPSTREAM_NAME,
                direct = self.direct
            ),
        )?;
        self.enforcer(&[
            "policy",
            "sign",
            &self.path.display().to_string(),
            "--key",
            &self.key.display().to_string(),
        ])
    }
}

/// The line `enforcer attach` logs (at debug) once the direct maps hold
/// the pack's entries.
const SYNCED: &str = "direct maps synced";

/// Starts a daemon on `cgroup` with a pack of `entries` direct entries,
/// times it to the map, then swaps the pack every 200 ms while `load`
/// (a 32-client tunnel load through that daemon) runs.
pub fn run(
    enforcer: &Path,
    cgroup: &TestCgroup,
    dir: &Path,
    daemon_args: &[String],
    entries: u32,
    load: impl FnOnce(SocketAddr) -> Command,
) -> anyhow::Result<PolicyRun> {
    std::fs::create_dir_all(dir)?;
    let pack = Pack::new(enforcer, dir, entries)?;
    let mut args = daemon_args.to_vec();
    args.extend([
        "--policy".to_owned(),
        pack.path.display().to_string(),
        "--policy-pubkey".to_owned(),
        format!("{}.pub", pack.key.display()),
    ]);
    let state = dir.join("state");
    let begun = Instant::now();
    let daemon = Daemon::start_logging(
        enforcer,
        cgroup,
        "proxy-only",
        &state,
        &args,
        "info,enforcer::daemon::state=debug",
    )?;
    let log = state.join("attach.log");
    let want = format!("written={entries} ");
    let start_to_entries = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text
            .lines()
            .any(|line| line.contains(SYNCED) && format!("{line} ").contains(&want))
        {
            break begun.elapsed();
        }
        if begun.elapsed() > Duration::from_secs(120) {
            bail!("no `{SYNCED} {want}` in {} within 120 s", log.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut child = load(daemon.proxy)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the load")?;
    let mut swaps = 0;
    let mut version = 1;
    while child.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_millis(200));
        version += 1;
        pack.write(version)?;
        daemon
            .call(&Request::Reload {})
            .with_context(|| format!("reload {version}"))?;
        swaps += 1;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("the load under swaps failed with {}", output.status);
    }
    let load: Measured = serde_json::from_slice(&output.stdout)?;
    Ok(PolicyRun {
        start_to_entries,
        swaps,
        load,
    })
}
