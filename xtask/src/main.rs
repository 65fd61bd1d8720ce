//! `cargo xtask`: set-up, build, test and demo for enforcer.
//!
//! Builds on stable. `setup` installs everything else the build and the
//! tests need on a fresh Debian machine (idempotent: a second run changes
//! nothing); every other command but `lint` runs it first.

mod demo;
mod router_peers;
mod setup;
mod vm;
mod vm_systemd;

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
    Setup(SetupArgs),
    /// Set up, then build every binary.
    Build,
    /// Set up, check formatting and clippy (workspace and eBPF target),
    /// then run every test: unit, integration, (as root) the native kernel
    /// tests, and the kernel tests in a QEMU VM.
    Test,
    /// Check formatting and clippy: the gates `test` runs first. Does not
    /// run `setup` (it needs it once: nightly rust-src for the eBPF lint).
    Lint,
    /// Set up, then run the kernel tests inside a QEMU VM (no root needed);
    /// with `--systemd`, enforcer.service under systemd as PID 1 instead.
    TestVm(vm::VmArgs),
    /// Set up, build, and show the kernel enforcing a transient cgroup.
    Demo,
    /// Set up, build, and run the tool matrix alone (tests/tests/compat.rs:
    /// git, pip, npm, cargo, go, curl, wget, requests, httpx, Node's fetch,
    /// Claude Code inside `enforcer run`, both egress modes; as root). It
    /// rewrites docs/COMPATIBILITY.md. `test` runs it too.
    TestCompat,
    /// Set up, build (release), and run the benchmarks (bench/: enforcer
    /// against direct, Squid, tinyproxy, nginx, claude-code-router and LiteLLM on
    /// loopback; as root).
    /// Rewrites docs/BENCHMARKS.md and docs/benchmarks.svg; with
    /// `--smoke`, every target once with a few requests, nothing written.
    Bench(BenchArgs),
}

/// `cargo xtask setup`.
#[derive(Debug, clap::Args)]
struct SetupArgs {
    /// Also the lane router's peers that are not Debian packages:
    /// claude-code-router (npm) and LiteLLM (PyPI, in a venv), pinned,
    /// under /opt/enforcer-bench. `test` and `bench` install them too.
    #[arg(long)]
    bench: bool,
}

/// `cargo xtask bench`.
#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Every target once, a few requests each, debug build, nothing
    /// written: proves the bench still runs (`test` runs this).
    #[arg(long)]
    smoke: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("CI").is_some() && std::env::var_os("CARGO_INCREMENTAL").is_none() {
        // A CI run builds once in a fresh clone: incremental state is never
        // reused there and costs about 2.4 GiB of disk, which a CI machine
        // ran out of. Every cargo this process starts inherits the setting.
        // SAFETY: nothing has started a thread yet (clap parsing is
        // single-threaded), so no other thread can read the environment
        // while it changes.
        unsafe { std::env::set_var("CARGO_INCREMENTAL", "0") };
    }
    let result = match cli.command {
        Task::Setup(args) if args.bench => setup::run().and_then(|()| router_peers::install()),
        Task::Setup(_) => setup::run(),
        Task::Build => setup::run().and_then(|()| build()),
        // The bench's smoke pass in `test` runs every peer.
        Task::Test => setup::run()
            .and_then(|()| router_peers::install())
            .and_then(|()| test()),
        Task::Lint => lint(),
        Task::TestVm(args) if args.systemd => setup::run()
            .and_then(|()| vm_systemd::run(&args))
            .map(|outcome| match outcome {
                vm_systemd::Outcome::Ran(totals) => println!("{}", totals.closing_line(&[])),
                vm_systemd::Outcome::Skipped(why) => println!("test: skipped: {why}"),
            }),
        Task::TestVm(args) => setup::run().and_then(|()| vm::run(&args)).map(|totals| {
            println!("{}", totals.closing_line(&[]));
        }),
        Task::TestCompat => setup::run()
            .and_then(|()| build())
            .and_then(|()| test_compat()),
        Task::Bench(args) => setup::run()
            .and_then(|()| router_peers::install())
            .and_then(|()| bench(args.smoke)),
        Task::Demo => setup::run()
            .and_then(|()| build())
            .and_then(|()| demo::run()),
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
    run_command_in(command, &workspace_root())
}

/// Runs a command in `dir`, failing with its command line.
pub fn run_command_in(command: &mut Command, dir: &Path) -> anyhow::Result<()> {
    eprintln!("xtask: running {command:?} in {}", dir.display());
    let status = command
        .current_dir(dir)
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

/// One hygiene check `test` runs before any test.
struct Gate {
    /// What it checks, for the failure message.
    name: &'static str,
    /// Program and arguments (`cargo` is the rustup proxy, which understands `+nightly`).
    args: &'static [&'static str],
    /// How to fix a failure.
    fix: &'static str,
}

/// The gates, in order. The eBPF crate is linted on its own target: built
/// for the host its `#![no_std]` binary does not link, which is why the
/// workspace clippy leaves it out.
const GATES: [Gate; 3] = [
    Gate {
        name: "formatting",
        args: &["fmt", "--all", "--check"],
        fix: "run `cargo fmt --all`",
    },
    Gate {
        name: "clippy (workspace, host)",
        args: &[
            "clippy",
            "--workspace",
            "--exclude",
            "enforcer-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        fix: "fix the warnings above",
    },
    Gate {
        name: "clippy (enforcer-ebpf, bpfel-unknown-none)",
        args: EBPF_CLIPPY,
        fix: "fix the warnings above; every `unsafe` block needs a `// SAFETY:` comment",
    },
];

/// Clippy for the eBPF crate (library and programs) on the BPF target, with
/// nightly (`build-std` needs it, and nightly's rust-src from `setup`).
const EBPF_CLIPPY: &[&str] = &[
    "+nightly",
    "clippy",
    "-p",
    "enforcer-ebpf",
    "--target",
    "bpfel-unknown-none",
    "-Z",
    "build-std=core",
    "--",
    "-D",
    "warnings",
    "-D",
    "clippy::undocumented_unsafe_blocks",
];

/// Runs every gate (all of them, so one run shows every problem) and
/// returns the failed ones, each with its fix.
fn hygiene() -> Vec<String> {
    let root = workspace_root();
    let mut failed = Vec::new();
    for gate in &GATES {
        // The rustup proxy `cargo`, not $CARGO: only the proxy reads `+nightly`.
        let mut command = Command::new("cargo");
        command.args(gate.args);
        if let Err(error) = run_command_in(&mut command, &root) {
            eprintln!("xtask: gate {} failed: {error:#}", gate.name);
            failed.push(format!("gate {}: {}", gate.name, gate.fix));
        }
    }
    failed
}

/// `cargo xtask lint`: the gates alone.
fn lint() -> anyhow::Result<()> {
    let failed = hygiene();
    if !failed.is_empty() {
        bail!("{} gate(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

/// The hygiene gates, then every test. Kernel and daemon tests
/// (enforcer-tests) need root: as root they run natively; without root and
/// without CI they are left out and counted as skipped; under CI=true they
/// run anyway and fail (nothing is skipped under CI).
fn test() -> anyhow::Result<()> {
    // A failed gate fails `test` at the end; the tests still run, so one
    // run reports every layer.
    let gate_failures = hygiene();
    if !gate_failures.is_empty() {
        eprintln!(
            "xtask: {} hygiene gate(s) failed; running the tests anyway, `test` will fail",
            gate_failures.len()
        );
    }
    build()?;
    let root = workspace_root();
    let target = root.join("target/debug");
    let mut command = cargo();
    command
        .args([
            "test",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "enforcer-ebpf",
        ])
        .env("ENFORCER_BIN", target.join("enforcer"))
        .env("ENFORCER_PROBE", target.join("enforcer-probe"));
    let mut skip_reasons = Vec::new();
    let mut left_out = 0;
    match root_tests_plan(is_root(), std::env::var_os("CI").is_some()) {
        RootTests::Run => {}
        RootTests::RunToFail => eprintln!(
            "xtask: not root under CI=true: running enforcer-tests anyway; its root tests fail (nothing is skipped under CI)"
        ),
        RootTests::Skip => {
            left_out = count_listed_tests(cargo().args(["test", "-p", "enforcer-tests"]))?;
            eprintln!(
                "xtask: not root: leaving out enforcer-tests ({left_out} kernel, daemon and systemd-unit tests); run `sudo cargo xtask test` for them"
            );
            command.args(["--exclude", "enforcer-tests"]);
            skip_reasons.push(format!(
                "{left_out} in enforcer-tests (kernel, daemon, systemd units): not root"
            ));
        }
    }
    let mut totals = run_counting_tests(&mut command)?;
    if totals.skipped > 0 {
        skip_reasons.push(format!("{} #[ignore]d", totals.skipped));
    }
    totals.skipped += left_out;
    let mut failures = Vec::new();
    if totals.failed > 0 {
        failures.push(format!("cargo test: {} failed", totals.failed));
    }
    totals.failed += u64::try_from(gate_failures.len()).unwrap_or(u64::MAX);
    failures.extend(gate_failures);
    for target in FUZZ_TARGETS {
        match fuzz(target) {
            Ok(()) => totals.passed += 1,
            Err(error) => {
                totals.failed += 1;
                failures.push(format!("fuzz {target}: {error:#}"));
            }
        }
    }
    // The bench, once with a few requests per target, so it cannot rot
    // (as root: it attaches programs; no time is asserted).
    if root_tests_plan(is_root(), std::env::var_os("CI").is_some()) == RootTests::Skip {
        totals.skipped += 1;
        skip_reasons.push("cargo xtask bench --smoke: not root".to_owned());
    } else {
        match bench(true) {
            Ok(()) => totals.passed += 1,
            Err(error) => {
                totals.failed += 1;
                failures.push(format!("cargo xtask bench --smoke: {error:#}"));
            }
        }
    }
    match vm::run(&vm::VmArgs::default()) {
        Ok(vm) => {
            totals.passed += vm.passed;
            totals.failed += vm.failed;
        }
        Err(error) => {
            totals.failed += 1;
            failures.push(format!("cargo xtask test-vm: {error:#}"));
        }
    }
    let systemd = vm::VmArgs {
        systemd: true,
        ..vm::VmArgs::default()
    };
    match vm_systemd::run(&systemd) {
        Ok(vm_systemd::Outcome::Ran(checks)) => {
            totals.passed += checks.passed;
            totals.failed += checks.failed;
        }
        Ok(vm_systemd::Outcome::Skipped(why)) => {
            totals.skipped += 1;
            skip_reasons.push(why);
        }
        Err(error) => {
            totals.failed += 1;
            failures.push(format!("cargo xtask test-vm --systemd: {error:#}"));
        }
    }
    // One plain closing line for whoever reads the log's end.
    println!("{}", totals.closing_line(&skip_reasons));
    if totals.failed > 0 {
        bail!("{} test(s) failed: {}", totals.failed, failures.join("; "));
    }
    Ok(())
}

/// `cargo xtask bench`: the release build measured, its report written
/// into docs/; `--smoke`: the debug build, once, nothing written.
fn bench(smoke: bool) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the bench attaches kernel programs to cgroups of its own: run `sudo cargo xtask bench`"
        );
    }
    let root = workspace_root();
    let mut command;
    if smoke {
        build()?;
        let target = root.join("target/debug");
        command = Command::new(target.join("enforcer-bench"));
        command
            .args(["run", "--smoke", "--enforcer"])
            .arg(target.join("enforcer"))
            .args(["--peer-dir", router_peers::PEERS_DIR]);
    } else {
        run_command(cargo().args(["build", "--release", "--bins"]))?;
        let target = root.join("target/release");
        command = Command::new(target.join("enforcer-bench"));
        command
            .args(["run", "--enforcer"])
            .arg(target.join("enforcer"))
            .args(["--peer-dir", router_peers::PEERS_DIR])
            .arg("--out")
            .arg(root.join("docs"));
    }
    run_command(&mut command)
}

/// The tool matrix's test binary, with the binaries `build` made.
fn test_compat() -> anyhow::Result<()> {
    let target = workspace_root().join("target/debug");
    let totals = run_counting_tests(
        cargo()
            .args([
                "test",
                "-p",
                "enforcer-tests",
                "--test",
                "compat",
                "--",
                "--nocapture",
            ])
            .env("ENFORCER_BIN", target.join("enforcer"))
            .env("ENFORCER_PROBE", target.join("enforcer-probe")),
    )?;
    println!("{}", totals.closing_line(&[]));
    if totals.failed > 0 || totals.passed == 0 {
        bail!("the tool matrix failed (docs/COMPATIBILITY.md says what it measured)");
    }
    Ok(())
}

/// What to do with the tests that need root (enforcer-tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootTests {
    /// As root: run them.
    Run,
    /// Not root, under CI: run them so they fail; CI never skips.
    RunToFail,
    /// Not root, no CI: leave them out and count them as skipped.
    Skip,
}

fn root_tests_plan(root: bool, ci: bool) -> RootTests {
    match (root, ci) {
        (true, _) => RootTests::Run,
        (false, true) => RootTests::RunToFail,
        (false, false) => RootTests::Skip,
    }
}

/// How many tests `cargo test ... -- --list` names (building them, running none).
fn count_listed_tests(command: &mut Command) -> anyhow::Result<u64> {
    let output = command
        .args(["--", "--list", "--format", "terse"])
        .current_dir(workspace_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed with {}", output.status);
    }
    Ok(count_list_lines(&String::from_utf8_lossy(&output.stdout)))
}

/// Lines `NAME: test` in libtest's `--list --format terse` output.
fn count_list_lines(text: &str) -> u64 {
    let count = text.lines().filter(|line| line.ends_with(": test")).count();
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// The proxy's fuzz targets (proxy/fuzz) and how long each runs in `test`.
const FUZZ_TARGETS: [&str; 3] = ["client_hello", "connect_request", "dns_query"];
const FUZZ_SECONDS: u32 = 20;

/// Runs one fuzz target for a bounded time from its seeds; a crash fails it.
fn fuzz(target: &str) -> anyhow::Result<()> {
    let dir = workspace_root().join("proxy/fuzz");
    let corpus = dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    // The rustup proxy `cargo`, which understands `+nightly`.
    run_command_in(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .arg(dir.join("seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={FUZZ_SECONDS}")),
        &dir,
    )
}

/// Test counts summed over every `test result:` line cargo printed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TestTotals {
    /// Tests that passed.
    pub(crate) passed: u64,
    /// Tests that failed.
    pub(crate) failed: u64,
    /// Tests that did not run (`ignored`, or a layer left out).
    pub(crate) skipped: u64,
}

impl TestTotals {
    /// Adds one libtest summary line (`test result: ok. 3 passed; 0 failed; ...`).
    pub(crate) fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.skipped += count,
                _ => {}
            }
        }
    }

    /// `test: N passed, N failed, N skipped`, with why when any were skipped.
    fn closing_line(&self, skip_reasons: &[String]) -> String {
        let mut line = format!(
            "test: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        );
        if self.skipped > 0 && !skip_reasons.is_empty() {
            line.push_str(&format!(" ({})", skip_reasons.join("; ")));
        }
        line
    }
}

/// Runs `cargo test`, echoing its output while counting results.
fn run_counting_tests(command: &mut Command) -> anyhow::Result<TestTotals> {
    use std::io::{BufRead as _, BufReader};
    eprintln!("xtask: running {command:?}");
    let mut child = command
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let mut totals = TestTotals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            totals.add_line(&line);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        // A build failure or a crash counts even when no summary line said so.
        totals.failed = totals.failed.max(1);
        eprintln!("xtask: {command:?} failed with {status}");
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::{RootTests, TestTotals, count_list_lines, root_tests_plan};

    #[test]
    fn sums_libtest_summaries() {
        let mut totals = TestTotals::default();
        totals.add_line("test result: ok. 16 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.75s");
        totals.add_line(
            "test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out",
        );
        totals.add_line("running 3 tests");
        assert_eq!(
            totals,
            TestTotals {
                passed: 19,
                failed: 2,
                skipped: 1,
            }
        );
    }

    #[test]
    fn the_closing_line_counts_skipped_tests_and_says_why() {
        let totals = TestTotals {
            passed: 300,
            failed: 0,
            skipped: 27,
        };
        assert_eq!(
            totals.closing_line(&["27 in enforcer-tests: not root".into()]),
            "test: 300 passed, 0 failed, 27 skipped (27 in enforcer-tests: not root)"
        );
        let none = TestTotals {
            skipped: 0,
            ..totals
        };
        assert_eq!(
            none.closing_line(&[]),
            "test: 300 passed, 0 failed, 0 skipped"
        );
    }

    #[test]
    fn root_tests_are_skipped_only_without_root_and_without_ci() {
        assert_eq!(root_tests_plan(true, false), RootTests::Run);
        assert_eq!(root_tests_plan(true, true), RootTests::Run);
        assert_eq!(root_tests_plan(false, true), RootTests::RunToFail);
        assert_eq!(root_tests_plan(false, false), RootTests::Skip);
    }

    #[test]
    fn counts_tests_in_a_terse_list() {
        let text = "restart_works: test\nsystemd_units_verify: test\nsome_bench: bench\n\n";
        assert_eq!(count_list_lines(text), 2);
    }
}
