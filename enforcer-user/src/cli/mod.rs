//! One module per subcommand; each has its clap `Args` (doc comments are the
//! help text) and a `run` function.

pub mod attach;
pub mod control;
pub mod daemon_flags;
pub mod detach;
pub mod logging;
pub mod policy;
pub mod policy_suggest;
pub mod run;
pub mod run_summary;
pub mod run_unix;
pub mod sandbox;
pub mod selftest;
pub mod status;

use anyhow::Context as _;
use enforcer::kernel::{CgroupMount, CgroupPath};

/// Resolves `--cgroup NAME` against this host's cgroup v2 mount.
pub fn resolve_cgroup(name: &str) -> anyhow::Result<(CgroupMount, CgroupPath)> {
    let mount = CgroupMount::find()?;
    let cgroup = mount
        .resolve(name)
        .with_context(|| format!("--cgroup {name}"))?;
    Ok((mount, cgroup))
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the tracing subscriber at `info` on stderr (RUST_LOG overrides
/// it), coloured only on a terminal without `NO_COLOR`.
pub fn init_logging(format: LogFormat) {
    logging::init(format, "info", logging::LogDestination::Stderr);
}
