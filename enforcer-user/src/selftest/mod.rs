//! The start-up self-test: the daemon proves its own enforcement.
//!
//! [`run`] binds the decoys ([`decoys`]), creates the leaf cgroup
//! `<cgroup>/enforcer-selftest`, re-executes the shipped binary there as
//! `enforcer selftest-probe` ([`probe`]) with the plan on stdin, collects
//! its results, reads the decoys and judges every row of the bypass matrix
//! ([`matrix`]) into a [`SelftestReport`] ([`report`]). The leaf cgroup is
//! removed afterwards, on failure too.
//!
//! | module    | job                                                        |
//! |-----------|------------------------------------------------------------|
//! | `matrix`  | the attempts as data; planning and judging (pure)          |
//! | `decoys`  | daemon-owned listeners that count what reaches them        |
//! | `probe`   | the in-cgroup side (`enforcer selftest-probe`)              |
//! | `report`  | per-attempt results, the report and its table              |

pub mod decoys;
pub mod matrix;
pub mod probe;
pub mod report;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::{AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

pub use self::report::{AttemptResult, SelftestReport};
use self::{
    decoys::{Decoys, HostAddrs},
    matrix::{Expect, MATRIX, Outcome, PlanInputs, Planned, PlannedAttempt, Verdict},
    probe::{ProbePlan, ProbeReport, SQUAT_PREFIX},
};
use crate::{daemon::paths, kernel::hooks::Layers};

/// Name of the leaf cgroup the probe runs in, under the tested cgroup.
pub const LEAF_CGROUP: &str = "enforcer-selftest";

/// The hidden subcommand the probe is started with.
pub const PROBE_SUBCOMMAND: &str = "selftest-probe";

/// How long the probe may take before it is killed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the self-test could not be run at all (a run whose attempts fail
/// is a [`SelftestReport`] with `passed: false`, not an error).
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    /// The leaf cgroup could not be made or joined.
    #[error("creating the self-test cgroup {}", path.display())]
    Leaf {
        /// Its directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The probe could not be started.
    #[error("starting the self-test probe {} {PROBE_SUBCOMMAND}", exe.display())]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The probe did not finish in time (it was killed).
    #[error("the self-test probe did not finish within {}s and was killed", after.as_secs())]
    Timeout {
        /// The limit.
        after: Duration,
    },
    /// The probe's answer was not a report.
    #[error("the self-test probe: {why}")]
    Protocol {
        /// What went wrong.
        why: String,
    },
}

/// What one run needs.
#[derive(Debug, Clone)]
pub struct SelftestConfig {
    /// The cgroup the probe runs under, absolute (the enforced cgroup or a descendant).
    pub cgroup_dir: PathBuf,
    /// The same, as shown (relative to the cgroup v2 mount).
    pub cgroup_name: String,
    /// The optional layers this kernel's programs provide.
    pub layers: Layers,
    /// The daemon's state directory (decoy file, unix decoy, last report).
    pub state_dir: PathBuf,
    /// The CONNECT proxy.
    pub proxy: SocketAddr,
    /// The lane router.
    pub router: SocketAddr,
    /// The transparent listener, in redirect mode.
    pub transparent: Option<SocketAddr>,
    /// The binary to re-execute as the probe (`/proc/self/exe`).
    pub probe_exe: PathBuf,
}

/// Runs the self-test once and judges it.
pub async fn run(config: &SelftestConfig) -> Result<SelftestReport, SelftestError> {
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let remembered = load_decoy_addresses(&paths::selftest_decoys(&config.state_dir));
    let rows: Vec<(&str, matrix::Place, matrix::Proto)> = MATRIX
        .iter()
        .filter_map(|spec| matrix::decoy_of(spec).map(|(place, proto)| (spec.id, place, proto)))
        .collect();
    let decoys = Decoys::bind(
        &rows,
        &remembered,
        HostAddrs::discover(),
        &paths::selftest_unix_decoy(&config.state_dir),
    );
    save_decoy_addresses(
        &paths::selftest_decoys(&config.state_dir),
        &decoys.remembered(),
    );
    let outside = OutsideProcess::start(&config.probe_exe).await;
    if let Err(error) = &outside {
        tracing::warn!(error = %error, "self-test: no process outside the cgroup for the ptrace rows");
    }
    let inputs = PlanInputs {
        decoys: decoys.addresses(),
        proxy: Some(config.proxy),
        router: Some(config.router),
        transparent: config.transparent,
        outside_process: outside.as_ref().ok().and_then(OutsideProcess::pid),
        ipv6: std::net::UdpSocket::bind("[::1]:0").is_ok(),
    };
    let planned: Vec<(&matrix::AttemptSpec, Planned)> = MATRIX
        .iter()
        .map(|spec| (spec, matrix::plan_one(spec, &inputs)))
        .collect();
    let plan = ProbePlan {
        attempts: planned
            .iter()
            .filter_map(|(spec, planned)| match planned {
                Planned::Run(action) => Some(PlannedAttempt {
                    id: spec.id.to_owned(),
                    action: action.clone(),
                }),
                Planned::NotApplicable(_) => None,
            })
            .collect(),
    };
    let leaf = LeafCgroup::create(&config.cgroup_dir.join(LEAF_CGROUP))?;
    let probed = run_probe(config, &leaf, &plan).await;
    leaf.remove();
    let (report, squat_hits) = probed?;
    let mut hits = decoys.hits();
    hits.insert("squat_reuseaddr".to_owned(), squat_hits);
    let outcomes: BTreeMap<&str, &Outcome> = report
        .results
        .iter()
        .map(|r| (r.id.as_str(), &r.outcome))
        .collect();
    let addresses = decoys.addresses();
    let attempts = planned
        .iter()
        .map(|(spec, planned)| {
            let decoy = addresses.get(spec.id).map(|addr| match addr {
                matrix::DecoyAddr::Ip(addr) => addr.to_string(),
                matrix::DecoyAddr::Unix(path) => path.display().to_string(),
            });
            let layer = match spec.expect {
                Expect::Denied(layer) | Expect::Filtered(layer) => Some(layer),
                Expect::Reached => None,
            };
            let (observed, verdict, decoy_hits) = match planned {
                Planned::NotApplicable(why) => {
                    (format!("not made: {why}"), Verdict::NotApplicable, 0)
                }
                Planned::Run(_) => {
                    let outcome = outcomes.get(spec.id).copied();
                    let decoy_hits = hits.get(spec.id).copied().unwrap_or(0);
                    let claimed = layer.is_none_or(|layer| layer.claimed(&config.layers));
                    (
                        AttemptResult::observed_text(outcome),
                        matrix::judge(spec, outcome, decoy_hits, claimed),
                        decoy_hits,
                    )
                }
            };
            AttemptResult {
                id: spec.id.to_owned(),
                tries: spec.tries.to_owned(),
                layer: layer.map(|layer| layer.as_str().to_owned()),
                expected: AttemptResult::expected_text(spec.expect).to_owned(),
                observed,
                decoy,
                decoy_hits,
                verdict,
            }
        })
        .collect();
    drop(decoys);
    drop(outside);
    Ok(SelftestReport::new(
        config.cgroup_name.clone(),
        attempts,
        started_at,
        clock.elapsed(),
    ))
}

/// Starts the probe in `leaf`, feeds it the plan, serves the squat
/// hand-off and returns its report and the squat listener's hits.
async fn run_probe(
    config: &SelftestConfig,
    leaf: &LeafCgroup,
    plan: &ProbePlan,
) -> Result<(ProbeReport, u64), SelftestError> {
    let protocol = |why: String| SelftestError::Protocol { why };
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(leaf.path.join("cgroup.procs"))
        .map_err(|source| SelftestError::Leaf {
            path: leaf.path.clone(),
            source,
        })?;
    let mut command = tokio::process::Command::new(&config.probe_exe);
    command
        .arg(PROBE_SUBCOMMAND)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let fd = procs.as_raw_fd();
    let join_leaf = move || {
        // SAFETY: `fd` is `procs`, which stays open until after the spawn;
        // the child inherited it and holds it until exec.
        let procs = unsafe { BorrowedFd::borrow_raw(fd) };
        crate::kernel::cgroup::join_from_child(procs)
    };
    // SAFETY: between fork and exec the closure only calls write(2) on an
    // fd the child inherited (async-signal-safe, no allocation), joining
    // the leaf cgroup before the probe's first instruction.
    unsafe { command.pre_exec(join_leaf) };
    let mut child = command.spawn().map_err(|source| SelftestError::Spawn {
        exe: config.probe_exe.clone(),
        source,
    })?;
    drop(procs);
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(protocol("no stdin/stdout pipe".into()));
    };
    let mut squat = None;
    let exchange = async {
        let mut line = serde_json::to_string(plan).map_err(|e| protocol(e.to_string()))?;
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| protocol(format!("writing the plan: {e}")))?;
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let next = lines
                .next_line()
                .await
                .map_err(|e| protocol(format!("reading: {e}")))?;
            let Some(text) = next else {
                return Err(protocol("it exited without a report".into()));
            };
            if let Some(port) = text.strip_prefix(SQUAT_PREFIX) {
                let answer = match port.trim().parse().map(decoys::squat_listener) {
                    Ok(Ok(listener)) => {
                        squat = Some(listener);
                        "go\n".to_owned()
                    }
                    Ok(Err(error)) => format!("no {error}\n"),
                    Err(error) => format!("no {error}\n"),
                };
                stdin
                    .write_all(answer.as_bytes())
                    .await
                    .map_err(|e| protocol(format!("answering the squat: {e}")))?;
                continue;
            }
            return serde_json::from_str::<ProbeReport>(&text)
                .map_err(|e| protocol(format!("unreadable report {text:?}: {e}")));
        }
    };
    let result = match tokio::time::timeout(PROBE_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(SelftestError::Timeout {
            after: PROBE_TIMEOUT,
        }),
    };
    if result.is_err() {
        // Our own child, by its pid.
        let _ = child.start_kill();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
    // Loopback delivery completes in softirq right after the send; give a
    // straggler a moment before the decoys are read.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let squat_hits = squat.as_ref().map_or(0, decoys::tcp_hits);
    result.map(|report| (report, squat_hits))
}

/// The ptrace rows' target: `enforcer selftest-probe --hold`, a child of
/// the daemon outside the cgroup, killed (by its pid) on drop.
struct OutsideProcess {
    child: tokio::process::Child,
    _stdin: Option<tokio::process::ChildStdin>,
}

impl OutsideProcess {
    async fn start(exe: &Path) -> Result<Self, String> {
        let mut child = tokio::process::Command::new(exe)
            .args([PROBE_SUBCOMMAND, "--hold"])
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| {
                format!(
                    "starting {} {PROBE_SUBCOMMAND} --hold: {error}",
                    exe.display()
                )
            })?;
        let stdin = child.stdin.take();
        let Some(stdout) = child.stdout.take() else {
            return Err("no stdout pipe".into());
        };
        let mut lines = BufReader::new(stdout).lines();
        match tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
            Ok(Ok(Some(line))) if line.trim() == probe::HOLD_READY => Ok(Self {
                child,
                _stdin: stdin,
            }),
            Ok(Ok(other)) => Err(format!(
                "it said {other:?} instead of {:?}",
                probe::HOLD_READY
            )),
            Ok(Err(error)) => Err(format!("reading it: {error}")),
            Err(_) => Err("it did not get ready within 5 s".into()),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// The probe's leaf cgroup: created fresh, removed on [`Self::remove`] or drop.
struct LeafCgroup {
    path: PathBuf,
}

impl LeafCgroup {
    fn create(path: &Path) -> Result<Self, SelftestError> {
        if path.exists() {
            // A leftover from a run that was killed: only a probe can be in it.
            Self {
                path: path.to_owned(),
            }
            .remove();
        }
        std::fs::create_dir(path).map_err(|source| SelftestError::Leaf {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    fn remove(&self) {
        if !self.path.exists() {
            return;
        }
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(cgroup = %self.path.display(), "could not remove the self-test cgroup");
    }
}

impl Drop for LeafCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The decoy addresses a previous run used (empty when none or unreadable).
pub fn load_decoy_addresses(path: &Path) -> BTreeMap<String, SocketAddr> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn save_decoy_addresses(path: &Path, addresses: &BTreeMap<String, SocketAddr>) {
    if let Err(error) = write_json(path, addresses) {
        tracing::warn!(path = %path.display(), error = %error, "could not save the self-test decoy addresses");
    }
}

/// Stores `report` as the last result (`status` reads it from there).
pub fn save_report(state_dir: &Path, report: &SelftestReport) -> std::io::Result<()> {
    write_json(&paths::selftest_report(state_dir), report)
}

/// The last stored result, if any.
pub fn load_report(state_dir: &Path) -> Option<SelftestReport> {
    let bytes = std::fs::read(paths::selftest_report(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `value` as JSON through a temporary file and a rename.
fn write_json(path: &Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reports_and_decoy_addresses_round_trip_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_report(dir.path()).is_none());
        let report = SelftestReport::new(
            "agents.slice".into(),
            Vec::new(),
            SystemTime::now(),
            Duration::from_millis(3),
        );
        save_report(dir.path(), &report).unwrap();
        let loaded = load_report(dir.path()).unwrap();
        // A float through JSON may come back one ulp off.
        assert!((loaded.started_at_unix - report.started_at_unix).abs() < 1e-6);
        assert_eq!(
            SelftestReport {
                started_at_unix: report.started_at_unix,
                ..loaded
            },
            report
        );
        let path = paths::selftest_decoys(dir.path());
        let mut addresses = BTreeMap::new();
        addresses.insert(
            "tcp4_loopback".to_owned(),
            "127.0.0.2:4000".parse().unwrap(),
        );
        save_decoy_addresses(&path, &addresses);
        assert_eq!(load_decoy_addresses(&path), addresses);
    }
}
