//! The kernel side of enforcement, seen from userspace.
//!
//! Load, attach and pin are separate steps ([`attach()`]); [`detach`] undoes
//! them. State lives in bpffs pins ([`paths`]), so enforcement outlives the
//! process that attached it (fail-closed) and `status` can read it back
//! with no daemon running ([`status`]).

pub mod attach;
mod bpf_syscall;
pub mod bpffs;
pub mod cgroup;
pub mod dns;
pub mod events;
pub mod hooks;
pub mod lsm;
pub mod maps;
pub mod ownership;
pub mod paths;
pub mod peers;
pub mod redirect;
pub mod status;
pub mod task_layout;
pub mod unix;

use std::path::PathBuf;

pub use attach::{AttachOptions, Attachment, FamilyEnforcement, PtraceEnforcement, attach, detach};
pub use cgroup::{CgroupMount, CgroupPath};
pub use events::DenyRecord;
pub use maps::{EndpointSpec, PinnedMaps};
pub use unix::UnixEnforcement;

/// Errors of the kernel layer, each naming what was being done and what to try.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No cgroup v2 hierarchy is mounted.
    #[error(
        "no cgroup2 filesystem found in /proc/self/mountinfo; enforcer needs the unified (v2) hierarchy"
    )]
    NoCgroup2Mount,
    /// `--cgroup` named something unusable.
    #[error("invalid cgroup name {name:?}: {why}")]
    InvalidCgroupName {
        /// What the user gave.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// `--cgroup` named the root cgroup.
    #[error(
        "refusing to attach to the root cgroup ({}): that would enforce every process on this host; name a child cgroup such as agents.slice",
        mount.display()
    )]
    RootCgroupRefused {
        /// The cgroup v2 mount point.
        mount: PathBuf,
    },
    /// A file-system or system-call step failed.
    #[error("{what}")]
    Io {
        /// The step.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The BPF object could not be loaded (maps created or opened).
    #[error(
        "loading the BPF object failed (are you root, and is this kernel built with CONFIG_CGROUP_BPF?)"
    )]
    Load(#[source] aya::EbpfError),
    /// A program failed to load or attach.
    #[error("{step} of program {program} failed")]
    Program {
        /// `load` or `attach`.
        step: &'static str,
        /// The program (hook) name.
        program: &'static str,
        /// The underlying error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Pinning or unpinning a link failed.
    #[error("pinning link {}", path.display())]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: aya::pin::PinError,
    },
    /// Opening a pinned link failed.
    #[error("opening pinned link {}", path.display())]
    PinnedLink {
        /// The pin path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// A map operation failed.
    #[error("map {map}: {what}")]
    Map {
        /// The map name.
        map: &'static str,
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: aya::maps::MapError,
    },
    /// The object lacks a program or map the loader expects.
    #[error("the embedded BPF object has no {what} named {name}; rebuild enforcer")]
    Missing {
        /// `program` or `map`.
        what: &'static str,
        /// The name looked up.
        name: &'static str,
    },
    /// The cgroup is not enforced.
    #[error("cgroup {} is not attached (no pins under {})", cgroup.display(), pins.display())]
    NotAttached {
        /// The cgroup directory.
        cgroup: PathBuf,
        /// Where the pins would be.
        pins: PathBuf,
    },
    /// More endpoints than the `CONFIG` map holds.
    #[error("{count} enforcer endpoints given; the kernel map holds at most {max}")]
    TooManyEndpoints {
        /// How many were given.
        count: usize,
        /// Capacity.
        max: u32,
    },
}
