//! The audit log: every decision (kernel denies from the ring buffer, proxy
//! and router decisions) as one row of one SQLite table.
//!
//! - [`record`]: the one record shape every source is converted into;
//! - [`store`]: the database (WAL, schema version, migrations, retention,
//!   queries);
//! - [`writer`]: the batched writer thread, whose bounded queue counts what
//!   it had to drop instead of blocking the data path.
//!
//! Records carry metadata only: no bodies, no credentials, no full URLs.

pub mod record;
pub mod store;
pub mod writer;

pub use record::{AuditRecord, Decision, Reason, Source};
pub use store::{AuditStore, EventFilter, Retention, StoreError};
pub use writer::{AuditWriter, LiveRecords, WriterStats};
