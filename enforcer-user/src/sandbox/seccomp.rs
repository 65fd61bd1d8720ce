//! The seccomp `baseline-blocklist`: compiled once before fork, applied in
//! the child right before exec.
//!
//! Default allow; EPERM for the syscalls an agent's tools have no business
//! making (namespaces, mounts, kernel modules, BPF, tracing, keyrings,
//! io_uring, terminal injection), and for sockets of families the kernel
//! egress programs do not see. The filter is three stacked seccomp
//! programs, because one seccompiler program has a single match action:
//!
//! 1. `blocklist` (seccompiler): arch check (a syscall of any other ABI,
//!    e.g. i386 `int 0x80`, kills the process), then EPERM for
//!    [`BLOCKED_SYSCALLS`] (`unshare`/`clone` only with a `CLONE_NEW*` flag,
//!    `ioctl` only for `TIOCSTI`/`TIOCLINUX`) and for `socket`/`socketpair`
//!    outside [`ALLOWED_SOCKET_FAMILIES`].
//! 2. `clone3` (seccompiler): ENOSYS, so libc falls back to `clone`, whose
//!    flags sit in a register where program 1 can inspect them (`clone3`
//!    passes them in memory, out of a seccomp filter's reach).
//! 3. `x32` (hand-written, x86-64 only): EPERM for every syscall number with
//!    `__X32_SYSCALL_BIT` set; x32 numbers would otherwise slip past the
//!    x86-64 numbers program 1 compares against.
//!
//! The kernel runs every program and keeps the most severe result, so their
//! order does not matter for what is refused.
//!
//! Argument widths: the kernel reads `ioctl`'s request, `socket`'s family
//! and `clone`'s flags as 32-bit values (it truncates the register), so every
//! argument comparison here is a [`SeccompCmpArgLen::Dword`] (low 32 bits
//! only). A 64-bit compare would let `TIOCSTI | 1 << 32` through while the
//! kernel still runs `TIOCSTI`.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io::{self, Seek as _, Write as _};
use std::os::fd::{BorrowedFd, OwnedFd};

// Syscall numbers and seccomp ABI constants: nix does not define them.
use libc::{
    Ioctl, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_SET_MODE_FILTER, SYS_add_key, SYS_bpf,
    SYS_clone, SYS_clone3, SYS_delete_module, SYS_finit_module, SYS_init_module,
    SYS_io_uring_enter, SYS_io_uring_register, SYS_io_uring_setup, SYS_ioctl, SYS_kexec_file_load,
    SYS_kexec_load, SYS_keyctl, SYS_mount, SYS_name_to_handle_at, SYS_open_by_handle_at,
    SYS_perf_event_open, SYS_pivot_root, SYS_process_vm_readv, SYS_process_vm_writev, SYS_ptrace,
    SYS_request_key, SYS_seccomp, SYS_setns, SYS_socket, SYS_socketpair, SYS_umount2, SYS_unshare,
    TIOCLINUX, TIOCSTI, sock_fprog,
};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, SealFlag, fcntl};
use nix::sched::CloneFlags;
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::prctl::set_no_new_privs;
use nix::sys::socket::AddressFamily;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule,
    TargetArch, sock_filter,
};

pub use policy::SeccompProfile;

/// Name of the only blocklist profile (`sandboxLinux.seccomp.profile`).
pub const PROFILE_NAME: &str = "baseline-blocklist";

/// Syscalls `baseline-blocklist` refuses, by the name policy `exceptions`
/// use. The socket-family rule and the x32/foreign-ABI rules are not in this
/// list: they close gaps in the kernel egress enforcement and cannot be
/// excepted.
///
/// Defined once, in the policy crate, which checks `exceptions` against it.
pub const BLOCKED_SYSCALLS: &[&str] = policy::model::BASELINE_BLOCKLIST;

/// Socket families a sandboxed process may create (`socket`, `socketpair`):
/// local sockets, IPv4, IPv6 (the families the kernel egress programs
/// police) and netlink (needed by `ip`, glibc's `getaddrinfo`, and others).
pub const ALLOWED_SOCKET_FAMILIES: &[(&str, i32)] = &[
    ("AF_UNIX", AddressFamily::Unix as i32),
    ("AF_INET", AddressFamily::Inet as i32),
    ("AF_INET6", AddressFamily::Inet6 as i32),
    ("AF_NETLINK", AddressFamily::Netlink as i32),
];

/// `CLONE_NEW*` flags refused in `clone` (`CLONE_NEWTIME` shares its bit
/// with the exit-signal byte of `clone` and only exists for `unshare` and
/// `clone3`).
pub const CLONE_NAMESPACE_FLAGS: &[(&str, u64)] = &[
    ("CLONE_NEWNS", CloneFlags::CLONE_NEWNS.bits() as u64),
    ("CLONE_NEWCGROUP", CloneFlags::CLONE_NEWCGROUP.bits() as u64),
    ("CLONE_NEWUTS", CloneFlags::CLONE_NEWUTS.bits() as u64),
    ("CLONE_NEWIPC", CloneFlags::CLONE_NEWIPC.bits() as u64),
    ("CLONE_NEWUSER", CloneFlags::CLONE_NEWUSER.bits() as u64),
    ("CLONE_NEWPID", CloneFlags::CLONE_NEWPID.bits() as u64),
    ("CLONE_NEWNET", CloneFlags::CLONE_NEWNET.bits() as u64),
];

/// `CLONE_NEWTIME`, refused in `unshare` on top of [`CLONE_NAMESPACE_FLAGS`].
pub const CLONE_NEWTIME: u64 = 0x80;

/// `ioctl` requests refused: `TIOCSTI` (push bytes into a terminal's input,
/// i.e. type commands into the user's shell) and `TIOCLINUX` (console
/// selection paste, the same attack on a virtual console).
pub const BLOCKED_IOCTLS: &[(&str, u64)] = &[
    ("TIOCSTI", ioctl_request(TIOCSTI)),
    ("TIOCLINUX", ioctl_request(TIOCLINUX)),
];

/// An ioctl request number as the 64-bit register value (`libc::Ioctl` is
/// `c_ulong` on glibc and `c_int` on musl).
#[allow(
    clippy::unnecessary_cast,
    reason = "a no-op on glibc, a widening on musl"
)]
pub const fn ioctl_request(request: Ioctl) -> u64 {
    request as u64
}

/// `__X32_SYSCALL_BIT`: x32-ABI syscall numbers on x86-64 have it set.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Errors compiling the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// An exception names a syscall the profile does not block.
    #[error(
        "seccomp exception {name:?} is not a syscall that {PROFILE_NAME} blocks; exceptions may name: {}",
        BLOCKED_SYSCALLS.join(", ")
    )]
    UnknownException {
        /// The name as given.
        name: String,
    },
    /// This CPU architecture has no filter.
    #[error("seccomp {PROFILE_NAME} is not available on {arch} (supported: x86_64, aarch64)")]
    UnsupportedArch {
        /// `std::env::consts::ARCH`.
        arch: &'static str,
    },
    /// seccompiler refused the rules (a bug in this module).
    #[error("compiling the seccomp program {program} failed: {source}")]
    Compile {
        /// Which of the stacked programs.
        program: &'static str,
        /// seccompiler's error.
        #[source]
        source: seccompiler::BackendError,
    },
}

/// What to filter: the profile and its exceptions, filled from the policy's
/// `sandboxLinux.seccomp` (see [`SeccompConfig::from_policy`]) or from
/// `enforcer run --seccomp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompConfig {
    /// `baseline-blocklist` or `off`.
    pub profile: SeccompProfile,
    /// Names from [`BLOCKED_SYSCALLS`] to allow anyway.
    pub exceptions: Vec<String>,
}

impl SeccompConfig {
    /// The baseline with no exceptions.
    pub fn baseline() -> Self {
        SeccompConfig {
            profile: SeccompProfile::BaselineBlocklist,
            exceptions: Vec::new(),
        }
    }

    /// From a checked policy's sandbox section.
    pub fn from_policy(sandbox: &policy::Sandbox) -> Self {
        SeccompConfig {
            profile: sandbox.seccomp,
            exceptions: sandbox.seccomp_exceptions.clone(),
        }
    }

    /// Whether `name` (from [`BLOCKED_SYSCALLS`]) is allowed by an exception.
    pub fn is_excepted(&self, name: &str) -> bool {
        self.exceptions.iter().any(|e| e == name)
    }
}

/// One compiled seccomp program, ready to load.
#[derive(Debug, Clone)]
pub struct Program {
    /// Short name (`blocklist`, `clone3`, `x32`), for messages.
    pub name: &'static str,
    /// The classic-BPF instructions.
    pub instructions: BpfProgram,
}

impl Program {
    /// The program as the kernel's `struct sock_filter` array in native byte
    /// order: the format bwrap's `--add-seccomp-fd` reads.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.instructions.len() * 8);
        for insn in &self.instructions {
            out.extend_from_slice(&insn.code.to_ne_bytes());
            out.push(insn.jt);
            out.push(insn.jf);
            out.extend_from_slice(&insn.k.to_ne_bytes());
        }
        out
    }
}

/// The compiled filter: built before fork (allocation, validation), applied
/// in the child with [`CompiledFilter::apply_in_child`] (two syscalls per
/// program, nothing else).
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    programs: Vec<Program>,
}

impl CompiledFilter {
    /// Compiles `config`; `Ok(None)` when the profile is `off`. Exceptions
    /// naming anything but [`BLOCKED_SYSCALLS`] are an error.
    pub fn compile(config: &SeccompConfig) -> Result<Option<CompiledFilter>, SeccompError> {
        if config.profile == SeccompProfile::Off {
            return Ok(None);
        }
        for name in &config.exceptions {
            if !BLOCKED_SYSCALLS.contains(&name.as_str()) {
                return Err(SeccompError::UnknownException { name: name.clone() });
            }
        }
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|_| {
            SeccompError::UnsupportedArch {
                arch: std::env::consts::ARCH,
            }
        })?;
        let mut programs = vec![Program {
            name: "blocklist",
            instructions: blocklist_program(config, arch)?,
        }];
        if !config.is_excepted("clone3") {
            programs.push(Program {
                name: "clone3",
                instructions: compile(
                    "clone3",
                    BTreeMap::from([(SYS_clone3, Vec::new())]),
                    SeccompAction::Errno(Errno::ENOSYS as u32),
                    arch,
                )?,
            });
        }
        if let Some(x32) = x32_program() {
            programs.push(x32);
        }
        Ok(Some(CompiledFilter { programs }))
    }

    /// The stacked programs, in load order.
    pub fn programs(&self) -> &[Program] {
        &self.programs
    }

    /// Installs the filter on the calling thread: `PR_SET_NO_NEW_PRIVS`, then
    /// one `seccomp(SECCOMP_SET_MODE_FILTER)` per program.
    ///
    /// Async-signal-safe (no allocation, no locks), so it can run in a
    /// [`std::os::unix::process::CommandExt::pre_exec`] closure; make it the
    /// last step there, after any set-up of the launcher's own that the
    /// filter would refuse (namespaces, mounts). With no-new-privs set,
    /// set-uid binaries no longer gain privileges after exec.
    pub fn apply_in_child(&self) -> io::Result<()> {
        set_no_new_privs()?;
        for program in &self.programs {
            install_filter(&program.instructions)?;
        }
        Ok(())
    }

    /// Writes each program into its own sealed-size memfd (offset 0), for
    /// `bwrap --add-seccomp-fd FD`: bwrap must set up its namespaces and
    /// mounts before the filter applies, so under bwrap the filter is
    /// handed to bwrap instead of applied in `pre_exec`. The descriptors are
    /// close-on-exec; call [`clear_cloexec`] on each in the `pre_exec` of
    /// the bwrap command so only that child inherits them.
    pub fn to_memfds(&self) -> io::Result<Vec<OwnedFd>> {
        let mut fds = Vec::with_capacity(self.programs.len());
        for program in &self.programs {
            fds.push(memfd_with(c"enforcer-seccomp", &program.to_bytes())?);
        }
        Ok(fds)
    }
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, prog)` for one program: nix has no
/// seccomp(2). Async-signal-safe (one syscall, nothing allocated).
fn install_filter(instructions: &[sock_filter]) -> io::Result<()> {
    // Fits: seccompiler refuses programs of 4096 instructions or more.
    let len = u16::try_from(instructions.len()).map_err(|_| Errno::E2BIG)?;
    let fprog = sock_fprog {
        len,
        // seccompiler's sock_filter is #[repr(C)] with the kernel's layout,
        // like libc's; the kernel only reads through this pointer.
        filter: instructions.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: fprog points at a live instruction array of `len` entries,
    // which the kernel copies before returning; nothing is written.
    let result =
        unsafe { libc::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &raw const fprog) };
    Errno::result(result).map(drop).map_err(io::Error::from)
}

/// Clears `FD_CLOEXEC` on `fd` so a child inherits it across exec.
/// Async-signal-safe; meant for a `pre_exec` closure.
pub fn clear_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = FdFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFD)?);
    fcntl(fd, FcntlArg::F_SETFD(flags - FdFlag::FD_CLOEXEC))?;
    Ok(())
}

fn memfd_with(name: &CStr, bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    file.rewind()?;
    let seals = SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(OwnedFd::from(file))
}

// === rules ===

fn dword(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|source| {
        SeccompError::Compile {
            program: "blocklist",
            source,
        }
    })
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(|source| SeccompError::Compile {
        program: "blocklist",
        source,
    })
}

/// One rule per flag: "any of these bits set" is an OR of masked compares
/// (`arg & flag == flag`), and seccompiler ORs the rules of a syscall.
fn any_flag_rules(arg: u8, flags: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    flags
        .iter()
        .map(|&flag| rule(vec![dword(arg, SeccompCmpOp::MaskedEq(flag), flag)?]))
        .collect()
}

/// The syscall number of a [`BLOCKED_SYSCALLS`] name on this architecture.
fn syscall_number(name: &str) -> Option<i64> {
    Some(match name {
        "mount" => SYS_mount,
        "umount2" => SYS_umount2,
        "pivot_root" => SYS_pivot_root,
        "unshare" => SYS_unshare,
        "clone" => SYS_clone,
        "clone3" => SYS_clone3,
        "setns" => SYS_setns,
        "bpf" => SYS_bpf,
        "perf_event_open" => SYS_perf_event_open,
        "ptrace" => SYS_ptrace,
        "process_vm_readv" => SYS_process_vm_readv,
        "process_vm_writev" => SYS_process_vm_writev,
        "keyctl" => SYS_keyctl,
        "add_key" => SYS_add_key,
        "request_key" => SYS_request_key,
        "open_by_handle_at" => SYS_open_by_handle_at,
        "name_to_handle_at" => SYS_name_to_handle_at,
        "init_module" => SYS_init_module,
        "finit_module" => SYS_finit_module,
        "delete_module" => SYS_delete_module,
        "kexec_load" => SYS_kexec_load,
        "kexec_file_load" => SYS_kexec_file_load,
        "io_uring_setup" => SYS_io_uring_setup,
        "io_uring_enter" => SYS_io_uring_enter,
        "io_uring_register" => SYS_io_uring_register,
        "ioctl" => SYS_ioctl,
        _ => return None,
    })
}

/// The argument conditions of a blocked syscall (empty: refused whatever
/// the arguments).
fn conditions_for(name: &str) -> Result<Vec<SeccompRule>, SeccompError> {
    let clone_flags: Vec<u64> = CLONE_NAMESPACE_FLAGS.iter().map(|&(_, f)| f).collect();
    match name {
        // clone(flags, stack, ...) on x86-64 and aarch64: flags is argument 0.
        "clone" => any_flag_rules(0, &clone_flags),
        "unshare" => {
            let mut flags = clone_flags;
            flags.push(CLONE_NEWTIME);
            any_flag_rules(0, &flags)
        }
        "ioctl" => BLOCKED_IOCTLS
            .iter()
            .map(|&(_, request)| rule(vec![dword(1, SeccompCmpOp::Eq, request)?]))
            .collect(),
        _ => Ok(Vec::new()),
    }
}

/// `socket(family, ...)`/`socketpair(family, ...)`: refused when the family
/// is none of [`ALLOWED_SOCKET_FAMILIES`] (one rule, its conditions ANDed).
fn socket_family_rules() -> Result<Vec<SeccompRule>, SeccompError> {
    let conditions = ALLOWED_SOCKET_FAMILIES
        .iter()
        .map(|&(_, family)| dword(0, SeccompCmpOp::Ne, family as u64))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(vec![rule(conditions)?])
}

fn blocklist_program(config: &SeccompConfig, arch: TargetArch) -> Result<BpfProgram, SeccompError> {
    let mut rules = BTreeMap::new();
    for &name in BLOCKED_SYSCALLS {
        if name == "clone3" || config.is_excepted(name) {
            continue;
        }
        // Every name in the list has a number on the supported architectures.
        let Some(nr) = syscall_number(name) else {
            continue;
        };
        rules.insert(nr, conditions_for(name)?);
    }
    rules.insert(SYS_socket, socket_family_rules()?);
    rules.insert(SYS_socketpair, socket_family_rules()?);
    compile(
        "blocklist",
        rules,
        SeccompAction::Errno(Errno::EPERM as u32),
        arch,
    )
}

fn compile(
    program: &'static str,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    on_match: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, SeccompError> {
    let filter = seccompiler::SeccompFilter::new(rules, SeccompAction::Allow, on_match, arch)
        .map_err(|source| SeccompError::Compile { program, source })?;
    BpfProgram::try_from(filter).map_err(|source| SeccompError::Compile { program, source })
}

// classic BPF opcodes (linux/bpf_common.h) for the hand-written x32 program.
/// `BPF_LD | BPF_W | BPF_ABS` (0x00 | 0x00 | 0x20).
const BPF_LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K` (0x05 | 0x10 | 0x00).
const BPF_JMP_JEQ_K: u16 = 0x15;
/// `BPF_JMP | BPF_JGE | BPF_K` (0x05 | 0x30 | 0x00).
const BPF_JMP_JGE_K: u16 = 0x35;
/// `BPF_RET | BPF_K` (0x06 | 0x00).
const BPF_RET_K: u16 = 0x06;
/// `offsetof(struct seccomp_data, nr)` and `arch`.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
/// `AUDIT_ARCH_X86_64` (linux/audit.h).
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

/// x86-64 only: EPERM for syscall numbers with [`X32_SYSCALL_BIT`] set.
/// seccompiler matches exact numbers only, so this range check is written
/// out (six instructions).
fn x32_program() -> Option<Program> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let instructions = vec![
        // 0: A = arch
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        // 1: not x86-64 (the blocklist program kills those) -> 5 (allow)
        insn(BPF_JMP_JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        // 2: A = syscall number
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        // 3: A >= __X32_SYSCALL_BIT -> 4 (refuse), else -> 5 (allow)
        insn(BPF_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
        // 4: refuse
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | Errno::EPERM as u32),
        // 5: allow
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ];
    Some(Program {
        name: "x32",
        instructions,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_filter_is_refused_by_the_kernel() {
        // An empty program can never be installed, so this process stays
        // unfiltered whatever its privileges.
        let error = install_filter(&[]).err().and_then(|e| e.raw_os_error());
        let errno = error.map(Errno::from_raw);
        assert!(
            matches!(errno, Some(Errno::EINVAL | Errno::EACCES)),
            "{errno:?}"
        );
    }

    #[test]
    fn every_blocked_name_has_a_syscall_number() {
        for name in BLOCKED_SYSCALLS {
            assert!(syscall_number(name).is_some(), "{name}");
        }
    }

    #[test]
    fn unknown_exception_is_an_error_naming_it() {
        let config = SeccompConfig {
            profile: SeccompProfile::BaselineBlocklist,
            exceptions: vec!["ptrace".into(), "reboot".into()],
        };
        let err = CompiledFilter::compile(&config).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"reboot\""), "{text}");
        assert!(
            text.contains("ptrace"),
            "the message lists what may be named: {text}"
        );
    }

    #[test]
    fn off_compiles_to_nothing() {
        let config = SeccompConfig {
            profile: SeccompProfile::Off,
            exceptions: vec!["not-checked-when-off".into()],
        };
        assert!(CompiledFilter::compile(&config).unwrap().is_none());
    }

    #[test]
    fn baseline_has_blocklist_clone3_and_x32_programs() {
        let filter = CompiledFilter::compile(&SeccompConfig::baseline())
            .unwrap()
            .unwrap();
        let names: Vec<&str> = filter.programs().iter().map(|p| p.name).collect();
        assert_eq!(names, ["blocklist", "clone3", "x32"]);
    }

    #[test]
    fn clone3_exception_drops_the_enosys_program() {
        let config = SeccompConfig {
            profile: SeccompProfile::BaselineBlocklist,
            exceptions: vec!["clone3".into()],
        };
        let filter = CompiledFilter::compile(&config).unwrap().unwrap();
        let names: Vec<&str> = filter.programs().iter().map(|p| p.name).collect();
        assert_eq!(names, ["blocklist", "x32"]);
    }

    /// Every argument comparison loads only the low half of the argument:
    /// seccomp_data.args[i] starts at 16 + 8 i, and on little-endian the low
    /// 32 bits are the first four bytes; the high half (+4) is never loaded.
    #[test]
    fn argument_compares_read_only_the_low_32_bits() {
        let filter = CompiledFilter::compile(&SeccompConfig::baseline())
            .unwrap()
            .unwrap();
        let blocklist = &filter.programs()[0].instructions;
        let arg_loads: Vec<u32> = blocklist
            .iter()
            .filter(|i| i.code == BPF_LD_W_ABS && i.k >= 16)
            .map(|i| i.k)
            .collect();
        assert!(!arg_loads.is_empty());
        for k in &arg_loads {
            assert_eq!(
                (k - 16) % 8,
                0,
                "argument load at offset {k} reads a high half"
            );
        }
        // ioctl's request (arg 1) is compared on its low word.
        assert!(arg_loads.contains(&24));
    }

    #[test]
    fn exceptions_remove_the_syscall_from_the_program() {
        let find = |filter: &CompiledFilter, nr: i64| {
            filter.programs()[0]
                .instructions
                .iter()
                .any(|i| i.code == BPF_JMP_JEQ_K && i64::from(i.k) == nr)
        };
        let base = CompiledFilter::compile(&SeccompConfig::baseline())
            .unwrap()
            .unwrap();
        assert!(find(&base, SYS_ptrace));
        let config = SeccompConfig {
            profile: SeccompProfile::BaselineBlocklist,
            exceptions: vec!["ptrace".into()],
        };
        let excepted = CompiledFilter::compile(&config).unwrap().unwrap();
        assert!(!find(&excepted, SYS_ptrace));
        assert!(find(&excepted, SYS_bpf));
    }

    #[test]
    fn program_bytes_are_eight_per_instruction() {
        let filter = CompiledFilter::compile(&SeccompConfig::baseline())
            .unwrap()
            .unwrap();
        for program in filter.programs() {
            let bytes = program.to_bytes();
            assert_eq!(bytes.len(), program.instructions.len() * 8);
            let first = &program.instructions[0];
            assert_eq!(&bytes[0..2], &first.code.to_ne_bytes());
            assert_eq!(&bytes[4..8], &first.k.to_ne_bytes());
        }
    }

    #[test]
    fn memfds_hold_the_program_bytes() {
        use std::io::Read as _;
        let filter = CompiledFilter::compile(&SeccompConfig::baseline())
            .unwrap()
            .unwrap();
        let fds = filter.to_memfds().unwrap();
        assert_eq!(fds.len(), filter.programs().len());
        for (fd, program) in fds.into_iter().zip(filter.programs()) {
            let mut bytes = Vec::new();
            std::fs::File::from(fd).read_to_end(&mut bytes).unwrap();
            assert_eq!(bytes, program.to_bytes());
        }
    }
}
