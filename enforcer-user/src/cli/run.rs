//! `enforcer run -- CMD`: one enforced command in a transient cgroup.
//!
//! When a daemon answers on the control socket, the command's cgroup is a
//! child of the daemon's enforced cgroup (its programs apply to
//! descendants) and the command uses the daemon's proxy and router.
//! Otherwise `run` enforces in-process: it attaches to a new cgroup and
//! serves its own proxy and router on free loopback ports until the
//! command exits. Either way the cgroup is removed afterwards and the
//! command's exit status (or 128 + signal) is passed through.
//!
//! The command owns its terminal: the enforcer's log goes to
//! `<state-dir>/run-<id>.log` (journald under systemd); stderr gets one
//! line before the command starts (`--quiet` drops it), the decisions live
//! with `--verbose`, and after the command the run's denies from the audit
//! log (`run_summary`, `--summary off|short|full`).

use std::{
    ffi::{CString, OsString},
    net::SocketAddr,
    os::{
        fd::{AsRawFd as _, BorrowedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use enforcer::{
    audit::{AuditRecord, AuditStore, Decision, EventFilter, Retention, record::millis},
    daemon::{
        self, Listeners,
        control::{ControlClient, Request},
        paths::{self, DEFAULT_CONTROL_SOCKET, DEFAULT_STATE_DIR},
    },
    kernel::{self, CgroupMount, CgroupPath, maps::parse_socket_addr},
    sandbox::{self, seccomp::CompiledFilter},
};
use nix::unistd::{Gid, Uid, User, getgrouplist, getuid, setgid, setgroups, setuid};

use super::{
    daemon_flags::DaemonFlags,
    logging::{self, LogDestination},
    run_summary::{GrantTarget, Hints, RunScope, Summary, SummaryMode, render},
};

/// Run one command under enforcement: a transient cgroup, the egress proxy
/// and lane router in its environment, privileges dropped to the invoking
/// user (SUDO_UID/SUDO_GID) or `--user`, the exit status passed through.
///
/// The command owns the terminal: before it starts, one line says what is
/// enforced; while it runs, the enforcer's log goes to
/// `<state-dir>/run-<id>.log` (or journald under systemd); when it ends, a
/// summary says what was denied and how to allow it.
///
/// Example: sudo enforcer run -- claude
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Run the command as this user (default: the user who ran sudo).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// The proxy address when run serves its own (default: a free loopback port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0", value_parser = parse_socket_addr)]
    proxy_listen: SocketAddr,
    /// The router address when run serves its own (default: a free loopback port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0", value_parser = parse_socket_addr)]
    router_listen: SocketAddr,
    /// The seccomp filter applied to the command: the baseline blocklist
    /// (with the policy's exceptions) or none.
    #[arg(long, value_enum, default_value = "baseline")]
    seccomp: SeccompMode,
    /// Run the command inside bubblewrap, set up from the policy's
    /// sandboxLinux.bwrap section (read-only root, overlays, read-deny masks).
    #[arg(long)]
    bwrap: bool,
    /// A daemon's control socket; when one answers, run uses that daemon.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    control_socket: PathBuf,
    /// Print nothing before the command starts (and no "nothing was
    /// denied" after it).
    #[arg(long)]
    quiet: bool,
    /// Print every decision about the command to stderr as it happens, one
    /// plain line each (for debugging: it shares the command's terminal).
    #[arg(long)]
    verbose: bool,
    /// What to say about denies when the command ends.
    #[arg(long, value_enum, default_value = "short")]
    summary: SummaryMode,
    #[command(flatten)]
    flags: DaemonFlags,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// `--seccomp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SeccompMode {
    /// The baseline blocklist (docs/SANDBOX.md).
    Baseline,
    /// No filter.
    Off,
}

/// How the command is confined besides the cgroup.
struct Confinement {
    seccomp: SeccompMode,
    bwrap: bool,
}

/// Who the command runs as.
#[derive(Debug, Clone)]
struct Identity {
    uid: u32,
    gid: u32,
    groups: Vec<Gid>,
    name: String,
    home: String,
}

/// What the start-up line reports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Enforcement {
    /// `None`: in-process; else the daemon's cgroup.
    daemon_cgroup: Option<String>,
    /// The policy's version.
    policy_version: String,
    /// The policy is the embedded fallback.
    policy_fallback: bool,
    /// BPF-LSM enforces socket families.
    families_enforced: bool,
}

/// What the command's environment and confinement come from.
struct Launch<'a> {
    listeners: Listeners,
    /// Removed from the command's environment.
    credential_names: &'a [String],
    /// The policy's sandbox section.
    sandbox: &'a policy::Sandbox,
}

/// What is known once the command has ended.
struct Ended {
    code: ExitCode,
    at: SystemTime,
    /// The audit database holding the run's decisions.
    audit_db: PathBuf,
    /// Its state directory, when `enforcer events` needs `--state-dir`.
    state_dir_hint: Option<PathBuf>,
    /// Who takes `enforcer allow`.
    grants: GrantTarget,
}

/// How long a daemon's audit writer may take to store the last decisions.
const SETTLE_MAX: Duration = Duration::from_secs(3);
/// The newest record id standing still this long means the writer caught up.
const SETTLE_QUIET: Duration = Duration::from_millis(400);
/// Kernel and proxy clocks against ours: records this much before the start still count.
const CLOCK_SLACK: Duration = Duration::from_secs(2);

/// Runs `enforcer run`.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = SystemTime::now();
    let run_id = format!("{}-{}", millis(started) / 1000, std::process::id());
    start_logging(&args.flags, &run_id, started)?;
    tracing::info!(run_id = %run_id, command = ?args.command, "enforcer run");
    let identity = identity(args.user.as_deref())?;
    if identity.uid == 0 {
        eprintln!(
            "enforcer: WARNING: {:?} will run as root. Root can move itself out of the enforced cgroup and undo \
             other controls; run through sudo as a normal user, or pass --user NAME.",
            args.command[0]
        );
    }
    let confinement = Confinement {
        seccomp: args.seccomp,
        bwrap: args.bwrap,
    };
    if args.bwrap {
        sandbox::bwrap::find_bwrap()?;
    }
    let mount = CgroupMount::find()?;
    let daemon_status = ControlClient::new(&args.control_socket)
        .call(&Request::Status {})
        .ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let name = match &daemon_status {
        Some(status) => format!(
            "{}/enforcer-run-{}",
            status["cgroup"]
                .as_str()
                .context("the daemon's status names no cgroup")?,
            std::process::id()
        ),
        None => format!("enforcer-run-{}", std::process::id()),
    };
    let cgroup = mount.resolve(&name)?;
    cgroup.create()?;
    let outcome = match cgroup.id() {
        Ok(cgroup_id) => runtime.block_on(async {
            let scope = RunScope {
                cgroup_id,
                start_ms: millis(started),
                end_ms: i64::MAX,
            };
            match &daemon_status {
                Some(status) => {
                    under_daemon(status, &args, &cgroup, &identity, &confinement, scope).await
                }
                None => in_process(&args, &mount, &cgroup, &identity, &confinement, scope).await,
            }
            .map(|ended| (ended, cgroup_id))
        }),
        Err(error) => Err(error.into()),
    };
    remove_cgroup(&cgroup, daemon_status.is_none());
    let (ended, cgroup_id) = outcome?;
    let scope = RunScope {
        cgroup_id,
        start_ms: millis(started),
        end_ms: millis(ended.at),
    };
    let hints = Hints {
        sudo: invoked_by_sudo(),
        start: started,
        cgroup_id,
        state_dir: ended.state_dir_hint.clone(),
        grants: ended.grants.clone(),
    };
    if args.summary != SummaryMode::Off {
        match read_summary(&ended.audit_db, started, &scope) {
            Ok(summary) => {
                if let Some(text) = render(&summary, args.summary, &hints, args.quiet) {
                    eprint!("{text}");
                }
            }
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "reading the run's denies");
                eprintln!("enforcer: no summary: {error:#}");
            }
        }
    }
    tracing::info!(run_id = %run_id, "enforcer run ended");
    Ok(ended.code)
}

/// The run's own log: journald when stderr is the journal (under systemd),
/// else `<state-dir>/run-<id>.log`, never the command's terminal. Old run
/// logs go with the audit database's retention.
fn start_logging(flags: &DaemonFlags, run_id: &str, now: SystemTime) -> anyhow::Result<()> {
    if logging::stderr_is_journal() {
        logging::init(flags.log_format, "info", LogDestination::Stderr);
        return Ok(());
    }
    let path = logging::run_log_path(&flags.state_dir, run_id);
    let file = logging::open_run_log(&path)?;
    logging::init(flags.log_format, "info", LogDestination::File(file));
    let removed = logging::rotate_run_logs(&flags.state_dir, Retention::default().max_age, now);
    if removed > 0 {
        tracing::info!(removed, "old run logs removed");
    }
    Ok(())
}

/// The command under a running daemon: its cgroup is a child of the
/// daemon's, its proxy and router are the daemon's.
async fn under_daemon(
    status: &serde_json::Value,
    args: &RunArgs,
    cgroup: &CgroupPath,
    identity: &Identity,
    confinement: &Confinement,
    scope: RunScope,
) -> anyhow::Result<Ended> {
    let credential_names: Vec<String> = status["credential_names"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let listener = |name: &str| -> Option<std::net::SocketAddr> {
        status["listeners"][name]
            .as_str()
            .and_then(|a| a.parse().ok())
    };
    let listeners: Listeners = Listeners {
        proxy: listener("proxy").context("the daemon's status has no proxy address")?,
        router: listener("router").context("the daemon's status has no router address")?,
        transparent: listener("transparent"),
        transparent6: listener("transparent6"),
        dns: listener("dns"),
        dns6: listener("dns6"),
    };
    tracing::info!(cgroup = %cgroup.relative.display(), "using the running daemon");
    // The daemon's pack is not at hand here: confine with the embedded
    // fallback's sandbox section (baseline, no exceptions).
    let sandbox = policy::fallback_policy()
        .map(|policy| policy.sandbox.clone())
        .context("reading the embedded fallback policy")?;
    // A daemon older than the `state_dir` status field: assume it shares ours.
    let state_dir = status["state_dir"]
        .as_str()
        .map_or_else(|| args.flags.state_dir.clone(), PathBuf::from);
    let enforcement = Enforcement {
        daemon_cgroup: status["cgroup"].as_str().map(str::to_owned),
        policy_version: status["policy"]["version"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned(),
        policy_fallback: status["policy"]["origin"]["kind"] == "fallback",
        families_enforced: status["families_enforced"].as_bool().unwrap_or(false),
    };
    let live = LiveLines::new(args.verbose);
    if args.verbose {
        let client = ControlClient::new(&args.control_socket);
        let lines = live.clone();
        // Ends with the process (the stream has no end of its own).
        std::thread::spawn(move || {
            let _ = client.follow(|record| lines.show(&record, &scope));
        });
    }
    if !args.quiet {
        eprintln!(
            "{}",
            banner(&enforcement, confinement.seccomp, invoked_by_sudo())
        );
    }
    let launch = Launch {
        listeners,
        credential_names: &credential_names,
        sandbox: &sandbox,
    };
    let code = spawn_and_wait(cgroup, identity, &launch, confinement, &args.command).await;
    let at = SystemTime::now();
    kill_cgroup(cgroup);
    let audit_db = paths::audit_db(&state_dir);
    let settle = audit_db.clone();
    let _ = tokio::task::spawn_blocking(move || wait_for_writer(&settle)).await;
    live.close();
    Ok(Ended {
        code: code?,
        at,
        audit_db,
        state_dir_hint: (state_dir != Path::new(DEFAULT_STATE_DIR)).then_some(state_dir),
        grants: GrantTarget::Daemon(
            (args.control_socket != Path::new(DEFAULT_CONTROL_SOCKET))
                .then(|| args.control_socket.clone()),
        ),
    })
}

/// The command with enforcement served by this process: attach to the
/// transient cgroup, serve a proxy and router until the command exits.
async fn in_process(
    args: &RunArgs,
    mount: &CgroupMount,
    cgroup: &CgroupPath,
    identity: &Identity,
    confinement: &Confinement,
    scope: RunScope,
) -> anyhow::Result<Ended> {
    let options = args.flags.options(
        mount.clone(),
        cgroup.clone(),
        args.proxy_listen,
        args.router_listen,
        None,
    )?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (ready, listening) = tokio::sync::oneshot::channel();
    let serving = tokio::spawn(daemon::run(options, stopped, Some(ready)));
    let ready = match listening.await {
        Ok(ready) => ready,
        Err(_) => {
            return match serving.await {
                Ok(Err(error)) => Err(error.into()),
                _ => Err(anyhow::anyhow!(
                    "the in-process enforcer stopped before it was ready"
                )),
            };
        }
    };
    let enforcement = Enforcement {
        daemon_cgroup: None,
        policy_version: ready.policy_version.clone(),
        policy_fallback: ready.policy_fallback,
        families_enforced: ready.families_enforced,
    };
    let live = LiveLines::new(args.verbose);
    let streaming = args.verbose.then(|| {
        let mut records = ready.live.subscribe();
        let lines = live.clone();
        tokio::spawn(async move {
            loop {
                match records.recv().await {
                    Ok(record) => {
                        lines.show(&record, &scope);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                        lines.say(&format!("enforcer: ({skipped} decisions not shown)"));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    });
    if !args.quiet {
        eprintln!(
            "{}",
            banner(&enforcement, confinement.seccomp, invoked_by_sudo())
        );
    }
    let launch = Launch {
        listeners: ready.listeners,
        credential_names: &ready.credential_names,
        sandbox: &ready.sandbox,
    };
    let code = spawn_and_wait(cgroup, identity, &launch, confinement, &args.command).await;
    let at = SystemTime::now();
    // What the command left behind ends before the enforcer stops; the
    // stop drains the kernel's last events and flushes the audit log.
    kill_cgroup(cgroup);
    let _ = stop.send(true);
    match serving.await {
        Ok(Err(error)) => tracing::warn!(error = %error, "in-process enforcer"),
        Err(error) => tracing::warn!(error = %error, "in-process enforcer task"),
        Ok(Ok(())) => {}
    }
    // The writer has stored (and streamed) its last records: show them,
    // then stop before the summary.
    drop(ready);
    if let Some(streaming) = streaming {
        let _ = tokio::time::timeout(Duration::from_secs(2), streaming).await;
    }
    live.close();
    let state_dir = args.flags.state_dir.clone();
    Ok(Ended {
        code: code?,
        at,
        audit_db: paths::audit_db(&state_dir),
        state_dir_hint: (state_dir != Path::new(DEFAULT_STATE_DIR)).then_some(state_dir),
        grants: GrantTarget::NoDaemon,
    })
}

/// The one line printed before the command starts.
fn banner(enforcement: &Enforcement, seccomp: SeccompMode, sudo: bool) -> String {
    let mut line = match &enforcement.daemon_cgroup {
        Some(cgroup) => format!("enforcer: enforcing via the daemon ({cgroup})"),
        None => "enforcer: enforcing in-process".to_owned(),
    };
    if enforcement.policy_fallback {
        line.push_str(", fallback policy");
    } else {
        line.push_str(&format!(", policy {}", enforcement.policy_version));
    }
    if !enforcement.families_enforced {
        line.push_str(match seccomp {
            SeccompMode::Baseline => "; socket families: seccomp only, not this kernel",
            SeccompMode::Off => "; socket families: NOT enforced",
        });
    }
    let sudo = if sudo { "sudo " } else { "" };
    line.push_str(&format!("; see {sudo}enforcer status"));
    line
}

/// `--verbose`: one plain line per decision on stderr, until the command
/// has ended (so no line interleaves with the summary).
#[derive(Clone)]
struct LiveLines {
    open: Arc<Mutex<bool>>,
}

impl LiveLines {
    fn new(open: bool) -> Self {
        Self {
            open: Arc::new(Mutex::new(open)),
        }
    }

    /// Prints `record` when it is the run's; false once closed.
    fn show(&self, record: &AuditRecord, scope: &RunScope) -> bool {
        if scope.contains(record) {
            self.say(&format!("enforcer: {}", record.summary()))
        } else {
            self.is_open()
        }
    }

    fn say(&self, line: &str) -> bool {
        match self.open.lock() {
            Ok(open) if *open => {
                eprintln!("{line}");
                true
            }
            _ => false,
        }
    }

    fn is_open(&self) -> bool {
        self.open.lock().is_ok_and(|open| *open)
    }

    fn close(&self) {
        if let Ok(mut open) = self.open.lock() {
            *open = false;
        }
    }
}

/// Waits until a daemon's audit writer has stored what the command's last
/// connects produced: its newest record id stands still for
/// [`SETTLE_QUIET`], or [`SETTLE_MAX`] passed.
fn wait_for_writer(audit_db: &Path) {
    let Ok(store) = AuditStore::open_read_only(audit_db) else {
        return;
    };
    let deadline = Instant::now() + SETTLE_MAX;
    let mut last = store.last_id().unwrap_or(0);
    let mut still_since = Instant::now();
    while Instant::now() < deadline && still_since.elapsed() < SETTLE_QUIET {
        std::thread::sleep(Duration::from_millis(50));
        let id = store.last_id().unwrap_or(0);
        if id != last {
            last = id;
            still_since = Instant::now();
        }
    }
}

/// The run's denies from the audit database.
fn read_summary(audit_db: &Path, started: SystemTime, scope: &RunScope) -> anyhow::Result<Summary> {
    let store = AuditStore::open_read_only(audit_db)?;
    let records = store
        .query(&EventFilter {
            since: Some(started.checked_sub(CLOCK_SLACK).unwrap_or(started)),
            decision: Some(Decision::Deny),
            ..EventFilter::default()
        })
        .with_context(|| format!("reading {}", audit_db.display()))?;
    Ok(Summary::of(&records, scope))
}

/// The user ran `sudo enforcer run`: the printed commands need sudo too.
fn invoked_by_sudo() -> bool {
    std::env::var_os("SUDO_UID").is_some()
}

/// Ends what is left in the cgroup (the command's background children).
fn kill_cgroup(cgroup: &CgroupPath) {
    let _ = std::fs::write(cgroup.absolute.join("cgroup.kill"), "1");
}

/// Starts the command in `cgroup` as `identity` and waits for it.
async fn spawn_and_wait(
    cgroup: &CgroupPath,
    identity: &Identity,
    launch: &Launch<'_>,
    confinement: &Confinement,
    command: &[OsString],
) -> anyhow::Result<ExitCode> {
    let listeners = launch.listeners;
    let (seccomp_config, bwrap_config) = sandbox::configs_from_policy(launch.sandbox);
    // Compiled before fork; only applied (a syscall) in the child.
    let filter = match confinement.seccomp {
        SeccompMode::Off => None,
        SeccompMode::Baseline => {
            CompiledFilter::compile(&seccomp_config).context("compiling the seccomp filter")?
        }
    };
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.absolute.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", cgroup.absolute.display()))?;
    let proxy = format!("http://{}", listeners.proxy);
    // With --bwrap, bwrap itself needs unshare/mount: the filter goes to it
    // as --add-seccomp-fd and applies to the command inside.
    let mut seccomp_fds: Vec<std::os::fd::OwnedFd> = Vec::new();
    let mut child = if confinement.bwrap {
        let bwrap = sandbox::bwrap::find_bwrap()?;
        let proc_mode = sandbox::bwrap::detect_proc_mode(&bwrap)?;
        if let Some(filter) = &filter {
            seccomp_fds = filter
                .to_memfds()
                .context("handing the seccomp filter to bwrap")?;
        }
        let raw: Vec<i32> = seccomp_fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let cwd = std::env::current_dir().context("reading the current directory")?;
        let plan = sandbox::bwrap::render(
            &bwrap_config,
            &sandbox::bwrap::RenderOptions {
                cwd: &cwd,
                proc_mode,
                seccomp_fds: &raw,
                command,
            },
            &sandbox::fsview::RealFs,
        )?;
        sandbox::bwrap::create_overlay_dirs(&plan, Some((identity.uid, identity.gid)))?;
        let mut child = Command::new(bwrap);
        child.args(&plan.args);
        child
    } else {
        let mut child = Command::new(&command[0]);
        child.args(&command[1..]);
        child
    };
    child
        .env("HTTPS_PROXY", &proxy)
        .env("https_proxy", &proxy)
        .env("HTTP_PROXY", &proxy)
        .env("http_proxy", &proxy)
        .env("ALL_PROXY", &proxy)
        .env("all_proxy", &proxy)
        .env("NO_PROXY", "localhost,127.0.0.1,::1")
        .env("no_proxy", "localhost,127.0.0.1,::1")
        // Node's built-in fetch ignores the variables above unless told
        // (Node 22.21 and 24 on; earlier ones ignore this too: docs/COMPATIBILITY.md).
        .env("NODE_USE_ENV_PROXY", "1")
        .env("ANTHROPIC_BASE_URL", format!("http://{}", listeners.router))
        .env("ENFORCER_CGROUP", cgroup.relative.display().to_string());
    // The lanes' credentials stay with the enforcer, never in the agent's environment.
    for name in launch.credential_names {
        child.env_remove(name);
    }
    if identity.uid != 0 {
        child
            .env("HOME", &identity.home)
            .env("USER", &identity.name)
            .env("LOGNAME", &identity.name);
    }
    let (uid, gid, groups) = (identity.uid, identity.gid, identity.groups.clone());
    let inherit: Vec<i32> = seccomp_fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let direct_filter = if confinement.bwrap { None } else { filter };
    // SAFETY: between fork and exec only async-signal-safe system calls run:
    // write(2) to join the cgroup, setgroups/setgid/setuid, fcntl on the
    // filter fds for bwrap, and prctl/seccomp to install the filter.
    unsafe {
        child.pre_exec(move || {
            kernel::cgroup::join_from_child(&procs)?;
            if uid != 0 {
                setgroups(&groups)?;
                setgid(Gid::from_raw(gid))?;
                setuid(Uid::from_raw(uid))?;
            }
            for &fd in &inherit {
                // SAFETY (borrow_raw, in the unsafe block above): these are
                // seccomp_fds' descriptors, which the parent keeps open until
                // after spawn; the child's copies stay open until exec.
                let fd = BorrowedFd::borrow_raw(fd);
                sandbox::seccomp::clear_cloexec(fd)?;
            }
            // Last: the filter also blocks what the steps above needed.
            if let Some(filter) = &direct_filter {
                filter.apply_in_child()?;
            }
            Ok(())
        });
    }
    // Ctrl-C and Ctrl-\ reach the whole foreground process group: the
    // command decides what they do; this process stays to clean up, report
    // and pass the command's status through. (A handler, not SIG_IGN: exec
    // resets handlers, so the command gets the default disposition.)
    let _terminal_signals = [
        tokio::signal::unix::SignalKind::interrupt(),
        tokio::signal::unix::SignalKind::quit(),
    ]
    .map(tokio::signal::unix::signal);
    // Unix sockets: the command's own directories (issue 14, run_unix.rs).
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let own_dirs = super::run_unix::OwnDirs::prepare(cgroup, &cwd, identity.uid, identity.gid)?;
    child.env("TMPDIR", &own_dirs.tmpdir);
    let spawned = child
        .spawn()
        .with_context(|| format!("starting {:?}", command[0]));
    drop(seccomp_fds);
    let status = match spawned {
        Ok(mut child) => tokio::task::spawn_blocking(move || child.wait())
            .await
            .context("waiting for the command")
            .and_then(|waited| waited.context("waiting for the command")),
        Err(error) => Err(error),
    };
    own_dirs.finish();
    Ok(exit_code(status?))
}

/// The command's exit status, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(255)),
        (None, None) => ExitCode::FAILURE,
    }
}

/// Kills what is left in the cgroup, detaches (when run attached it) and removes it.
fn remove_cgroup(cgroup: &CgroupPath, attached_here: bool) {
    let _ = std::fs::write(cgroup.absolute.join("cgroup.kill"), "1");
    if attached_here && let Err(error) = kernel::detach(cgroup) {
        tracing::warn!(error = %error, "detaching the transient cgroup");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(&cgroup.absolute).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if cgroup.absolute.exists() {
        tracing::warn!(cgroup = %cgroup.absolute.display(), "could not remove the transient cgroup");
    }
}

/// `--user NAME`, else the sudo caller, else root.
fn identity(user: Option<&str>) -> anyhow::Result<Identity> {
    if let Some(name) = user {
        return lookup_user(Lookup::Name(name))
            .with_context(|| format!("--user {name}: no such user"));
    }
    if let Ok(text) = std::env::var("SUDO_UID") {
        let uid: u32 = text
            .parse()
            .with_context(|| format!("SUDO_UID={text} is not a number"))?;
        let mut identity = lookup_user(Lookup::Uid(uid))
            .with_context(|| format!("SUDO_UID={uid}: no such user"))?;
        if let Some(gid) = std::env::var("SUDO_GID").ok().and_then(|g| g.parse().ok()) {
            identity.gid = gid;
        }
        return Ok(identity);
    }
    lookup_user(Lookup::Uid(getuid().as_raw())).context("looking up the current user")
}

enum Lookup<'a> {
    Name(&'a str),
    Uid(u32),
}

fn lookup_user(lookup: Lookup<'_>) -> anyhow::Result<Identity> {
    let entry = match lookup {
        Lookup::Name(name) => {
            CString::new(name).context("user name contains NUL")?;
            User::from_name(name)
        }
        Lookup::Uid(uid) => User::from_uid(Uid::from_raw(uid)),
    };
    let Ok(Some(entry)) = entry else {
        bail!("not found in the user database");
    };
    let c_name = CString::new(entry.name.clone()).context("user name contains NUL")?;
    // No supplementary groups readable: the primary group alone.
    let mut groups = getgrouplist(&c_name, entry.gid).unwrap_or_default();
    if groups.is_empty() {
        groups.push(entry.gid);
    }
    Ok(Identity {
        uid: entry.uid.as_raw(),
        gid: entry.gid.as_raw(),
        groups,
        home: entry.dir.to_string_lossy().into_owned(),
        name: entry.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_says_mode_policy_and_what_the_kernel_cannot_enforce() {
        let mut enforcement = Enforcement {
            daemon_cgroup: None,
            policy_version: "0".into(),
            policy_fallback: true,
            families_enforced: false,
        };
        assert_eq!(
            banner(&enforcement, SeccompMode::Baseline, true),
            "enforcer: enforcing in-process, fallback policy; socket families: seccomp only, not \
             this kernel; see sudo enforcer status"
        );
        enforcement.daemon_cgroup = Some("agents.slice".into());
        enforcement.policy_fallback = false;
        enforcement.policy_version = "2026-11-22.1".into();
        assert_eq!(
            banner(&enforcement, SeccompMode::Off, false),
            "enforcer: enforcing via the daemon (agents.slice), policy 2026-11-22.1; socket \
             families: NOT enforced; see enforcer status"
        );
        enforcement.families_enforced = true;
        assert_eq!(
            banner(&enforcement, SeccompMode::Baseline, false),
            "enforcer: enforcing via the daemon (agents.slice), policy 2026-11-22.1; see enforcer status"
        );
    }
}
