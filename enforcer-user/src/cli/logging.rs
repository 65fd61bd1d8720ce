//! Where the enforcer's own log goes, and the one colour rule.
//!
//! Colour (ANSI escapes) only when the stream is a terminal and `NO_COLOR`
//! is unset (<https://no-color.org>: set and not empty disables it): one
//! rule for `attach`, `run` and every other subcommand.

use std::{
    fs::File,
    io::IsTerminal as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use super::LogFormat;

/// Whether a stream that is (or is not) a terminal gets colour, given the
/// value of `NO_COLOR`.
pub fn color_allowed(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|value| value.is_empty())
}

/// Whether stderr gets colour (the one helper every log writer uses).
pub fn stderr_color() -> bool {
    color_allowed(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// Where the log goes.
#[derive(Debug)]
pub enum LogDestination {
    /// stderr (a terminal, a pipe, or journald under systemd).
    Stderr,
    /// An opened file (never coloured).
    File(File),
}

/// Installs the tracing subscriber at `level` (RUST_LOG overrides it),
/// writing to `destination`.
pub fn init(format: LogFormat, level: &str, destination: LogDestination) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let (writer, ansi) = match destination {
        LogDestination::Stderr => (BoxMakeWriter::new(std::io::stderr), stderr_color()),
        LogDestination::File(file) => (BoxMakeWriter::new(Mutex::new(file)), false),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether stderr is connected to journald: `JOURNAL_STREAM` names the
/// device and inode of stderr (systemd.exec(5)), or a service started by
/// systemd (`INVOCATION_ID`) writes stderr somewhere that is not a terminal.
pub fn stderr_is_journal() -> bool {
    let stderr_id = std::fs::metadata("/proc/self/fd/2")
        .ok()
        .map(|metadata| (metadata.dev(), metadata.ino()));
    journal_stream_matches(std::env::var("JOURNAL_STREAM").ok().as_deref(), stderr_id)
        || (std::env::var_os("INVOCATION_ID").is_some() && !std::io::stderr().is_terminal())
}

/// `JOURNAL_STREAM=DEV:INO` (decimal) against stderr's `(dev, ino)`.
fn journal_stream_matches(value: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(value), Some(stderr)) = (value, stderr) else {
        return false;
    };
    let mut parts = value.split(':').map(str::parse::<u64>);
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(Ok(dev)), Some(Ok(ino)), None) if (dev, ino) == stderr
    )
}

/// The per-run log file `<state-dir>/run-<id>.log`.
pub fn run_log_path(state_dir: &Path, run_id: &str) -> PathBuf {
    state_dir.join(format!("run-{run_id}.log"))
}

/// Creates the state directory when missing and opens `path` (mode 0600:
/// the log names hosts the command reached).
pub fn open_run_log(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "opening the run log {} (choose another place with --state-dir)",
                path.display()
            )
        })
}

/// Deletes `run-*.log` files in `state_dir` last written more than
/// `max_age` before `now` (the audit database's retention); returns how
/// many went. Unreadable entries are left alone.
pub fn rotate_run_logs(state_dir: &Path, max_age: Duration, now: SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return 0;
    };
    let cutoff = now.checked_sub(max_age).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("run-") && name.ends_with(".log")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|modified| modified < cutoff);
        if old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(color_allowed(true, None));
        assert!(!color_allowed(false, None));
        assert!(!color_allowed(true, Some(OsStr::new("1"))));
        assert!(!color_allowed(false, Some(OsStr::new("1"))));
        // no-color.org: an empty value does not disable colour.
        assert!(color_allowed(true, Some(OsStr::new(""))));
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(journal_stream_matches(Some("8:1234"), Some((8, 1234))));
        assert!(!journal_stream_matches(Some("8:1235"), Some((8, 1234))));
        assert!(!journal_stream_matches(Some("8:1234:5"), Some((8, 1234))));
        assert!(!journal_stream_matches(Some("garbage"), Some((8, 1234))));
        assert!(!journal_stream_matches(None, Some((8, 1234))));
        assert!(!journal_stream_matches(Some("8:1234"), None));
    }

    #[test]
    fn rotation_removes_only_old_run_logs() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["run-1-2.log", "audit.db", "run-notes.txt"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let now = SystemTime::now();
        assert_eq!(
            rotate_run_logs(dir.path(), Duration::from_secs(3600), now),
            0,
            "a fresh log stays"
        );
        let later = now + Duration::from_secs(7200);
        assert_eq!(
            rotate_run_logs(dir.path(), Duration::from_secs(3600), later),
            1
        );
        assert!(!dir.path().join("run-1-2.log").exists());
        assert!(dir.path().join("audit.db").exists());
        assert!(dir.path().join("run-notes.txt").exists());
    }
}
