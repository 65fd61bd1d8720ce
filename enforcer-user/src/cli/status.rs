//! `enforcer status`: what is enforced, read from the pins.

use std::{
    fmt::Write as _,
    process::ExitCode,
    time::{Duration, UNIX_EPOCH},
};

use enforcer::kernel::{
    CgroupMount,
    events::boot_now_ns,
    redirect::Mode,
    status::{self, CgroupStatus},
};
use enforcer::sandbox::systemd::SliceUnits;
use enforcer::{
    daemon::{
        control::ControlClient,
        paths::{DEFAULT_CONTROL_SOCKET, DEFAULT_STATE_DIR},
        protocol::Request,
    },
    selftest,
};
use enforcer_ebpf::NEVER_EXPIRES;

/// Show attached cgroups, their programs, counters and recent denies. Works
/// with no enforcer process running: everything is read from the pins.
///
/// Example: sudo enforcer status --json
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The daemon's state directory (its last self-test report).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: std::path::PathBuf,
    /// The daemon's control socket: when a daemon answers there, its DNS
    /// filter's counts are shown for the cgroup it enforces.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    control_socket: std::path::PathBuf,
}

/// Runs `enforcer status`.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mount = CgroupMount::find()?;
    let cgroups = status::collect(&mount)?;
    // Slice mode: whether the units systemd runs in each enforced cgroup
    // carry the sandbox drop-in (`enforcer sandbox systemd-dropin`).
    let slice_units: Vec<SliceUnits> = cgroups
        .iter()
        .map(|cgroup| match &cgroup.cgroup {
            Some(name) => SliceUnits::inspect(&mount.path.join(name.trim_start_matches('/'))),
            None => SliceUnits::Checked { units: Vec::new() },
        })
        .collect();
    let last_selftest = selftest::load_report(&args.state_dir);
    // Counts only the daemon holds (the DNS filter's answers and
    // refusals); nothing when no daemon answers.
    let daemon = ControlClient::new(&args.control_socket)
        .call(&Request::Status {})
        .ok();
    let daemon_dns = |cgroup_id: u64| {
        daemon
            .as_ref()
            .filter(|status| status["cgroup_id"] == cgroup_id)
            .map(|status| status["dns"].clone())
            .filter(|dns| !dns.is_null())
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "cgroups": cgroups,
                "slice_units": slice_units,
                "selftest": last_selftest,
                "daemon_dns": daemon.as_ref().map(|status| serde_json::json!({
                    "cgroup_id": status["cgroup_id"],
                    "dns": status["dns"],
                })),
            }))?
        );
    } else if cgroups.is_empty() {
        println!(
            "no cgroup is enforced (nothing pinned under {})",
            enforcer::kernel::paths::PIN_ROOT
        );
    } else {
        for (cgroup, units) in cgroups.iter().zip(&slice_units) {
            print!("{}", render(cgroup));
            if let Some(dns) = daemon_dns(cgroup.cgroup_id) {
                println!("  {}", dns_counts(&dns));
            }
            println!("  {}", units.describe());
        }
    }
    if !args.json {
        match &last_selftest {
            Some(report) => {
                for line in report.render().lines() {
                    println!("  {line}");
                }
            }
            None => println!(
                "  self-test: no result in {} (no daemon has run with this --state-dir)",
                args.state_dir.display()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon's DNS filter counters as one line.
fn dns_counts(dns: &serde_json::Value) -> String {
    let count = |name: &str| dns[name].as_u64().unwrap_or(0);
    format!(
        "DNS filter: answered {}, empty {}, refused {} ({} not audited one by one), servfail {}, malformed {}",
        count("answered"),
        count("empty"),
        count("refused"),
        count("refusals_suppressed"),
        count("servfail"),
        count("malformed")
    )
}

/// The text form of one cgroup's status.
fn render(status: &CgroupStatus) -> String {
    let mut out = String::new();
    let name = status.cgroup.as_deref().unwrap_or("(directory removed)");
    let _ = writeln!(out, "cgroup {name} (id {})", status.cgroup_id);
    let attached = status.hooks.iter().filter(|hook| hook.attached).count();
    let missing: Vec<&str> = status
        .hooks
        .iter()
        .filter(|hook| !hook.attached)
        .map(|hook| hook.program)
        .collect();
    let _ = write!(
        out,
        "  programs: {attached}/{} attached",
        status.hooks.len()
    );
    if !missing.is_empty() {
        let _ = write!(out, " (not attached: {})", missing.join(", "));
    }
    out.push('\n');
    if status.families_enforced {
        let _ = writeln!(
            out,
            "  socket families: enforced by BPF-LSM (only unix, inet, inet6, netlink)"
        );
    } else {
        let _ = writeln!(
            out,
            "  socket families: NOT enforced: {} (the BPF-LSM program is not attached on this kernel; `enforcer run` adds a seccomp rule)",
            status.families_not_enforced.join(", ")
        );
    }
    if status.ptrace_enforced {
        let _ = writeln!(
            out,
            "  ptrace: enforced by BPF-LSM (processes outside the cgroup cannot be traced or read)"
        );
    } else {
        let _ = writeln!(
            out,
            "  ptrace: NOT enforced: a process in the cgroup can trace a same-uid process outside it (the BPF-LSM program is not attached on this kernel; run agents under a dedicated uid; `enforcer run` adds a seccomp rule)"
        );
    }
    // === unix sockets (issue 14) ===
    if status.unix_enforced {
        let _ = writeln!(
            out,
            "  unix sockets: enforced (allowed: {})",
            or_none(&status.unix_rules)
        );
    } else {
        let _ = writeln!(
            out,
            "  unix sockets: not enforced ({})",
            status.unix_not_enforced.as_deref().unwrap_or("unknown")
        );
    }
    let endpoints: Vec<String> = status
        .endpoints
        .iter()
        .map(|e| format!("{:?} {}", e.transport, e.addr).to_lowercase())
        .collect();
    let _ = writeln!(out, "  endpoints: {}", or_none(&endpoints));
    let _ = match status.egress_mode {
        Mode::ProxyOnly => writeln!(out, "  egress mode: proxy-only"),
        Mode::Redirect => {
            let listeners: Vec<String> =
                status.transparent.iter().map(ToString::to_string).collect();
            let ports: Vec<String> = status
                .redirect_ports
                .iter()
                .map(ToString::to_string)
                .collect();
            writeln!(
                out,
                "  egress mode: redirect (transparent listener {}; ports {}; redirected {})",
                or_none(&listeners),
                or_none(&ports),
                status.counters.redirected
            )
        }
    };
    let _ = if status.dns_filter.is_empty() {
        writeln!(
            out,
            "  DNS: denied (egress.dns = deny, or no DNS filter listener)"
        )
    } else {
        let listeners: Vec<String> = status.dns_filter.iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "  DNS: filtered (port 53 rewritten to {}; rewritten {})",
            listeners.join(", "),
            status.counters.dns_redirected
        )
    };
    let now = boot_now_ns();
    let direct: Vec<String> = status
        .direct
        .iter()
        .map(|entry| {
            let expiry = if entry.expires_at_boot_ns == NEVER_EXPIRES {
                "never expires".to_owned()
            } else if entry.expires_at_boot_ns <= now {
                "expired".to_owned()
            } else {
                let left = Duration::from_secs((entry.expires_at_boot_ns - now) / 1_000_000_000);
                format!("expires in {}", humantime::format_duration(left))
            };
            format!("{:?} {} ({expiry})", entry.transport, entry.addr).to_lowercase()
        })
        .collect();
    let _ = writeln!(out, "  direct entries: {}", or_none(&direct));
    let counters = &status.counters;
    let by_reason: Vec<String> = counters
        .denied
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(reason, count)| format!("{reason} {count}"))
        .collect();
    let _ = writeln!(
        out,
        "  counters: allowed {}, denied {}{}, events lost {}",
        counters.allowed,
        counters.denied_total(),
        if by_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", by_reason.join(", "))
        },
        counters.events_lost
    );
    if status.recent_denies.is_empty() {
        let _ = writeln!(out, "  recent denies: none");
    } else {
        let _ = writeln!(out, "  recent denies (oldest first):");
        for record in &status.recent_denies {
            let time = UNIX_EPOCH + Duration::from_secs_f64(record.time.max(0.0));
            let _ = writeln!(
                out,
                "    {} {record}",
                humantime::format_rfc3339_seconds(time)
            );
        }
    }
    out
}

fn or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}
