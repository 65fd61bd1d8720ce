//! enforcer-sandbox-probe: proves the seccomp `baseline-blocklist` on the
//! running kernel, with nothing else installed (no shell, cargo, Python or
//! git), so it can run as a static musl binary inside the QEMU VM.
//!
//! Each check forks a child that makes one real syscall, once with no filter
//! and once under the filter (which the child installs itself, exactly as
//! `enforcer run` does), and prints one line:
//!
//! ```text
//! check=NAME rule=RULE unfiltered=ok|ERRNO|killed-by-SIG filtered=... expect=... result=pass|FAIL proven=yes|no
//! ```
//!
//! then `summary checks=N failed=N unproven=N`. `proven=no` means the kernel
//! refused the call even unfiltered (e.g. TIOCSTI where legacy TIOCSTI is
//! off), so this machine cannot show that rule at work.
//!
//! ```text
//! enforcer-sandbox-probe [--exception NAME]... [--require-proven] [CHECK]...
//! enforcer-sandbox-probe --list
//! ```
//!
//! Exit status: 0 when every check passes (and, with `--require-proven`,
//! every refusal is proven); 1 otherwise; 2 when called wrongly or the
//! filter cannot be compiled (e.g. an unknown `--exception`).

use std::process::ExitCode;

use enforcer::sandbox::probe;
use enforcer::sandbox::{CompiledFilter, SeccompConfig};

const USAGE: &str =
    "usage: enforcer-sandbox-probe [--exception NAME]... [--require-proven] [CHECK]... | --list";

fn main() -> ExitCode {
    let mut config = SeccompConfig::baseline();
    let mut require_proven = false;
    let mut wanted: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--exception" => match args.next() {
                Some(name) => config.exceptions.push(name),
                None => {
                    eprintln!("--exception needs a syscall name\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--require-proven" => require_proven = true,
            "--list" => {
                for check in probe::checks() {
                    println!(
                        "{:<26} {:<18} {}",
                        check.name,
                        check.rule.label(),
                        check.about
                    );
                }
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other if other.starts_with('-') => {
                eprintln!("unknown option {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
            name => wanted.push(name.to_owned()),
        }
    }
    let all = probe::checks();
    for name in &wanted {
        if !all.iter().any(|c| c.name == name) {
            eprintln!("unknown check {name:?}; `enforcer-sandbox-probe --list` shows them");
            return ExitCode::from(2);
        }
    }
    let filter = match CompiledFilter::compile(&config) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("enforcer-sandbox-probe: {error}");
            return ExitCode::from(2);
        }
    };
    let selected: Vec<_> = all
        .iter()
        .filter(|c| wanted.is_empty() || wanted.iter().any(|w| w == c.name))
        .collect();
    let (mut failed, mut unproven) = (0usize, 0usize);
    for check in &selected {
        match probe::report(check, &config, filter.as_ref()) {
            Ok(report) => {
                failed += usize::from(!report.passed());
                unproven += usize::from(!report.proven());
                println!("{}", report.line());
            }
            Err(error) => {
                failed += 1;
                println!("check={} result=FAIL error={error:?}", check.name);
            }
        }
    }
    println!(
        "summary checks={} failed={failed} unproven={unproven}",
        selected.len()
    );
    if failed > 0 || (require_proven && unproven > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
