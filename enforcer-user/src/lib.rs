//! enforcer's userspace library: finding cgroups, loading, attaching and
//! pinning the kernel programs, and reading their maps and events.
//!
//! The `enforcer` binary is a thin CLI over this; tests use it directly.
#![deny(missing_docs)]

pub mod audit;
pub mod daemon;
pub mod kernel;
pub mod policy_source;
pub mod sandbox;
pub mod selftest;
