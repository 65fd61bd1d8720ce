//! Keeps the kernel's direct allow maps equal to the policy snapshot's
//! direct rules (pack `egress.direct` entries and `direct` grants).
//!
//! Names are resolved by the daemon's resolver (`--resolve` pins first),
//! or, while the DNS filter serves, taken from what it answered the
//! cgroup for them ([`super::learned`]);
//! addresses the operator wrote (IP literals, pins) are taken as given;
//! addresses that came from DNS pass the same address-class check as the
//! proxy's dials (`proxy::net::addr_class::check`), so a rebinding answer cannot
//! open loopback, metadata or this host's own addresses. Each entry's expiry is written as the same instant the proxy
//! uses, converted to the kernel's `CLOCK_BOOTTIME`, so an entry stops
//! allowing in the kernel and in the proxy at the same moment, with or
//! without the daemon.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use enforcer_ebpf::NEVER_EXPIRES;
use policy::{DirectRule, Snapshot};
use proxy::{
    net::addr_class::{LocalAddrs, check},
    net::resolve::{AddrSource, Resolver},
};

use super::learned::LearnedNames;
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
    /// With the DNS filter serving: what it answered for direct names.
    learned: Option<Arc<LearnedNames>>,
    current: HashSet<SocketAddr>,
}

/// An address a direct rule may reach, where it came from, and until when.
type Candidate = (IpAddr, AddrSource, Option<SystemTime>);

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
            learned: None,
            current,
        })
    }

    /// Takes the addresses of direct rules written as (unpinned) names
    /// from what the DNS filter answered, instead of resolving them: the
    /// kernel then allows exactly what the cgroup's clients were told,
    /// until min(answer TTL, rule expiry).
    pub fn with_learned_names(mut self, learned: Arc<LearnedNames>) -> Self {
        self.learned = Some(learned);
        self
    }

    /// The addresses `rule` may reach: a pinned name, a literal, or (with
    /// no DNS filter) a name resolved now, for the rule's life; a name
    /// the DNS filter answers, its live answers, each until the earlier of
    /// its TTL and the rule's expiry.
    async fn candidates(
        &self,
        rule: &DirectRule,
        now: SystemTime,
    ) -> Result<Vec<Candidate>, String> {
        let host = &rule.target.host;
        if let Some(learned) = &self.learned
            && host.domain().is_some()
            && self
                .resolver
                .pins()
                .lookup(host, rule.target.port)
                .is_none()
        {
            return Ok(learned
                .live(host, now)
                .into_iter()
                .map(|(ip, until)| {
                    let until = rule
                        .expires_at
                        .map_or(until, |rule_end| rule_end.min(until));
                    (ip, AddrSource::Dns, Some(until))
                })
                .collect());
        }
        let resolved = self
            .resolver
            .resolve(host, rule.target.port)
            .await
            .map_err(|error| error.to_string())?;
        Ok(resolved
            .addrs
            .into_iter()
            .map(|ip| (ip, resolved.source, rule.expires_at))
            .collect())
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
        if let Some(learned) = &self.learned {
            learned.prune(now);
        }
        for rule in snapshot
            .direct_rules()
            .iter()
            .filter(|rule| rule.is_live(now))
        {
            let target = format!("{}:{}", rule.target.host, rule.target.port);
            let candidates = match self.candidates(rule, now).await {
                Ok(candidates) => candidates,
                Err(why) => {
                    report.skipped.push((target, why));
                    continue;
                }
            };
            for (ip, source, expires_at) in candidates {
                // Pinned (`--resolve`) and literal addresses are the operator's own
                // choice; DNS answers pass the proxy's own address-class check.
                if source == AddrSource::Dns {
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
                    if let Err(class) = check(ip, |ip| fronting.private_address_allowed(ip), local)
                    {
                        report.skipped.push((
                            target.clone(),
                            format!("{ip} is a {} address (from DNS): refused", class.as_str()),
                        ));
                        continue;
                    }
                }
                wanted.push((
                    SocketAddr::new(ip, rule.target.port),
                    expires_at,
                    target.clone(),
                ));
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

/// How long to sleep until the next expiry of a rule or of a learned
/// address (bounded so a clock jump is noticed within a minute).
pub fn until_next(
    snapshot: &Snapshot,
    learned_next: Option<SystemTime>,
    now: SystemTime,
) -> Duration {
    let cap = Duration::from_secs(60);
    let next = match (snapshot.next_expiry(now), learned_next) {
        (Some(rule), Some(learned)) => Some(rule.min(learned)),
        (rule, learned) => rule.or(learned),
    };
    next.and_then(|at| at.duration_since(now).ok())
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
