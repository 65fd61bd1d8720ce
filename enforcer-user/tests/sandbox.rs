//! The sandbox runtime against the real kernel and real tools: every
//! syscall the baseline refuses is attempted in a child under the filter;
//! ordinary tools (cargo, Python with fork and threads, git, curl to a
//! loopback listener) run under it; bubblewrap runs the rendered argv.
//!
//! Nothing here needs root for the filtered side (seccomp with
//! no-new-privs works unprivileged); the unfiltered comparisons need root
//! to prove anything. As root or under `CI`, a check that is not proven
//! (the unfiltered call was refused too, or a control failed) fails, unless
//! this host's kernel is shown to refuse it anyway (legacy TIOCSTI off, no
//! i386 ABI); those are proven in the VM. Not root and without `CI`, an
//! unproven check passes with an `UNPROVEN` line on stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use enforcer::sandbox::bwrap::{self, BwrapNet, ProcMode};
use enforcer::sandbox::probe::{self, Expect, Outcome};
use enforcer::sandbox::seccomp::clear_cloexec;
use enforcer::sandbox::{
    BwrapConfig, CompiledFilter, RealFs, RenderOptions, SeccompConfig, SeccompProfile,
};

fn baseline() -> CompiledFilter {
    CompiledFilter::compile(&SeccompConfig::baseline())
        .expect("baseline compiles")
        .expect("baseline is not off")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A check that showed nothing on this host: fails as root or under `CI`
/// (where it must be proven), else says so on stderr.
fn unproven(what: &str) {
    if is_root() || std::env::var_os("CI").is_some() {
        panic!("not proven (root or CI requires it): {what}");
    }
    eprintln!("UNPROVEN here (not root, CI unset; proven as root and in the VM): {what}");
}

/// Why this host's kernel refuses `report`'s call unfiltered too, when that
/// is shown by the host itself; such checks are proven in the VM instead.
fn host_refuses_anyway(report: &probe::Report) -> Option<&'static str> {
    let tiocsti = report.check.name.starts_with("ioctl_tiocsti");
    let legacy_off = std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti")
        .is_ok_and(|text| text.trim() == "0");
    if tiocsti && legacy_off {
        return Some("dev.tty.legacy_tiocsti=0: this kernel refuses TIOCSTI itself");
    }
    if report.check.rule == probe::Rule::ForeignAbi
        && report.unfiltered == Outcome::Killed(libc::SIGSEGV)
    {
        return Some("no i386 ABI (IA32_EMULATION off): int 0x80 is killed before seccomp");
    }
    None
}

/// Runs probe check `name` unfiltered and under the baseline and asserts
/// the filtered result is what the baseline promises.
fn assert_check(name: &str) {
    let check = probe::checks()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no probe check named {name}"));
    let config = SeccompConfig::baseline();
    let filter = baseline();
    let report = probe::report(&check, &config, Some(&filter)).expect("probe ran");
    assert!(
        !matches!(
            report.filtered,
            Outcome::SetupFailed(_) | Outcome::FilterFailed(_)
        ),
        "{}",
        report.line()
    );
    assert!(report.passed(), "{}", report.line());
    if !report.proven() {
        match host_refuses_anyway(&report) {
            Some(why) => eprintln!("proven in the VM, not here ({why}): {}", report.line()),
            None => unproven(&report.line()),
        }
    }
}

macro_rules! probe_tests {
    ($($name:ident),* $(,)?) => {
        const PROBE_TESTS: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                assert_check(stringify!($name));
            }
        )*
    };
}

probe_tests!(
    unshare_newuser,
    unshare_newnet,
    unshare_newns,
    unshare_newtime,
    unshare_files,
    clone_newuser,
    clone_newnet_high_bits,
    clone_plain,
    clone3,
    mount,
    umount2,
    pivot_root,
    setns,
    bpf,
    perf_event_open,
    ptrace_attach,
    process_vm_readv,
    process_vm_writev,
    keyctl,
    add_key,
    request_key,
    open_by_handle_at,
    name_to_handle_at,
    init_module,
    finit_module,
    delete_module,
    kexec_load,
    kexec_file_load,
    io_uring_setup,
    io_uring_enter,
    io_uring_register,
    ioctl_tiocsti,
    ioctl_tiocsti_high_bits,
    ioctl_tioclinux,
    ioctl_tiocgwinsz,
    socket_vsock,
    socket_vsock_high_bits,
    socket_packet,
    socketpair_vsock,
    socket_inet,
    socket_inet6,
    socket_unix,
    socket_netlink,
    socketpair_unix,
    x32_getpid,
    x32_mount,
    ia32_getpid,
);

#[test]
fn every_probe_check_has_a_test() {
    for check in probe::checks() {
        assert!(
            PROBE_TESTS.contains(&check.name),
            "add {} to probe_tests!",
            check.name
        );
    }
}

/// The denials the issue lists, by check name, are refused with EPERM.
#[test]
fn issue_denial_list_is_refused_with_eperm() {
    let filter = baseline();
    for name in [
        "unshare_newnet",
        "mount",
        "perf_event_open",
        "bpf",
        "ptrace_attach",
        "keyctl",
        "ioctl_tiocsti",
        "ioctl_tiocsti_high_bits",
        "io_uring_setup",
        "setns",
        "clone_newuser",
        "socket_vsock",
        "socket_packet",
    ] {
        let check = probe::checks()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap();
        let outcome = probe::run(&check, Some(&filter)).unwrap();
        assert_eq!(outcome, Outcome::Errno(libc::EPERM), "{name}");
    }
}

#[test]
fn exceptions_let_exactly_their_syscalls_through() {
    let config = SeccompConfig {
        profile: SeccompProfile::BaselineBlocklist,
        exceptions: vec!["ptrace".into(), "io_uring_setup".into()],
    };
    let filter = CompiledFilter::compile(&config).unwrap().unwrap();
    for check in probe::checks() {
        if ![
            "ptrace_attach",
            "io_uring_setup",
            "io_uring_enter",
            "socket_vsock",
        ]
        .contains(&check.name)
        {
            continue;
        }
        let report = probe::report(&check, &config, Some(&filter)).unwrap();
        assert!(report.passed(), "{}", report.line());
        let expect_unchanged = ["ptrace_attach", "io_uring_setup"].contains(&check.name);
        assert_eq!(
            report.expect == Expect::Unchanged,
            expect_unchanged,
            "{}",
            report.line()
        );
    }
}

#[test]
fn off_profile_compiles_to_no_filter() {
    let config = SeccompConfig {
        profile: SeccompProfile::Off,
        exceptions: vec![],
    };
    assert!(CompiledFilter::compile(&config).unwrap().is_none());
}

#[test]
fn unknown_exception_is_refused_by_name() {
    let config = SeccompConfig {
        profile: SeccompProfile::BaselineBlocklist,
        exceptions: vec!["open_tree".into()],
    };
    let err = CompiledFilter::compile(&config).unwrap_err().to_string();
    assert!(
        err.contains("\"open_tree\"") && err.contains("baseline-blocklist"),
        "{err}"
    );
}

// === real tools under the filter ===

/// `command` with the baseline applied in the child right before exec.
fn filtered(command: &mut Command, filter: &CompiledFilter) -> Output {
    let filter = filter.clone();
    // SAFETY: apply_in_child only makes prctl/seccomp syscalls.
    unsafe { command.pre_exec(move || filter.apply_in_child()) };
    command.stdin(Stdio::null()).output().expect("spawn")
}

fn text(output: &Output) -> String {
    format!(
        "status {}; stdout {:?}; stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn unshare_n_true_fails_with_operation_not_permitted() {
    let out = filtered(Command::new("unshare").args(["-n", "true"]), &baseline());
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Operation not permitted"), "{}", text(&out));
    if !is_root() {
        unproven("unshare -n true: its unfiltered control needs root");
        return;
    }
    let control = Command::new("unshare")
        .args(["-n", "true"])
        .output()
        .unwrap();
    assert!(
        control.status.success(),
        "unfiltered control: {}",
        text(&control)
    );
}

/// `mount -t tmpfs tmpfs DIR` in a private mount namespace (as root) so
/// the unfiltered control changes nothing on the host.
fn mount_tmpfs(dir: &Path, filter: Option<&CompiledFilter>) -> Output {
    let filter = filter.cloned();
    let root = is_root();
    let mut command = Command::new("mount");
    command
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(dir)
        .stdin(Stdio::null());
    // SAFETY: only raw syscalls in the child.
    unsafe {
        command.pre_exec(move || {
            if root {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                );
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            match &filter {
                Some(filter) => filter.apply_in_child(),
                None => Ok(()),
            }
        });
    }
    command.output().expect("spawn mount")
}

#[test]
fn mount_tmpfs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let filter = baseline();
    let out = mount_tmpfs(dir.path(), Some(&filter));
    assert!(!out.status.success(), "{}", text(&out));
    if !is_root() {
        // util-linux refuses a non-root mount itself ("must be superuser")
        // before calling mount(2): that is not the filter's denial.
        unproven("mount -t tmpfs: needs root to reach mount(2) at all");
        return;
    }
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        stderr.contains("permission denied") || stderr.contains("operation not permitted"),
        "{}",
        text(&out)
    );
    let control = mount_tmpfs(dir.path(), None);
    assert!(
        control.status.success(),
        "unfiltered control: {}",
        text(&control)
    );
}

#[test]
fn cargo_version_runs() {
    let out = filtered(Command::new("cargo").arg("--version"), &baseline());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("cargo "),
        "{}",
        text(&out)
    );
}

const PYTHON_FORK_THREADS: &str = r#"
import os, subprocess, threading
results = []
lock = threading.Lock()
def work(i):
    with lock:
        results.append(sum(range(1000 * i)))
threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 7, status
out = subprocess.run(["sh", "-c", "echo child"], capture_output=True, text=True, check=True).stdout
print(len(results), out.strip())
"#;

#[test]
fn python_forks_threads_and_subprocesses_run() {
    let out = filtered(
        Command::new("python3").args(["-c", PYTHON_FORK_THREADS]),
        &baseline(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "4 child",
        "{}",
        text(&out)
    );
}

#[test]
fn git_init_and_commit_run() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let filter = baseline();
    let git = |args: &[&str]| {
        let mut command = Command::new("git");
        command
            .args([
                "-c",
                "user.name=enforcer test",
                "-c",
                "user.email=test@example.invalid",
            ])
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .env("HOME", dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1");
        let out = filtered(&mut command, &filter);
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        out
    };
    git(&["init", "-q", repo.to_str().unwrap()]);
    std::fs::write(repo.join("hello.txt"), b"hello\n").unwrap();
    git(&["-C", repo.to_str().unwrap(), "add", "hello.txt"]);
    git(&["-C", repo.to_str().unwrap(), "commit", "-q", "-m", "first"]);
    let log = git(&["-C", repo.to_str().unwrap(), "log", "--format=%s"]);
    assert_eq!(String::from_utf8_lossy(&log.stdout).trim(), "first");
}

#[test]
fn curl_to_a_loopback_listener_works() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request).unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n")
            .unwrap();
    });
    let out = filtered(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--noproxy", "*"])
            .arg(format!("http://127.0.0.1:{port}/")),
        &baseline(),
    );
    server.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, b"hello\n");
}

// === bubblewrap ===

struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    /// root/visible, root/secret-dir/key, root/secret-file, root/work (missing).
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("visible"), b"visible\n").unwrap();
        std::fs::create_dir(root.join("secret-dir")).unwrap();
        std::fs::write(root.join("secret-dir/key"), b"TOPSECRET-DIR\n").unwrap();
        std::fs::write(root.join("secret-file"), b"TOPSECRET-FILE\n").unwrap();
        Tree { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> BwrapConfig {
        BwrapConfig {
            net: BwrapNet::Restricted,
            ro_root: true,
            rw_overlays: vec!["./work/cache".into()],
            read_deny: vec!["./secret-*".into()],
            mask_host_sockets: true,
        }
    }
}

/// Renders the tree's config around `script` and runs bwrap, with the
/// baseline's programs passed as `--add-seccomp-fd` when `seccomp`.
fn run_bwrap(tree: &Tree, proc_mode: ProcMode, seccomp: bool, script: &str) -> Output {
    let bwrap_path = bwrap::find_bwrap().expect("bwrap");
    let fds: Vec<OwnedFd> = if seccomp {
        baseline().to_memfds().unwrap()
    } else {
        Vec::new()
    };
    let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let command: Vec<OsString> = vec!["/bin/sh".into(), "-c".into(), script.into()];
    let cwd = std::fs::canonicalize(tree.root()).unwrap();
    let options = RenderOptions {
        cwd: &cwd,
        proc_mode,
        seccomp_fds: &raw,
        command: &command,
    };
    let plan = bwrap::render(&tree.config(), &options, &RealFs).expect("render");
    bwrap::create_overlay_dirs(&plan, None).unwrap();
    let mut child = Command::new(&bwrap_path);
    child
        .args(&plan.args)
        .current_dir(&cwd)
        .stdin(Stdio::null());
    let inherit = raw.clone();
    // SAFETY: fcntl only; the descriptors are those of `fds`, which this test keeps
    // open until the child has exec'd (borrow_raw).
    unsafe {
        child.pre_exec(move || {
            for &fd in &inherit {
                clear_cloexec(std::os::fd::BorrowedFd::borrow_raw(fd))?;
            }
            Ok(())
        });
    }
    let out = child.output().expect("spawn bwrap");
    drop(fds);
    out
}

const BWRAP_SCRIPT: &str = r#"
cat ./visible
if cat ./secret-file 2>/dev/null; then echo secret-file=readable; else echo secret-file=unreadable; fi
echo "dir-entries=$(ls -A ./secret-dir | wc -l)"
echo written > ./work/cache/out && echo overlay-write=ok
touch ./visible 2>/dev/null && echo root-write=ok || echo root-write=refused
echo "pid=$$"
if unshare -n true 2>/dev/null; then echo unshare=ok; else echo unshare=refused; fi
python3 -c 'print("python=ok")'
"#;

#[test]
fn bwrap_sandbox_masks_binds_and_filters() {
    let tree = Tree::new();
    let bwrap_path = bwrap::find_bwrap().expect("bwrap must be installed for these tests");
    let proc_mode = bwrap::detect_proc_mode(&bwrap_path).expect("bwrap works here");
    let out = run_bwrap(&tree, proc_mode, true, BWRAP_SCRIPT);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    for needle in [
        "visible\n",
        "secret-file=unreadable\n",
        "dir-entries=0\n",
        "overlay-write=ok\n",
        "root-write=refused\n",
        "unshare=refused\n",
        "python=ok\n",
    ] {
        assert!(
            stdout.contains(needle),
            "missing {needle:?}: {}",
            text(&out)
        );
    }
    assert!(!stdout.contains("TOPSECRET"), "{}", text(&out));
    // The overlay was created on the host and the write reached it.
    assert_eq!(
        std::fs::read(tree.root().join("work/cache/out")).unwrap(),
        b"written\n"
    );
    if proc_mode == ProcMode::Fresh {
        // A fresh PID namespace: bwrap is PID 1, the shell a low number.
        let pid: u32 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .unwrap();
        assert!(pid < 10, "pid {pid}: {}", text(&out));
    }
}

fn seccomp_filter_count(tree: &Tree, seccomp: bool) -> usize {
    let out = run_bwrap(
        tree,
        ProcMode::Fresh,
        seccomp,
        "grep '^Seccomp_filters:' /proc/self/status",
    );
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", text(&out)))
}

/// bwrap installs exactly the programs handed to it, and none without them.
#[test]
fn bwrap_installs_the_seccomp_programs_it_is_given() {
    let tree = Tree::new();
    let without = seccomp_filter_count(&tree, false);
    let with = seccomp_filter_count(&tree, true);
    assert_eq!(with, without + baseline().programs().len());
}

#[test]
fn bwrap_nested_container_fallback_runs_without_a_proc_mount() {
    let tree = Tree::new();
    let out = run_bwrap(
        &tree,
        ProcMode::HostReadOnly,
        true,
        "test -r /proc/self/status && echo proc=host-ro",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "proc=host-ro\n");
}

#[test]
fn net_none_leaves_only_loopback() {
    // /proc/net/dev lists the interfaces of the reader's network namespace.
    let tree = Tree::new();
    let config = BwrapConfig {
        net: BwrapNet::None,
        ..tree.config()
    };
    let cwd = std::fs::canonicalize(tree.root()).unwrap();
    let command: Vec<OsString> = vec![
        "/bin/sh".into(),
        "-c".into(),
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '".into(),
    ];
    let options = RenderOptions {
        cwd: &cwd,
        proc_mode: ProcMode::Fresh,
        seccomp_fds: &[],
        command: &command,
    };
    let plan = bwrap::render(&config, &options, &RealFs).unwrap();
    bwrap::create_overlay_dirs(&plan, None).unwrap();
    let out = Command::new(bwrap::find_bwrap().unwrap())
        .args(&plan.args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "lo",
        "{}",
        text(&out)
    );
}
