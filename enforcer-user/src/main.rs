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
    Status(cli::status::StatusArgs),
    /// Make, sign, verify, lint and show policy packs.
    Policy(cli::policy::PolicyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach(args) => cli::attach::run(args),
        Command::Detach(args) => cli::detach::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Policy(args) => cli::policy::run(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("enforcer: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
