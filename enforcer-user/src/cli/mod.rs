//! One module per subcommand; each has its clap `Args` (doc comments are the
//! help text) and a `run` function.

pub mod attach;
pub mod control;
pub mod daemon_flags;
pub mod detach;
pub mod policy;
pub mod run;
pub mod run_unix;
pub mod sandbox;
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

/// Installs the tracing subscriber at `info` (RUST_LOG overrides it).
pub fn init_logging(format: LogFormat) {
    init_logging_at(format, "info");
}

/// Installs the tracing subscriber at `level` (RUST_LOG overrides it).
pub fn init_logging_at(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
