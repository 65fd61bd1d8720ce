//! `cargo xtask test-vm --systemd`: `enforcer.service` under systemd as
//! PID 1, in a QEMU VM.
//!
//! 1. makes a minimal Debian rootfs with debootstrap (systemd, dbus,
//!    iproute2, bpftool, curl, python3, openssl) once, packs it as a newc
//!    cpio and caches it under `~/.cache/enforcer/systemd-rootfs/`, named
//!    after a hash of its recipe: a changed package list builds a new one;
//! 2. appends an overlay: the static `enforcer`, `enforcer-probe` and the
//!    driver (tests/src/bin/enforcer-vm-systemd.rs), the units of
//!    `dist/systemd/` and the seed pack (which the driver installs the way
//!    docs/OPERATIONS.md says), the test's own units (tests/vm/systemd/),
//!    the loopback stand-ins (tests/vm/mock_servers.py) and the kernel's
//!    vsock module;
//! 3. boots it twice with the VM layer's Debian kernel and
//!    `rdinit=/lib/systemd/systemd`: once as it is (BPF-LSM loads), once
//!    with an `lsm=` that lacks bpf (the drop-in's `RestrictAddressFamilies=`
//!    alone); systemd starts the driver, which prints a line per check and
//!    powers the machine off;
//! 4. fails on any failed check, a missing boot result or end marker.
//!
//! debootstrap needs root: without root and without a cached rootfs the
//! layer is skipped (and says so); under CI it always runs as root.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    TestTotals, is_root, run_command,
    vm::{self, Boot, Cpio, VmArgs},
    workspace_root,
};

/// The rootfs recipe: a change to any of these builds a new rootfs.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    // insmod for the vsock module.
    "kmod",
    // Which programs are attached, the pinned maps' ids.
    "bpftool",
    // The agent's proxy and router client, and the stand-ins.
    "curl",
    "python3",
    "openssl",
];
/// Left out of the packed rootfs (size only; nothing the tests read).
const TRIMMED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
    "var/cache/apt",
    "var/lib/apt/lists",
];
/// Bumped when the way the rootfs is made changes.
const RECIPE_VERSION: u32 = 1;

/// Kernel command line words of the two boots, and the names their
/// drivers report under.
const BOOTS: &[(&str, &str)] = &[
    ("systemd", "enforcer.vm=full"),
    // Debian's CONFIG_LSM without bpf.
    (
        "systemd-nolsm",
        "enforcer.vm=nolsm lsm=landlock,lockdown,yama,loadpin,safesetid,integrity,apparmor",
    ),
];
const SYSTEMD_APPEND: &str = "rdinit=/lib/systemd/systemd systemd.show_status=0";

/// What the layer did.
pub enum Outcome {
    /// Both boots ran; every check's count.
    Ran(TestTotals),
    /// Not run, and why.
    Skipped(String),
}

/// Runs the systemd layer.
pub fn run(args: &VmArgs) -> anyhow::Result<Outcome> {
    let Some(rootfs) = rootfs()? else {
        return Ok(Outcome::Skipped(
            "the systemd VM layer: building its Debian rootfs (debootstrap) needs root".to_owned(),
        ));
    };
    let kernel = match &args.kernel {
        Some(path) => path.clone(),
        None => vm::debian_kernel()?,
    };
    let work = workspace_root().join("target/test-vm");
    fs::create_dir_all(&work).context("creating target/test-vm")?;
    let overlay = overlay(&kernel)?;
    let initrd = work.join("systemd-initramfs.cpio");
    {
        let mut image =
            fs::read(&rootfs).with_context(|| format!("reading {}", rootfs.display()))?;
        image.extend_from_slice(&overlay);
        fs::write(&initrd, &image).with_context(|| format!("writing {}", initrd.display()))?;
        eprintln!(
            "test-vm --systemd: initramfs {} ({} MiB)",
            initrd.display(),
            image.len() >> 20
        );
    }
    let accel = vm::choose_accel(args.accel, &kernel, &initrd, SYSTEMD_APPEND)?;
    let mut totals = TestTotals::default();
    let mut problems = Vec::new();
    for (name, words) in BOOTS {
        let append = format!("{SYSTEMD_APPEND} {words}");
        let log_path = work.join(format!("{name}-console.log"));
        let boot = Boot {
            kernel: &kernel,
            initrd: &initrd,
            accel,
            append: &append,
            memory_mib: 2048,
        };
        println!("test-vm --systemd: booting {name} ({words})");
        match vm::boot_and_watch(&boot, Duration::from_secs(args.timeout), &log_path)
            .and_then(|console| console.judge(&[name]))
        {
            Ok(counts) => {
                totals.passed += counts.passed;
                totals.failed += counts.failed;
            }
            Err(error) => {
                totals.failed += 1;
                problems.push(format!("{name}: {error:#}"));
            }
        }
    }
    if args.keep {
        eprintln!("test-vm --systemd: kept {}", initrd.display());
    } else {
        let _ = fs::remove_file(&initrd);
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(Outcome::Ran(totals))
}

/// The recipe's hash (FNV-1a, stable across Rust releases, unlike std's).
fn recipe_hash() -> String {
    let recipe = format!(
        "{RECIPE_VERSION}|{SUITE}|{MIRROR}|{}|{}",
        PACKAGES.join(","),
        TRIMMED.join(",")
    );
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in recipe.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The cached rootfs cpio, built first when missing (root only); None
/// when it is missing and cannot be built here.
fn rootfs() -> anyhow::Result<Option<PathBuf>> {
    let dir = vm::cache_root().join("systemd-rootfs");
    let cached = dir.join(format!("rootfs-{SUITE}-{}.cpio", recipe_hash()));
    if cached.is_file() {
        eprintln!("test-vm --systemd: rootfs {} (cached)", cached.display());
        return Ok(Some(cached));
    }
    if !is_root() {
        return Ok(None);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let build = dir.join(format!("build-{}", std::process::id()));
    let result = build_rootfs(&build, &cached);
    let _ = fs::remove_dir_all(&build);
    result?;
    // Older recipes' images are of no more use.
    for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path != cached && path.extension().is_some_and(|ext| ext == "cpio") {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(Some(cached))
}

fn build_rootfs(build: &Path, cached: &Path) -> anyhow::Result<()> {
    let _ = fs::remove_dir_all(build);
    eprintln!(
        "test-vm --systemd: debootstrap {SUITE} ({})",
        PACKAGES.join(" ")
    );
    run_command(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(SUITE)
            .arg(build)
            .arg(MIRROR),
    )
    .context("debootstrap (cargo xtask setup installs it)")?;
    for trimmed in TRIMMED {
        let path = build.join(trimmed);
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    let partial = cached.with_extension("cpio.partial");
    let out =
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    // GNU cpio keeps modes, owners, device nodes and hard links as they are.
    let status = Command::new("sh")
        .args([
            "-c",
            "cd \"$1\" && find . -print0 | cpio --null -o -H newc --quiet",
            "sh",
        ])
        .arg(build)
        .stdout(Stdio::from(out))
        .status()
        .context("running find | cpio (cargo xtask setup installs cpio)")?;
    if !status.success() {
        let _ = fs::remove_file(&partial);
        bail!("packing the rootfs with cpio failed with {status}");
    }
    fs::rename(&partial, cached).with_context(|| format!("renaming to {}", cached.display()))?;
    Ok(())
}

/// The files added over the rootfs.
fn overlay(kernel: &Path) -> anyhow::Result<Vec<u8>> {
    let bins = vm::build_static_bins()?;
    let root = workspace_root();
    let mut cpio = Cpio::new();
    for name in ["enforcer", "enforcer-probe", "enforcer-vm-systemd"] {
        let copy = vm::stripped_copy(&bins.join(name), &format!("systemd_{name}"))?;
        cpio.file(&format!("/usr/local/bin/{name}"), 0o755, &fs::read(&copy)?);
    }
    let read = |relative: &str| {
        fs::read(root.join(relative)).with_context(|| format!("reading {relative}"))
    };
    // What an operator installs (the driver copies them into place).
    for unit in ["enforcer.service", "agents.slice"] {
        cpio.file(
            &format!("/usr/local/share/enforcer/dist/systemd/{unit}"),
            0o644,
            &read(&format!("dist/systemd/{unit}"))?,
        );
    }
    cpio.file(
        "/usr/local/share/enforcer/seed.json",
        0o644,
        &read("policy/packs/examples/seed.json")?,
    );
    cpio.file(
        "/usr/local/lib/enforcer-vm/mock_servers.py",
        0o755,
        &read("tests/vm/mock_servers.py")?,
    );
    cpio.file(
        "/usr/local/lib/enforcer-vm/vsock.ko",
        0o644,
        &fs::read(vsock_module(kernel)?)?,
    );
    // The test's units: the driver, started at boot, and the agent.
    for unit in ["enforcer-vm-driver.service", "agent-matrix.service"] {
        cpio.file(
            &format!("/etc/systemd/system/{unit}"),
            0o644,
            &read(&format!("tests/vm/systemd/{unit}"))?,
        );
    }
    cpio.symlink(
        "/etc/systemd/system/multi-user.target.wants/enforcer-vm-driver.service",
        "/etc/systemd/system/enforcer-vm-driver.service",
    );
    // No udev in a minbase rootfs: a getty on ttyS0 would wait 90 s for
    // its device unit. Nobody logs in.
    cpio.symlink("/etc/systemd/system/getty.target", "/dev/null");
    cpio.symlink(
        "/etc/systemd/system/serial-getty@ttyS0.service",
        "/dev/null",
    );
    Ok(cpio.finish())
}

/// `vsock.ko` of the kernel package the image is booted with.
fn vsock_module(kernel: &Path) -> anyhow::Result<PathBuf> {
    let release = kernel
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("vmlinuz-"))
        .with_context(|| format!("{} is not a vmlinuz-RELEASE file", kernel.display()))?;
    let package = kernel
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} has no package directory", kernel.display()))?;
    let module = package
        .join("lib/modules")
        .join(release)
        .join("kernel/net/vmw_vsock/vsock.ko");
    if !module.is_file() {
        bail!(
            "{} not found: the systemd layer needs the kernel's package directory (its vsock module), as the VM layer downloads it",
            module.display()
        );
    }
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::{BOOTS, recipe_hash};

    #[test]
    fn the_recipe_hash_is_stable_and_names_a_file() {
        let hash = recipe_hash();
        assert_eq!(hash, recipe_hash());
        assert_eq!(hash.len(), 16);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_second_boot_leaves_bpf_out_of_the_lsm_list() {
        let (_, words) = BOOTS[1];
        let lsm = words
            .split_whitespace()
            .find_map(|word| word.strip_prefix("lsm="))
            .unwrap();
        assert!(!lsm.split(',').any(|name| name == "bpf"), "{lsm}");
        assert!(!BOOTS[0].1.contains("lsm="));
    }
}
