//! `enforcer allow | revoke | reload | events`: talk to the daemon's
//! control socket (and read the audit database).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use enforcer::{
    audit::{AuditRecord, AuditStore, Decision, EventFilter},
    daemon::{
        control::{ControlClient, Request, matches},
        paths::{self, DEFAULT_CONTROL_SOCKET, DEFAULT_STATE_DIR},
        protocol::{AllowResponse, ReloadResponse, RevokeResponse},
    },
};

use super::daemon_flags::{Since, parse_duration_flag, parse_since_flag};

/// Where the daemon listens.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketFlag {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    control_socket: PathBuf,
}

/// Allow HOST:PORT for a while: a runtime grant, persisted, expiring on
/// time in the proxy and in the kernel maps at the same moment.
///
/// Example: sudo enforcer allow registry.npmjs.org:443 --ttl 1h --reason "npm install"
#[derive(Debug, clap::Args)]
pub struct AllowArgs {
    /// `HOST[:PORT]` (port 443 when left out); `*.example.com` for subdomains.
    #[arg(value_name = "HOST:PORT")]
    target: String,
    /// How long (30s, 5m, 1h, 7d, PT1H).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_flag)]
    ttl: Duration,
    /// Why (kept in the audit log).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// A direct kernel entry (no proxy; exact host or address only).
    #[arg(long)]
    direct: bool,
    #[command(flatten)]
    socket: SocketFlag,
}

/// Remove every runtime grant for HOST:PORT.
///
/// Example: sudo enforcer revoke registry.npmjs.org:443
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// As given to `allow`.
    #[arg(value_name = "HOST:PORT")]
    target: String,
    #[command(flatten)]
    socket: SocketFlag,
}

/// Fetch and verify the policy source again; a refused pack leaves the
/// active policy in place.
///
/// Example: sudo enforcer reload
#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    socket: SocketFlag,
}

/// `--decision`: the CLI's spelling of the one [`Decision`].
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DecisionFlag {
    /// Only what was let through.
    Allow,
    /// Only what was refused.
    Deny,
}

impl From<DecisionFlag> for Decision {
    fn from(flag: DecisionFlag) -> Self {
        match flag {
            DecisionFlag::Allow => Decision::Allow,
            DecisionFlag::Deny => Decision::Deny,
        }
    }
}

/// Show audit events: kernel denies and proxy/router decisions.
///
/// Example: sudo enforcer events --since 1h --decision deny --comm curl --follow
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only events newer than this (30s, 5m, 1h, 7d), or since this
    /// RFC 3339 time (as `enforcer run`'s summary prints it).
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since_flag)]
    since: Option<Since>,
    /// Only allow or only deny.
    #[arg(long, value_enum)]
    decision: Option<DecisionFlag>,
    /// Keep printing new events as they happen (needs the daemon).
    #[arg(long)]
    follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// At most this many past events (the newest).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Only events of this process id (kernel denies, and proxy/router
    /// clients the kernel attributed).
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Only events of this command name (exact, as in /proc/PID/comm: at
    /// most 15 characters).
    #[arg(long, value_name = "NAME")]
    comm: Option<String>,
    /// Only events of this cgroup id (`enforcer status` shows the enforced one's).
    #[arg(long, value_name = "ID")]
    cgroup: Option<u64>,
    /// The daemon's state directory (where audit.db is).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(flatten)]
    socket: SocketFlag,
}

/// Runs `enforcer allow`.
pub fn allow(args: AllowArgs) -> anyhow::Result<ExitCode> {
    let grant: AllowResponse =
        ControlClient::new(&args.socket.control_socket).call_as(&Request::Allow {
            target: args.target,
            ttl_seconds: args.ttl.as_secs().max(1),
            reason: args.reason,
            direct: args.direct,
        })?;
    println!(
        "allowed {} ({}) until {}",
        grant.target, grant.scope, grant.expires_at
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `enforcer revoke`.
pub fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let revoked: RevokeResponse =
        ControlClient::new(&args.socket.control_socket).call_as(&Request::Revoke {
            target: args.target,
        })?;
    println!("revoked {} ({} grant(s))", revoked.target, revoked.removed);
    Ok(ExitCode::SUCCESS)
}

/// Runs `enforcer reload`.
pub fn reload(args: ReloadArgs) -> anyhow::Result<ExitCode> {
    let outcome: ReloadResponse =
        ControlClient::new(&args.socket.control_socket).call_as(&Request::Reload {})?;
    match outcome {
        ReloadResponse::Applied { version } => println!("applied policy version {version}"),
        ReloadResponse::Unchanged => {
            println!("the policy source holds the active pack; nothing changed")
        }
        ReloadResponse::NoSource { .. } => {
            println!("no --policy source configured; the active policy stays")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `enforcer events`.
pub fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let path = paths::audit_db(&args.state_dir);
    // What both the stored query and the live stream filter on.
    let live = EventFilter {
        decision: args.decision.map(Decision::from),
        pid: args.pid,
        comm: args.comm.clone(),
        cgroup_id: args.cgroup,
        ..EventFilter::default()
    };
    let mut stdout = std::io::stdout();
    let mut print = |record: &AuditRecord| {
        let line = if args.json {
            serde_json::to_string(record).unwrap_or_default()
        } else {
            record.summary()
        };
        write_line(&mut stdout, &line).context("writing to stdout")
    };
    if path.exists() || !args.follow {
        let filter = EventFilter {
            since: args.since.map(|since| since.resolve(SystemTime::now())),
            limit: Some(args.limit),
            ..live.clone()
        };
        for record in read_audit(&args.state_dir, &filter)? {
            if !print(&record)? {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    if args.follow {
        let mut failed = None;
        ControlClient::new(&args.socket.control_socket).follow(|record| {
            if !matches(&record, &live) {
                return true;
            }
            print(&record).unwrap_or_else(|error| {
                failed = Some(error);
                false
            })
        })?;
        if let Some(error) = failed {
            return Err(error);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The audit records under `state_dir` that match `filter`, oldest first
/// (`enforcer events`, `enforcer policy suggest`); an error naming the
/// directory when it holds no audit database.
pub fn read_audit(state_dir: &Path, filter: &EventFilter) -> anyhow::Result<Vec<AuditRecord>> {
    let path = paths::audit_db(state_dir);
    if !path.exists() {
        anyhow::bail!(
            "no audit database at {} (has a daemon run with --state-dir {}?)",
            path.display(),
            state_dir.display()
        );
    }
    let store = AuditStore::open_read_only(&path)?;
    store
        .query(filter)
        .with_context(|| format!("reading {}", path.display()))
}

/// Writes `line` and a newline; `Ok(false)` when the reader has gone (a
/// closed pipe: `enforcer events | head`), which ends the listing quietly
/// instead of a panic.
fn write_line(out: &mut impl std::io::Write, line: &str) -> std::io::Result<bool> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A reader that went away after `room` bytes.
    struct ClosedAfter {
        written: Vec<u8>,
        room: usize,
        error: std::io::ErrorKind,
    }

    impl std::io::Write for ClosedAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.written.len() + buf.len() > self.room {
                return Err(self.error.into());
            }
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_ends_the_listing_and_other_errors_fail_it() {
        let mut pipe = ClosedAfter {
            written: Vec::new(),
            room: 6,
            error: std::io::ErrorKind::BrokenPipe,
        };
        assert!(write_line(&mut pipe, "first").unwrap());
        assert!(!write_line(&mut pipe, "second").unwrap(), "the reader left");
        assert_eq!(pipe.written, b"first\n");
        let mut full = ClosedAfter {
            written: Vec::new(),
            room: 0,
            error: std::io::ErrorKind::StorageFull,
        };
        assert_eq!(
            write_line(&mut full, "x").unwrap_err().kind(),
            std::io::ErrorKind::StorageFull
        );
    }
}
