//! Making sure bpffs is mounted before anything is pinned.

use std::{ffi::CString, fs, path::Path};

use super::{KernelError, paths::BPFFS_MOUNT};

/// bpffs's magic number (`BPF_FS_MAGIC`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// True when `path` is the root of a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid out pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && i64::from(stat.f_type as u32) == BPF_FS_MAGIC
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
    let source = c"bpf";
    let target = c"/sys/fs/bpf";
    let fstype = c"bpf";
    // SAFETY: all pointers are NUL-terminated C strings; data is null.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(KernelError::Io {
            what: format!("mounting bpffs at {BPFFS_MOUNT} (needs root)"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
