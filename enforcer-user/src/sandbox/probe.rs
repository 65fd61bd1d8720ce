//! Proof that the filter refuses what it should on this kernel: each check
//! makes one real syscall in a forked child, once with no filter and once
//! under the filter, and the two results are compared with what the
//! profile promises.
//!
//! Used by `enforcer sandbox check`, by the `enforcer-sandbox-probe` test
//! binary (built static for the QEMU VM) and by the integration tests.
//!
//! Each check has a set-up step (before the filter: open a pty, start a
//! ptrace target) and an attempt (after it). Both run in the forked child
//! and only make raw syscalls (no allocation, no locks), so forking from a
//! multi-threaded process (the test harness) is safe. Arguments are chosen
//! so that, unfiltered and as root, nothing on the host changes: mounts on
//! paths that do not exist, `kexec_load` with invalid flags, namespaces and
//! keys that die with the child, sockets that are created and closed.

use std::io;
use std::os::fd::{FromRawFd as _, IntoRawFd as _, OwnedFd};

// Syscall numbers and constants nix does not define. The checks pass them
// to raw syscall(2) on purpose: exact register values (high bits, bogus
// arguments) are what a filter must be tested against.
use libc::{
    AT_FDCWD, PTRACE_ATTACH, SYS_add_key, SYS_bpf, SYS_clone, SYS_clone3, SYS_delete_module,
    SYS_finit_module, SYS_getpid, SYS_init_module, SYS_io_uring_enter, SYS_io_uring_register,
    SYS_io_uring_setup, SYS_ioctl, SYS_kexec_file_load, SYS_kexec_load, SYS_keyctl, SYS_mount,
    SYS_name_to_handle_at, SYS_open_by_handle_at, SYS_perf_event_open, SYS_pivot_root,
    SYS_process_vm_readv, SYS_process_vm_writev, SYS_ptrace, SYS_request_key, SYS_setns,
    SYS_socket, SYS_socketpair, SYS_umount2, SYS_unshare, TIOCGPTPEER, TIOCGWINSZ, TIOCLINUX,
    TIOCSCTTY, TIOCSTI, c_long, iovec,
};
use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::pty::{Winsize, posix_openpt, unlockpt};
use nix::sched::CloneFlags;
use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{
    ForkResult, Pid, alarm, fork, getpid, getppid, pause, pipe2, read, setsid, write,
};

use super::seccomp::{CompiledFilter, SeccompConfig, SeccompProfile, ioctl_request};

/// A path that does not exist, for mount-family checks.
const ABSENT: &std::ffi::CStr = c"/nonexistent-enforcer-probe";
/// `KEY_SPEC_PROCESS_KEYRING` (linux/keyctl.h).
const KEY_SPEC_PROCESS_KEYRING: i64 = -2;
/// `KEYCTL_GET_KEYRING_ID`.
const KEYCTL_GET_KEYRING_ID: i64 = 0;
/// `BPF_MAP_CREATE`.
const BPF_MAP_CREATE: i64 = 0;
/// `SIGCHLD` as the exit-signal byte of `clone`'s flags.
const SIGCHLD: u64 = Signal::SIGCHLD as u64;
/// `NETLINK_ROUTE`.
const NETLINK_ROUTE: i64 = 0;
/// A flag bit no kernel defines, for `kexec_*` (refused with EINVAL before
/// anything is loaded or unloaded).
const KEXEC_BOGUS_FLAG: i64 = 0x8000_0000;
/// High 32 bits the kernel drops from 32-bit arguments.
const HIGH_BITS: u64 = 0xdead_beef_0000_0000;
/// Seconds before a stuck check child is killed (SIGALRM).
const CHILD_TIMEOUT_SECS: u32 = 10;

/// Which rule a check exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A syscall from [`super::seccomp::BLOCKED_SYSCALLS`] (exceptable).
    Syscall(&'static str),
    /// The socket-family restriction.
    SocketFamily,
    /// The x32 guard.
    X32,
    /// The architecture check (foreign ABI kills the process).
    ForeignAbi,
    /// Something the profile must leave alone.
    Control,
}

impl Rule {
    /// Short label for reports.
    pub fn label(self) -> &'static str {
        match self {
            Rule::Syscall(name) => name,
            Rule::SocketFamily => "socket-family",
            Rule::X32 => "x32",
            Rule::ForeignAbi => "foreign-abi",
            Rule::Control => "control",
        }
    }
}

/// What a check should give under the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Refused with this errno.
    Errno(i32),
    /// The process is killed by this signal.
    Killed(i32),
    /// The same kind of result as without the filter.
    Unchanged,
}

/// What happened in one child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The syscall succeeded (its return value).
    Success(i64),
    /// The syscall failed with this errno.
    Errno(i32),
    /// The child was killed by this signal.
    Killed(i32),
    /// The set-up step failed with this errno (the check proves nothing).
    SetupFailed(i32),
    /// Installing the filter failed with this errno.
    FilterFailed(i32),
}

impl Outcome {
    /// Same kind of result (success values, e.g. descriptor numbers, may differ).
    pub fn same_kind(self, other: Outcome) -> bool {
        match (self, other) {
            (Outcome::Success(_), Outcome::Success(_)) => true,
            (a, b) => a == b,
        }
    }

    /// Whether this outcome is what `expect` describes (`Unchanged` is
    /// judged against `unfiltered`).
    pub fn meets(self, expect: Expect, unfiltered: Outcome) -> bool {
        match expect {
            Expect::Errno(e) => self == Outcome::Errno(e),
            Expect::Killed(s) => self == Outcome::Killed(s),
            Expect::Unchanged => self.same_kind(unfiltered),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Outcome::Success(_) => f.write_str("ok"),
            Outcome::Errno(e) => f.write_str(&errno_name(e)),
            Outcome::Killed(s) => write!(f, "killed-by-{}", signal_name(s)),
            Outcome::SetupFailed(e) => write!(f, "setup-failed-{}", errno_name(e)),
            Outcome::FilterFailed(e) => write!(f, "filter-failed-{}", errno_name(e)),
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Expect::Errno(e) => f.write_str(&errno_name(e)),
            Expect::Killed(s) => write!(f, "killed-by-{}", signal_name(s)),
            Expect::Unchanged => f.write_str("unchanged"),
        }
    }
}

/// Symbolic name of an errno (`EPERM`), or `errno-N`.
pub fn errno_name(errno: i32) -> String {
    match Errno::from_raw(errno) {
        Errno::UnknownErrno => format!("errno-{errno}"),
        known => format!("{known:?}"),
    }
}

fn signal_name(signal: i32) -> String {
    match Signal::try_from(signal) {
        Ok(known) => known.as_str().to_owned(),
        Err(_) => format!("signal-{signal}"),
    }
}

/// Resources a set-up step hands to its attempt (descriptors, pids).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ctx {
    a: i64,
    /// A helper process the set-up started, killed and reaped right after
    /// the attempt (before the report), so nothing outlives the check.
    reap: i32,
}

type Attempt = Result<i64, i32>;

/// One syscall check.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// Stable name (`unshare_newnet`), as the probe binary takes it.
    pub name: &'static str,
    /// The rule it exercises.
    pub rule: Rule,
    /// What it does, for `--list`.
    pub about: &'static str,
    setup: fn() -> Result<Ctx, i32>,
    attempt: fn(Ctx) -> Attempt,
}

impl Check {
    /// What the check must give under `config`.
    pub fn expected(&self, config: &SeccompConfig) -> Expect {
        if config.profile == SeccompProfile::Off {
            return Expect::Unchanged;
        }
        match self.rule {
            Rule::Syscall(name) if config.is_excepted(name) => Expect::Unchanged,
            Rule::Syscall("clone3") => Expect::Errno(Errno::ENOSYS as i32),
            Rule::Syscall(_) | Rule::SocketFamily | Rule::X32 => Expect::Errno(Errno::EPERM as i32),
            Rule::ForeignAbi => Expect::Killed(Signal::SIGSYS as i32),
            Rule::Control => Expect::Unchanged,
        }
    }
}

// === child-side helpers (async-signal-safe) ===

fn errno() -> i32 {
    Errno::last_raw()
}

fn sys(ret: c_long) -> Attempt {
    if ret < 0 { Err(errno()) } else { Ok(ret) }
}

fn close_if_fd(result: Attempt) -> Attempt {
    if let Ok(fd) = result {
        // SAFETY: the descriptor the attempt just created; nothing else
        // owns it, and it is closed here once.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    result
}

/// Ends this process at once, without running any Rust code (exit
/// handlers, destructors): nix has no `_exit(2)`. Async-signal-safe.
fn exit_now() -> ! {
    // SAFETY: _exit takes an integer, cannot fail and does not return.
    unsafe { libc::_exit(0) }
}

/// In a fork-like child (a raw `clone`/`clone3` returned 0): leave at once.
fn exit_if_child(result: Attempt) -> Attempt {
    match result {
        Ok(0) => exit_now(),
        Ok(pid) => {
            // Reaping our own child; its status is not needed.
            let _ = waitpid(Pid::from_raw(pid as i32), None);
            Ok(pid)
        }
        Err(e) => Err(e),
    }
}

fn no_setup() -> Result<Ctx, i32> {
    Ok(Ctx::default())
}

nix::ioctl_write_int_bad!(
    /// `TIOCGPTPEER`: opens the slave of a pty master (nix names no call for it).
    open_pty_peer,
    TIOCGPTPEER
);
nix::ioctl_write_int_bad!(
    /// `TIOCSCTTY`: makes a terminal the caller's controlling one.
    set_controlling_terminal,
    TIOCSCTTY
);

/// A pty pair whose slave is this child's controlling terminal (new
/// session), so `TIOCSTI` on it is allowed by the kernel's own rules where
/// legacy TIOCSTI is enabled. Ctx.a = slave fd. Both ends stay open until
/// the child exits.
fn pty_setup() -> Result<Ctx, i32> {
    let errno = |e: Errno| e as i32;
    // Fails only when this child already leads a group; the ioctls below
    // then fail instead.
    let _ = setsid();
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(errno)?;
    unlockpt(&master).map_err(errno)?;
    let master = master.into_raw_fd();
    let peer_flags = (OFlag::O_RDWR | OFlag::O_CLOEXEC).bits();
    // SAFETY: TIOCGPTPEER takes its flags as an integer argument and
    // returns a new descriptor; master is an open pty master.
    let slave = unsafe { open_pty_peer(master, peer_flags) }.map_err(errno)?;
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
    unsafe { set_controlling_terminal(slave, 0) }.map_err(errno)?;
    Ok(Ctx {
        a: i64::from(slave),
        reap: 0,
    })
}

/// A child that waits to be killed. Ctx.a = pid. The target says it is
/// ready (death signal armed) over a pipe before the attempt, so a
/// PTRACE_ATTACH cannot stop it half-way through its own set-up.
fn ptrace_target_setup() -> Result<Ctx, i32> {
    let (ready_read, ready_write) = pipe2(OFlag::O_CLOEXEC).map_err(|e| e as i32)?;
    let parent = getpid();
    // SAFETY: fork in a single-threaded child; the new process only makes
    // raw syscalls and never returns from this function.
    match unsafe { fork() }.map_err(|e| e as i32)? {
        ForkResult::Child => {
            let _ = set_pdeathsig(Signal::SIGKILL);
            if getppid() != parent {
                exit_now();
            }
            let _ = write(&ready_write, &[1]);
            loop {
                pause();
            }
        }
        ForkResult::Parent { child } => {
            drop(ready_write);
            let mut byte = [0u8; 1];
            if read(&ready_read, &mut byte) != Ok(1) {
                return Err(Errno::ECHILD as i32);
            }
            Ok(Ctx {
                a: i64::from(child.as_raw()),
                reap: child.as_raw(),
            })
        }
    }
}

fn open_netns_setup() -> Result<Ctx, i32> {
    let fd = open(
        c"/proc/self/ns/net",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| e as i32)?;
    Ok(Ctx {
        a: i64::from(fd.into_raw_fd()),
        reap: 0,
    })
}

macro_rules! syscall {
    ($nr:expr $(, $arg:expr)* $(,)?) => {
        // SAFETY: every probe syscall passes integers, valid C strings, or
        // pointers to live stack buffers of the size the kernel reads.
        // Every argument is widened to a full register (c_long): a bare
        // integer literal would travel through the variadic call as 32 bits.
        sys(unsafe { libc::syscall($nr $(, ($arg) as c_long)*) })
    };
}

fn unshare(flags: i64) -> Attempt {
    syscall!(SYS_unshare, flags)
}

fn clone_with(flags: u64) -> Attempt {
    exit_if_child(syscall!(SYS_clone, flags, 0, 0, 0, 0))
}

fn socket(family: u64, kind: i64, protocol: i64) -> Attempt {
    close_if_fd(syscall!(
        SYS_socket,
        family,
        kind | i64::from(SockFlag::SOCK_CLOEXEC.bits()),
        protocol
    ))
}

fn ioctl_byte(ctx: Ctx, request: u64) -> Attempt {
    let byte: u8 = b'\n';
    syscall!(SYS_ioctl, ctx.a, request, &raw const byte)
}

fn perf_event_open(_: Ctx) -> Attempt {
    // struct perf_event_attr, PERF_ATTR_SIZE_VER0 (64 bytes): a software
    // task-clock counter on this process, disabled, user space only.
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // type = PERF_TYPE_SOFTWARE
    attr[4..8].copy_from_slice(&64u32.to_ne_bytes()); // size
    attr[8..16].copy_from_slice(&1u64.to_ne_bytes()); // config = PERF_COUNT_SW_TASK_CLOCK
    attr[40..48].copy_from_slice(&0x61u64.to_ne_bytes()); // disabled | exclude_kernel | exclude_hv
    close_if_fd(syscall!(SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0))
}

fn process_vm(nr: c_long) -> Attempt {
    let mut local = [0u8; 8];
    let mut remote = [7u8; 8];
    let local_iov = iovec {
        iov_base: local.as_mut_ptr().cast(),
        iov_len: local.len(),
    };
    let remote_iov = iovec {
        iov_base: remote.as_mut_ptr().cast(),
        iov_len: remote.len(),
    };
    let pid = getpid().as_raw();
    syscall!(
        nr,
        pid,
        &raw const local_iov,
        1,
        &raw const remote_iov,
        1,
        0
    )
}

#[cfg(target_arch = "x86_64")]
fn ia32_getpid(_: Ctx) -> Attempt {
    let ret: i32;
    // SAFETY: `int 0x80` with eax = 20 is the i386 getpid; it reads no
    // memory. The kernel may clobber r8-r11 on this path.
    unsafe {
        std::arch::asm!(
            "int 0x80",
            inlateout("eax") 20i32 => ret,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        Err(-ret)
    } else {
        Ok(i64::from(ret))
    }
}

const fn check(
    name: &'static str,
    rule: Rule,
    about: &'static str,
    setup: fn() -> Result<Ctx, i32>,
    attempt: fn(Ctx) -> Attempt,
) -> Check {
    Check {
        name,
        rule,
        about,
        setup,
        attempt,
    }
}

/// Every check, in report order.
pub fn checks() -> Vec<Check> {
    use Rule::{Control, SocketFamily, Syscall};
    let mut all = vec![
        check(
            "unshare_newuser",
            Syscall("unshare"),
            "unshare(CLONE_NEWUSER)",
            no_setup,
            |_| unshare(i64::from(CloneFlags::CLONE_NEWUSER.bits())),
        ),
        check(
            "unshare_newnet",
            Syscall("unshare"),
            "unshare(CLONE_NEWNET), as `unshare -n`",
            no_setup,
            |_| unshare(i64::from(CloneFlags::CLONE_NEWNET.bits())),
        ),
        check(
            "unshare_newns",
            Syscall("unshare"),
            "unshare(CLONE_NEWNS)",
            no_setup,
            |_| unshare(i64::from(CloneFlags::CLONE_NEWNS.bits())),
        ),
        check(
            "unshare_newtime",
            Syscall("unshare"),
            "unshare(CLONE_NEWTIME)",
            no_setup,
            |_| unshare(0x80),
        ),
        check(
            "unshare_files",
            Control,
            "unshare(CLONE_FILES): no namespace flag, allowed",
            no_setup,
            |_| unshare(i64::from(CloneFlags::CLONE_FILES.bits())),
        ),
        check(
            "clone_newuser",
            Syscall("clone"),
            "clone(CLONE_NEWUSER | SIGCHLD)",
            no_setup,
            |_| clone_with(CloneFlags::CLONE_NEWUSER.bits() as u64 | SIGCHLD),
        ),
        check(
            "clone_newnet_high_bits",
            Syscall("clone"),
            "clone(CLONE_NEWNET | SIGCHLD) with high bits set (the kernel ignores them)",
            no_setup,
            |_| clone_with(HIGH_BITS | CloneFlags::CLONE_NEWNET.bits() as u64 | SIGCHLD),
        ),
        check(
            "clone_plain",
            Control,
            "clone(SIGCHLD), a plain fork: allowed",
            no_setup,
            |_| clone_with(SIGCHLD),
        ),
        check(
            "clone3",
            Syscall("clone3"),
            "clone3 (plain fork): ENOSYS so libc falls back to clone",
            no_setup,
            |_| {
                // struct clone_args, CLONE_ARGS_SIZE_VER0 (8 x u64): only
                // exit_signal (index 4) is set.
                let mut args = [0u64; 8];
                args[4] = SIGCHLD;
                exit_if_child(syscall!(
                    SYS_clone3,
                    args.as_ptr(),
                    std::mem::size_of_val(&args)
                ))
            },
        ),
        check(
            "mount",
            Syscall("mount"),
            "mount(tmpfs) on a path that does not exist",
            no_setup,
            |_| {
                syscall!(
                    SYS_mount,
                    c"none".as_ptr(),
                    ABSENT.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    0
                )
            },
        ),
        check(
            "umount2",
            Syscall("umount2"),
            "umount2 of a path that does not exist",
            no_setup,
            |_| syscall!(SYS_umount2, ABSENT.as_ptr(), 0),
        ),
        check(
            "pivot_root",
            Syscall("pivot_root"),
            "pivot_root to a path that does not exist",
            no_setup,
            |_| syscall!(SYS_pivot_root, ABSENT.as_ptr(), ABSENT.as_ptr()),
        ),
        check(
            "setns",
            Syscall("setns"),
            "setns into this process's own network namespace",
            open_netns_setup,
            |ctx| syscall!(SYS_setns, ctx.a, CloneFlags::CLONE_NEWNET.bits()),
        ),
        check(
            "bpf",
            Syscall("bpf"),
            "bpf(BPF_MAP_CREATE) with an empty attribute",
            no_setup,
            |_| {
                let attr = [0u8; 128];
                close_if_fd(syscall!(SYS_bpf, BPF_MAP_CREATE, attr.as_ptr(), attr.len()))
            },
        ),
        check(
            "perf_event_open",
            Syscall("perf_event_open"),
            "perf_event_open of a software counter on itself (what `perf stat` does)",
            no_setup,
            perf_event_open,
        ),
        check(
            "ptrace_attach",
            Syscall("ptrace"),
            "ptrace(PTRACE_ATTACH) to its own child",
            ptrace_target_setup,
            |ctx| syscall!(SYS_ptrace, PTRACE_ATTACH, ctx.a, 0, 0),
        ),
        check(
            "process_vm_readv",
            Syscall("process_vm_readv"),
            "process_vm_readv of its own memory",
            no_setup,
            |_| process_vm(SYS_process_vm_readv),
        ),
        check(
            "process_vm_writev",
            Syscall("process_vm_writev"),
            "process_vm_writev of its own memory",
            no_setup,
            |_| process_vm(SYS_process_vm_writev),
        ),
        check(
            "keyctl",
            Syscall("keyctl"),
            "keyctl(KEYCTL_GET_KEYRING_ID, process keyring)",
            no_setup,
            |_| {
                syscall!(
                    SYS_keyctl,
                    KEYCTL_GET_KEYRING_ID,
                    KEY_SPEC_PROCESS_KEYRING,
                    1
                )
            },
        ),
        check(
            "add_key",
            Syscall("add_key"),
            "add_key(\"user\") to the process keyring",
            no_setup,
            |_| {
                let payload = b"x";
                syscall!(
                    SYS_add_key,
                    c"user".as_ptr(),
                    c"enforcer-probe".as_ptr(),
                    payload.as_ptr(),
                    payload.len(),
                    KEY_SPEC_PROCESS_KEYRING,
                )
            },
        ),
        check(
            "request_key",
            Syscall("request_key"),
            "request_key of a key that does not exist",
            no_setup,
            |_| {
                syscall!(
                    SYS_request_key,
                    c"user".as_ptr(),
                    c"enforcer-probe-absent".as_ptr(),
                    0,
                    0
                )
            },
        ),
        check(
            "open_by_handle_at",
            Syscall("open_by_handle_at"),
            "open_by_handle_at with a bad mount descriptor",
            no_setup,
            |_| {
                let handle = [0u32; 4];
                syscall!(
                    SYS_open_by_handle_at,
                    -1,
                    handle.as_ptr(),
                    OFlag::O_RDONLY.bits()
                )
            },
        ),
        check(
            "name_to_handle_at",
            Syscall("name_to_handle_at"),
            "name_to_handle_at(\"/\") with a zero-size handle",
            no_setup,
            |_| {
                let handle = [0u32; 4];
                let mut mount_id: i32 = 0;
                syscall!(
                    SYS_name_to_handle_at,
                    AT_FDCWD,
                    c"/".as_ptr(),
                    handle.as_ptr(),
                    &raw mut mount_id,
                    0
                )
            },
        ),
        check(
            "init_module",
            Syscall("init_module"),
            "init_module of an empty image",
            no_setup,
            |_| syscall!(SYS_init_module, 0, 0, c"".as_ptr()),
        ),
        check(
            "finit_module",
            Syscall("finit_module"),
            "finit_module with a bad descriptor",
            no_setup,
            |_| syscall!(SYS_finit_module, -1, c"".as_ptr(), 0),
        ),
        check(
            "delete_module",
            Syscall("delete_module"),
            "delete_module of a module that does not exist",
            no_setup,
            |_| {
                syscall!(
                    SYS_delete_module,
                    c"enforcer_probe_absent".as_ptr(),
                    OFlag::O_NONBLOCK.bits()
                )
            },
        ),
        check(
            "kexec_load",
            Syscall("kexec_load"),
            "kexec_load with an invalid flag (loads nothing)",
            no_setup,
            |_| syscall!(SYS_kexec_load, 0, 1000, 0, KEXEC_BOGUS_FLAG),
        ),
        check(
            "kexec_file_load",
            Syscall("kexec_file_load"),
            "kexec_file_load with an invalid flag (loads nothing)",
            no_setup,
            |_| {
                syscall!(
                    SYS_kexec_file_load,
                    -1,
                    -1,
                    0,
                    c"".as_ptr(),
                    KEXEC_BOGUS_FLAG
                )
            },
        ),
        check(
            "io_uring_setup",
            Syscall("io_uring_setup"),
            "io_uring_setup(1 entry)",
            no_setup,
            |_| {
                let params = [0u8; 120];
                close_if_fd(syscall!(SYS_io_uring_setup, 1, params.as_ptr()))
            },
        ),
        check(
            "io_uring_enter",
            Syscall("io_uring_enter"),
            "io_uring_enter on a bad descriptor",
            no_setup,
            |_| syscall!(SYS_io_uring_enter, -1, 0, 0, 0, 0, 0),
        ),
        check(
            "io_uring_register",
            Syscall("io_uring_register"),
            "io_uring_register on a bad descriptor",
            no_setup,
            |_| syscall!(SYS_io_uring_register, -1, 0, 0, 0),
        ),
        check(
            "ioctl_tiocsti",
            Syscall("ioctl"),
            "ioctl(TIOCSTI) on its own controlling pty",
            pty_setup,
            |ctx| ioctl_byte(ctx, ioctl_request(TIOCSTI)),
        ),
        check(
            "ioctl_tiocsti_high_bits",
            Syscall("ioctl"),
            "ioctl(TIOCSTI | high bits): the kernel truncates the request to 32 bits",
            pty_setup,
            |ctx| ioctl_byte(ctx, HIGH_BITS | ioctl_request(TIOCSTI)),
        ),
        check(
            "ioctl_tioclinux",
            Syscall("ioctl"),
            "ioctl(TIOCLINUX) on a pty",
            pty_setup,
            |ctx| ioctl_byte(ctx, ioctl_request(TIOCLINUX)),
        ),
        check(
            "ioctl_tiocgwinsz",
            Control,
            "ioctl(TIOCGWINSZ) on a pty: allowed",
            pty_setup,
            |ctx| {
                let mut size = Winsize {
                    ws_row: 0,
                    ws_col: 0,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                syscall!(SYS_ioctl, ctx.a, TIOCGWINSZ, &raw mut size)
            },
        ),
        check(
            "socket_vsock",
            SocketFamily,
            "socket(AF_VSOCK), created and closed, never connected",
            no_setup,
            |_| socket(AddressFamily::Vsock as u64, SockType::Stream as i64, 0),
        ),
        check(
            "socket_vsock_high_bits",
            SocketFamily,
            "socket(AF_VSOCK | high bits): the kernel reads the family as 32 bits",
            no_setup,
            |_| {
                socket(
                    HIGH_BITS | AddressFamily::Vsock as u64,
                    SockType::Stream as i64,
                    0,
                )
            },
        ),
        check(
            "socket_packet",
            SocketFamily,
            "socket(AF_PACKET, SOCK_RAW), created and closed",
            no_setup,
            |_| {
                socket(
                    AddressFamily::Packet as u64,
                    SockType::Raw as i64,
                    SockProtocol::EthAll as i64,
                )
            },
        ),
        check(
            "socketpair_vsock",
            SocketFamily,
            "socketpair(AF_VSOCK)",
            no_setup,
            |_| {
                let mut fds = [0i32; 2];
                syscall!(
                    SYS_socketpair,
                    AddressFamily::Vsock as i32,
                    SockType::Stream as i32,
                    0,
                    fds.as_mut_ptr()
                )
            },
        ),
        check(
            "socket_inet",
            Control,
            "socket(AF_INET, SOCK_STREAM): allowed",
            no_setup,
            |_| socket(AddressFamily::Inet as u64, SockType::Stream as i64, 0),
        ),
        check(
            "socket_inet6",
            Control,
            "socket(AF_INET6, SOCK_DGRAM): allowed",
            no_setup,
            |_| socket(AddressFamily::Inet6 as u64, SockType::Datagram as i64, 0),
        ),
        check(
            "socket_unix",
            Control,
            "socket(AF_UNIX, SOCK_STREAM): allowed",
            no_setup,
            |_| socket(AddressFamily::Unix as u64, SockType::Stream as i64, 0),
        ),
        check(
            "socket_netlink",
            Control,
            "socket(AF_NETLINK, NETLINK_ROUTE): allowed",
            no_setup,
            |_| {
                socket(
                    AddressFamily::Netlink as u64,
                    SockType::Raw as i64,
                    NETLINK_ROUTE,
                )
            },
        ),
        check(
            "socketpair_unix",
            Control,
            "socketpair(AF_UNIX): allowed",
            no_setup,
            |_| {
                let mut fds = [0i32; 2];
                syscall!(
                    SYS_socketpair,
                    AddressFamily::Unix as i32,
                    SockType::Stream as i32,
                    0,
                    fds.as_mut_ptr()
                )
            },
        ),
    ];
    #[cfg(target_arch = "x86_64")]
    all.extend([
        check(
            "x32_getpid",
            Rule::X32,
            "getpid by its x32 number (__X32_SYSCALL_BIT | 39)",
            no_setup,
            |_| syscall!(0x4000_0000_i64 | SYS_getpid),
        ),
        check(
            "x32_mount",
            Rule::X32,
            "mount by its x32 number (__X32_SYSCALL_BIT | 165), on a path that does not exist",
            no_setup,
            |_| {
                syscall!(
                    0x4000_0000_i64 | SYS_mount,
                    c"none".as_ptr(),
                    ABSENT.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    0
                )
            },
        ),
        check(
            "ia32_getpid",
            Rule::ForeignAbi,
            "getpid through the i386 ABI (int 0x80): the process is killed",
            no_setup,
            ia32_getpid,
        ),
    ]);
    all
}

/// Runs one check in a forked child, under `filter` when given.
pub fn run(check: &Check, filter: Option<&CompiledFilter>) -> io::Result<Outcome> {
    const TAG_OK: u8 = 1;
    const TAG_ERRNO: u8 = 2;
    const TAG_SETUP: u8 = 3;
    const TAG_FILTER: u8 = 4;
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: the child below only makes raw syscalls and leaves with _exit.
    let child = match unsafe { fork() }? {
        ForkResult::Parent { child } => child,
        ForkResult::Child => {
            /// Writes the result to the pipe and leaves without running any Rust code.
            fn send(pipe: &OwnedFd, tag: u8, value: i64) -> ! {
                let mut buf = [0u8; 9];
                buf[0] = tag;
                buf[1..].copy_from_slice(&value.to_ne_bytes());
                let _ = write(pipe, &buf);
                exit_now()
            }
            drop(read_end);
            alarm::set(CHILD_TIMEOUT_SECS);
            let ctx = match (check.setup)() {
                Ok(ctx) => ctx,
                Err(e) => send(&write_end, TAG_SETUP, i64::from(e)),
            };
            if let Some(filter) = filter
                && let Err(e) = filter.apply_in_child()
            {
                send(
                    &write_end,
                    TAG_FILTER,
                    i64::from(e.raw_os_error().unwrap_or(0)),
                );
            }
            let result = (check.attempt)(ctx);
            if ctx.reap > 0 {
                // Killing and reaping the helper this child started.
                let helper = Pid::from_raw(ctx.reap);
                let _ = kill(helper, Signal::SIGKILL);
                let _ = waitpid(helper, None);
            }
            match result {
                Ok(value) => send(&write_end, TAG_OK, value),
                Err(e) => send(&write_end, TAG_ERRNO, i64::from(e)),
            }
        }
    };
    drop(write_end);
    let mut buf = [0u8; 9];
    let mut got = 0;
    while got < buf.len() {
        match read(&read_end, &mut buf[got..]) {
            Err(Errno::EINTR) => continue,
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    drop(read_end);
    let status = loop {
        match waitpid(child, None) {
            Err(Errno::EINTR) => continue,
            status => break status?,
        }
    };
    if got == buf.len() {
        let mut value = [0u8; 8];
        value.copy_from_slice(&buf[1..]);
        let value = i64::from_ne_bytes(value);
        let errno_value = i32::try_from(value).unwrap_or(0);
        return Ok(match buf[0] {
            TAG_OK => Outcome::Success(value),
            TAG_ERRNO => Outcome::Errno(errno_value),
            TAG_SETUP => Outcome::SetupFailed(errno_value),
            _ => Outcome::FilterFailed(errno_value),
        });
    }
    if let WaitStatus::Signaled(_, signal, _) = status {
        return Ok(Outcome::Killed(signal as i32));
    }
    Err(io::Error::other(format!(
        "probe child for {} exited without a report ({status:?})",
        check.name
    )))
}

/// One check's results.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The check.
    pub check: Check,
    /// Result with no filter.
    pub unfiltered: Outcome,
    /// Result under the filter (same as `unfiltered` when the profile is off).
    pub filtered: Outcome,
    /// What the profile promises.
    pub expect: Expect,
}

impl Report {
    /// The filtered result is what the profile promises.
    pub fn passed(&self) -> bool {
        // A kernel without the i386 ABI (IA32_EMULATION off) kills `int 0x80`
        // with SIGSEGV before seccomp runs: nothing to filter there.
        let no_foreign_abi = self.check.rule == Rule::ForeignAbi
            && self.unfiltered == Outcome::Killed(Signal::SIGSEGV as i32)
            && self.filtered == self.unfiltered;
        self.filtered.meets(self.expect, self.unfiltered) || no_foreign_abi
    }

    /// The unfiltered result differs from the refusal, so the check shows
    /// the filter at work on this kernel (a refusal the kernel makes anyway,
    /// such as TIOCSTI where legacy TIOCSTI is disabled, proves nothing).
    /// An `Unchanged` control is proven only when the unfiltered call
    /// succeeded: a control that fails either way shows nothing let through.
    pub fn proven(&self) -> bool {
        match self.expect {
            Expect::Unchanged => matches!(self.unfiltered, Outcome::Success(_)),
            _ if self.check.rule == Rule::ForeignAbi => {
                self.unfiltered != Outcome::Killed(Signal::SIGSEGV as i32)
            }
            expect => !self.unfiltered.meets(expect, self.unfiltered),
        }
    }

    /// One line: `check=NAME rule=RULE unfiltered=.. filtered=.. expect=.. result=pass|FAIL proven=yes|no`.
    pub fn line(&self) -> String {
        format!(
            "check={} rule={} unfiltered={} filtered={} expect={} result={} proven={}",
            self.check.name,
            self.check.rule.label(),
            self.unfiltered,
            self.filtered,
            self.expect,
            if self.passed() { "pass" } else { "FAIL" },
            if self.proven() { "yes" } else { "no" },
        )
    }
}

/// Runs `check` unfiltered and under the filter `config` compiles to.
pub fn report(
    check: &Check,
    config: &SeccompConfig,
    filter: Option<&CompiledFilter>,
) -> io::Result<Report> {
    let unfiltered = run(check, None)?;
    let filtered = match filter {
        Some(filter) => run(check, Some(filter))?,
        None => unfiltered,
    };
    Ok(Report {
        check: *check,
        unfiltered,
        filtered,
        expect: check.expected(config),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn errno_and_signal_names_are_symbolic_or_numbered() {
        assert_eq!(errno_name(Errno::EPERM as i32), "EPERM");
        assert_eq!(errno_name(Errno::EAGAIN as i32), "EAGAIN");
        assert_eq!(errno_name(Errno::EOPNOTSUPP as i32), "EOPNOTSUPP");
        assert_eq!(errno_name(4_000), "errno-4000");
        assert_eq!(signal_name(Signal::SIGSYS as i32), "SIGSYS");
        assert_eq!(signal_name(200), "signal-200");
    }

    #[test]
    fn names_are_unique_and_rules_are_known() {
        let all = checks();
        let mut names: Vec<&str> = all.iter().map(|c| c.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
        for c in &all {
            if let Rule::Syscall(name) = c.rule {
                assert!(
                    super::super::seccomp::BLOCKED_SYSCALLS.contains(&name),
                    "{}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn every_blocked_syscall_has_a_check() {
        let all = checks();
        for name in super::super::seccomp::BLOCKED_SYSCALLS {
            assert!(
                all.iter().any(|c| c.rule == Rule::Syscall(name)),
                "no probe check for {name}"
            );
        }
    }

    #[test]
    fn expectations_follow_exceptions_and_profile() {
        let all = checks();
        let ptrace = all.iter().find(|c| c.name == "ptrace_attach").unwrap();
        let clone3 = all.iter().find(|c| c.name == "clone3").unwrap();
        let vsock = all.iter().find(|c| c.name == "socket_vsock").unwrap();
        let base = SeccompConfig::baseline();
        assert_eq!(ptrace.expected(&base), Expect::Errno(Errno::EPERM as i32));
        assert_eq!(clone3.expected(&base), Expect::Errno(Errno::ENOSYS as i32));
        let excepted = SeccompConfig {
            exceptions: vec!["ptrace".into()],
            ..base.clone()
        };
        assert_eq!(ptrace.expected(&excepted), Expect::Unchanged);
        assert_eq!(
            vsock.expected(&excepted),
            Expect::Errno(Errno::EPERM as i32)
        );
        let off = SeccompConfig {
            profile: SeccompProfile::Off,
            exceptions: vec![],
        };
        assert_eq!(vsock.expected(&off), Expect::Unchanged);
    }

    #[test]
    fn report_judgement() {
        let c = checks()[0];
        let report = |unfiltered, filtered| Report {
            check: c,
            unfiltered,
            filtered,
            expect: Expect::Errno(Errno::EPERM as i32),
        };
        let r = report(Outcome::Success(0), Outcome::Errno(Errno::EPERM as i32));
        assert!(r.passed() && r.proven());
        assert!(
            r.line().ends_with("expect=EPERM result=pass proven=yes"),
            "{}",
            r.line()
        );
        let r = report(
            Outcome::Errno(Errno::EPERM as i32),
            Outcome::Errno(Errno::EPERM as i32),
        );
        assert!(r.passed() && !r.proven());
        let r = report(Outcome::Success(0), Outcome::Success(0));
        assert!(!r.passed());
        assert!(r.line().contains("result=FAIL"));
        let control = |unfiltered, filtered| Report {
            check: c,
            unfiltered,
            filtered,
            expect: Expect::Unchanged,
        };
        let r = control(Outcome::Success(3), Outcome::Success(4));
        assert!(r.passed() && r.proven(), "a control that went through");
        let r = control(
            Outcome::Errno(Errno::EPERM as i32),
            Outcome::Errno(Errno::EPERM as i32),
        );
        assert!(
            r.passed() && !r.proven(),
            "a control refused unfiltered too proves nothing"
        );
        let ia32 = checks().into_iter().find(|c| c.rule == Rule::ForeignAbi);
        if let Some(check) = ia32 {
            let segv = Outcome::Killed(Signal::SIGSEGV as i32);
            let expect = Expect::Killed(Signal::SIGSYS as i32);
            let r = Report {
                check,
                unfiltered: segv,
                filtered: segv,
                expect,
            };
            assert!(r.passed() && !r.proven(), "no i386 ABI: nothing to prove");
            let r = Report {
                check,
                unfiltered: Outcome::Success(1),
                filtered: segv,
                expect,
            };
            assert!(!r.passed());
        }
    }
}
