//! `enforcer detach`: stop enforcing a cgroup.

use std::process::ExitCode;

use anyhow::Context as _;
use enforcer::kernel;

use super::resolve_cgroup;

/// Detach every enforcer program from a cgroup and remove its pins. The
/// cgroup directory stays (it may still hold processes).
///
/// Example: sudo enforcer detach --cgroup agents.slice
#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// cgroup to stop enforcing, relative to the cgroup v2 mount.
    #[arg(long, value_name = "NAME")]
    cgroup: String,
}

/// Runs `enforcer detach`.
pub fn run(args: DetachArgs) -> anyhow::Result<ExitCode> {
    let (_mount, cgroup) = resolve_cgroup(&args.cgroup)?;
    kernel::detach(&cgroup)
        .with_context(|| format!("detaching from cgroup {}", cgroup.absolute.display()))?;
    println!("detached from {}", cgroup.relative.display());
    Ok(ExitCode::SUCCESS)
}
