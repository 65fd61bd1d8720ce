//! Why the daemon could not start: each variant names the step, the input
//! (address, path, cgroup) and, where there is one, the flag that changes it.

use std::{fmt, path::PathBuf};

use crate::{audit::StoreError, kernel::KernelError};

/// One of the daemon's TCP listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The CONNECT proxy.
    Proxy,
    /// The lane router.
    Router,
    /// The loopback Prometheus listener.
    Metrics,
    /// The transparent listener (egress mode `redirect`).
    Transparent,
    /// The DNS filter's UDP and TCP sockets (`egress.dns = "filtered"`).
    Dns,
}

impl Listener {
    /// The flag that sets its address.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Proxy => "--proxy-listen",
            Self::Router => "--router-listen",
            Self::Metrics => "--metrics-listen",
            Self::Transparent => "--egress-mode",
            Self::Dns => "--dns-listen",
        }
    }
}

impl Listener {
    /// How a bind error names it (`the proxy`).
    pub fn what(self) -> &'static str {
        match self {
            Self::Proxy => "the proxy",
            Self::Router => "the lane router",
            Self::Metrics => "the metrics listener",
            Self::Transparent => "the transparent listener",
            Self::Dns => "the DNS filter",
        }
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Proxy => "proxy",
            Self::Router => "lane router",
            Self::Metrics => "metrics listener",
            Self::Transparent => "transparent listener",
            Self::Dns => "DNS filter",
        })
    }
}

/// A kernel step after the programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelStep {
    /// Opening the pinned maps (for the map writer and for status).
    OpenMaps,
    /// Reading the direct entries a previous run left in the maps.
    AdoptDirectEntries,
    /// Taking the deny-event ring buffer.
    TakeEvents,
    /// Tagging the daemon's listening sockets as its own.
    ClaimEndpoints,
}

impl fmt::Display for KernelStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OpenMaps => "opening the pinned maps",
            Self::AdoptDirectEntries => "reading the direct entries already in the maps",
            Self::TakeEvents => "opening the deny-event ring buffer",
            Self::ClaimEndpoints => "tagging the proxy and router listeners as the daemon's",
        })
    }
}

/// Why [`super::run`] failed. Foreign causes are boxed: the kernel's and
/// the store's errors are large, and this is returned on every step.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state directory could not be created or made private.
    #[error("preparing the state directory {} (mode 0700; is --state-dir writable?)", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The audit database could not be opened or its writer not started.
    #[error("starting the audit log at {} (is --state-dir writable?)", path.display())]
    AuditLog {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<StoreError>,
    },
    /// The policy loader could not be set up.
    #[error("loading the policy")]
    Policy {
        /// The cause.
        #[source]
        source: Box<crate::policy_source::LoaderError>,
    },
    /// A TCP listener could not be bound (the error names who holds a
    /// taken port: the kernel keeps denying that endpoint meanwhile).
    #[error("starting the {listener} (choose another address with {})", listener.flag())]
    Bind {
        /// Which listener.
        listener: Listener,
        /// The cause, with the port's holders.
        #[source]
        source: Box<crate::kernel::ownership::BindError>,
    },
    /// A bound listener's address could not be read.
    #[error("reading the address the {listener} listens on")]
    LocalAddr {
        /// Which listener.
        listener: Listener,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel programs could not be loaded, attached or pinned.
    #[error("attaching to cgroup {}", cgroup.display())]
    Attach {
        /// The cgroup's absolute path.
        cgroup: PathBuf,
        /// The cause.
        #[source]
        source: Box<KernelError>,
    },
    /// A kernel step after attaching failed.
    #[error("{step} of cgroup {}", cgroup.display())]
    Kernel {
        /// The step.
        step: KernelStep,
        /// The cgroup's absolute path.
        cgroup: PathBuf,
        /// The cause.
        #[source]
        source: Box<KernelError>,
    },
    /// The start-up self-test could not be run.
    #[error(
        "running the start-up self-test (the daemon does not report ready; the kernel programs stay attached and keep denying)"
    )]
    SelfTestRun {
        /// The cause.
        #[source]
        source: Box<super::selftest::SelftestCommandError>,
    },
    /// The start-up self-test saw attempts the kernel claims to stop get through.
    #[error(
        "the start-up self-test failed, so the daemon does not report ready (the kernel programs stay attached and keep denying): {}",
        failures.join("; ")
    )]
    SelfTest {
        /// Each failing attempt, named, with what was observed.
        failures: Vec<String>,
    },
    /// The control socket could not be bound.
    #[error("binding the control socket {} (choose another path with --control-socket)", path.display())]
    ControlSocket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
