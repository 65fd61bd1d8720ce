//! The daemon's side of the self-test ([`crate::selftest`]): one run at a
//! time, the last report kept for `status` and the metrics, every run
//! logged and stored in the state directory.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Mutex};

use crate::{
    kernel::{CgroupMount, CgroupPath, hooks::Layers},
    selftest::{self, SelftestConfig, SelftestError, SelftestReport},
};

/// Why `enforcer selftest` could not run.
#[derive(Debug, thiserror::Error)]
pub enum SelftestCommandError {
    /// `--cgroup` is not the enforced cgroup or below it.
    #[error("--cgroup {name}: {why}")]
    Cgroup {
        /// As given.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The run itself failed.
    #[error(transparent)]
    Run(#[from] SelftestError),
}

/// Runs self-tests for one daemon and remembers the last result.
pub struct SelftestRunner {
    base: SelftestConfig,
    mount: CgroupMount,
    enforced: CgroupPath,
    one_at_a_time: tokio::sync::Mutex<()>,
    last: Mutex<Option<SelftestReport>>,
    failures: Mutex<BTreeMap<String, u64>>,
}

/// The metric values of the self-test.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelftestMetrics {
    /// The last report's pass/fail, duration (s) and start (Unix s); `None` before the first.
    pub last: Option<(bool, f64, f64)>,
    /// Failures per attempt id over every run of this daemon.
    pub failures: Vec<(String, u64)>,
}

impl SelftestRunner {
    /// A runner for the daemon enforcing `enforced`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mount: CgroupMount,
        enforced: CgroupPath,
        layers: Layers,
        state_dir: PathBuf,
        proxy: SocketAddr,
        router: SocketAddr,
        transparent: Option<SocketAddr>,
    ) -> Self {
        Self {
            base: SelftestConfig {
                cgroup_dir: enforced.absolute.clone(),
                cgroup_name: enforced.relative.display().to_string(),
                layers,
                state_dir,
                proxy,
                router,
                transparent,
                probe_exe: PathBuf::from("/proc/self/exe"),
            },
            mount,
            enforced,
            one_at_a_time: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
            failures: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs one self-test under `cgroup` (default: the enforced cgroup),
    /// logs it, stores it as the last result and returns it.
    pub async fn run(&self, cgroup: Option<&str>) -> Result<SelftestReport, SelftestCommandError> {
        let mut config = self.base.clone();
        if let Some(name) = cgroup {
            let path = self
                .mount
                .resolve(name)
                .map_err(|error| SelftestCommandError::Cgroup {
                    name: name.to_owned(),
                    why: error.to_string(),
                })?;
            if !path.absolute.starts_with(&self.enforced.absolute) {
                return Err(SelftestCommandError::Cgroup {
                    name: name.to_owned(),
                    why: format!(
                        "not {} or below it (the cgroup this daemon enforces)",
                        self.enforced.relative.display()
                    ),
                });
            }
            if !path.absolute.is_dir() {
                return Err(SelftestCommandError::Cgroup {
                    name: name.to_owned(),
                    why: "no such cgroup".into(),
                });
            }
            config.cgroup_dir = path.absolute;
            config.cgroup_name = path.relative.display().to_string();
        }
        let _one = self.one_at_a_time.lock().await;
        let report = selftest::run(&config).await?;
        log_report(&report);
        if let Err(error) = selftest::save_report(&config.state_dir, &report) {
            tracing::warn!(error = %error, "could not store the self-test report");
        }
        if let Ok(mut failures) = self.failures.lock() {
            for id in &report.failures {
                *failures.entry(id.clone()).or_default() += 1;
            }
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Some(report.clone());
        }
        Ok(report)
    }

    /// What the metrics show.
    pub fn metrics(&self) -> SelftestMetrics {
        SelftestMetrics {
            last: self.last.lock().ok().and_then(|last| {
                last.as_ref()
                    .map(|r| (r.passed, r.duration_seconds, r.started_at_unix))
            }),
            failures: self
                .failures
                .lock()
                .map(|f| f.iter().map(|(id, n)| (id.clone(), *n)).collect())
                .unwrap_or_default(),
        }
    }
}

/// One summary line, plus one line per failing attempt.
pub fn log_report(report: &SelftestReport) {
    let duration_ms = (report.duration_seconds * 1000.0).round();
    if report.passed {
        tracing::info!(
            passed = true,
            duration_ms,
            cgroup = %report.cgroup,
            not_enforced = %report.not_enforced.join(","),
            unproven = %report.unproven.join(","),
            not_applicable = %report.not_applicable.join(","),
            "self-test passed"
        );
    } else {
        for failure in report.failure_list() {
            tracing::error!(attempt = %failure, "self-test attempt failed");
        }
        tracing::error!(
            passed = false,
            duration_ms,
            cgroup = %report.cgroup,
            failures = %report.failures.join(","),
            not_enforced = %report.not_enforced.join(","),
            "self-test FAILED"
        );
    }
}
