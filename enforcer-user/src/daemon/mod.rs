//! The daemon behind `enforcer attach` (and `enforcer run` when no daemon
//! serves it): verified policy -> BPF maps, CONNECT proxy, lane router,
//! control socket, audit log.
//!
//! Start order keeps the cgroup enforced at every moment: the listeners are
//! bound first (so their addresses are known), then the kernel programs are
//! attached (re-using the pins of a previous run: no gap), then the maps are
//! synced and the servers start. Shutdown stops accepting, drains with a
//! deadline and leaves the programs pinned (fail-closed).
//!
//! | module      | job                                                        |
//! |-------------|------------------------------------------------------------|
//! | `start`     | [`run`]: start-up wiring, the kernel sequence, drain        |
//! | `tasks`     | background loops: swaps, refresh, kernel events, map sync  |
//! | `handlers`  | control commands (status, allow, revoke, reload, metrics)  |
//! | `protocol`  | control socket wire types, one result type per command     |
//! | `control`   | control socket server and the CLI's client                 |
//! | `state`     | [`Daemon`]: the state tasks and handlers share             |
//! | `metrics`   | Prometheus counters, text, and the loopback HTTP endpoint  |
//! | `mapsync`   | policy direct rules -> kernel direct maps                  |
//! | `dns_sockets` | the DNS filter's UDP and TCP sockets, one port per family |
//! | `learned`   | DNS filter answers for direct names -> the map writer       |
//! | `bridge`    | decisions -> audit records and metrics                     |
//! | `router`    | the lane router's glue                                     |
//! | `attribution` | who is behind each accepted connection (kernel `PEERS`)  |
//! | `paths`     | every daemon-side file path                                |
//! | `shared_uids` | the attach-time warning about uids inside and outside    |
//! | `selftest`  | the self-test runner: one at a time, last report, log      |
//! | `notify`    | `sd_notify(READY=1)` after the self-test passed            |
//! | `error`     | [`DaemonError`]: why start-up failed                       |

pub mod attribution;
pub mod bridge;
pub mod control;
pub mod dns_sockets;
pub mod error;
pub mod handlers;
pub mod learned;
pub mod mapsync;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod paths;
pub mod protocol;
pub mod router;
pub mod selftest;
pub mod shared_uids;
pub mod start;
pub mod state;
pub mod tasks;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use policy::Snapshot;

use crate::policy_source::LoaderConfig;
use proxy::net::resolve::Resolver;
use tokio::sync::watch;

pub use self::{error::DaemonError, start::run, state::Daemon};
use crate::kernel::{CgroupMount, CgroupPath, redirect::Mode};

/// Everything the daemon needs, from `attach`'s or `run`'s flags.
pub struct DaemonOptions {
    /// The cgroup to enforce.
    pub cgroup: CgroupPath,
    /// The cgroup v2 mount.
    pub mount: CgroupMount,
    /// Policy source, keys, refresh, cache, TLS and `--resolve` for fetches.
    pub loader: LoaderConfig,
    /// CONNECT proxy address (port 0: any free port).
    pub proxy_listen: SocketAddr,
    /// Lane router address (port 0: any free port).
    pub router_listen: SocketAddr,
    /// Control socket; `None` serves none (`run` without a daemon).
    pub control_socket: Option<PathBuf>,
    /// Optional loopback Prometheus listener.
    pub metrics_listen: Option<SocketAddr>,
    /// State directory.
    pub state_dir: PathBuf,
    /// The resolver (pins + upstream) for the proxy and the map writer.
    pub resolver: Resolver,
    /// Extra CA for the router's upstream TLS.
    pub extra_ca: Option<PathBuf>,
    /// How long shutdown waits for open tunnels and streams.
    pub drain: Duration,
    /// Turn on aya-log output from the programs.
    pub debug_bpf: bool,
    /// Print the start-up self-test's table to stderr (`attach`; `run`
    /// only logs it).
    pub selftest_table: bool,
    /// Serve proxy and router clients outside the enforced cgroups too
    /// (still attributed and audited); off by default.
    pub serve_outside_clients: bool,
    /// `--egress-mode`: overrides the pack's `egress.mode` (`None`: the pack's).
    pub egress_mode: Option<Mode>,
    /// `--dns-listen`: where the DNS filter listens (port 0: a free port);
    /// the other family gets a free port on its loopback.
    pub dns_listen: SocketAddr,
}

/// Addresses the daemon actually listens on.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Listeners {
    /// CONNECT proxy.
    pub proxy: SocketAddr,
    /// Lane router.
    pub router: SocketAddr,
    /// Transparent listener, IPv4 (egress mode `redirect` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transparent: Option<SocketAddr>,
    /// Transparent listener, IPv6 (egress mode `redirect`, where `[::1]` exists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transparent6: Option<SocketAddr>,
    /// DNS filter, IPv4, UDP and TCP (`egress.dns = "filtered"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<SocketAddr>,
    /// DNS filter, IPv6 (`egress.dns = "filtered"`, where `[::1]` exists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns6: Option<SocketAddr>,
}

/// What `run` learns once the daemon enforces.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Where it listens.
    pub listeners: Listeners,
    /// Credential variables the policy's lanes use: `run` removes them from
    /// the command's environment so the agent never sees them.
    pub credential_names: Vec<String>,
    /// The active policy's sandbox section (seccomp exceptions, bwrap).
    pub sandbox: policy::Sandbox,
    /// The active policy's version.
    pub policy_version: String,
    /// Whether that policy is the embedded fallback.
    pub policy_fallback: bool,
    /// Whether the kernel enforces socket families (BPF-LSM attached).
    pub families_enforced: bool,
    /// Decisions as they are stored (`enforcer run --verbose`).
    pub live: crate::audit::LiveRecords,
}

/// Credential names (env / `$CREDENTIALS_DIRECTORY` files) the policy's lanes use.
pub fn credential_names(snapshot: &Snapshot) -> Vec<String> {
    let mut names: Vec<String> = snapshot
        .policy()
        .providers
        .values()
        .filter_map(|provider| match &provider.auth {
            policy::Auth::None => None,
            policy::Auth::Inject { credential, .. } => Some(credential.as_str().to_owned()),
            policy::Auth::Passthrough { fallback, .. } => {
                fallback.as_ref().map(|c| c.as_str().to_owned())
            }
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Sends `true` to stop the daemon.
pub type ShutdownSender = watch::Sender<bool>;

/// A future that resolves once shutdown was requested.
pub async fn shutdown_signal(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stop| *stop).await;
}
