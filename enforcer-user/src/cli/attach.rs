//! `enforcer attach`: the daemon. Enforces a cgroup and serves the proxy,
//! the lane router and the control socket, in the foreground.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use enforcer::{
    daemon::{self, paths::DEFAULT_CONTROL_SOCKET},
    kernel::maps::parse_socket_addr,
};

use super::{daemon_flags::DaemonFlags, init_logging, resolve_cgroup};

/// Enforce a cgroup: attach the kernel programs (pinned: they stay when
/// this process exits or is killed; only `enforcer detach` removes them),
/// load the signed policy, and serve the CONNECT proxy, the lane router and
/// the control socket until SIGTERM/SIGINT (then drain and exit 0).
///
/// Example: sudo enforcer attach --cgroup agents.slice --policy /etc/enforcer/policy.pack.json --policy-pubkey /etc/enforcer/policy.pub
#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// cgroup to enforce, relative to the cgroup v2 mount (created if missing).
    #[arg(long, value_name = "NAME")]
    cgroup: String,
    /// The CONNECT proxy's address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3128", value_parser = parse_socket_addr)]
    proxy_listen: SocketAddr,
    /// The lane router's address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787", value_parser = parse_socket_addr)]
    router_listen: SocketAddr,
    /// The control socket (mode 0600).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    control_socket: PathBuf,
    #[command(flatten)]
    flags: DaemonFlags,
}

/// Runs `enforcer attach`.
pub fn run(args: AttachArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.flags.log_format);
    let (mount, cgroup) = resolve_cgroup(&args.cgroup)?;
    let mut options = args.flags.options(
        mount,
        cgroup.clone(),
        args.proxy_listen,
        args.router_listen,
        Some(args.control_socket.clone()),
    )?;
    options.selftest_table = true;
    daemon::memory::one_arena();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let signals = tokio::spawn(async move {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = async {
                    match terminate.as_mut() {
                        Some(terminate) => { terminate.recv().await; }
                        None => std::future::pending().await,
                    }
                } => {}
            }
            let _ = stop.send(true);
        });
        let result = daemon::run(options, stopped, None).await;
        signals.abort();
        result
    })?;
    let _ = std::fs::remove_file(&args.control_socket);
    tracing::info!(
        cgroup = %cgroup.relative.display(),
        "stopped; the programs stay attached (run `enforcer detach` to remove them)"
    );
    Ok(ExitCode::SUCCESS)
}
