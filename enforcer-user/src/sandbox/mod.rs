//! The sandbox runtime of `enforcer run`: the seccomp `baseline-blocklist`
//! ([`seccomp`]) and the bubblewrap argv rendered from the policy
//! ([`bwrap`]), plus [`probe`], which proves on a given kernel that the
//! filter refuses what it promises.
//!
//! [`systemd`] renders the same rules as a drop-in for slice-mode agent
//! units.
//!
//! Both take plain inputs ([`SeccompConfig`], [`BwrapConfig`]) that
//! [`configs_from_policy`] fills from a checked policy's `sandboxLinux`.
//!
//! How a launcher uses them (see docs/SANDBOX.md):
//! * without bwrap: [`CompiledFilter::compile`] before spawning, then
//!   [`CompiledFilter::apply_in_child`] as the last step of `pre_exec`;
//! * with bwrap: [`bwrap::find_bwrap`], [`bwrap::detect_proc_mode`],
//!   [`CompiledFilter::to_memfds`], [`bwrap::render`] with those descriptors,
//!   [`bwrap::create_overlay_dirs`], then exec bwrap with
//!   [`seccomp::clear_cloexec`] on the descriptors in `pre_exec` (bwrap
//!   applies the filter itself after its own namespace and mount set-up,
//!   which the filter would refuse).

pub mod bwrap;
pub mod fsview;
pub mod masks;
pub mod probe;
pub mod seccomp;
pub mod systemd;

pub use bwrap::{BwrapConfig, BwrapError, BwrapPlan, ProcMode, RenderOptions};
pub use fsview::{FsView, RealFs};
pub use seccomp::{CompiledFilter, SeccompConfig, SeccompError, SeccompProfile};

/// The seccomp and bwrap settings of a checked policy.
pub fn configs_from_policy(sandbox: &policy::Sandbox) -> (SeccompConfig, BwrapConfig) {
    (
        SeccompConfig::from_policy(sandbox),
        BwrapConfig::from_policy(sandbox),
    )
}
