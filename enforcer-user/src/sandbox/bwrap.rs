//! bubblewrap: the argv rendered from `sandboxLinux.bwrap`, finding the
//! `bwrap` binary, and detecting whether a fresh `/proc` can be mounted.
//!
//! [`render`] is a pure function of the config, the launch options and a
//! [`FsView`] (for `readDeny` globs and which overlays exist). The argv, in
//! order (bwrap applies mount operations in order, later ones on top):
//!
//! ```text
//! --ro-bind / /                  (--bind / / when roRoot is false)
//! --dev /dev
//! --proc /proc                   (omitted in the nested-container fallback)
//! --bind P P                     each rwOverlay
//! --tmpfs DIR | --ro-bind /dev/null FILE    each readDeny match (after the
//!                                overlays, so a deny inside an overlay wins)
//! --unshare-pid [--unshare-net] --die-with-parent --new-session
//! [--add-seccomp-fd N]...        the seccomp programs, applied by bwrap
//!                                after its own set-up, right before exec
//! -- COMMAND...
//! ```

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use policy::BwrapNet;

use super::fsview::{FsView, Kind};
use super::masks::{self, Mask, MaskError};

/// What `enforcer run --bwrap` and `enforcer sandbox argv` say when bwrap is
/// missing.
pub const NOT_INSTALLED: &str = "bubblewrap (bwrap) is not installed; apt-get install bubblewrap";

/// What bwrap prints when the kernel refuses a new proc mount (typical in an
/// unprivileged container whose /proc has masked sub-mounts).
const PROC_MOUNT_FAILURE: &str = "Can't mount proc";

/// Errors of the bwrap layer.
#[derive(Debug, thiserror::Error)]
pub enum BwrapError {
    /// No `bwrap` on PATH.
    #[error("{NOT_INSTALLED}")]
    NotInstalled,
    /// An `rwOverlays` entry is unusable.
    #[error("sandboxLinux.bwrap.fs.rwOverlays entry {entry:?}: {why}")]
    BadOverlay {
        /// The entry as written.
        entry: String,
        /// What is wrong and what to write instead.
        why: &'static str,
    },
    /// `readDeny` could not be expanded.
    #[error(transparent)]
    Mask(#[from] MaskError),
    /// Creating a missing overlay directory failed.
    #[error("creating rw overlay directory {}", path.display())]
    CreateOverlay {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// bwrap could not be started or failed in a way other than the proc mount.
    #[error("bwrap {} does not work on this host: {detail}", bwrap.display())]
    Unusable {
        /// The bwrap binary.
        bwrap: PathBuf,
        /// What happened (bwrap's own message, or the spawn error).
        detail: String,
    },
}

/// The bwrap part of the policy (`sandboxLinux.bwrap`), as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BwrapConfig {
    /// `restricted`: share the host network (the kernel egress programs
    /// police it); `none`: `--unshare-net`.
    pub net: BwrapNet,
    /// Bind the root read-only (`--ro-bind / /`) instead of read-write.
    pub ro_root: bool,
    /// Paths bound read-write on top; relative to the working directory;
    /// created when missing ([`create_overlay_dirs`]).
    pub rw_overlays: Vec<String>,
    /// Glob patterns hidden from the sandbox ([`masks`]).
    pub read_deny: Vec<String>,
    /// Hide the well-known host sockets ([`HOST_SOCKETS`]) that are root on
    /// the host (container runtimes) or answer DNS outside the filter
    /// (nscd, systemd-resolved, the system D-Bus): the kernel cannot police
    /// unix sockets on every kernel.
    pub mask_host_sockets: bool,
}

/// Host sockets `--bwrap` hides (`--ro-bind /dev/null` over each that
/// exists): a container runtime's socket is root on the host; nscd,
/// systemd-resolved's varlink socket and the system bus (resolve1) answer
/// name lookups that never reach the DNS filter.
pub const HOST_SOCKETS: &[&str] = &[
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/run/podman/podman.sock",
    "/run/nscd/socket",
    "/var/run/nscd/socket",
    "/run/systemd/resolve/io.systemd.Resolve",
    "/run/dbus/system_bus_socket",
    "/var/run/dbus/system_bus_socket",
];

impl BwrapConfig {
    /// From a checked policy's sandbox section.
    pub fn from_policy(sandbox: &policy::Sandbox) -> Self {
        BwrapConfig {
            net: sandbox.net,
            ro_root: sandbox.ro_root,
            rw_overlays: sandbox.rw_overlays.clone(),
            read_deny: sandbox.read_deny.clone(),
            mask_host_sockets: true,
        }
    }
}

/// How the sandbox gets its `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcMode {
    /// `--proc /proc`: a proc mount of the sandbox's own PID namespace.
    Fresh,
    /// Nested-container fallback: no `--proc`; the sandbox sees the host's
    /// /proc read-only through `--ro-bind / /`. Weaker: processes outside
    /// the sandbox are visible, and `/proc/PID/root` of a same-user process
    /// outside reaches files that `readDeny` hides (see docs/SANDBOX.md).
    HostReadOnly,
}

/// Launch-time inputs of [`render`].
#[derive(Debug, Clone, Copy)]
pub struct RenderOptions<'a> {
    /// Working directory (relative overlays and patterns resolve against it).
    pub cwd: &'a Path,
    /// From [`detect_proc_mode`].
    pub proc_mode: ProcMode,
    /// Descriptors holding seccomp programs (`--add-seccomp-fd`), inherited
    /// by bwrap; empty for no filter.
    pub seccomp_fds: &'a [i32],
    /// The command and its arguments (may be empty: the argv then ends
    /// with `--`).
    pub command: &'a [OsString],
}

/// One `rwOverlays` entry, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// Absolute path (canonical when it exists).
    pub path: PathBuf,
    /// Whether it exists now; a missing one is created before launch.
    pub exists: bool,
}

/// The rendered sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BwrapPlan {
    /// bwrap's arguments (without the program name).
    pub args: Vec<OsString>,
    /// The resolved overlays.
    pub overlays: Vec<Overlay>,
    /// What `readDeny` matched.
    pub masks: Vec<Mask>,
}

impl BwrapPlan {
    /// Overlays to create before exec ([`create_overlay_dirs`]).
    pub fn missing_overlays(&self) -> impl Iterator<Item = &Path> {
        self.overlays
            .iter()
            .filter(|o| !o.exists)
            .map(|o| o.path.as_path())
    }
}

/// Lexically normalises an absolute path (`.` dropped, `..` pops).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn overlay(entry: &str, cwd: &Path, fs: &dyn FsView) -> Result<Overlay, BwrapError> {
    let bad = |why| BwrapError::BadOverlay {
        entry: entry.to_owned(),
        why,
    };
    if entry.is_empty() {
        return Err(bad("empty path"));
    }
    if entry.starts_with('~') {
        return Err(bad("`~` is not expanded; write the absolute path"));
    }
    if entry.contains(['*', '?', '[', '{']) {
        return Err(bad("overlays are paths, not patterns; list each directory"));
    }
    let path = normalize(&cwd.join(entry));
    Ok(match fs.resolve(&path) {
        Some((canonical, _)) => Overlay {
            path: canonical,
            exists: true,
        },
        None => Overlay {
            path,
            exists: false,
        },
    })
}

/// Renders the bwrap argv. Pure: reads the file system only through `fs`.
pub fn render(
    config: &BwrapConfig,
    options: &RenderOptions<'_>,
    fs: &dyn FsView,
) -> Result<BwrapPlan, BwrapError> {
    let overlays = config
        .rw_overlays
        .iter()
        .map(|entry| overlay(entry, options.cwd, fs))
        .collect::<Result<Vec<_>, _>>()?;
    let masks = masks::expand_all(&config.read_deny, options.cwd, fs)?;

    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&OsStr]| args.extend(items.iter().map(|s| s.to_os_string()));
    let root_bind = if config.ro_root {
        "--ro-bind"
    } else {
        "--bind"
    };
    push(&[root_bind.as_ref(), "/".as_ref(), "/".as_ref()]);
    push(&["--dev".as_ref(), "/dev".as_ref()]);
    if options.proc_mode == ProcMode::Fresh {
        push(&["--proc".as_ref(), "/proc".as_ref()]);
    }
    for overlay in &overlays {
        push(&[
            "--bind".as_ref(),
            overlay.path.as_os_str(),
            overlay.path.as_os_str(),
        ]);
    }
    for mask in &masks {
        match mask.kind {
            Kind::Dir => push(&["--tmpfs".as_ref(), mask.path.as_os_str()]),
            Kind::File => push(&[
                "--ro-bind".as_ref(),
                "/dev/null".as_ref(),
                mask.path.as_os_str(),
            ]),
        }
    }
    if config.mask_host_sockets {
        for socket in HOST_SOCKETS {
            if let Some((path, Kind::File)) = fs.resolve(Path::new(socket)) {
                push(&["--ro-bind".as_ref(), "/dev/null".as_ref(), path.as_os_str()]);
            }
        }
    }
    push(&["--unshare-pid".as_ref()]);
    if config.net == BwrapNet::None {
        push(&["--unshare-net".as_ref()]);
    }
    push(&["--die-with-parent".as_ref(), "--new-session".as_ref()]);
    for fd in options.seccomp_fds {
        push(&["--add-seccomp-fd".as_ref(), fd.to_string().as_ref()]);
    }
    push(&["--".as_ref()]);
    args.extend(options.command.iter().cloned());
    Ok(BwrapPlan {
        args,
        overlays,
        masks,
    })
}

/// Creates the overlays that do not exist yet (with their missing parents),
/// owned by `owner` (uid, gid) when given — e.g. the invoking user of a
/// `sudo enforcer run` — so the sandboxed process can write into them.
pub fn create_overlay_dirs(plan: &BwrapPlan, owner: Option<(u32, u32)>) -> Result<(), BwrapError> {
    for dir in plan.missing_overlays() {
        let mut missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|a| std::fs::symlink_metadata(a).is_err())
            .collect();
        missing.reverse();
        for path in missing {
            let fail = |source| BwrapError::CreateOverlay {
                path: path.to_path_buf(),
                source,
            };
            match std::fs::create_dir(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(fail(e)),
            }
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(fail)?;
            }
        }
    }
    Ok(())
}

/// Finds `bwrap` on `PATH`, then in /usr/bin (for a minimal `sudo` PATH).
pub fn find_bwrap() -> Result<PathBuf, BwrapError> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/bin"));
    find_bwrap_in(&dirs)
}

/// Finds an executable `bwrap` in `dirs` (relative directories are skipped).
pub fn find_bwrap_in(dirs: &[PathBuf]) -> Result<PathBuf, BwrapError> {
    dirs.iter()
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join("bwrap"))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or(BwrapError::NotInstalled)
}

/// The command that checks whether bwrap can mount a fresh /proc here:
/// bwrap runs itself (`--version`) in a minimal sandbox with `--proc`. Add
/// the launcher's credential changes before running it, so the probe sees
/// what the real launch will.
pub fn proc_probe_command(bwrap: &Path) -> Command {
    let mut command = Command::new(bwrap);
    command
        .args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"])
        .args(["--unshare-pid", "--die-with-parent", "--new-session", "--"])
        .arg(bwrap)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Reads the probe's result: success means [`ProcMode::Fresh`]; bwrap's
/// "Can't mount proc" means [`ProcMode::HostReadOnly`]; anything else means
/// bwrap does not work here at all.
pub fn proc_mode_from_probe(bwrap: &Path, output: &Output) -> Result<ProcMode, BwrapError> {
    if output.status.success() {
        return Ok(ProcMode::Fresh);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains(PROC_MOUNT_FAILURE) {
        return Ok(ProcMode::HostReadOnly);
    }
    Err(BwrapError::Unusable {
        bwrap: bwrap.to_path_buf(),
        detail: format!("{} ({})", stderr.trim(), output.status),
    })
}

/// Runs [`proc_probe_command`] with this process's credentials.
pub fn detect_proc_mode(bwrap: &Path) -> Result<ProcMode, BwrapError> {
    let output = proc_probe_command(bwrap)
        .output()
        .map_err(|e| BwrapError::Unusable {
            bwrap: bwrap.to_path_buf(),
            detail: e.to_string(),
        })?;
    proc_mode_from_probe(bwrap, &output)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::fsview::memfs::MemFs;
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;

    fn config() -> BwrapConfig {
        BwrapConfig {
            net: BwrapNet::Restricted,
            ro_root: true,
            rw_overlays: vec!["./work".into(), "/tmp/ccp-cache".into()],
            read_deny: vec![
                "/home/*/.ssh".into(),
                "/home/*/.aws".into(),
                "/home/*/.config/**".into(),
            ],
            mask_host_sockets: true,
        }
    }

    fn fs() -> MemFs {
        let mut fs = MemFs::new();
        fs.dir("/home/alice/.ssh")
            .file("/home/alice/.aws")
            .dir("/home/alice/.config")
            .dir("/home/alice/proj/work")
            .dir("/tmp")
            .file("/run/docker.sock")
            .file("/run/dbus/system_bus_socket");
        fs
    }

    fn args(plan: &BwrapPlan) -> Vec<String> {
        plan.args
            .iter()
            .map(|a| a.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn seed_policy_renders_in_order() {
        let command: Vec<OsString> = vec!["python3".into(), "-c".into(), "print(1)".into()];
        let options = RenderOptions {
            cwd: Path::new("/home/alice/proj"),
            proc_mode: ProcMode::Fresh,
            seccomp_fds: &[7, 8],
            command: &command,
        };
        let plan = render(&config(), &options, &fs()).unwrap();
        let expected = [
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--bind",
            "/home/alice/proj/work",
            "/home/alice/proj/work",
            "--bind",
            "/tmp/ccp-cache",
            "/tmp/ccp-cache",
            "--ro-bind",
            "/dev/null",
            "/home/alice/.aws",
            "--tmpfs",
            "/home/alice/.config",
            "--tmpfs",
            "/home/alice/.ssh",
            "--ro-bind",
            "/dev/null",
            "/run/docker.sock",
            "--ro-bind",
            "/dev/null",
            "/run/dbus/system_bus_socket",
            "--unshare-pid",
            "--die-with-parent",
            "--new-session",
            "--add-seccomp-fd",
            "7",
            "--add-seccomp-fd",
            "8",
            "--",
            "python3",
            "-c",
            "print(1)",
        ];
        assert_eq!(args(&plan), expected);
        let missing: Vec<&Path> = plan.missing_overlays().collect();
        assert_eq!(missing, [Path::new("/tmp/ccp-cache")]);
    }

    #[test]
    fn nested_container_fallback_has_no_proc_mount() {
        let options = RenderOptions {
            cwd: Path::new("/"),
            proc_mode: ProcMode::HostReadOnly,
            seccomp_fds: &[],
            command: &[],
        };
        let plan = render(&config(), &options, &fs()).unwrap();
        let rendered = args(&plan);
        assert!(!rendered.iter().any(|a| a == "--proc"), "{rendered:?}");
        assert_eq!(rendered.last().map(String::as_str), Some("--"));
        assert!(!rendered.iter().any(|a| a == "--add-seccomp-fd"));
    }

    #[test]
    fn net_none_unshares_the_network_and_rw_root_binds_read_write() {
        let config = BwrapConfig {
            net: BwrapNet::None,
            ro_root: false,
            rw_overlays: vec![],
            read_deny: vec![],
            mask_host_sockets: false,
        };
        let options = RenderOptions {
            cwd: Path::new("/"),
            proc_mode: ProcMode::Fresh,
            seccomp_fds: &[],
            command: &["true".into()],
        };
        let rendered = args(&render(&config, &options, &fs()).unwrap());
        assert_eq!(&rendered[..3], ["--bind", "/", "/"]);
        assert!(rendered.iter().any(|a| a == "--unshare-net"));
    }

    #[test]
    fn overlays_resolve_symlinks_and_normalise() {
        let mut fs = fs();
        fs.dir("/data/cache")
            .link("/home/alice/cache", "/data/cache");
        let config = BwrapConfig {
            rw_overlays: vec!["../alice/cache".into(), "./new/./dir/".into()],
            read_deny: vec![],
            ..config()
        };
        let options = RenderOptions {
            cwd: Path::new("/home/alice"),
            proc_mode: ProcMode::Fresh,
            seccomp_fds: &[],
            command: &[],
        };
        let plan = render(&config, &options, &fs).unwrap();
        assert_eq!(
            plan.overlays,
            [
                Overlay {
                    path: "/data/cache".into(),
                    exists: true
                },
                Overlay {
                    path: "/home/alice/new/dir".into(),
                    exists: false
                },
            ]
        );
    }

    #[test]
    fn bad_overlays_are_refused_with_the_entry() {
        for (entry, needle) in [
            ("~/.cache", "`~`"),
            ("/tmp/*", "not patterns"),
            ("", "empty"),
        ] {
            let config = BwrapConfig {
                rw_overlays: vec![entry.into()],
                ..config()
            };
            let options = RenderOptions {
                cwd: Path::new("/"),
                proc_mode: ProcMode::Fresh,
                seccomp_fds: &[],
                command: &[],
            };
            let err = render(&config, &options, &fs()).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("rwOverlays"), "{err}");
        }
    }

    #[test]
    fn read_deny_inside_an_overlay_comes_after_it() {
        let mut fs = fs();
        fs.file("/home/alice/proj/work/.env");
        let config = BwrapConfig {
            read_deny: vec!["/home/alice/proj/work/.env".into()],
            ..config()
        };
        let options = RenderOptions {
            cwd: Path::new("/home/alice/proj"),
            proc_mode: ProcMode::Fresh,
            seccomp_fds: &[],
            command: &[],
        };
        let rendered = args(&render(&config, &options, &fs).unwrap());
        let bind = rendered
            .iter()
            .position(|a| a == "/home/alice/proj/work")
            .unwrap();
        let mask = rendered
            .iter()
            .position(|a| a == "/home/alice/proj/work/.env")
            .unwrap();
        assert!(bind < mask, "{rendered:?}");
    }

    #[test]
    fn find_bwrap_reports_how_to_install() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_bwrap_in(&[empty.path().to_path_buf(), "relative".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bubblewrap (bwrap) is not installed; apt-get install bubblewrap"
        );
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("bwrap");
        std::fs::write(&fake, b"#!/bin/sh\n").unwrap();
        assert!(
            find_bwrap_in(&[dir.path().to_path_buf()]).is_err(),
            "not executable yet"
        );
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            find_bwrap_in(&[empty.path().to_path_buf(), dir.path().to_path_buf()]).unwrap(),
            fake
        );
    }

    #[test]
    fn not_installed_message_is_exact() {
        assert_eq!(
            BwrapError::NotInstalled.to_string(),
            "bubblewrap (bwrap) is not installed; apt-get install bubblewrap"
        );
    }

    #[test]
    fn proc_probe_outcomes() {
        let bwrap = Path::new("/usr/bin/bwrap");
        let output = |code: i32, stderr: &str| Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        };
        assert_eq!(
            proc_mode_from_probe(bwrap, &output(0, "")).unwrap(),
            ProcMode::Fresh
        );
        assert_eq!(
            proc_mode_from_probe(
                bwrap,
                &output(
                    1,
                    "bwrap: Can't mount proc on /newroot/proc: Operation not permitted\n"
                )
            )
            .unwrap(),
            ProcMode::HostReadOnly
        );
        let err = proc_mode_from_probe(
            bwrap,
            &output(1, "bwrap: No permissions to creating new namespace\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("No permissions to creating new namespace"),
            "{err}"
        );
    }

    #[test]
    fn create_overlay_dirs_makes_missing_parents() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b/c");
        let plan = BwrapPlan {
            args: vec![],
            overlays: vec![Overlay {
                path: target.clone(),
                exists: false,
            }],
            masks: vec![],
        };
        create_overlay_dirs(&plan, None).unwrap();
        assert!(target.is_dir());
        // Idempotent.
        create_overlay_dirs(&plan, None).unwrap();
    }
}
