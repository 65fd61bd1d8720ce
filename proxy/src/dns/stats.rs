//! The DNS filter's counters: atomics bumped on the query path,
//! [`DnsStats::snapshot`] for status and metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters of one [`super::DnsFilter`] (shared by its listeners).
#[derive(Debug, Default)]
pub struct DnsStats {
    answered: AtomicU64,
    empty: AtomicU64,
    nxdomain: AtomicU64,
    refused: AtomicU64,
    refusals_suppressed: AtomicU64,
    servfail: AtomicU64,
    malformed: AtomicU64,
    dropped_overload: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DnsStatsSnapshot {
    /// Queries answered with at least one address.
    pub answered: u64,
    /// Queries of allowed names answered NOERROR with no records (other
    /// record types, no addresses, or only addresses in refused classes).
    pub empty: u64,
    /// Queries of allowed names the upstream said do not exist.
    pub nxdomain: u64,
    /// Queries refused (name not allowed, or client not enforced).
    pub refused: u64,
    /// Refusals whose audit event the rate limit suppressed.
    pub refusals_suppressed: u64,
    /// Queries answered SERVFAIL (the resolver failed or timed out).
    pub servfail: u64,
    /// Messages that were not one standard query (answered FORMERR/NOTIMP,
    /// or dropped), and TCP frames over the size bound.
    pub malformed: u64,
    /// Queries dropped (UDP) or connections closed (TCP) because the
    /// in-flight or connection bound was reached.
    pub dropped_overload: u64,
}

/// Which counter to bump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// [`DnsStatsSnapshot::answered`].
    Answered,
    /// [`DnsStatsSnapshot::empty`].
    Empty,
    /// [`DnsStatsSnapshot::nxdomain`].
    NxDomain,
    /// [`DnsStatsSnapshot::refused`].
    Refused,
    /// [`DnsStatsSnapshot::refusals_suppressed`].
    RefusalSuppressed,
    /// [`DnsStatsSnapshot::servfail`].
    ServFail,
    /// [`DnsStatsSnapshot::malformed`].
    Malformed,
    /// [`DnsStatsSnapshot::dropped_overload`].
    DroppedOverload,
}

impl DnsStats {
    /// Adds one to `counter`.
    pub fn bump(&self, counter: Counter) {
        let cell = match counter {
            Counter::Answered => &self.answered,
            Counter::Empty => &self.empty,
            Counter::NxDomain => &self.nxdomain,
            Counter::Refused => &self.refused,
            Counter::RefusalSuppressed => &self.refusals_suppressed,
            Counter::ServFail => &self.servfail,
            Counter::Malformed => &self.malformed,
            Counter::DroppedOverload => &self.dropped_overload,
        };
        cell.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now (each read on its own: a snapshot taken while
    /// queries run may be off by the queries in between).
    pub fn snapshot(&self) -> DnsStatsSnapshot {
        let read = |cell: &AtomicU64| cell.load(Ordering::Relaxed);
        DnsStatsSnapshot {
            answered: read(&self.answered),
            empty: read(&self.empty),
            nxdomain: read(&self.nxdomain),
            refused: read(&self.refused),
            refusals_suppressed: read(&self.refusals_suppressed),
            servfail: read(&self.servfail),
            malformed: read(&self.malformed),
            dropped_overload: read(&self.dropped_overload),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn bumps_show_in_the_snapshot() {
        let stats = DnsStats::default();
        stats.bump(Counter::Answered);
        stats.bump(Counter::Answered);
        stats.bump(Counter::RefusalSuppressed);
        let snap = stats.snapshot();
        assert_eq!(snap.answered, 2);
        assert_eq!(snap.refusals_suppressed, 1);
        assert_eq!(snap.refused, 0);
        let json = serde_json::to_value(snap).unwrap();
        assert_eq!(json["answered"], 2);
        assert_eq!(json["dropped_overload"], 0);
    }
}
