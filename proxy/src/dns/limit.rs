//! A token bucket: at most `burst` events at once, refilled at `rate` per
//! second. The DNS filter takes one token per refusal audit event, so a
//! client hammering refused names cannot flood the audit store; the
//! events it suppresses are counted instead. The clock is passed in
//! (pure, testable without sleeping).

use std::time::Instant;

/// Nanotokens per token: the bucket counts in billionths of a token so
/// integer arithmetic refills exactly.
const NANO: u128 = 1_000_000_000;

/// A token bucket over an injected clock.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: u32,
    /// Capacity, in tokens.
    burst: u32,
    /// Tokens held, in nanotokens.
    nanotokens: u128,
    /// When `nanotokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` per second, as of
    /// `now`. A zero `burst` never gives a token.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate,
            burst,
            nanotokens: u128::from(burst) * NANO,
            last: now,
        }
    }

    /// Takes one token at `now` if there is one. A `now` earlier than the
    /// last call refills nothing.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let capacity = u128::from(self.burst) * NANO;
        let refill = elapsed.as_nanos().saturating_mul(u128::from(self.rate));
        self.nanotokens = self.nanotokens.saturating_add(refill).min(capacity);
        if self.nanotokens >= NANO {
            self.nanotokens -= NANO;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(20, 100, start);
        let taken = (0..150).filter(|_| bucket.try_take(start)).count();
        assert_eq!(taken, 100, "the burst");
        // 20 per second: one every 50 ms.
        assert!(!bucket.try_take(start + Duration::from_millis(49)));
        assert!(bucket.try_take(start + Duration::from_millis(50)));
        assert!(!bucket.try_take(start + Duration::from_millis(50)));
        let later = start + Duration::from_millis(1050);
        let taken = (0..100).filter(|_| bucket.try_take(later)).count();
        assert_eq!(taken, 20, "one second's worth");
        // Idle for long: refilled to the burst, not beyond.
        let much_later = later + Duration::from_secs(3600);
        let taken = (0..1000).filter(|_| bucket.try_take(much_later)).count();
        assert_eq!(taken, 100);
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing_and_zero_burst_gives_nothing() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(1, 1, start);
        assert!(bucket.try_take(start));
        assert!(!bucket.try_take(start - Duration::from_secs(5)));
        assert!(!bucket.try_take(start + Duration::from_millis(999)));
        assert!(bucket.try_take(start + Duration::from_secs(1)));
        let mut none = TokenBucket::new(1000, 0, start);
        assert!(!none.try_take(start + Duration::from_secs(60)));
    }
}
