//! `enforcer run`'s own directories for unix sockets: a private TMPDIR
//! (made here, owned by the command's user, mode 0700) and the working
//! directory. Sockets under them are the command's own (servers an agent
//! starts there keep working), so they go into `UNIX_ALLOW` for the
//! command's cgroup and come out again when it ends.

use std::{
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use enforcer::kernel::{CgroupPath, paths::PinDirs, unix};

/// Working directories never taken as the command's own: they hold other
/// programs' sockets (or every path, for `/`).
const SHARED_DIRS: [&str; 9] = [
    "/", "/tmp", "/var", "/var/tmp", "/home", "/run", "/var/run", "/dev", "/proc",
];
/// Trees under which a working directory is never the command's own.
const SHARED_TREES: [&str; 5] = ["/run/", "/var/run/", "/dev/", "/proc/", "/sys/"];

/// The command's private TMPDIR and the rules written for its cgroup.
pub struct OwnDirs {
    /// The private TMPDIR.
    pub tmpdir: PathBuf,
    /// The pins whose `UNIX_ALLOW` got the rules (the enforcing cgroup's),
    /// with the command's cgroup id; `None` when no programs enforce.
    written: Option<(PinDirs, u64)>,
}

impl OwnDirs {
    /// Makes the private TMPDIR for `uid:gid` and allows the sockets under
    /// it and under `cwd` for `cgroup` in the map of the cgroup whose
    /// programs enforce it (itself, or the daemon's ancestor).
    pub fn prepare(cgroup: &CgroupPath, cwd: &Path, uid: u32, gid: u32) -> anyhow::Result<Self> {
        let tmpdir = make_private_tmpdir(uid, gid)?;
        let cgroup_id = cgroup.id()?;
        let mut patterns = vec![unix::directory_pattern(&tmpdir)?];
        if is_own_cwd(cwd) {
            match unix::directory_pattern(cwd) {
                Ok(pattern) => patterns.push(pattern),
                Err(error) => {
                    tracing::warn!(error = %error, "the working directory's unix sockets stay denied")
                }
            }
        } else {
            tracing::info!(cwd = %cwd.display(), "shared working directory: its unix sockets are not the command's own");
        }
        let written = match enforcing_pins(&cgroup.absolute) {
            Some(pins) if pins.map(enforcer_ebpf::map_names::UNIX_ALLOW).exists() => {
                unix::set_rules(&pins, cgroup_id, &patterns)
                    .context("allowing the command's own directories for unix sockets")?;
                Some((pins, cgroup_id))
            }
            _ => None,
        };
        Ok(Self { tmpdir, written })
    }

    /// Removes the rules and the TMPDIR.
    pub fn finish(self) {
        if let Some((pins, cgroup_id)) = &self.written
            && let Err(error) = unix::clear_rules(pins, *cgroup_id)
        {
            tracing::warn!(error = %error, "removing the command's unix socket rules");
        }
        if let Err(error) = std::fs::remove_dir_all(&self.tmpdir) {
            tracing::warn!(error = %error, dir = %self.tmpdir.display(), "removing the private TMPDIR");
        }
    }
}

/// `/tmp/enforcer-run-<pid>-<n>`, made fresh (never an existing one),
/// 0700 and owned by the command's user.
fn make_private_tmpdir(uid: u32, gid: u32) -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let dir = base.join(format!("enforcer-run-{}-{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                    .with_context(|| format!("giving {} to uid {uid}", dir.display()))?;
                return Ok(dir);
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => {
                return Err(error).with_context(|| format!("creating {}", dir.display()));
            }
        }
    }
    anyhow::bail!("could not create a private TMPDIR under {}", base.display())
}

/// Whether `cwd` can count as the command's own directory.
pub fn is_own_cwd(cwd: &Path) -> bool {
    let Some(text) = cwd.to_str() else {
        return false;
    };
    let text = if text.len() > 1 {
        text.trim_end_matches('/')
    } else {
        text
    };
    cwd.is_absolute()
        && !SHARED_DIRS.contains(&text)
        && !SHARED_TREES.iter().any(|tree| text.starts_with(tree))
}

/// The pins of the nearest cgroup at or above `cgroup` that has programs.
fn enforcing_pins(cgroup: &Path) -> Option<PinDirs> {
    cgroup.ancestors().find_map(|dir| {
        let id = std::fs::metadata(dir).ok()?.ino();
        let pins = PinDirs::for_cgroup(id);
        pins.maps().exists().then_some(pins)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_working_directories_are_not_the_commands_own() {
        for dir in [
            "/",
            "/tmp",
            "/tmp/",
            "/run/user/1000",
            "/var/run/x",
            "/home",
        ] {
            assert!(!is_own_cwd(Path::new(dir)), "{dir}");
        }
        for dir in ["/home/alice/project", "/srv/work", "/tmp/build-1"] {
            assert!(is_own_cwd(Path::new(dir)), "{dir}");
        }
    }
}
