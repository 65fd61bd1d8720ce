//! `cargo xtask`: set-up, build, test and demo for enforcer.
//!
//! Builds on stable. `setup` installs everything else the build and the
//! tests need on a fresh Debian machine (idempotent: a second run changes
//! nothing); every other command runs it first.

mod demo;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// enforcer's developer tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need: nightly rust-src, bpf-linker,
    /// the musl target, Debian packages. Idempotent.
    Setup,
    /// Set up, then build every binary.
    Build,
    /// Set up, then run every test: unit, integration and (as root) the
    /// native kernel tests.
    Test,
    /// Set up, build, and show the kernel enforcing a transient cgroup.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::run(),
        Task::Build => setup::run().and_then(|()| build()),
        Task::Test => setup::run().and_then(|()| test()),
        Task::Demo => setup::run().and_then(|()| build()).and_then(|()| demo::run()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs a command in the workspace root, failing with its command line.
pub fn run_command(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {command:?}");
    let status = command
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// True when running as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Builds every binary of the default members (debug profile).
fn build() -> anyhow::Result<()> {
    run_command(cargo().args(["build", "--bins"]))
}

/// Every test. Kernel tests need root: as root they run natively; without
/// root they are left out with a notice, except under CI=true where that
/// is an error (they must fail, never skip).
fn test() -> anyhow::Result<()> {
    build()?;
    let root = workspace_root();
    let target = root.join("target/debug");
    let mut command = cargo();
    command
        .args(["test", "--workspace", "--exclude", "enforcer-ebpf"])
        .env("ENFORCER_BIN", target.join("enforcer"))
        .env("ENFORCER_PROBE", target.join("enforcer-probe"));
    if !is_root() {
        if std::env::var_os("CI").is_some() {
            bail!("kernel tests need root, and under CI=true they must run: run as root");
        }
        eprintln!(
            "xtask: not root: leaving out the native kernel tests (enforcer-tests); run `sudo cargo xtask test` for them"
        );
        command.args(["--exclude", "enforcer-tests"]);
    }
    run_command(&mut command)
}
