//! Keeps the kernel's direct allow maps equal to the policy snapshot's
//! direct rules (pack `egress.direct` entries and `direct` grants).
//!
//! Names are resolved by the daemon's resolver (`--resolve` pins first);
//! addresses the operator wrote (IP literals, pins) are taken as given;
//! addresses that came from DNS pass the same address-class check as the
//! proxy's dials (`proxy::net::addr_class::check`), so a rebinding answer cannot
//! open loopback, metadata or this host's own addresses. Each entry's expiry is written as the same instant the proxy
//! uses, converted to the kernel's `CLOCK_BOOTTIME`, so an entry stops
//! allowing in the kernel and in the proxy at the same moment, with or
//! without the daemon.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use enforcer_ebpf::NEVER_EXPIRES;
use policy::Snapshot;
use proxy::{
    net::addr_class::{LocalAddrs, check},
    net::resolve::{AddrSource, Resolver},
};

use crate::kernel::{KernelError, PinnedMaps, events::boot_now_ns, maps::Transport};

/// Converts a wall-clock instant to `CLOCK_BOOTTIME` nanoseconds.
pub fn wall_to_boot_ns(instant: SystemTime, now: SystemTime) -> u64 {
    wall_to_boot_ns_at(instant, now, boot_now_ns())
}

/// [`wall_to_boot_ns`] with both clocks given: `now` on the wall clock is
/// `boot_now` on the boot clock.
pub fn wall_to_boot_ns_at(instant: SystemTime, now: SystemTime, boot_now: u64) -> u64 {
    match instant.duration_since(now) {
        Ok(ahead) => boot_now.saturating_add(u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX)),
        Err(behind) => {
            boot_now.saturating_sub(u64::try_from(behind.duration().as_nanos()).unwrap_or(u64::MAX))
        }
    }
}

/// One entry written to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenEntry {
    /// The rule's target as written in the policy or grant.
    pub target: String,
    /// The address written.
    pub addr: SocketAddr,
    /// Its expiry.
    pub expires_at: Option<SystemTime>,
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Entries now in the maps.
    pub written: Vec<WrittenEntry>,
    /// Entries removed.
    pub removed: usize,
    /// Targets that could not be resolved or were refused, with why.
    pub skipped: Vec<(String, String)>,
}

/// The direct-map writer of one enforced cgroup.
pub struct MapSync {
    maps: PinnedMaps,
    resolver: Resolver,
    current: HashSet<SocketAddr>,
}

impl MapSync {
    /// A writer for `maps`, resolving with `resolver`. Entries already in
    /// the maps (from a previous run) are adopted and replaced on first sync.
    pub fn new(maps: PinnedMaps, resolver: Resolver) -> Result<Self, KernelError> {
        let current = maps
            .direct_entries()?
            .into_iter()
            .map(|entry| entry.addr)
            .collect();
        Ok(Self {
            maps,
            resolver,
            current,
        })
    }

    /// Writes the snapshot's live direct rules and removes everything else.
    pub async fn sync(
        &mut self,
        snapshot: &Snapshot,
        now: SystemTime,
    ) -> Result<SyncReport, KernelError> {
        let mut report = SyncReport::default();
        let mut wanted: Vec<(SocketAddr, Option<SystemTime>, String)> = Vec::new();
        // This host's interface addresses, read once per sync when DNS
        // answered. When they cannot be read, DNS answers are refused (an
        // own address could not be told apart from any other).
        let mut local: Option<Result<LocalAddrs, String>> = None;
        for rule in snapshot
            .direct_rules()
            .iter()
            .filter(|rule| rule.is_live(now))
        {
            let target = format!("{}:{}", rule.target.host, rule.target.port);
            match self
                .resolver
                .resolve(&rule.target.host, rule.target.port)
                .await
            {
                Ok(resolved) => {
                    for ip in resolved.addrs {
                        // Pinned (`--resolve`) and literal addresses are the operator's own
                        // choice; DNS answers pass the proxy's own address-class check.
                        if resolved.source == AddrSource::Dns {
                            let local = match local.get_or_insert_with(|| {
                                LocalAddrs::from_system().map_err(|error| error.to_string())
                            }) {
                                Ok(local) => &*local,
                                Err(error) => {
                                    report.skipped.push((
                                        target.clone(),
                                        format!(
                                            "{ip} (from DNS): refused, this host's own addresses could not be read: {error}"
                                        ),
                                    ));
                                    continue;
                                }
                            };
                            let fronting = &snapshot.policy().fronting;
                            if let Err(class) =
                                check(ip, |ip| fronting.private_address_allowed(ip), local)
                            {
                                report.skipped.push((
                                    target.clone(),
                                    format!(
                                        "{ip} is a {} address (from DNS): refused",
                                        class.as_str()
                                    ),
                                ));
                                continue;
                            }
                        }
                        wanted.push((
                            SocketAddr::new(ip, rule.target.port),
                            rule.expires_at,
                            target.clone(),
                        ));
                    }
                }
                Err(error) => report.skipped.push((target, error.to_string())),
            }
        }
        // One entry per address; when two rules share it, the later expiry wins.
        let mut merged: HashMap<SocketAddr, (Option<SystemTime>, String)> = HashMap::new();
        for (addr, expires_at, target) in wanted {
            match merged.get(&addr) {
                Some((None, _)) => {}
                Some((Some(kept), _)) if expires_at.is_some_and(|new| new <= *kept) => {}
                _ => {
                    merged.insert(addr, (expires_at, target));
                }
            }
        }
        let mut next = HashSet::new();
        for (addr, (expires_at, target)) in merged {
            let expiry = expires_at.map_or(NEVER_EXPIRES, |at| wall_to_boot_ns(at, now));
            self.maps.set_direct(addr, Transport::Tcp, expiry)?;
            next.insert(addr);
            report.written.push(WrittenEntry {
                target,
                addr,
                expires_at,
            });
        }
        for stale in self.current.difference(&next) {
            self.maps.remove_direct(*stale, Transport::Tcp)?;
            report.removed += 1;
        }
        self.current = next;
        Ok(report)
    }
}

/// How long to sleep until the next expiry (bounded so a clock jump is
/// noticed within a minute).
pub fn until_next(snapshot: &Snapshot, now: SystemTime) -> Duration {
    let cap = Duration::from_secs(60);
    snapshot
        .next_expiry(now)
        .and_then(|at| at.duration_since(now).ok())
        .map_or(cap, |wait| wait.min(cap) + Duration::from_millis(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_instants_map_to_boot_clock() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let boot = 50_000_000_000;
        assert_eq!(
            wall_to_boot_ns_at(now + Duration::from_secs(10), now, boot),
            60_000_000_000
        );
        assert_eq!(
            wall_to_boot_ns_at(now - Duration::from_millis(1_500), now, boot),
            48_500_000_000
        );
        assert_eq!(wall_to_boot_ns_at(now, now, boot), boot);
        // Before boot: clamped, never wrapped.
        assert_eq!(
            wall_to_boot_ns_at(now - Duration::from_secs(3_600), now, boot),
            0
        );
    }
}
