//! Builds enforcer-ebpf's programs for the BPF target with the nightly
//! toolchain (aya-build) and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`. Needs `cargo xtask setup` (nightly rust-src and
//! bpf-linker) once per machine.
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR")
            .ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("enforcer-user has no parent directory"))?
        .join("enforcer-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("path {} is not UTF-8", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "enforcer-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src and bpf-linker) first",
    )
}
