//! `enforcer run -- CMD`: one enforced command in a transient cgroup.
//!
//! When a daemon answers on the control socket, the command's cgroup is a
//! child of the daemon's enforced cgroup (its programs apply to
//! descendants) and the command uses the daemon's proxy and router.
//! Otherwise `run` enforces in-process: it attaches to a new cgroup and
//! serves its own proxy and router on free loopback ports until the
//! command exits. Either way the cgroup is removed afterwards and the
//! command's exit status (or 128 + signal) is passed through.

use std::{
    ffi::{CString, OsString},
    net::SocketAddr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Context as _, bail};
use enforcer::{
    daemon::{
        self, Listeners, Ready,
        control::{ControlClient, Request},
        paths::DEFAULT_CONTROL_SOCKET,
    },
    kernel::{self, CgroupMount, CgroupPath, maps::parse_socket_addr},
    sandbox::{self, seccomp::CompiledFilter},
};

use super::{daemon_flags::DaemonFlags, init_logging_at};

/// Run one command under enforcement: a transient cgroup, the egress proxy
/// and lane router in its environment, privileges dropped to the invoking
/// user (SUDO_UID/SUDO_GID) or `--user`, the exit status passed through.
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
    groups: Vec<libc::gid_t>,
    name: String,
    home: String,
}

/// Runs `enforcer run`.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // The command owns the terminal: only warnings and errors by default.
    init_logging_at(args.flags.log_format, "warn");
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
    let outcome = runtime.block_on(async {
        match &daemon_status {
            Some(status) => {
                let credential_names: Vec<String> = status["credential_names"]
                    .as_array()
                    .map(|names| {
                        names
                            .iter()
                            .filter_map(|n| n.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let listeners: Listeners = Listeners {
                    proxy: status["listeners"]["proxy"]
                        .as_str()
                        .and_then(|a| a.parse().ok())
                        .context("the daemon's status has no proxy address")?,
                    router: status["listeners"]["router"]
                        .as_str()
                        .and_then(|a| a.parse().ok())
                        .context("the daemon's status has no router address")?,
                };
                tracing::info!(cgroup = %cgroup.relative.display(), "using the running daemon");
                // The daemon's pack is not at hand here: confine with the
                // embedded fallback's sandbox section (baseline, no exceptions).
                let sandbox = policy::fallback_policy()
                    .map(|policy| policy.sandbox.clone())
                    .context("reading the embedded fallback policy")?;
                let ready = Ready {
                    listeners,
                    credential_names,
                    sandbox,
                };
                spawn_and_wait(&cgroup, &identity, &ready, &confinement, &args.command).await
            }
            None => {
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
                let outcome =
                    spawn_and_wait(&cgroup, &identity, &ready, &confinement, &args.command).await;
                let _ = stop.send(true);
                match serving.await {
                    Ok(Err(error)) => tracing::warn!(error = %error, "in-process enforcer"),
                    Err(error) => tracing::warn!(error = %error, "in-process enforcer task"),
                    Ok(Ok(())) => {}
                }
                outcome
            }
        }
    });
    remove_cgroup(&cgroup, daemon_status.is_none());
    outcome
}

/// Starts the command in `cgroup` as `identity` and waits for it.
async fn spawn_and_wait(
    cgroup: &CgroupPath,
    identity: &Identity,
    ready: &Ready,
    confinement: &Confinement,
    command: &[OsString],
) -> anyhow::Result<ExitCode> {
    let listeners = ready.listeners;
    let (seccomp_config, bwrap_config) = sandbox::configs_from_policy(&ready.sandbox);
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
        .env("ANTHROPIC_BASE_URL", format!("http://{}", listeners.router))
        .env("ENFORCER_CGROUP", cgroup.relative.display().to_string());
    // The lanes' credentials stay with the enforcer, never in the agent's environment.
    for name in &ready.credential_names {
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
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if uid != 0
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            for fd in &inherit {
                sandbox::seccomp::clear_cloexec(*fd)?;
            }
            // Last: the filter also blocks what the steps above needed.
            if let Some(filter) = &direct_filter {
                filter.apply_in_child()?;
            }
            Ok(())
        });
    }
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
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    lookup_user(Lookup::Uid(uid)).context("looking up the current user")
}

enum Lookup<'a> {
    Name(&'a str),
    Uid(u32),
}

fn lookup_user(lookup: Lookup<'_>) -> anyhow::Result<Identity> {
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero is a valid passwd to be filled in.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = match lookup {
        Lookup::Name(name) => {
            let c_name = CString::new(name).context("user name contains NUL")?;
            // SAFETY: valid pointers and buffer length.
            unsafe {
                libc::getpwnam_r(
                    c_name.as_ptr(),
                    &mut entry,
                    buffer.as_mut_ptr(),
                    buffer.len(),
                    &mut result,
                )
            }
        }
        // SAFETY: valid pointers and buffer length.
        Lookup::Uid(uid) => unsafe {
            libc::getpwuid_r(
                uid,
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            )
        },
    };
    if rc != 0 || result.is_null() {
        bail!("not found in the user database");
    }
    // SAFETY: getpw*_r filled entry with NUL-terminated strings inside buffer.
    let (name, home) = unsafe {
        (
            std::ffi::CStr::from_ptr(entry.pw_name)
                .to_string_lossy()
                .into_owned(),
            std::ffi::CStr::from_ptr(entry.pw_dir)
                .to_string_lossy()
                .into_owned(),
        )
    };
    let c_name = CString::new(name.clone()).context("user name contains NUL")?;
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut count = groups.len() as libc::c_int;
    // SAFETY: valid pointers; count is the buffer's length.
    let rc = unsafe {
        libc::getgrouplist(
            c_name.as_ptr(),
            entry.pw_gid,
            groups.as_mut_ptr(),
            &mut count,
        )
    };
    groups.truncate(if rc < 0 {
        0
    } else {
        usize::try_from(count).unwrap_or(0)
    });
    if groups.is_empty() {
        groups.push(entry.pw_gid);
    }
    Ok(Identity {
        uid: entry.pw_uid,
        gid: entry.pw_gid,
        groups,
        name,
        home,
    })
}
