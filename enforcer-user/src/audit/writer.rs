//! The batched audit writer: a bounded queue in front of one thread that
//! owns the database.
//!
//! Submitting never blocks the data path: when the queue is full the record
//! is counted as dropped (per source) and the count itself is written to
//! the database, so every record is either stored or accounted for.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::broadcast;

use super::{
    record::{AuditRecord, Source},
    store::{AuditStore, Retention, StoreError},
};

/// Records waiting to be written before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 262_144;

/// The bounded queue in front of the writer: memory grows with what is
/// queued, not with the bound. (`mpsc::sync_channel` allocates every slot
/// up front: 262,144 records were 86 MiB of an idle daemon's memory.)
#[derive(Clone)]
struct Queue {
    sender: Sender<AuditRecord>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

/// The writer's end of a [`Queue`].
struct QueueReceiver {
    receiver: Receiver<AuditRecord>,
    queued: Arc<AtomicUsize>,
}

fn queue(capacity: usize) -> (Queue, QueueReceiver) {
    let (sender, receiver) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Queue {
            sender,
            queued: Arc::clone(&queued),
            capacity,
        },
        QueueReceiver { receiver, queued },
    )
}

impl Queue {
    /// Queues `record` unless `capacity` records are waiting (or the
    /// writer is gone); never blocks.
    fn try_send(&self, record: AuditRecord) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if self.sender.send(record).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }
}

impl QueueReceiver {
    fn taken(&self, record: AuditRecord) -> AuditRecord {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        record
    }

    fn recv_timeout(&self, timeout: Duration) -> Result<AuditRecord, RecvTimeoutError> {
        self.receiver
            .recv_timeout(timeout)
            .map(|record| self.taken(record))
    }

    fn try_recv(&self) -> Option<AuditRecord> {
        self.receiver
            .try_recv()
            .ok()
            .map(|record| self.taken(record))
    }
}
/// Records written per transaction at most.
const BATCH: usize = 8_192;
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// How long the writer gathers records after writing a batch. While it
/// sleeps no receiver waits on the queue, so submitting a record is a
/// plain queue push instead of a thread wake-up per record (perf showed
/// `try_to_wake_up` under every router request's audit record). Records
/// reach the database and the live stream at most this much later.
const GATHER: Duration = Duration::from_millis(20);

/// Counters shared with metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Records stored.
    pub stored: AtomicU64,
    /// Records dropped (queue full or a failed write), all sources.
    pub dropped: AtomicU64,
    dropped_by_source: [AtomicU64; 4],
}

impl WriterStats {
    fn source_index(source: Source) -> usize {
        match source {
            Source::Kernel => 0,
            Source::Proxy => 1,
            Source::Router => 2,
            Source::Control => 3,
        }
    }

    fn drop_one(&self, source: Source) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.dropped_by_source[Self::source_index(source)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct AuditWriter {
    sender: Queue,
    stats: Arc<WriterStats>,
    live: broadcast::Sender<AuditRecord>,
}

/// The running thread; `finish` drains the queue and joins it.
pub struct WriterThread {
    handle: JoinHandle<()>,
}

impl WriterThread {
    /// Waits until every queued record is written (all handles must be dropped first).
    pub fn finish(self) {
        let _ = self.handle.join();
    }
}

impl AuditWriter {
    /// Opens the database and starts the writer thread.
    pub fn start(path: &Path, retention: Retention) -> Result<(Self, WriterThread), StoreError> {
        let store = AuditStore::open(path)?;
        let (sender, receiver) = queue(QUEUE_CAPACITY);
        let stats = Arc::new(WriterStats::default());
        let (live, _) = broadcast::channel(4_096);
        let thread_stats = Arc::clone(&stats);
        let thread_live = live.clone();
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(store, &receiver, &thread_stats, &thread_live, retention))
            .map_err(|source| StoreError::Directory {
                path: path.to_owned(),
                source,
            })?;
        Ok((
            Self {
                sender,
                stats,
                live,
            },
            WriterThread { handle },
        ))
    }

    /// Queues a record; never blocks. Returns false when it had to be dropped.
    pub fn submit(&self, record: AuditRecord) -> bool {
        let source = record.source;
        let queued = self.sender.try_send(record);
        if !queued {
            self.stats.drop_one(source);
        }
        queued
    }

    /// Shared counters.
    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// Records as they are stored (for the live event stream).
    pub fn subscribe(&self) -> broadcast::Receiver<AuditRecord> {
        self.live.subscribe()
    }

    /// A handle that can only subscribe to the live stream; unlike a
    /// writer clone, holding it does not keep the writer thread running.
    pub fn live(&self) -> LiveRecords {
        LiveRecords(self.live.clone())
    }
}

/// Subscribes to records as they are stored (`enforcer run --verbose`).
#[derive(Debug, Clone)]
pub struct LiveRecords(broadcast::Sender<AuditRecord>);

impl LiveRecords {
    /// Records stored from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AuditRecord> {
        self.0.subscribe()
    }
}

fn write_loop(
    mut store: AuditStore,
    receiver: &QueueReceiver,
    stats: &WriterStats,
    live: &broadcast::Sender<AuditRecord>,
    retention: Retention,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut flushed_drops = [0u64; 4];
    let mut last_retention = Instant::now();
    let _ = store.apply_retention(retention, SystemTime::now());
    loop {
        let disconnected = match receiver.recv_timeout(Duration::from_millis(200)) {
            Ok(record) => {
                batch.push(record);
                while batch.len() < BATCH {
                    match receiver.try_recv() {
                        Some(record) => batch.push(record),
                        None => break,
                    }
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let wrote = !batch.is_empty();
        if wrote {
            match store.insert(&mut batch) {
                Ok(()) => {
                    stats
                        .stored
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for record in batch.drain(..) {
                        let _ = live.send(record);
                    }
                }
                Err(error) => {
                    tracing::error!(error = %error, records = batch.len(), "audit write failed; records counted as dropped");
                    for record in batch.drain(..) {
                        stats.drop_one(record.source);
                    }
                }
            }
        }
        for source in [
            Source::Kernel,
            Source::Proxy,
            Source::Router,
            Source::Control,
        ] {
            let index = WriterStats::source_index(source);
            let total = stats.dropped_by_source[index].load(Ordering::Relaxed);
            let new = total - flushed_drops[index];
            if new > 0 && store.record_drops(source, new, SystemTime::now()).is_ok() {
                flushed_drops[index] = total;
            }
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            if let Err(error) = store.apply_retention(retention, SystemTime::now()) {
                tracing::warn!(error = %error, "audit retention failed");
            }
            last_retention = Instant::now();
        }
        if disconnected {
            return;
        }
        if wrote {
            std::thread::sleep(GATHER);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::{Decision, EventFilter, Reason};

    fn record() -> AuditRecord {
        AuditRecord::new(
            SystemTime::now(),
            Source::Proxy,
            Decision::Deny,
            Reason::Destination,
        )
    }

    #[test]
    fn the_queue_holds_at_most_its_capacity_and_frees_what_is_taken() {
        let (sender, receiver) = queue(3);
        assert!((0..3).all(|_| sender.try_send(record())));
        assert!(
            !sender.try_send(record()),
            "a fourth waiting record is refused"
        );
        assert!(!sender.clone().try_send(record()), "clones share the bound");
        assert!(receiver.try_recv().is_some());
        assert!(sender.try_send(record()), "taking one makes room for one");
        assert!(!sender.try_send(record()));
        while receiver.try_recv().is_some() {}
        assert_eq!(receiver.queued.load(Ordering::Acquire), 0);
        drop(receiver);
        assert!(
            !sender.try_send(record()),
            "no writer: refused, not counted as queued"
        );
        assert_eq!(sender.queued.load(Ordering::Acquire), 0);
    }

    #[test]
    fn writes_in_batches_and_streams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let (writer, thread) = AuditWriter::start(&path, Retention::default()).unwrap();
        let mut live = writer.subscribe();
        for i in 0..10_000 {
            let mut record = AuditRecord::new(
                SystemTime::now(),
                Source::Kernel,
                Decision::Deny,
                Reason::Destination,
            );
            record.port = Some((i % 60_000) as u16);
            assert!(writer.submit(record));
        }
        // The live stream keeps the newest 4,096; a slow subscriber skips ahead.
        let first = loop {
            match live.blocking_recv() {
                Ok(record) => break record,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(error) => panic!("live stream closed: {error}"),
            }
        };
        assert!(first.id > 0, "streamed records carry their row id");
        let stats = Arc::clone(writer.stats());
        drop(writer);
        thread.finish();
        assert_eq!(stats.stored.load(Ordering::Relaxed), 10_000);
        let store = AuditStore::open_read_only(&path).unwrap();
        assert_eq!(store.count(Source::Kernel).unwrap(), 10_000);
        assert_eq!(
            store
                .query(&EventFilter {
                    limit: Some(5),
                    ..EventFilter::default()
                })
                .unwrap()
                .len(),
            5
        );
    }
}
