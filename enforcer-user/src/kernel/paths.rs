//! Every bpffs path enforcer uses, in one place.
//!
//! ```text
//! /sys/fs/bpf/enforcer/<cgroup-id>/maps/<MAP>      pinned maps (state that outlives the loader)
//! /sys/fs/bpf/enforcer/<cgroup-id>/links/<hook>    pinned links (keep the programs attached)
//! ```

use std::path::{Path, PathBuf};

/// Where bpffs is (or gets) mounted.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Root of enforcer's pins on bpffs.
pub const PIN_ROOT: &str = "/sys/fs/bpf/enforcer";

/// Suffix of a link pinned during a swap, before it replaces the old one
/// (bpffs refuses dots in names with EPERM).
pub const SWAP_SUFFIX: &str = "_new";

/// The pin directories of one enforced cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDirs {
    /// `/sys/fs/bpf/enforcer/<cgroup-id>`.
    pub root: PathBuf,
}

impl PinDirs {
    /// Pin directories for the cgroup with this id under the default root.
    pub fn for_cgroup(cgroup_id: u64) -> Self {
        Self::under(Path::new(PIN_ROOT), cgroup_id)
    }

    /// Pin directories for the cgroup with this id under `root`.
    pub fn under(root: &Path, cgroup_id: u64) -> Self {
        Self {
            root: root.join(cgroup_id.to_string()),
        }
    }

    /// Directory of the pinned maps.
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    /// Path of one pinned map.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Directory of the pinned links.
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Path of the pinned link of one hook.
    pub fn link(&self, hook: &str) -> PathBuf {
        self.links().join(hook)
    }

    /// Path a hook's new link is pinned at before it replaces the old one.
    pub fn swap_link(&self, hook: &str) -> PathBuf {
        self.links().join(format!("{hook}{SWAP_SUFFIX}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let dirs = PinDirs::for_cgroup(42);
        assert_eq!(
            dirs.map("CONFIG"),
            Path::new("/sys/fs/bpf/enforcer/42/maps/CONFIG")
        );
        assert_eq!(
            dirs.link("connect4"),
            Path::new("/sys/fs/bpf/enforcer/42/links/connect4")
        );
        assert_eq!(
            dirs.swap_link("connect4"),
            Path::new("/sys/fs/bpf/enforcer/42/links/connect4_new")
        );
    }
}
