//! `enforcer`: kernel-enforced egress control for sandboxed AI coding agents.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kernel-enforced egress control for sandboxed AI coding agents.
#[derive(Debug, Parser)]
#[command(name = "enforcer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Attach(cli::attach::AttachArgs),
    Detach(cli::detach::DetachArgs),
    Run(cli::run::RunArgs),
    Status(cli::status::StatusArgs),
    Allow(cli::control::AllowArgs),
    Revoke(cli::control::RevokeArgs),
    Reload(cli::control::ReloadArgs),
    Events(cli::control::EventsArgs),
    /// Make, sign, verify, lint and show policy packs.
    Policy(cli::policy::PolicyArgs),
    Sandbox(cli::sandbox::SandboxArgs),
    Selftest(cli::selftest::SelftestArgs),
    #[command(name = "selftest-probe", hide = true)]
    SelftestProbe(cli::selftest::ProbeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach(args) => cli::attach::run(args),
        Command::Detach(args) => cli::detach::run(args),
        Command::Run(args) => cli::run::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Allow(args) => cli::control::allow(args),
        Command::Revoke(args) => cli::control::revoke(args),
        Command::Reload(args) => cli::control::reload(args),
        Command::Events(args) => cli::control::events(args),
        Command::Policy(args) => cli::policy::run(args).map(|()| ExitCode::SUCCESS),
        Command::Sandbox(args) => cli::sandbox::run(args),
        Command::Selftest(args) => cli::selftest::run(args),
        Command::SelftestProbe(args) => cli::selftest::probe(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("enforcer: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
