//! The policy store: holds the active [`Snapshot`], decides whether a
//! verified candidate may replace it (expiry, rollback), swaps atomically
//! and notifies subscribers.
//!
//! Readers call [`PolicyStore::current`] (an `Arc` clone) or hold a
//! [`tokio::sync::watch::Receiver`] from [`PolicyStore::subscribe`] and wake
//! on `changed()`. A swap publishes one complete snapshot; nobody ever sees
//! a half-applied policy, and users of the previous one keep their `Arc`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::allowlist::Grant;
use crate::fallback::fallback_policy;
use crate::model::{PackError, Policy};
use crate::signing::KeyId;
use crate::snapshot::{Origin, Snapshot};
use crate::timestamp::format_timestamp;
use crate::version::Version;

/// How far `issuedAt` may lie ahead of this host's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// A pack whose signature verified and which validated; not yet accepted.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The validated policy.
    pub policy: Arc<Policy>,
    /// The exact bytes that were signed.
    pub bytes: Arc<[u8]>,
    /// The signature file's bytes.
    pub signature: Arc<[u8]>,
    /// SHA-256 of `bytes`, hex.
    pub sha256: String,
    /// The key that signed it.
    pub key_id: KeyId,
    /// File path or URL.
    pub source: String,
}

/// Why a pack was not made active. The active policy stays in every case.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No signature could be read.
    #[error("{pack}: unsigned: no signature at {location} ({detail})")]
    Unsigned {
        /// The pack's location.
        pack: String,
        /// Where the signature was looked for.
        location: String,
        /// What went wrong.
        detail: String,
    },
    /// The signature did not verify (or is malformed).
    #[error("{pack}: {error}")]
    BadSignature {
        /// The pack's location.
        pack: String,
        /// The signing error (says "signature does not match" for tampering or a wrong key).
        error: crate::signing::SigningError,
    },
    /// The pack bytes do not match the pinned SHA-256.
    #[error("{pack}: SHA-256 {actual} does not match the pinned {expected}")]
    PinMismatch {
        /// The pack's location.
        pack: String,
        /// The pin.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The pack could not be read or fetched.
    #[error("{pack}: {detail}")]
    Unavailable {
        /// The pack's location.
        pack: String,
        /// What went wrong.
        detail: String,
    },
    /// Signed, but not a valid pack.
    #[error("{pack}: invalid pack: {error}")]
    Invalid {
        /// The pack's location.
        pack: String,
        /// What is wrong.
        error: PackError,
    },
    /// No `issuedAt`, so no lifetime.
    #[error("{pack}: pack has no issuedAt; sign it with `enforcer policy sign`, which stamps it")]
    NoIssuedAt {
        /// The pack's location.
        pack: String,
    },
    /// `issuedAt` too far in the future.
    #[error(
        "{pack}: issuedAt {issued_at} is more than 5 minutes ahead of this host's clock; check the clocks"
    )]
    IssuedInFuture {
        /// The pack's location.
        pack: String,
        /// The issue time.
        issued_at: String,
    },
    /// Past `issuedAt + ttlSeconds`.
    #[error(
        "{pack}: pack version {version} expired at {expired_at} (issuedAt + ttlSeconds); publish a freshly signed pack"
    )]
    Expired {
        /// The pack's location.
        pack: String,
        /// Its version.
        version: String,
        /// When it expired.
        expired_at: String,
    },
    /// Older than the newest version already accepted.
    #[error(
        "{pack}: version {offered} is older than version {active} already accepted (rollback refused)"
    )]
    Rollback {
        /// The pack's location.
        pack: String,
        /// Offered version.
        offered: String,
        /// Newest accepted version.
        active: String,
    },
    /// Same version as the newest accepted one, different bytes.
    #[error(
        "{pack}: version {version} was already accepted with different content; bump version when changing a pack"
    )]
    SameVersionDifferentContent {
        /// The pack's location.
        pack: String,
        /// The version.
        version: String,
    },
}

/// What [`PolicyStore::offer`] did.
#[derive(Debug, Clone)]
pub enum Offered {
    /// The candidate is now active.
    Applied(Arc<Snapshot>),
    /// The candidate is the active pack already (same bytes).
    Unchanged,
}

/// Judge a candidate against the rollback floor at `now` (pure).
/// `floor` is the newest (version, sha256) ever accepted.
pub fn judge(
    c: &Candidate,
    floor: Option<(&Version, &str)>,
    now: SystemTime,
) -> Result<(), Refusal> {
    let source = || c.source.clone();
    let Some(issued_at) = c.policy.issued_at else {
        return Err(Refusal::NoIssuedAt { pack: source() });
    };
    if issued_at > now + MAX_CLOCK_SKEW {
        return Err(Refusal::IssuedInFuture {
            pack: source(),
            issued_at: format_timestamp(issued_at),
        });
    }
    match c.policy.expires_at() {
        Some(exp) if exp > now => {}
        Some(exp) => {
            return Err(Refusal::Expired {
                pack: source(),
                version: c.policy.version.to_string(),
                expired_at: format_timestamp(exp),
            });
        }
        None => return Err(Refusal::NoIssuedAt { pack: source() }),
    }
    if let Some((fv, fsha)) = floor {
        if c.policy.version < *fv {
            return Err(Refusal::Rollback {
                pack: source(),
                offered: c.policy.version.to_string(),
                active: fv.to_string(),
            });
        }
        if c.policy.version == *fv && c.sha256 != fsha {
            return Err(Refusal::SameVersionDifferentContent {
                pack: source(),
                version: c.policy.version.to_string(),
            });
        }
    }
    Ok(())
}

struct Inner {
    floor: Option<(Version, String)>,
    generation: u64,
}

/// Holds the active snapshot; see the module docs.
pub struct PolicyStore {
    tx: watch::Sender<Arc<Snapshot>>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("generation", &self.current().generation())
            .finish_non_exhaustive()
    }
}

impl PolicyStore {
    /// A store whose first snapshot is the embedded fallback pack.
    pub fn with_fallback(reason: &str, grants: Vec<Grant>) -> Result<PolicyStore, PackError> {
        let snap = Snapshot::new(
            fallback_policy()?,
            Origin::Fallback {
                reason: reason.to_owned(),
            },
            grants.into(),
            1,
        );
        Ok(PolicyStore {
            tx: watch::Sender::new(Arc::new(snap)),
            inner: Mutex::new(Inner {
                floor: None,
                generation: 1,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The active snapshot (cheap: an `Arc` clone).
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that wakes on every swap.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// The newest version ever accepted (the rollback floor).
    pub fn floor(&self) -> Option<Version> {
        self.lock().floor.as_ref().map(|(v, _)| v.clone())
    }

    /// Raise the rollback floor (e.g. from the cached pack at start, even
    /// when that pack has expired). Never lowers it.
    pub fn raise_floor(&self, version: &Version, sha256: &str) {
        let mut inner = self.lock();
        if inner.floor.as_ref().is_none_or(|(v, _)| version > v) {
            inner.floor = Some((version.clone(), sha256.to_owned()));
        }
    }

    fn publish(
        &self,
        inner: &mut Inner,
        policy: Arc<Policy>,
        origin: Origin,
        grants: Arc<[Grant]>,
    ) -> Arc<Snapshot> {
        inner.generation += 1;
        let snap = Arc::new(Snapshot::new(policy, origin, grants, inner.generation));
        self.tx.send_replace(snap.clone());
        snap
    }

    /// Offer a verified candidate: refuse it (see [`judge`]) or make it the
    /// active policy in one atomic swap. Grants carry over.
    pub fn offer(&self, c: &Candidate, now: SystemTime) -> Result<Offered, Refusal> {
        let mut inner = self.lock();
        let current = self.current();
        if let Origin::Signed { sha256, .. } = current.origin()
            && *sha256 == c.sha256
        {
            return Ok(Offered::Unchanged);
        }
        judge(c, inner.floor.as_ref().map(|(v, s)| (v, s.as_str())), now)?;
        inner.floor = Some((c.policy.version.clone(), c.sha256.clone()));
        let origin = Origin::Signed {
            key_id: c.key_id,
            source: c.source.clone(),
            sha256: c.sha256.clone(),
        };
        let snap = self.publish(
            &mut inner,
            c.policy.clone(),
            origin,
            current.grants().clone(),
        );
        tracing::info!(
            decision = "policy_applied",
            version = %c.policy.version,
            key_id = %c.key_id,
            source = %c.source,
            generation = snap.generation(),
            "policy pack applied"
        );
        Ok(Offered::Applied(snap))
    }

    /// Make the embedded fallback active (nothing verifies, or the active
    /// pack expired), with a warning. The rollback floor stays.
    pub fn use_fallback(&self, reason: &str) -> Result<Arc<Snapshot>, PackError> {
        let policy = fallback_policy()?;
        let mut inner = self.lock();
        let grants = self.current().grants().clone();
        let snap = self.publish(
            &mut inner,
            policy,
            Origin::Fallback {
                reason: reason.to_owned(),
            },
            grants,
        );
        tracing::warn!(
            decision = "policy_fallback",
            reason = %reason,
            generation = snap.generation(),
            "using the embedded fallback policy (Anthropic API only)"
        );
        Ok(snap)
    }

    /// Replace the runtime grants (the policy stays); one atomic swap.
    pub fn set_grants(&self, grants: Vec<Grant>) -> Arc<Snapshot> {
        let mut inner = self.lock();
        let current = self.current();
        self.publish(
            &mut inner,
            current.policy().clone(),
            current.origin().clone(),
            grants.into(),
        )
    }

    /// If the active signed pack has expired at `now`, switch to the
    /// fallback and return the new snapshot.
    pub fn expire(&self, now: SystemTime) -> Result<Option<Arc<Snapshot>>, PackError> {
        let current = self.current();
        match current.expires_at() {
            Some(exp) if exp <= now => {
                let reason = format!(
                    "the active pack (version {}) expired at {} and no fresh pack verified",
                    current.policy().version,
                    format_timestamp(exp)
                );
                self.use_fallback(&reason).map(Some)
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::model::{ValidationMode, parse_pack};
    use std::time::UNIX_EPOCH;

    fn candidate(version: &str, issued: &str, ttl: u64, salt: &str) -> Candidate {
        let json = format!(
            r#"{{"schema":"ccp.policy.v1","version":"{version}","issuedAt":"{issued}","ttlSeconds":{ttl},
               "fronting":{{"allowlist":[{{"hostport":"{salt}.example.com"}}]}}}}"#
        );
        let policy = parse_pack(json.as_bytes(), ValidationMode::Signed).unwrap();
        Candidate {
            policy: Arc::new(policy),
            sha256: crate::signing::sha256_hex(json.as_bytes()),
            bytes: json.as_bytes().into(),
            signature: Arc::from(&b""[..]),
            key_id: KeyId([1; 8]),
            source: "test".into(),
        }
    }

    fn t(s: &str) -> SystemTime {
        crate::timestamp::parse_timestamp(s).unwrap()
    }

    #[test]
    fn judge_rules() {
        let now = t("2030-01-01T12:00:00Z");
        let ok = candidate("5", "2030-01-01T11:00:00Z", 7200, "a");
        judge(&ok, None, now).unwrap();
        let expired = candidate("5", "2030-01-01T09:00:00Z", 3600, "a");
        assert!(matches!(
            judge(&expired, None, now),
            Err(Refusal::Expired { .. })
        ));
        let future = candidate("5", "2030-01-01T13:00:00Z", 3600, "a");
        assert!(matches!(
            judge(&future, None, now),
            Err(Refusal::IssuedInFuture { .. })
        ));
        let skew = candidate("5", "2030-01-01T12:04:00Z", 3600, "a");
        judge(&skew, None, now).unwrap();
        let v4 = Version::parse("4").unwrap();
        let v6 = Version::parse("6").unwrap();
        judge(&ok, Some((&v4, "x")), now).unwrap();
        let e = judge(&ok, Some((&v6, "x")), now).unwrap_err();
        assert!(e.to_string().contains("rollback refused"), "{e}");
        let v5 = Version::parse("5").unwrap();
        judge(&ok, Some((&v5, &ok.sha256)), now).unwrap();
        assert!(matches!(
            judge(&ok, Some((&v5, "other")), now),
            Err(Refusal::SameVersionDifferentContent { .. })
        ));
    }

    #[test]
    fn store_swaps_and_keeps_the_active_pack_on_refusal() {
        let now = t("2030-01-01T12:00:00Z");
        let store = PolicyStore::with_fallback("test", vec![]).unwrap();
        assert!(store.current().is_fallback());
        let mut rx = store.subscribe();
        let c1 = candidate("2", "2030-01-01T11:00:00Z", 7200, "one");
        let Offered::Applied(s1) = store.offer(&c1, now).unwrap() else {
            panic!()
        };
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().generation(), s1.generation());
        assert!(matches!(store.offer(&c1, now).unwrap(), Offered::Unchanged));
        let old = candidate("1", "2030-01-01T11:30:00Z", 7200, "zero");
        assert!(matches!(
            store.offer(&old, now),
            Err(Refusal::Rollback { .. })
        ));
        assert_eq!(store.current().generation(), s1.generation());
        assert!(!rx.has_changed().unwrap());
        assert!(store.current().decide("one.example.com", 443, now).allowed);
        // Expiry of the active pack switches to the fallback; the floor stays.
        let later = t("2030-01-01T13:00:00Z");
        assert!(store.expire(now).unwrap().is_none());
        let fb = store.expire(later).unwrap().unwrap();
        assert!(fb.is_fallback());
        assert!(!fb.decide("one.example.com", 443, later).allowed);
        assert!(matches!(
            store.offer(&old, later),
            Err(Refusal::Rollback { .. })
        ));
        assert_eq!(store.floor().unwrap().as_str(), "2");
    }

    #[test]
    fn grants_carry_over_swaps() {
        let now = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let store = PolicyStore::with_fallback("test", vec![]).unwrap();
        let g = Grant::new(
            "extra.example.net",
            crate::GrantScope::Proxy,
            now,
            Duration::from_secs(60),
        )
        .unwrap();
        store.set_grants(vec![g]);
        assert!(
            store
                .current()
                .decide("extra.example.net", 443, now)
                .allowed
        );
        let c = candidate("1", "2030-03-17T17:46:40Z", 7200, "p");
        store.offer(&c, now).unwrap();
        assert!(
            store
                .current()
                .decide("extra.example.net", 443, now)
                .allowed
        );
        assert!(store.current().decide("p.example.com", 443, now).allowed);
    }
}
