//! Every file-system path the daemon itself uses, in one place (the bpffs
//! pins are in [`crate::kernel::paths`]).
//!
//! ```text
//! /run/enforcer/control.sock         control socket (mode 0600), --control-socket
//! /var/lib/enforcer/                 state directory, --state-dir
//! /var/lib/enforcer/audit.db         SQLite audit log (WAL: audit.db-wal, audit.db-shm)
//! /var/lib/enforcer/grants.json      runtime grants (`enforcer allow`), reloaded at start-up
//! /var/lib/enforcer/policy.pack.json(.sig)  last good pack, written and read by the
//!                                    policy loader (its CACHE_PACK / CACHE_SIG)
//! ```

use std::path::{Path, PathBuf};

/// Default state directory (audit database, policy cache, grants).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/enforcer";

/// Default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/enforcer/control.sock";

/// File name of the audit database inside the state directory.
pub const AUDIT_DB: &str = "audit.db";

/// The audit database of the daemon whose state directory is `state_dir`.
pub fn audit_db(state_dir: &Path) -> PathBuf {
    state_dir.join(AUDIT_DB)
}

/// The runtime grants file of the daemon whose state directory is `state_dir`.
pub fn grants_file(state_dir: &Path) -> PathBuf {
    state_dir.join(policy::grants::GRANTS_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_live_in_the_state_dir() {
        let dir = Path::new(DEFAULT_STATE_DIR);
        assert_eq!(audit_db(dir), Path::new("/var/lib/enforcer/audit.db"));
        assert_eq!(grants_file(dir), Path::new("/var/lib/enforcer/grants.json"));
    }
}
