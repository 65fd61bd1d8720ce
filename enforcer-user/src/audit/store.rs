//! The SQLite audit database: WAL mode, a schema version with migrations,
//! retention by age and size, and the queries `enforcer events` makes.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

use super::record::{AuditRecord, Decision, Source, millis};

/// Errors of the audit database, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or creating the database failed.
    #[error("opening audit database {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer enforcer.
    #[error(
        "audit database {} has schema version {found}, newer than this enforcer's {supported}; upgrade enforcer or move the file away",
        path.display()
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        supported: i64,
    },
    /// A statement failed.
    #[error("audit database: {what}")]
    Sql {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Creating the directory failed.
    #[error("creating {}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database file could not be created with, or set to, mode 0600.
    #[error("making {} readable by its owner only (mode 0600)", path.display())]
    Permissions {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn sql(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { what, source }
}

/// Schema migrations; entry `n` takes version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the events table.
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms INTEGER NOT NULL,
        source TEXT NOT NULL,
        decision TEXT NOT NULL,
        reason TEXT NOT NULL,
        cgroup_id INTEGER,
        pid INTEGER,
        comm TEXT,
        client TEXT,
        host TEXT,
        port INTEGER,
        sni TEXT,
        lane TEXT,
        model TEXT,
        status INTEGER,
        upstream TEXT,
        bytes_up INTEGER,
        bytes_down INTEGER,
        first_byte_ms REAL,
        duration_ms REAL,
        detail TEXT
    );
    CREATE INDEX events_time ON events(time_ms);
    CREATE INDEX events_decision_time ON events(decision, time_ms);",
    // 1 -> 2: counters of records the writer had to drop, kept beside the
    // records so generated = stored + dropped can be checked from the file.
    "CREATE TABLE drops (
        time_ms INTEGER NOT NULL,
        source TEXT NOT NULL,
        count INTEGER NOT NULL
    );",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long and how much the database keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Records older than this are deleted.
    pub max_age: Duration,
    /// When the file grows beyond this, the oldest records go first.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_bytes: 512 << 20,
        }
    }
}

/// What `enforcer events` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only records at or after this time.
    pub since: Option<SystemTime>,
    /// Only this decision.
    pub decision: Option<Decision>,
    /// Only records with a larger id (for following).
    pub after_id: Option<i64>,
    /// At most this many (the newest), oldest first.
    pub limit: Option<usize>,
    /// Only records of this process id.
    pub pid: Option<u32>,
    /// Only records of this command name (exact).
    pub comm: Option<String>,
    /// Only records of this cgroup id.
    pub cgroup_id: Option<u64>,
}

impl EventFilter {
    /// Whether `record` passes the decision, process, command and cgroup
    /// filters (what `--follow` applies to live records; `query` applies
    /// the same in SQL).
    pub fn matches(&self, record: &AuditRecord) -> bool {
        self.decision.is_none_or(|wanted| record.decision == wanted)
            && self.pid.is_none_or(|pid| record.pid == Some(pid))
            && self
                .comm
                .as_ref()
                .is_none_or(|comm| record.comm.as_ref() == Some(comm))
            && self.cgroup_id.is_none_or(|id| record.cgroup_id == Some(id))
    }
}

/// Mode of the audit database (SQLite gives its `-wal` and `-shm` files the
/// same): the audit history is the operator's alone, whatever the umask.
pub const AUDIT_DB_MODE: u32 = 0o600;

/// Creates `path` with [`AUDIT_DB_MODE`] if missing, and tightens it if not.
fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(AUDIT_DB_MODE)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(AUDIT_DB_MODE))
}

/// An open audit database.
pub struct AuditStore {
    connection: Connection,
    path: PathBuf,
}

impl AuditStore {
    /// Opens (creating when missing) the database at `path` for writing,
    /// in WAL mode, migrating it to [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Directory {
                path: parent.to_owned(),
                source,
            })?;
        }
        restrict_to_owner(path).map_err(|source| StoreError::Permissions {
            path: path.to_owned(),
            source,
        })?;
        let open_error = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let connection = Connection::open(path).map_err(open_error)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA busy_timeout = 5000;
                 PRAGMA cache_size = -512;",
            )
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        let mut store = Self {
            connection,
            path: path.to_owned(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing database read-only (for `enforcer events`).
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        connection
            .busy_timeout(Duration::from_secs(5))
            .map_err(sql("setting the busy timeout"))?;
        let store = Self {
            connection,
            path: path.to_owned(),
        };
        let found = store.version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(store)
    }

    fn version(&self) -> Result<i64, StoreError> {
        self.connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sql("reading the schema version"))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let found = self.version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let start = usize::try_from(found).unwrap_or(0);
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(start) {
            let transaction = self
                .connection
                .transaction()
                .map_err(sql("starting a migration"))?;
            transaction
                .execute_batch(migration)
                .map_err(sql("migrating the schema"))?;
            transaction
                .pragma_update(None, "user_version", index as i64 + 1)
                .map_err(sql("recording the schema version"))?;
            transaction
                .commit()
                .map_err(sql("committing a migration"))?;
        }
        Ok(())
    }

    /// Inserts records in one transaction and sets their row ids.
    pub fn insert(&mut self, records: &mut [AuditRecord]) -> Result<(), StoreError> {
        let transaction = self
            .connection
            .transaction()
            .map_err(sql("starting a batch"))?;
        {
            let mut statement = transaction
                .prepare_cached(
                    "INSERT INTO events (time_ms, source, decision, reason, cgroup_id, pid, comm,
                        client, host, port, sni, lane, model, status, upstream, bytes_up,
                        bytes_down, first_byte_ms, duration_ms, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                        ?16, ?17, ?18, ?19, ?20)",
                )
                .map_err(sql("preparing the insert"))?;
            for record in records.iter_mut() {
                statement
                    .execute(params![
                        record.time_ms,
                        record.source.as_str(),
                        record.decision.as_str(),
                        record.reason,
                        record.cgroup_id.map(|v| v as i64),
                        record.pid,
                        record.comm,
                        record.client,
                        record.host,
                        record.port,
                        record.sni,
                        record.lane,
                        record.model,
                        record.status,
                        record.upstream,
                        record.bytes_up.map(|v| v as i64),
                        record.bytes_down.map(|v| v as i64),
                        record.first_byte_ms,
                        record.duration_ms,
                        record.detail,
                    ])
                    .map_err(sql("inserting a record"))?;
                record.id = transaction.last_insert_rowid();
            }
        }
        transaction.commit().map_err(sql("committing a batch"))
    }

    /// Records that `count` records of `source` were dropped.
    pub fn record_drops(
        &mut self,
        source: Source,
        count: u64,
        time: SystemTime,
    ) -> Result<(), StoreError> {
        self.connection
            .execute(
                "INSERT INTO drops (time_ms, source, count) VALUES (?1, ?2, ?3)",
                params![millis(time), source.as_str(), count as i64],
            )
            .map(drop)
            .map_err(sql("recording drops"))
    }

    /// Total drops recorded for `source`.
    pub fn dropped(&self, source: Source) -> Result<u64, StoreError> {
        self.connection
            .query_row(
                "SELECT COALESCE(SUM(count), 0) FROM drops WHERE source = ?1",
                [source.as_str()],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(sql("counting drops"))
    }

    /// Number of stored records of `source`.
    pub fn count(&self, source: Source) -> Result<u64, StoreError> {
        self.connection
            .query_row(
                "SELECT COUNT(*) FROM events WHERE source = ?1",
                [source.as_str()],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(sql("counting records"))
    }

    /// Records matching `filter`, oldest first.
    pub fn query(&self, filter: &EventFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let since = filter.since.map_or(i64::MIN, millis);
        let decision = filter.decision.map(Decision::as_str);
        let after = filter.after_id.unwrap_or(0);
        let limit = filter.limit.map_or(i64::MAX, |n| n as i64);
        let pid = filter.pid;
        let comm = filter.comm.as_deref();
        let cgroup_id = filter.cgroup_id.map(|id| id as i64);
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT * FROM (
                    SELECT id, time_ms, source, decision, reason, cgroup_id, pid, comm, client,
                        host, port, sni, lane, model, status, upstream, bytes_up, bytes_down,
                        first_byte_ms, duration_ms, detail
                    FROM events
                    WHERE time_ms >= ?1 AND (?2 IS NULL OR decision = ?2) AND id > ?3
                        AND (?5 IS NULL OR pid = ?5) AND (?6 IS NULL OR comm = ?6)
                        AND (?7 IS NULL OR cgroup_id = ?7)
                    ORDER BY id DESC LIMIT ?4
                 ) ORDER BY id ASC",
            )
            .map_err(sql("preparing the query"))?;
        let rows = statement
            .query_map(
                params![since, decision, after, limit, pid, comm, cgroup_id],
                |row| {
                    let source: String = row.get(2)?;
                    let decision: String = row.get(3)?;
                    Ok(AuditRecord {
                        id: row.get(0)?,
                        time_ms: row.get(1)?,
                        source: Source::parse(&source).unwrap_or(Source::Control),
                        decision: Decision::parse(&decision).unwrap_or(Decision::Deny),
                        reason: row.get(4)?,
                        cgroup_id: row.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                        pid: row.get(6)?,
                        comm: row.get(7)?,
                        client: row.get(8)?,
                        host: row.get(9)?,
                        port: row.get(10)?,
                        sni: row.get(11)?,
                        lane: row.get(12)?,
                        model: row.get(13)?,
                        status: row.get(14)?,
                        upstream: row.get(15)?,
                        bytes_up: row.get::<_, Option<i64>>(16)?.map(|v| v as u64),
                        bytes_down: row.get::<_, Option<i64>>(17)?.map(|v| v as u64),
                        first_byte_ms: row.get(18)?,
                        duration_ms: row.get(19)?,
                        detail: row.get(20)?,
                    })
                },
            )
            .map_err(sql("querying records"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(sql("reading a record"))
    }

    /// The newest record id (0 when empty).
    pub fn last_id(&self) -> Result<i64, StoreError> {
        self.connection
            .query_row("SELECT MAX(id) FROM events", [], |row| {
                row.get::<_, Option<i64>>(0)
            })
            .optional()
            .map(|id| id.flatten().unwrap_or(0))
            .map_err(sql("reading the last id"))
    }

    /// Deletes what `retention` no longer keeps; returns how many went.
    pub fn apply_retention(
        &mut self,
        retention: Retention,
        now: SystemTime,
    ) -> Result<u64, StoreError> {
        let cutoff = millis(
            now.checked_sub(retention.max_age)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let mut deleted = self
            .connection
            .execute("DELETE FROM events WHERE time_ms < ?1", [cutoff])
            .map_err(sql("deleting old records"))? as u64;
        // Size: the oldest tenth at a time until the live pages fit.
        for _ in 0..10 {
            if self.live_bytes()? <= retention.max_bytes {
                break;
            }
            let removed = self
                .connection
                .execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id ASC
                        LIMIT MAX(1, (SELECT COUNT(*) FROM events) / 10))",
                    [],
                )
                .map_err(sql("deleting the oldest records"))? as u64;
            deleted += removed;
            if removed == 0 {
                break;
            }
        }
        Ok(deleted)
    }

    /// Bytes in pages holding data (file size less free pages).
    pub fn live_bytes(&self) -> Result<u64, StoreError> {
        let pages: i64 = self
            .connection
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .map_err(sql("reading the page count"))?;
        let free: i64 = self
            .connection
            .query_row("PRAGMA freelist_count", [], |row| row.get(0))
            .map_err(sql("reading the free page count"))?;
        let size: i64 = self
            .connection
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(sql("reading the page size"))?;
        Ok(((pages - free).max(0) * size) as u64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::Reason;

    #[test]
    fn the_database_is_owner_only_even_if_it_was_not() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let fresh = dir.path().join("fresh.db");
        AuditStore::open(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
        let loose = dir.path().join("loose.db");
        AuditStore::open(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        AuditStore::open(&loose).unwrap();
        assert_eq!(mode(&loose), 0o600);
    }

    fn record(time_ms: i64, decision: Decision) -> AuditRecord {
        let mut record = AuditRecord::new(
            SystemTime::UNIX_EPOCH,
            Source::Proxy,
            decision,
            Reason::SniMismatch,
        );
        record.time_ms = time_ms;
        record.host = Some("example.com".into());
        record.port = Some(443);
        record
    }

    #[test]
    fn round_trips_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let mut store = AuditStore::open(&path).unwrap();
        store
            .insert(&mut [
                record(1_000, Decision::Deny),
                record(2_000, Decision::Allow),
                record(3_000, Decision::Deny),
            ])
            .unwrap();
        let all = store.query(&EventFilter::default()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].host.as_deref(), Some("example.com"));
        let denies = store
            .query(&EventFilter {
                decision: Some(Decision::Deny),
                ..EventFilter::default()
            })
            .unwrap();
        assert_eq!(
            denies.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
            [1_000, 3_000]
        );
        let recent = store
            .query(&EventFilter {
                since: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(2_000)),
                ..EventFilter::default()
            })
            .unwrap();
        assert_eq!(recent.len(), 2);
        let newest = store
            .query(&EventFilter {
                limit: Some(1),
                ..EventFilter::default()
            })
            .unwrap();
        assert_eq!(newest[0].time_ms, 3_000);
        let read_only = AuditStore::open_read_only(&path).unwrap();
        assert_eq!(read_only.query(&EventFilter::default()).unwrap().len(), 3);
    }

    #[test]
    fn filters_by_pid_comm_and_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = AuditStore::open(&dir.path().join("audit.db")).unwrap();
        let mut curl = record(1_000, Decision::Allow);
        curl.pid = Some(42);
        curl.comm = Some("curl".into());
        curl.cgroup_id = Some(7);
        let mut other = record(2_000, Decision::Deny);
        other.pid = Some(43);
        other.comm = Some("python3".into());
        other.cgroup_id = Some(8);
        let unattributed = record(3_000, Decision::Deny);
        store
            .insert(&mut [curl.clone(), other.clone(), unattributed.clone()])
            .unwrap();
        let times = |filter: EventFilter| -> Vec<i64> {
            let rows = store.query(&filter).unwrap();
            for row in &rows {
                assert!(filter.matches(row), "the live filter agrees: {row:?}");
            }
            rows.iter().map(|r| r.time_ms).collect()
        };
        let by = |pid, comm: Option<&str>, cgroup_id| EventFilter {
            pid,
            comm: comm.map(str::to_owned),
            cgroup_id,
            ..EventFilter::default()
        };
        assert_eq!(times(by(Some(42), None, None)), [1_000]);
        assert_eq!(times(by(None, Some("python3"), None)), [2_000]);
        assert_eq!(times(by(None, None, Some(7))), [1_000]);
        assert_eq!(
            times(by(Some(42), Some("python3"), None)),
            Vec::<i64>::new()
        );
        assert!(!by(None, Some("curl"), None).matches(&unattributed));
        assert!(by(None, None, None).matches(&unattributed));
    }

    #[test]
    fn migrates_and_refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        drop(AuditStore::open(&path).unwrap());
        let reopened = AuditStore::open(&path).unwrap();
        assert_eq!(reopened.version().unwrap(), SCHEMA_VERSION);
        reopened
            .connection
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(reopened);
        let error = AuditStore::open(&path).err().unwrap();
        assert!(matches!(error, StoreError::TooNew { .. }), "{error}");
        assert!(error.to_string().contains("newer than this enforcer"));
    }

    #[test]
    fn retention_by_age_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = AuditStore::open(&dir.path().join("audit.db")).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100 * 24 * 3600);
        let old = millis(now - Duration::from_secs(40 * 24 * 3600));
        let fresh = millis(now - Duration::from_secs(3600));
        store
            .insert(&mut [record(old, Decision::Deny), record(fresh, Decision::Deny)])
            .unwrap();
        let deleted = store.apply_retention(Retention::default(), now).unwrap();
        assert_eq!(deleted, 1);
        assert_eq!(store.count(Source::Proxy).unwrap(), 1);

        let mut many: Vec<AuditRecord> = (0..5_000)
            .map(|i| record(fresh + i, Decision::Deny))
            .collect();
        store.insert(&mut many).unwrap();
        let cap = store.live_bytes().unwrap() / 2;
        store
            .apply_retention(
                Retention {
                    max_age: Duration::from_secs(30 * 24 * 3600),
                    max_bytes: cap,
                },
                now,
            )
            .unwrap();
        assert!(store.live_bytes().unwrap() <= cap, "size cap holds");
        let left = store.query(&EventFilter::default()).unwrap();
        assert!(!left.is_empty() && left.len() < 5_001);
        assert_eq!(
            left.last().unwrap().time_ms,
            fresh + 4_999,
            "the newest stay"
        );
    }
}
