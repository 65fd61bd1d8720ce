//! `enforcer sandbox`: show the bubblewrap argv rendered from the policy,
//! and check the seccomp baseline on this kernel.

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use enforcer::sandbox::{
    self, BwrapConfig, CompiledFilter, ProcMode, RealFs, RenderOptions, SeccompConfig, bwrap, probe,
};

/// Inspect the sandbox that `enforcer run` builds from the policy.
///
/// Example: enforcer sandbox argv --policy policy.pack.json -- python3 -c 'print(1)'
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// The sandbox subcommand.
    #[command(subcommand)]
    pub command: SandboxCommand,
}

/// `enforcer sandbox` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SandboxCommand {
    /// Print the bwrap command line rendered from `sandboxLinux.bwrap`, as
    /// one shell-quoted line (bwrap's path first, then its arguments, then
    /// `--` and COMMAND if given). `readDeny` globs are expanded now, from
    /// the current directory; missing rw overlays are listed on stderr
    /// (`enforcer run --bwrap` creates them). The seccomp filter is not in
    /// this line: `enforcer run` hands it to bwrap as `--add-seccomp-fd`
    /// descriptors it creates at launch. The pack's signature is not checked.
    ///
    /// Example: eval "$(enforcer sandbox argv --policy policy.pack.json -- python3 -c 'print(1)')"
    Argv {
        /// Policy pack (JSON) to render; default: the embedded fallback pack.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// How the sandbox gets /proc: `auto` asks bwrap whether a fresh proc
        /// mount works here (it does not in some nested containers).
        #[arg(long, value_enum, default_value_t = ProcChoice::Auto)]
        proc: ProcChoice,
        /// The command to run inside the sandbox.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
    /// Run every seccomp check in a child process, once without and once
    /// under the policy's filter, and print one line per check:
    /// `check=NAME rule=RULE unfiltered=.. filtered=.. expect=.. result=pass|FAIL proven=yes|no`.
    /// `proven=no` means the kernel refused the call even unfiltered here,
    /// so this host cannot show the rule at work. Exits 1 if any check fails.
    ///
    /// Example: sudo enforcer sandbox check --policy policy.pack.json
    Check {
        /// Policy pack (JSON) whose `sandboxLinux.seccomp` to check; default:
        /// the embedded fallback pack.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Print the systemd drop-in that gives every `agent-<name>.service`
    /// what `enforcer run` applies (agents.slice, no new privileges, the
    /// socket families, the seccomp blocklist as far as systemd can express
    /// it), generated from the same blocklist. Install it as
    /// /etc/systemd/system/agent-.service.d/enforcer-sandbox.conf.
    ///
    /// Example: enforcer sandbox systemd-dropin | sudo tee /etc/systemd/system/agent-.service.d/enforcer-sandbox.conf
    SystemdDropin,
}

/// `--proc` of `enforcer sandbox argv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProcChoice {
    /// Detect with bwrap.
    Auto,
    /// `--proc /proc`.
    Fresh,
    /// No proc mount: the host's /proc, read-only (nested-container fallback).
    HostReadOnly,
}

/// Runs `enforcer sandbox`.
pub fn run(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SandboxCommand::Argv {
            policy,
            proc,
            command,
        } => argv(policy, proc, &command),
        SandboxCommand::Check { policy } => check(policy),
        SandboxCommand::SystemdDropin => {
            std::io::stdout()
                .write_all(sandbox::systemd::dropin().as_bytes())
                .context("writing the drop-in to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The checked policy's sandbox section, from a pack file or the fallback.
fn load_sandbox(path: Option<&PathBuf>) -> anyhow::Result<policy::Sandbox> {
    let Some(path) = path else {
        let fallback = policy::fallback_policy().context("the embedded fallback pack")?;
        return Ok(fallback.sandbox.clone());
    };
    let bytes =
        std::fs::read(path).with_context(|| format!("reading policy pack {}", path.display()))?;
    let policy = policy::parse_pack(&bytes, policy::ValidationMode::Signed)
        .with_context(|| format!("policy pack {}", path.display()))?;
    Ok(policy.sandbox)
}

fn argv(
    policy: Option<PathBuf>,
    proc: ProcChoice,
    command: &[OsString],
) -> anyhow::Result<ExitCode> {
    let sandbox = load_sandbox(policy.as_ref())?;
    let config = BwrapConfig::from_policy(&sandbox);
    let bwrap_path = bwrap::find_bwrap()?;
    let proc_mode = match proc {
        ProcChoice::Auto => bwrap::detect_proc_mode(&bwrap_path)?,
        ProcChoice::Fresh => ProcMode::Fresh,
        ProcChoice::HostReadOnly => ProcMode::HostReadOnly,
    };
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let options = RenderOptions {
        cwd: &cwd,
        proc_mode,
        seccomp_fds: &[],
        command,
    };
    let plan = bwrap::render(&config, &options, &RealFs)?;
    if proc_mode == ProcMode::HostReadOnly {
        eprintln!(
            "warning: no fresh /proc (nested-container fallback): the sandbox sees the host's /proc read-only, including other processes"
        );
    }
    for missing in plan.missing_overlays() {
        eprintln!(
            "note: rw overlay {} does not exist; `enforcer run --bwrap` creates it",
            missing.display()
        );
    }
    let mut line = shell_quote(bwrap_path.as_os_str());
    for arg in &plan.args {
        line.push(b' ');
        line.extend(shell_quote(arg));
    }
    line.push(b'\n');
    std::io::stdout()
        .write_all(&line)
        .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn check(policy: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let sandbox = load_sandbox(policy.as_ref())?;
    let config = SeccompConfig::from_policy(&sandbox);
    let filter = CompiledFilter::compile(&config)?;
    if filter.is_none() {
        eprintln!("note: the policy's seccomp profile is off; every check runs unfiltered");
    }
    let mut failed = 0;
    let mut unproven = 0;
    let checks = probe::checks();
    for c in &checks {
        let report = probe::report(c, &config, filter.as_ref())
            .with_context(|| format!("running check {}", c.name))?;
        failed += usize::from(!report.passed());
        unproven += usize::from(!report.proven());
        println!("{}", report.line());
    }
    println!(
        "summary checks={} failed={failed} unproven={unproven} profile={}",
        checks.len(),
        match config.profile {
            sandbox::SeccompProfile::BaselineBlocklist => sandbox::seccomp::PROFILE_NAME,
            sandbox::SeccompProfile::Off => "off",
        }
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// POSIX shell quoting of one argument (raw bytes kept as they are).
fn shell_quote(arg: &OsStr) -> Vec<u8> {
    let bytes = arg.as_bytes();
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(b);
    if !bytes.is_empty() && bytes.iter().all(plain) {
        return bytes.to_vec();
    }
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(b'\'');
    for &b in bytes {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_round_trips_through_sh() {
        let args = ["plain/path-1.0", "", "it's", "a b", "$HOME", "x\ny", "*"];
        let mut script = b"printf '%s\\0'".to_vec();
        for arg in args {
            script.push(b' ');
            script.extend(shell_quote(OsStr::new(arg)));
        }
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(OsStr::from_bytes(&script))
            .output()
            .unwrap();
        assert!(out.status.success());
        let got: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
        let expected: Vec<&[u8]> = args
            .iter()
            .map(|a| a.as_bytes())
            .chain([&b""[..]])
            .collect();
        assert_eq!(got, expected);
        assert_eq!(shell_quote(OsStr::new("/usr/bin/bwrap")), b"/usr/bin/bwrap");
    }

    #[test]
    fn fallback_pack_renders_a_read_only_root() {
        let sandbox = load_sandbox(None).unwrap();
        let config = BwrapConfig::from_policy(&sandbox);
        let options = RenderOptions {
            cwd: std::path::Path::new("/"),
            proc_mode: ProcMode::Fresh,
            seccomp_fds: &[],
            command: &[],
        };
        let plan = bwrap::render(&config, &options, &RealFs).unwrap();
        assert_eq!(
            plan.args[..3],
            [OsString::from("--ro-bind"), "/".into(), "/".into()]
        );
    }

    #[test]
    fn a_bad_pack_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack.json");
        std::fs::write(&path, b"{\"schema\": 1}").unwrap();
        let err = format!("{:#}", load_sandbox(Some(&path)).unwrap_err());
        assert!(err.contains("pack.json"), "{err}");
    }
}
