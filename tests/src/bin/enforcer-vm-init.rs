//! enforcer-vm-init: PID 1 of the `cargo xtask test-vm` initramfs.
//!
//! Mounts what the kernel tests need (proc, sys, devtmpfs, tmpfs, cgroup2,
//! bpffs, securityfs), brings `lo` up and gives it a "host" address, runs
//! every test listed in `/vm-tests` (one per line: `NAME PATH [ARGS...]`),
//! printing `VMTEST-RESULT NAME pass|fail` after each, then `VMTEST-DONE`,
//! and powers the machine off. With `enforcer.probe` on the kernel command
//! line it only prints `VMTEST-PROBE-OK` and powers off (the KVM probe).
//! Built statically (musl); it is the only init, so it must never panic.

use std::{
    ffi::CString,
    fs,
    io::Write as _,
    process::{Command, Stdio},
};

/// The address tests use as "this host's own non-loopback address".
const HOST_ADDRESS: &str = "192.0.2.1";
/// Its IPv6 counterpart (the routing-header segment of the kernel tests).
const HOST_ADDRESS6: &str = "2001:db8::1";

fn main() {
    let cmdline = mount_all();
    if cmdline
        .split_whitespace()
        .any(|arg| arg == "enforcer.probe")
    {
        say("VMTEST-PROBE-OK");
        power_off();
    }
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    say(&format!("VMTEST-KERNEL {}", kernel.trim()));
    let lsm = fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    say(&format!("VMTEST-LSM {}", lsm.trim()));
    network();
    let tests = fs::read_to_string("/vm-tests").unwrap_or_default();
    for line in tests.lines().filter(|line| !line.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let (Some(name), Some(path)) = (words.next(), words.next()) else {
            continue;
        };
        say(&format!("VMTEST-START {name}"));
        let status = Command::new(path)
            .args(words)
            .env("PATH", "/bin:/usr/sbin:/usr/bin:/sbin")
            .env("ENFORCER_BIN", "/bin/enforcer")
            .env("ENFORCER_PROBE", "/bin/enforcer-probe")
            .env("ENFORCER_TEST_HOST_ADDR", HOST_ADDRESS)
            .env("ENFORCER_TEST_HOST_ADDR6", HOST_ADDRESS6)
            .env("ENFORCER_EXPECT_BPF_LSM", "1")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .status();
        let verdict = match status {
            Ok(status) if status.success() => "pass".to_owned(),
            Ok(status) => format!("fail {status}"),
            Err(error) => format!("fail could not start {path}: {error}"),
        };
        say(&format!("VMTEST-RESULT {name} {verdict}"));
    }
    say("VMTEST-DONE");
    power_off();
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Mounts the file systems; returns the kernel command line.
fn mount_all() -> String {
    for dir in ["/proc", "/sys", "/dev", "/tmp", "/run", "/mnt"] {
        let _ = fs::create_dir_all(dir);
    }
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("tmpfs", "/tmp", "tmpfs");
    mount("tmpfs", "/run", "tmpfs");
    let _ = fs::create_dir_all("/dev/pts");
    mount("devpts", "/dev/pts", "devpts");
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2");
    mount("bpf", "/sys/fs/bpf", "bpf");
    mount("securityfs", "/sys/kernel/security", "securityfs");
    // Tests write "+" controllers nowhere; cgroup.procs and cgroup.kill suffice.
    fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

fn mount(source: &str, target: &str, fstype: &str) {
    let (Ok(source), Ok(target_c), Ok(fstype)) = (
        CString::new(source),
        CString::new(target),
        CString::new(fstype),
    ) else {
        return;
    };
    // SAFETY: NUL-terminated strings, null data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        say(&format!(
            "VMTEST-WARN mounting {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
}

/// `lo` up, plus global addresses (IPv4 and IPv6) standing in for the host's own.
fn network() {
    for args in [
        vec!["ip", "link", "set", "lo", "up"],
        vec![
            "ip",
            "addr",
            "add",
            &format!("{HOST_ADDRESS}/32"),
            "dev",
            "lo",
            "scope",
            "global",
        ],
        vec![
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{HOST_ADDRESS6}/128"),
            "dev",
            "lo",
        ],
    ] {
        let ok = Command::new("/bin/busybox")
            .args(&args)
            .status()
            .is_ok_and(|status| status.success());
        if !ok {
            say(&format!("VMTEST-WARN busybox {} failed", args.join(" ")));
        }
    }
}

fn power_off() -> ! {
    // SAFETY: sync and reboot have no memory-safety preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::park();
    }
}
