//! `enforcer attach`: enforce a cgroup, in the foreground.

use std::{net::SocketAddr, process::ExitCode};

use anyhow::Context as _;
use enforcer::kernel::{
    self, AttachOptions, DenyRecord, EndpointSpec, FamilyEnforcement, events::EventReader,
    maps::parse_socket_addr,
};
use tokio::io::{Interest, unix::AsyncFd};

use super::{LogFormat, init_logging, resolve_cgroup};

/// Attach the kernel programs to a cgroup and stay in the foreground,
/// logging every deny. The programs stay attached (pinned under
/// /sys/fs/bpf/enforcer) when this process exits or is killed; only
/// `enforcer detach` removes them.
///
/// Example: sudo enforcer attach --cgroup agents.slice
#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// cgroup to enforce, relative to the cgroup v2 mount (created if missing).
    #[arg(long, value_name = "NAME")]
    cgroup: String,
    /// The CONNECT proxy's address; processes in the cgroup may always reach it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3128", value_parser = parse_socket_addr)]
    proxy_listen: SocketAddr,
    /// The lane router's address; processes in the cgroup may always reach it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787", value_parser = parse_socket_addr)]
    router_listen: SocketAddr,
    /// The DNS filter's address (UDP and TCP), when one serves the cgroup.
    #[arg(long, value_name = "ADDR", value_parser = parse_socket_addr)]
    dns_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Forward the kernel programs' aya-log debug output to the log.
    #[arg(long)]
    debug_bpf: bool,
}

/// Runs `enforcer attach`.
pub fn run(args: AttachArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let (_mount, cgroup) = resolve_cgroup(&args.cgroup)?;
    let mut endpoints = vec![
        EndpointSpec::tcp(args.proxy_listen),
        EndpointSpec::tcp(args.router_listen),
    ];
    if let Some(dns) = args.dns_listen {
        endpoints.push(EndpointSpec::udp(dns));
        endpoints.push(EndpointSpec::tcp(dns));
    }
    let options = AttachOptions {
        endpoints,
        debug_log: args.debug_bpf,
    };
    let mut attachment = kernel::attach(&cgroup, &options)
        .with_context(|| format!("attaching to cgroup {}", cgroup.absolute.display()))?;

    tracing::info!(
        cgroup = %cgroup.relative.display(),
        cgroup_id = attachment.cgroup_id,
        pins = %attachment.pins.root.display(),
        "attached"
    );
    match &attachment.families {
        FamilyEnforcement::Enforced => tracing::info!("{}", attachment.families.describe()),
        FamilyEnforcement::NotEnforced { .. } => {
            tracing::warn!("{}", attachment.families.describe());
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(&mut attachment, args.debug_bpf))?;
    if attachment.pins.root.exists() {
        tracing::info!(
            cgroup = %cgroup.relative.display(),
            "exiting; the programs stay attached (run `enforcer detach` to remove them)"
        );
    } else {
        tracing::info!(cgroup = %cgroup.relative.display(), "exiting; the cgroup was detached");
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs deny events until SIGINT or SIGTERM.
async fn serve(attachment: &mut kernel::Attachment, debug_bpf: bool) -> anyhow::Result<()> {
    let mut events = readable(attachment.take_events()?).context("watching the event ring buffer")?;
    let mut logger = if debug_bpf {
        let logger = aya_log::EbpfLogger::init(attachment.ebpf_mut())
            .context("starting the aya-log reader")?;
        Some(readable(logger).context("watching the log buffer")?)
    } else {
        None
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            batch = EventReader::next_batch(&mut events) => {
                for event in batch.context("reading deny events")? {
                    let record = DenyRecord::from_event(&event);
                    tracing::info!(
                        decision = "deny",
                        reason = %record.reason,
                        hook = %record.hook,
                        pid = record.tgid,
                        comm = %record.comm,
                        cgroup_id = record.cgroup_id,
                        family = %record.family,
                        destination = record.destination.map(|d| d.to_string()),
                        "kernel deny"
                    );
                }
            }
            ready = async {
                match logger.as_mut() {
                    Some(logger) => logger.readable_mut().await.map(Some),
                    None => std::future::pending().await,
                }
            } => {
                if let Some(mut guard) = ready.context("reading the aya-log buffer")? {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    Ok(())
}

/// Registers an fd-owning object with the reactor for readability.
fn readable<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd (a BPF map) for as long as the AsyncFd
    // owns `inner`, and always returns that same fd.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(std::io::Error::from)
}
