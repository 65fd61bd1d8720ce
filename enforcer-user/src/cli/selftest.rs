//! `enforcer selftest`: run the daemon's self-test now and print its table;
//! `enforcer selftest-probe` (hidden): the probe the daemon starts inside
//! the leaf cgroup.

use std::{path::PathBuf, process::ExitCode};

use enforcer::{
    daemon::{
        control::{ControlClient, Request},
        paths::DEFAULT_CONTROL_SOCKET,
    },
    selftest::{SelftestReport, probe},
};

/// Prove the running daemon's enforcement now: a probe in a leaf cgroup
/// tries the whole bypass matrix against decoys the daemon owns. Exits 1
/// when an attempt this kernel's layers claim to stop got through.
///
/// Example: sudo enforcer selftest --json
#[derive(Debug, clap::Args)]
pub struct SelftestArgs {
    /// Run the probe under this cgroup (the enforced cgroup or below it;
    /// default: the enforced cgroup).
    #[arg(long, value_name = "NAME")]
    cgroup: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    control_socket: PathBuf,
}

/// Runs `enforcer selftest`.
pub fn run(args: SelftestArgs) -> anyhow::Result<ExitCode> {
    let report: SelftestReport =
        ControlClient::new(&args.control_socket).call_as(&Request::Selftest {
            cgroup: args.cgroup,
        })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The self-test probe (started by the daemon; not for people).
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Be the ptrace rows' target outside the cgroup instead: wait for
    /// stdin to close.
    #[arg(long)]
    hold: bool,
}

/// Runs `enforcer selftest-probe`: plan on stdin, report on stdout.
pub fn probe(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    probe::set_comm();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    if args.hold {
        probe::hold(&mut stdin.lock(), &mut stdout.lock())?;
    } else {
        probe::run(&mut stdin.lock(), &mut stdout.lock())?;
    }
    Ok(ExitCode::SUCCESS)
}
