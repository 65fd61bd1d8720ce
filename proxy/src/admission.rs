//! The concurrent-tunnel limit: a counter with a limit read per admission
//! (the limit comes from the policy snapshot and may change on reload),
//! RAII slots, and a way to wait until every slot is free (drain).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Counts admitted connections against a limit.
#[derive(Debug, Default)]
pub struct Admission {
    active: AtomicUsize,
    idle: Notify,
}

/// One admitted connection; frees its slot when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
}

impl Admission {
    /// A counter with nothing admitted.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Takes a slot if fewer than `limit` are taken.
    pub fn try_admit(self: &Arc<Self>, limit: usize) -> Option<Slot> {
        let mut current = self.active.load(Ordering::Acquire);
        loop {
            if current >= limit {
                return None;
            }
            match self.active.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Slot {
                        admission: self.clone(),
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Slots taken now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no slot is taken.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.admission.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.admission.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_frees_on_drop() {
        let admission = Admission::new();
        let slots: Vec<_> = (0..3).map(|_| admission.try_admit(3).unwrap()).collect();
        assert!(admission.try_admit(3).is_none());
        assert_eq!(admission.active(), 3);
        // A raised limit (policy reload) admits more at once.
        let extra = admission.try_admit(4).unwrap();
        drop(slots);
        assert_eq!(admission.active(), 1);
        drop(extra);
        assert_eq!(admission.active(), 0);
        assert!(admission.try_admit(0).is_none());
    }

    #[tokio::test]
    async fn wait_idle_returns_when_the_last_slot_goes() {
        let admission = Admission::new();
        let slot = admission.try_admit(1).unwrap();
        let waiter = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.wait_idle().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(slot);
        waiter.await.unwrap();
        admission.wait_idle().await;
    }
}
