//! Addresses the DNS filter answered for `egress.direct` entries written
//! as names (`github.com:22`): the map writer opens kernel entries for
//! exactly these, expiring at min(answer TTL, entry TTL), as Cilium's
//! `toFQDNs` does. A name's addresses rotate with its answers; a client
//! connects only to what it was told, and the kernel allows only that.
//!
//! Only names of live direct rules are kept ([`DirectNameAnswers`]);
//! other answered names (allowlist entries, provider hosts) go through the
//! proxy or the transparent listener and need no kernel entry.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use policy::Host;
use proxy::{
    dns::{LearnedAnswers, LearnedWait},
    server::PolicyWatch,
};
use tokio::sync::watch;

/// The shortest life of a learned address: an answer with TTL 0 or 1 must
/// still let the client that asked connect right after.
pub const MIN_LEARNED_TTL: Duration = Duration::from_secs(2);

/// A new expiry this much later than the recorded one wakes the map
/// writer; smaller extensions wait for its next pass (answers repeat
/// within a TTL and would otherwise wake it on every query).
const EXTENSION_WORTH_A_SYNC: Duration = Duration::from_secs(1);

/// How long an answer for a direct name waits for the map writer to open
/// its addresses before it is sent anyway (the connect may then be denied
/// once; the entry follows within the writer's pass).
pub const SYNC_WAIT: Duration = Duration::from_secs(1);

/// The learned addresses, by name, each with when it stops.
#[derive(Debug, Default)]
pub struct LearnedNames {
    names: Mutex<HashMap<Host, HashMap<IpAddr, SystemTime>>>,
    /// Bumped by every record that needs a sync (the map writer waits on it).
    recorded: watch::Sender<u64>,
    /// The last record generation the map writer has written.
    synced: watch::Sender<u64>,
}

impl LearnedNames {
    /// Records that `name` was answered with `addrs` (each with its TTL)
    /// at `now`. When an address is new or lives noticeably longer, bumps
    /// the generation ([`Self::changed_since`] wakes) and returns it: the
    /// map writer must reach it ([`Self::wait_synced`]) before the kernel
    /// allows the address.
    pub fn record(
        &self,
        name: &Host,
        addrs: &[(IpAddr, Duration)],
        now: SystemTime,
    ) -> Option<u64> {
        let mut wake = false;
        {
            let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
            let known = names.entry(name.clone()).or_default();
            for (ip, ttl) in addrs {
                let until = now + (*ttl).max(MIN_LEARNED_TTL);
                match known.get_mut(ip) {
                    Some(kept) if until <= *kept => {}
                    Some(kept) => {
                        wake |= until
                            .duration_since(*kept)
                            .is_ok_and(|later| later >= EXTENSION_WORTH_A_SYNC);
                        *kept = until;
                    }
                    None => {
                        known.insert(*ip, until);
                        wake = true;
                    }
                }
            }
        }
        if !wake {
            return None;
        }
        let mut generation = 0;
        self.recorded.send_modify(|recorded| {
            *recorded += 1;
            generation = *recorded;
        });
        Some(generation)
    }

    /// The latest record generation (the map writer reads it before a pass).
    pub fn generation(&self) -> u64 {
        *self.recorded.borrow()
    }

    /// The map writer finished a pass that began at `generation`.
    pub fn mark_synced(&self, generation: u64) {
        self.synced.send_if_modified(|synced| {
            let newer = generation > *synced;
            if newer {
                *synced = generation;
            }
            newer
        });
    }

    /// Resolves once the map writer has written `generation`, or after `limit`.
    pub async fn wait_synced(&self, generation: u64, limit: Duration) {
        let mut synced = self.synced.subscribe();
        let _ = tokio::time::timeout(limit, synced.wait_for(|done| *done >= generation)).await;
    }

    /// `name`'s addresses still live at `now`, with their expiries.
    pub fn live(&self, name: &Host, now: SystemTime) -> Vec<(IpAddr, SystemTime)> {
        let names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        let mut live: Vec<(IpAddr, SystemTime)> = names
            .get(name)
            .into_iter()
            .flatten()
            .filter(|(_, until)| **until > now)
            .map(|(ip, until)| (*ip, *until))
            .collect();
        live.sort();
        live
    }

    /// Forgets what expired by `now`.
    pub fn prune(&self, now: SystemTime) {
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        names.retain(|_, addrs| {
            addrs.retain(|_, until| *until > now);
            !addrs.is_empty()
        });
    }

    /// The first expiry after `now` (when the map writer must run again).
    pub fn next_expiry(&self, now: SystemTime) -> Option<SystemTime> {
        let names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        names
            .values()
            .flat_map(|addrs| addrs.values())
            .filter(|until| **until > now)
            .min()
            .copied()
    }

    /// Resolves once something was learned after `generation`.
    pub async fn changed_since(&self, generation: u64) {
        let _ = self
            .recorded
            .subscribe()
            .wait_for(|recorded| *recorded > generation)
            .await;
    }
}

/// The filter's [`LearnedAnswers`]: keeps the answers for names that a
/// live direct rule names, in [`LearnedNames`].
pub struct DirectNameAnswers {
    policy: PolicyWatch,
    names: Arc<LearnedNames>,
}

impl DirectNameAnswers {
    /// Records into `names` what the filter answers for direct rules of
    /// the current snapshot in `policy`.
    pub fn new(policy: PolicyWatch, names: Arc<LearnedNames>) -> Self {
        Self { policy, names }
    }
}

impl LearnedAnswers for DirectNameAnswers {
    fn answered(&self, name: &Host, addrs: &[(IpAddr, Duration)]) -> LearnedWait {
        let now = SystemTime::now();
        let named = self
            .policy
            .borrow()
            .live_direct_rules(now)
            .any(|rule| rule.target.host == *name);
        let generation = if named {
            self.names.record(name, addrs, now)
        } else {
            None
        };
        let names = self.names.clone();
        Box::pin(async move {
            if let Some(generation) = generation {
                names.wait_synced(generation, SYNC_WAIT).await;
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn host(name: &str) -> Host {
        policy::HostPort::parse(name).unwrap().host
    }

    #[test]
    fn addresses_live_for_their_ttl_at_least_the_minimum() {
        let names = LearnedNames::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        names.record(
            &host("git.test"),
            &[(a, Duration::from_secs(30)), (b, Duration::ZERO)],
            now,
        );
        assert_eq!(
            names.live(&host("git.test"), now),
            vec![
                (a, now + Duration::from_secs(30)),
                (b, now + MIN_LEARNED_TTL)
            ]
        );
        assert_eq!(names.next_expiry(now), Some(now + MIN_LEARNED_TTL));
        let later = now + Duration::from_secs(3);
        assert_eq!(
            names.live(&host("git.test"), later),
            vec![(a, now + Duration::from_secs(30))]
        );
        assert!(names.live(&host("other.test"), now).is_empty());
        names.prune(now + Duration::from_secs(31));
        assert_eq!(names.next_expiry(now), None);
    }

    #[test]
    fn a_shorter_answer_never_shortens_a_recorded_expiry() {
        let names = LearnedNames::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        names.record(&host("git.test"), &[(a, Duration::from_secs(60))], now);
        names.record(&host("git.test"), &[(a, Duration::from_secs(5))], now);
        assert_eq!(
            names.live(&host("git.test"), now),
            vec![(a, now + Duration::from_secs(60))]
        );
    }

    #[tokio::test]
    async fn a_new_address_wakes_the_writer_a_repeat_does_not() {
        let names = LearnedNames::default();
        let now = SystemTime::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = names.record(&host("git.test"), &[(a, Duration::from_secs(30))], now);
        assert_eq!(first, Some(1));
        tokio::time::timeout(Duration::from_secs(1), names.changed_since(0))
            .await
            .unwrap();
        assert_eq!(
            names.record(&host("git.test"), &[(a, Duration::from_secs(30))], now),
            None
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), names.changed_since(1))
                .await
                .is_err()
        );
        // The answer waits until the writer has written its generation.
        let waiting = names.wait_synced(1, Duration::from_secs(5));
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err()
        );
        names.mark_synced(names.generation());
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap();
    }
}
