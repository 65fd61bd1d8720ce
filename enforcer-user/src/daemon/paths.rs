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
//! /var/lib/enforcer/selftest.json    the last self-test report (`status` shows it)
//! /var/lib/enforcer/selftest-decoys.json  attempt id -> decoy address of the last
//!                                    self-test; the next run re-binds the same ports
//!                                    when free (tests aim map entries at them)
//! /var/lib/enforcer/selftest-decoy.sock   the unix-socket decoy, only while a
//!                                    self-test runs
//! ```

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Default state directory (audit database, policy cache, grants).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/enforcer";

/// Default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/enforcer/control.sock";

/// File name of the audit database inside the state directory.
pub const AUDIT_DB: &str = "audit.db";

/// Mode of the state directory: the audit history and grants are the
/// operator's, not readable by the agents it enforces.
pub const STATE_DIR_MODE: u32 = 0o700;

/// Creates `state_dir` if missing and sets it to [`STATE_DIR_MODE`] whatever
/// the umask (an existing directory is tightened too).
pub fn prepare_state_dir(state_dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(state_dir)?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(STATE_DIR_MODE))
}

/// The audit database of the daemon whose state directory is `state_dir`.
pub fn audit_db(state_dir: &Path) -> PathBuf {
    state_dir.join(AUDIT_DB)
}

/// The runtime grants file of the daemon whose state directory is `state_dir`.
pub fn grants_file(state_dir: &Path) -> PathBuf {
    state_dir.join(policy::grants::GRANTS_FILE)
}

/// File name of the last self-test report.
pub const SELFTEST_REPORT: &str = "selftest.json";

/// File name of the self-test's decoy addresses.
pub const SELFTEST_DECOYS: &str = "selftest-decoys.json";

/// File name of the self-test's unix-socket decoy.
pub const SELFTEST_UNIX_DECOY: &str = "selftest-decoy.sock";

/// The last self-test report of the daemon whose state directory is `state_dir`.
pub fn selftest_report(state_dir: &Path) -> PathBuf {
    state_dir.join(SELFTEST_REPORT)
}

/// The self-test's remembered decoy addresses.
pub fn selftest_decoys(state_dir: &Path) -> PathBuf {
    state_dir.join(SELFTEST_DECOYS)
}

/// The self-test's unix-socket decoy.
pub fn selftest_unix_decoy(state_dir: &Path) -> PathBuf {
    state_dir.join(SELFTEST_UNIX_DECOY)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_state_dir_is_private_whatever_the_umask() {
        let parent = tempfile::tempdir().unwrap();
        let fresh = parent.path().join("a/b");
        prepare_state_dir(&fresh).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&fresh), 0o700);
        let loose = parent.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_state_dir(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700);
    }

    #[test]
    fn state_files_live_in_the_state_dir() {
        let dir = Path::new(DEFAULT_STATE_DIR);
        assert_eq!(audit_db(dir), Path::new("/var/lib/enforcer/audit.db"));
        assert_eq!(grants_file(dir), Path::new("/var/lib/enforcer/grants.json"));
    }
}
