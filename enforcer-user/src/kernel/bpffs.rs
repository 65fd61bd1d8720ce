//! Making sure bpffs is mounted before anything is pinned.

use std::{fs, path::Path};

use nix::mount::{MsFlags, mount};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::{KernelError, paths::BPFFS_MOUNT};

/// True when `path` is the root of a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|stat| stat.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts bpffs at `/sys/fs/bpf` when it is not mounted there yet.
pub fn ensure_mounted() -> Result<(), KernelError> {
    let mount_point = Path::new(BPFFS_MOUNT);
    if is_bpffs(mount_point) {
        return Ok(());
    }
    fs::create_dir_all(mount_point).map_err(|source| KernelError::Io {
        what: format!("creating {BPFFS_MOUNT}"),
        source,
    })?;
    let no_data: Option<&str> = None;
    mount(
        Some("bpf"),
        mount_point,
        Some("bpf"),
        MsFlags::empty(),
        no_data,
    )
    .map_err(|errno| KernelError::Io {
        what: format!("mounting bpffs at {BPFFS_MOUNT} (needs root)"),
        source: errno.into(),
    })
}
