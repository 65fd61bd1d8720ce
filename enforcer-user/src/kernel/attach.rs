//! Load, attach and pin the programs on one cgroup; detach undoes it.
//!
//! Re-attaching (a restart, an upgrade, or after the previous attacher was
//! SIGKILLed) never leaves the cgroup unenforced: every new link is
//! attached and pinned next to the old one first, and only then does each
//! old link go. Both enforce the same rules from the same pinned maps, so
//! the overlap is harmless, and afterwards exactly one program per hook is
//! left.

use std::{
    collections::BTreeSet,
    ffi::CString,
    fs,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::Path,
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt, LsmCgroup, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use enforcer_ebpf::map_names;

use super::bpf_syscall::{Command, bpf, bpf_descriptor};
use super::{
    CgroupPath, KernelError, bpffs,
    dns::DnsRedirect,
    events::EventReader,
    hooks::{HOOKS, HookKind, HookSpec, LSM_PTRACE, LSM_SOCKET_CREATE},
    lsm,
    maps::{EndpointSpec, PinnedMaps},
    paths::PinDirs,
    redirect::RedirectSettings,
    task_layout,
    unix::{self, UNIX_PROGRAMS, UnixEnforcement},
};

/// The BPF object built from enforcer-ebpf by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer-ebpf"));

/// Attach mode for bpf_link-based cgroup attachment. A cgroup bpf_link is
/// always multi-attach (other programs on the cgroup keep running, ours runs
/// beside them); the kernel rejects the BPF_F_ALLOW_MULTI flag on
/// BPF_LINK_CREATE with EINVAL, so the link is created with no flags.
const LINK_ATTACH_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// What `attach` writes before the programs go live.
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    /// The enforcer's own listeners, always reachable from the cgroup.
    pub endpoints: Vec<EndpointSpec>,
    /// Turn on the programs' aya-log debug output.
    pub debug_log: bool,
    /// Egress mode and transparent listeners (`RedirectSettings::default()`:
    /// `proxy-only`, no listener; the daemon passes the pack's mode).
    pub redirect: RedirectSettings,
    /// TCP ports redirected in mode `redirect` (the allowlist's).
    pub redirect_ports: BTreeSet<u16>,
    /// The DNS filter's listeners (`egress.dns = "filtered"`); default:
    /// none, port 53 is denied.
    pub dns: DnsRedirect,
}

/// Whether socket families beyond IPv4/IPv6 are enforced by BPF-LSM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FamilyEnforcement {
    /// `lsm_cgroup/socket_create` is attached: only unix, inet, inet6 and
    /// netlink sockets can be created.
    Enforced,
    /// The LSM program could not be attached; vsock, packet and every other
    /// family are NOT enforced by the kernel programs.
    NotEnforced {
        /// Why it could not load or attach.
        reason: String,
    },
}

impl FamilyEnforcement {
    /// One line for humans.
    pub fn describe(&self) -> String {
        match self {
            Self::Enforced => {
                "socket families: enforced by BPF-LSM (only unix, inet, inet6, netlink allowed)"
                    .into()
            }
            Self::NotEnforced { reason } => format!(
                "socket families: NOT enforced — AF_VSOCK, AF_PACKET and every family other than \
                 unix/inet/inet6/netlink can still be created (BPF-LSM unavailable: {reason}); \
                 `enforcer run` closes this gap with seccomp"
            ),
        }
    }
}

/// Whether ptrace and `process_vm_*` of tasks outside the cgroup are
/// refused (BPF-LSM `ptrace_access_check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtraceEnforcement {
    /// `lsm_cgroup/ptrace_access_check` is attached.
    Enforced,
    /// The program could not be attached: a process of the cgroup can trace
    /// (and so run code in) a process of the same uid outside it.
    NotEnforced {
        /// Why it could not load or attach.
        reason: String,
    },
}

impl PtraceEnforcement {
    /// One line for humans.
    pub fn describe(&self) -> String {
        match self {
            Self::Enforced => {
                "ptrace: enforced by BPF-LSM (processes outside the cgroup cannot be \
                               traced or have their memory read)"
                    .into()
            }
            Self::NotEnforced { reason } => format!(
                "ptrace: NOT enforced — a process in the cgroup can trace a same-uid process outside \
                 it (BPF-LSM unavailable: {reason}); run agents under a dedicated uid, and \
                 `enforcer run` closes this gap with seccomp"
            ),
        }
    }
}

/// A live attachment: the loaded object (holding the event ring buffer and
/// the log buffer) and what was attached.
pub struct Attachment {
    /// The enforced cgroup.
    pub cgroup: CgroupPath,
    /// Its id (inode number).
    pub cgroup_id: u64,
    /// Where its pins are.
    pub pins: PinDirs,
    /// Whether other socket families are enforced.
    pub families: FamilyEnforcement,
    /// Whether tasks outside the cgroup are out of ptrace's reach.
    pub ptrace: PtraceEnforcement,
    /// Whether unix sockets are enforced (the second object's programs).
    pub unix: UnixEnforcement,
    ebpf: Ebpf,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("cgroup", &self.cgroup)
            .field("cgroup_id", &self.cgroup_id)
            .field("families", &self.families)
            .field("ptrace", &self.ptrace)
            .field("unix", &self.unix)
            .finish_non_exhaustive()
    }
}

impl Attachment {
    /// Typed access to the pinned maps.
    pub fn maps(&self) -> Result<PinnedMaps, KernelError> {
        PinnedMaps::open(&self.pins)
    }

    /// Takes the deny-event ring buffer (once).
    pub fn take_events(&mut self) -> Result<EventReader, KernelError> {
        let map = self
            .ebpf
            .take_map(map_names::EVENTS)
            .ok_or(KernelError::Missing {
                what: "map",
                name: map_names::EVENTS,
            })?;
        EventReader::new(map)
    }

    /// The loaded object, e.g. for aya-log's logger.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// Attaches every program to `cgroup` (creating the directory when
/// missing), pins links and maps, and writes the endpoints.
pub fn attach(cgroup: &CgroupPath, options: &AttachOptions) -> Result<Attachment, KernelError> {
    bpffs::ensure_mounted()?;
    cgroup.create()?;
    let cgroup_id = cgroup.id()?;
    let pins = PinDirs::for_cgroup(cgroup_id);
    for dir in [pins.maps(), pins.links()] {
        fs::create_dir_all(&dir).map_err(|source| KernelError::Io {
            what: format!("creating pin directory {}", dir.display()),
            source,
        })?;
    }
    settle_interrupted_swaps(&pins)?;
    let fresh = !HOOKS.iter().any(|hook| pins.link(hook.program).exists())
        && !UNIX_PROGRAMS
            .iter()
            .any(|program| pins.link(program.program).exists());

    let log_level: u8 = if options.debug_log { 0xff } else { 0 };
    // The kernel's BTF, read once: the LSM programs' attach targets, the
    // ptrace program's task layout and the unix programs' kfunc.
    let vmlinux = fs::read(task_layout::VMLINUX_BTF);
    let btf = vmlinux
        .as_deref()
        .ok()
        .and_then(|bytes| Btf::parse(bytes, object::Endianness::default()).ok());
    // Unknown offsets leave TASK_LAYOUT invalid (the program would deny
    // every trace); the ptrace program is then not attached at all.
    let task_layout = match &vmlinux {
        Ok(bytes) => task_layout::from_btf(bytes),
        Err(error) => Err(task_layout::LayoutError::Unreadable(error.to_string())),
    };
    let layout_value = task_layout.as_ref().copied().unwrap_or_default();
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins.maps())
        .override_global("AYA_LOG_LEVEL", &log_level, false)
        .override_global("TASK_LAYOUT", &layout_value, true)
        .override_global("ENFORCED_CGROUP_ID", &cgroup_id, true)
        .load(OBJECT)
        .map_err(KernelError::Load)?;

    // Endpoints go in before any program is live, so a fresh attach never
    // denies the enforcer's own listeners; so do the mode and the ports.
    let maps = PinnedMaps::open(&pins)?;
    maps.set_endpoints(&options.endpoints)?;
    maps.set_redirect_ports(&options.redirect_ports)?;
    maps.set_redirect(&options.redirect)?;
    maps.set_dns_redirect(&options.dns)?;

    let cgroup_file = cgroup.open()?;
    let mut staged: Vec<(&HookSpec, PinnedLink)> = Vec::new();
    let mut lsm_failures: Vec<(&'static str, String)> = Vec::new();
    // An LSM program attaches even where the bpf LSM is not active, and
    // then never runs: only an active bpf LSM gets them attached.
    let bpf_lsm = lsm::bpf_lsm_active();
    for hook in &HOOKS {
        if let (HookKind::LsmCgroup(_), Err(why)) = (hook.kind, &bpf_lsm) {
            lsm_failures.push((hook.program, why.clone()));
            // A link pinned earlier in this boot enforced nothing either.
            let stale = pins.link(hook.program);
            if stale.exists() {
                let _ = unpin_and_drop(&stale);
            }
            continue;
        }
        if hook.program == LSM_PTRACE
            && let Err(error) = &task_layout
        {
            lsm_failures.push((hook.program, format!("task layout: {error}")));
            continue;
        }
        let path = pins.swap_link(hook.program);
        let result = if let HookKind::Sockopt(_) = hook.kind {
            attach_sockopt_pinned(&mut ebpf, hook, &cgroup_file, &path)
        } else {
            attach_one(&mut ebpf, hook, &cgroup_file, btf.as_ref()).and_then(|link| {
                link.pin(&path)
                    .map_err(|source| KernelError::Pin { path, source })
            })
        };
        match result {
            Ok(pinned) => staged.push((hook, pinned)),
            Err(error) if matches!(hook.kind, HookKind::LsmCgroup(_)) => {
                lsm_failures.push((hook.program, error_chain(&error)));
            }
            Err(error) => {
                // Undo: drop the new links; the old ones (if any) still enforce.
                for (_, pinned) in staged {
                    let _ = pinned.unpin();
                }
                if fresh {
                    remove_pins(&pins);
                }
                return Err(error);
            }
        }
    }
    // === unix sockets: the second object (kernel 6.7+); absent hooks leave
    // unix sockets not enforced, the rest stands ===
    let unix_staged = match unix::stage(&pins, &cgroup_file, btf.as_ref()) {
        Ok(links) => Ok(links),
        Err(error) => {
            for program in &UNIX_PROGRAMS {
                let swap = pins.swap_link(program.program);
                if swap.exists() {
                    let _ = unpin_and_drop(&swap);
                }
            }
            Err(error_chain(&error))
        }
    };
    for (hook, pinned) in staged {
        replace_link(&pins, hook.program, pinned)?;
    }
    let unix = match unix_staged {
        Ok(links) => {
            for (program, pinned) in links {
                replace_link(&pins, program, pinned)?;
            }
            UnixEnforcement::Enforced
        }
        Err(failure) => {
            tracing::debug!(error = %failure, "unix-socket programs not attached");
            UnixEnforcement::NotEnforced {
                reason: format!("{}: {failure}", unix::not_enforced_reason()),
            }
        }
    };

    let lsm_failure = |program: &str| {
        lsm_failures
            .iter()
            .find(|(failed, _)| *failed == program)
            .map_or_else(|| "not attached".to_owned(), |(_, why)| why.clone())
    };
    let families = if pins.link(LSM_SOCKET_CREATE).exists() {
        FamilyEnforcement::Enforced
    } else {
        FamilyEnforcement::NotEnforced {
            reason: lsm_failure(LSM_SOCKET_CREATE),
        }
    };
    let ptrace = if pins.link(LSM_PTRACE).exists() {
        PtraceEnforcement::Enforced
    } else {
        PtraceEnforcement::NotEnforced {
            reason: lsm_failure(LSM_PTRACE),
        }
    };
    if !fresh {
        // A restart (systemd's Restart=, an upgrade): the maps came back
        // from their pins and each link was replaced in place.
        tracing::info!(
            cgroup = %cgroup.relative.display(),
            pins = %pins.root.display(),
            "adopted the pinned maps and links of the previous daemon"
        );
    }
    Ok(Attachment {
        cgroup: cgroup.clone(),
        cgroup_id,
        pins,
        families,
        ptrace,
        unix,
        ebpf,
    })
}

/// Loads and attaches one program, returning its link (not yet pinned).
fn attach_one(
    ebpf: &mut Ebpf,
    hook: &HookSpec,
    cgroup: &fs::File,
    btf: Option<&Btf>,
) -> Result<FdLink, KernelError> {
    let program = ebpf.program_mut(hook.program).ok_or(KernelError::Missing {
        what: "program",
        name: hook.program,
    })?;
    let fail = |step: &'static str| {
        move |source| KernelError::Program {
            step,
            program: hook.program,
            source,
        }
    };
    match hook.kind {
        HookKind::SockAddr(_) => {
            let program: &mut CgroupSockAddr = program.try_into().map_err(fail("load"))?;
            program.load().map_err(fail("load"))?;
            let id = program
                .attach(cgroup, LINK_ATTACH_MODE)
                .map_err(fail("attach"))?;
            let link = program.take_link(id).map_err(fail("attach"))?;
            FdLink::try_from(link).map_err(|source| KernelError::PinnedLink {
                path: hook.program.into(),
                source,
            })
        }
        HookKind::Sock(_) => {
            let program: &mut CgroupSock = program.try_into().map_err(fail("load"))?;
            program.load().map_err(fail("load"))?;
            let id = program
                .attach(cgroup, LINK_ATTACH_MODE)
                .map_err(fail("attach"))?;
            let link = program.take_link(id).map_err(fail("attach"))?;
            FdLink::try_from(link).map_err(|source| KernelError::PinnedLink {
                path: hook.program.into(),
                source,
            })
        }
        HookKind::SockOps => {
            let program: &mut SockOps = program.try_into().map_err(fail("load"))?;
            program.load().map_err(fail("load"))?;
            let id = program
                .attach(cgroup, LINK_ATTACH_MODE)
                .map_err(fail("attach"))?;
            let link = program.take_link(id).map_err(fail("attach"))?;
            FdLink::try_from(link).map_err(|source| KernelError::PinnedLink {
                path: hook.program.into(),
                source,
            })
        }
        HookKind::Sockopt(_) => Err(KernelError::Missing {
            what: "link wrapper (cgroup/setsockopt is attached by attach_sockopt_pinned)",
            name: hook.program,
        }),
        HookKind::Skb(attach_type) => {
            let program: &mut CgroupSkb = program.try_into().map_err(fail("load"))?;
            program.load().map_err(fail("load"))?;
            let id = program
                .attach(cgroup, attach_type, LINK_ATTACH_MODE)
                .map_err(fail("attach"))?;
            let link = program.take_link(id).map_err(fail("attach"))?;
            FdLink::try_from(link).map_err(|source| KernelError::PinnedLink {
                path: hook.program.into(),
                source,
            })
        }
        HookKind::LsmCgroup(lsm_hook) => {
            let program: &mut LsmCgroup = program.try_into().map_err(fail("load"))?;
            let btf = btf.ok_or_else(|| KernelError::Io {
                what: "reading kernel BTF (/sys/kernel/btf/vmlinux) for the BPF-LSM program".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
            program.load(lsm_hook, btf).map_err(fail("load"))?;
            let id = program.attach(cgroup).map_err(fail("attach"))?;
            let link = program.take_link(id).map_err(fail("attach"))?;
            Ok(FdLink::from(link))
        }
    }
}

/// Loads the `cgroup/setsockopt` program, attaches it with a bpf_link of
/// our own and pins that at `path`. aya 0.14's `CgroupSockoptLink` cannot
/// be turned into an `FdLink` (the other cgroup link wrappers can), so the
/// link is made with `BPF_LINK_CREATE` directly and pinned with
/// `BPF_OBJ_PIN`; from there it is an ordinary pinned link.
fn attach_sockopt_pinned(
    ebpf: &mut Ebpf,
    hook: &HookSpec,
    cgroup: &fs::File,
    path: &Path,
) -> Result<PinnedLink, KernelError> {
    const BPF_CGROUP_SETSOCKOPT: u32 = 22;
    let program = ebpf.program_mut(hook.program).ok_or(KernelError::Missing {
        what: "program",
        name: hook.program,
    })?;
    let fail = |step: &'static str| {
        move |source| KernelError::Program {
            step,
            program: hook.program,
            source,
        }
    };
    let program: &mut CgroupSockopt = program.try_into().map_err(fail("load"))?;
    program.load().map_err(fail("load"))?;
    let prog_fd = program.fd().map_err(fail("attach"))?;
    let io_error = |what: &str| {
        let what = format!("{what} for {}", hook.program);
        move |source| KernelError::Io { what, source }
    };
    let link = bpf_link_create(
        prog_fd.as_fd().as_raw_fd(),
        cgroup.as_raw_fd(),
        BPF_CGROUP_SETSOCKOPT,
    )
    .map_err(io_error("BPF_LINK_CREATE"))?;
    bpf_obj_pin(&link, path).map_err(io_error("pinning the link"))?;
    PinnedLink::from_pin(path).map_err(|source| KernelError::PinnedLink {
        path: path.to_owned(),
        source,
    })
}

/// `BPF_LINK_CREATE` with no flags (a cgroup link is always multi-attach).
pub(super) fn bpf_link_create(
    prog_fd: i32,
    target_fd: i32,
    attach_type: u32,
) -> std::io::Result<OwnedFd> {
    // union bpf_attr, link_create member: { __u32 prog_fd; __u32 target_fd;
    // __u32 attach_type; __u32 flags; ... }; the rest zero.
    let mut attr = [0u8; 64];
    let prog_fd = u32::try_from(prog_fd).unwrap_or(u32::MAX);
    let target_fd = u32::try_from(target_fd).unwrap_or(u32::MAX);
    attr[..4].copy_from_slice(&prog_fd.to_ne_bytes());
    attr[4..8].copy_from_slice(&target_fd.to_ne_bytes());
    attr[8..12].copy_from_slice(&attach_type.to_ne_bytes());
    // SAFETY: the link_create attribute holds no pointers.
    unsafe { bpf_descriptor(Command::LinkCreate, &mut attr) }
}

/// `BPF_OBJ_PIN`: pins a BPF object (here a link) at `path` on bpffs.
pub(super) fn bpf_obj_pin(object: &OwnedFd, path: &Path) -> std::io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // union bpf_attr, obj member: { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    let mut attr = [0u8; 64];
    attr[..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    let fd = u32::try_from(object.as_raw_fd()).unwrap_or(u32::MAX);
    attr[8..12].copy_from_slice(&fd.to_ne_bytes());
    // SAFETY: the one pointer, pathname, is c_path, which outlives the call;
    // the kernel only reads it.
    unsafe { bpf(Command::ObjPin, &mut attr) }.map(drop)
}

/// Puts `new` (pinned at the swap path) in place of the hook's old link.
fn replace_link(pins: &PinDirs, program: &str, new: PinnedLink) -> Result<(), KernelError> {
    let final_path = pins.link(program);
    if final_path.exists() {
        unpin_and_drop(&final_path)?;
    }
    let swap_path = pins.swap_link(program);
    fs::rename(&swap_path, &final_path).map_err(|source| KernelError::Io {
        what: format!(
            "renaming {} to {}",
            swap_path.display(),
            final_path.display()
        ),
        source,
    })?;
    drop(new);
    Ok(())
}

/// Removes a link pin; when this was the last reference the kernel
/// detaches the program.
fn unpin_and_drop(path: &Path) -> Result<(), KernelError> {
    let io_error = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| KernelError::Io { what, source }
    };
    let link = bpf_obj_get(path).map_err(io_error("opening pinned link"))?;
    // Dropping the last reference frees a link asynchronously; detach it
    // explicitly so the program is gone when this returns.
    bpf_link_detach(&link).map_err(io_error("detaching link"))?;
    fs::remove_file(path).map_err(io_error("removing pin"))?;
    Ok(())
}

/// `BPF_OBJ_GET`: opens a pinned object.
pub(super) fn bpf_obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // union bpf_attr, obj member: { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    let mut attr = [0u8; 64];
    attr[..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    // SAFETY: the one pointer, pathname, is c_path, which outlives the call;
    // the kernel only reads it.
    unsafe { bpf_descriptor(Command::ObjGet, &mut attr) }
}

/// `BPF_LINK_DETACH`: detaches a link's program now, whoever else still
/// holds the link (kernel >= 5.9).
fn bpf_link_detach(link: &OwnedFd) -> std::io::Result<()> {
    // union bpf_attr, link_detach member: { __u32 link_fd; }; the rest zero.
    let mut attr = [0u8; 64];
    let fd = u32::try_from(link.as_raw_fd()).unwrap_or(u32::MAX);
    attr[..4].copy_from_slice(&fd.to_ne_bytes());
    // SAFETY: the link_detach attribute holds no pointers.
    unsafe { bpf(Command::LinkDetach, &mut attr) }.map(drop)
}

/// Finishes a swap a killed attacher left half-done: a swap (`_new`) link next to
/// an old one is dropped (the old one still enforces); a lone swap link
/// takes the hook's place.
fn settle_interrupted_swaps(pins: &PinDirs) -> Result<(), KernelError> {
    let programs = HOOKS
        .iter()
        .map(|hook| hook.program)
        .chain(UNIX_PROGRAMS.iter().map(|program| program.program));
    for program in programs {
        let swap_path = pins.swap_link(program);
        if !swap_path.exists() {
            continue;
        }
        let final_path = pins.link(program);
        if final_path.exists() {
            unpin_and_drop(&swap_path)?;
        } else {
            fs::rename(&swap_path, &final_path).map_err(|source| KernelError::Io {
                what: format!(
                    "renaming {} to {}",
                    swap_path.display(),
                    final_path.display()
                ),
                source,
            })?;
        }
    }
    Ok(())
}

/// Detaches every program from `cgroup` and removes its pins. The cgroup
/// directory stays (a slice may still hold processes).
pub fn detach(cgroup: &CgroupPath) -> Result<(), KernelError> {
    let cgroup_id = cgroup.id()?;
    let pins = PinDirs::for_cgroup(cgroup_id);
    if !pins.root.exists() {
        return Err(KernelError::NotAttached {
            cgroup: cgroup.absolute.clone(),
            pins: pins.root,
        });
    }
    detach_pins(&pins)
}

/// Unpins every link (detaching its program) and removes every map pin
/// and directory under `pins`.
pub fn detach_pins(pins: &PinDirs) -> Result<(), KernelError> {
    if let Ok(entries) = fs::read_dir(pins.links()) {
        for entry in entries.flatten() {
            unpin_and_drop(&entry.path())?;
        }
    }
    remove_pins(pins);
    if pins.root.exists() {
        return Err(KernelError::Io {
            what: format!("removing {}", pins.root.display()),
            source: std::io::Error::other("pins remain after detach"),
        });
    }
    Ok(())
}

/// Best-effort removal of every pin file and directory under `pins`.
fn remove_pins(pins: &PinDirs) {
    for dir in [pins.links(), pins.maps()] {
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        let _ = fs::remove_dir(&dir);
    }
    let _ = fs::remove_dir(&pins.root);
    // The shared root goes too once the last cgroup's pins are gone.
    if let Some(parent) = pins.root.parent() {
        let _ = fs::remove_dir(parent);
    }
}

/// An error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
