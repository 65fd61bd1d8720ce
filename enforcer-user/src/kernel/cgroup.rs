//! Finding the cgroup v2 mount and turning a user's `--cgroup NAME` into a
//! checked cgroup directory.

use std::{
    fs, io,
    os::{fd::AsFd, unix::fs::MetadataExt as _},
    path::{Component, Path, PathBuf},
};

use super::KernelError;

/// Where cgroup v2 is mounted (from `/proc/self/mountinfo`): `/sys/fs/cgroup`
/// on systemd hosts, `/sys/fs/cgroup/unified` on hybrid ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The mount point.
    pub path: PathBuf,
}

impl CgroupMount {
    /// Finds the cgroup v2 mount of this process's mount namespace.
    pub fn find() -> Result<Self, KernelError> {
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").map_err(|source| KernelError::Io {
                what: "reading /proc/self/mountinfo".into(),
                source,
            })?;
        Self::from_mountinfo(&mountinfo).ok_or(KernelError::NoCgroup2Mount)
    }

    /// Parses mountinfo text and returns the first cgroup2 mount.
    pub fn from_mountinfo(mountinfo: &str) -> Option<Self> {
        mountinfo.lines().find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            if fstype != "cgroup2" {
                return None;
            }
            let mount_point = before.split_whitespace().nth(4)?;
            Some(Self {
                path: PathBuf::from(unescape_mountinfo(mount_point)),
            })
        })
    }

    /// Resolves `name` (relative to the mount, nested allowed; or absolute
    /// under the mount) into a cgroup below the root. `..` and the root
    /// itself are refused.
    pub fn resolve(&self, name: &str) -> Result<CgroupPath, KernelError> {
        let invalid = |why: &str| KernelError::InvalidCgroupName {
            name: name.to_owned(),
            why: why.to_owned(),
        };
        let requested = Path::new(name);
        let relative = if requested.is_absolute() {
            requested.strip_prefix(&self.path).map_err(|_| {
                invalid(&format!(
                    "an absolute path must lie under the cgroup v2 mount {}",
                    self.path.display()
                ))
            })?
        } else {
            requested
        };
        let mut clean = PathBuf::new();
        for component in relative.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir => return Err(invalid("`..` is not allowed")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(invalid("unexpected root component"));
                }
            }
        }
        if clean.as_os_str().is_empty() {
            return Err(KernelError::RootCgroupRefused {
                mount: self.path.clone(),
            });
        }
        Ok(CgroupPath {
            relative: clean.clone(),
            absolute: self.path.join(clean),
        })
    }

    /// Finds the cgroup directory whose id (inode number) is `id`.
    pub fn find_by_id(&self, id: u64) -> Option<PathBuf> {
        let mut stack = vec![self.path.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                if !file_type.is_dir() {
                    continue;
                }
                let path = entry.path();
                if fs::metadata(&path).map(|m| m.ino()).ok() == Some(id) {
                    return Some(path);
                }
                stack.push(path);
            }
        }
        None
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(octal, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup below the v2 root, as named by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPath {
    /// Path relative to the cgroup v2 mount, e.g. `agents.slice`.
    pub relative: PathBuf,
    /// Absolute directory, e.g. `/sys/fs/cgroup/agents.slice`.
    pub absolute: PathBuf,
}

impl CgroupPath {
    /// Creates the directory (and parents) when missing.
    pub fn create(&self) -> Result<(), KernelError> {
        fs::create_dir_all(&self.absolute).map_err(|source| KernelError::Io {
            what: format!("creating cgroup {}", self.absolute.display()),
            source,
        })
    }

    /// The cgroup's id: the inode number of its directory, which is what
    /// `bpf_get_current_cgroup_id()` returns for its processes.
    pub fn id(&self) -> Result<u64, KernelError> {
        fs::metadata(&self.absolute)
            .map(|metadata| metadata.ino())
            .map_err(|source| KernelError::Io {
                what: format!("reading cgroup {}", self.absolute.display()),
                source,
            })
    }

    /// Opens the cgroup directory (the fd programs are attached to).
    pub fn open(&self) -> Result<fs::File, KernelError> {
        fs::File::open(&self.absolute).map_err(|source| KernelError::Io {
            what: format!("opening cgroup {}", self.absolute.display()),
            source,
        })
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs` (writes `0`, "this process"). Async-signal-safe: meant for a
/// `pre_exec` closure, so the command's first instruction already runs
/// inside the cgroup.
pub fn join_from_child(procs: impl AsFd) -> io::Result<()> {
    match nix::unistd::write(procs, b"0")? {
        1 => Ok(()),
        _ => Err(io::ErrorKind::WriteZero.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
";

    fn mount() -> CgroupMount {
        CgroupMount::from_mountinfo(HYBRID).unwrap()
    }

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        assert_eq!(mount().path, Path::new("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert!(CgroupMount::from_mountinfo("25 30 0:23 / /sys rw - sysfs sysfs rw\n").is_none());
    }

    #[test]
    fn unescapes_spaces() {
        let info = "41 31 0:38 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            CgroupMount::from_mountinfo(info).unwrap().path,
            Path::new("/mnt/with space")
        );
    }

    #[test]
    fn resolves_relative_and_nested() {
        let path = mount().resolve("agents.slice/one").unwrap();
        assert_eq!(path.relative, Path::new("agents.slice/one"));
        assert_eq!(
            path.absolute,
            Path::new("/sys/fs/cgroup/unified/agents.slice/one")
        );
    }

    #[test]
    fn accepts_absolute_under_mount() {
        let path = mount()
            .resolve("/sys/fs/cgroup/unified/agents.slice")
            .unwrap();
        assert_eq!(path.relative, Path::new("agents.slice"));
    }

    #[test]
    fn refuses_parent_components() {
        let err = mount().resolve("agents.slice/../../etc").unwrap_err();
        assert!(err.to_string().contains("`..` is not allowed"), "{err}");
    }

    #[test]
    fn refuses_root() {
        for name in ["", ".", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified/"] {
            let err = mount().resolve(name).unwrap_err();
            assert!(
                matches!(err, KernelError::RootCgroupRefused { .. }),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn refuses_absolute_outside_mount() {
        let err = mount().resolve("/etc/passwd").unwrap_err();
        assert!(err.to_string().contains("must lie under"), "{err}");
    }
}
