//! The `bpf(2)` commands enforcer issues itself: links and pins for
//! programs aya did not load (the unix-socket programs) and the load of
//! those programs from their instructions. nix has no `bpf(2)`; this is the
//! one place that calls it.

use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd};

use nix::errno::Errno;

/// `enum bpf_cmd` values used here (include/uapi/linux/bpf.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Command {
    /// `BPF_PROG_LOAD`.
    ProgLoad = 5,
    /// `BPF_OBJ_PIN`.
    ObjPin = 6,
    /// `BPF_OBJ_GET`.
    ObjGet = 7,
    /// `BPF_LINK_CREATE`.
    LinkCreate = 28,
    /// `BPF_LINK_DETACH`.
    LinkDetach = 34,
}

/// `bpf(command, attr, attr.len())`: the kernel's non-negative result.
///
/// # Safety
/// Every pointer stored in `attr` (paths, instruction and log buffers) must
/// point to memory that is valid, for the whole call, for what `command`
/// reads or writes there.
pub(super) unsafe fn bpf(command: Command, attr: &mut [u8]) -> io::Result<i64> {
    let size =
        u32::try_from(attr.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: attr is a live, writable buffer of `size` bytes; the caller
    // vouches for the pointers it holds.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_long,
            attr.as_mut_ptr(),
            libc::c_uint::from(size),
        )
    };
    Ok(Errno::result(result)?)
}

/// [`bpf`] for commands whose result is a new descriptor.
///
/// # Safety
/// As for [`bpf`].
pub(super) unsafe fn bpf_descriptor(command: Command, attr: &mut [u8]) -> io::Result<OwnedFd> {
    // SAFETY: the caller upholds bpf's contract.
    let fd = unsafe { bpf(command, attr) }?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this new descriptor to us, and nothing
    // else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_refusal_is_its_errno() {
        // BPF_LINK_DETACH of descriptor -1: EBADF, whatever the privileges.
        let mut attr = [0u8; 64];
        attr[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        // SAFETY: the attribute holds no pointers.
        let result = unsafe { bpf(Command::LinkDetach, &mut attr) };
        let errno = result
            .err()
            .and_then(|e| e.raw_os_error())
            .map(Errno::from_raw);
        assert!(
            matches!(errno, Some(Errno::EBADF | Errno::EPERM)),
            "{errno:?}"
        );
    }
}
