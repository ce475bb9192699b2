//! Exponential backoff: `initial`, doubled on each failure, capped at `max`, with optional jitter.
//!
//! Two ways to use it: a retry loop keeps one [`Backoff`] and asks [`Backoff::next_delay`] after each
//! failure ([`Backoff::reset`] after a success); a pure rule that knows how many attempts failed asks
//! [`Backoff::delay_for`] (no state, no randomness, so a replay computes the same delay).

use std::time::Duration;

/// An exponential backoff policy and the position of one retry loop in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The first delay.
    initial: Duration,
    /// The cap, so a long outage is polled at a steady pace.
    max: Duration,
    /// Up to this fraction of each delay is added at random, so many clients that failed together
    /// do not retry together. 0 for none.
    jitter: f64,
    /// Failures since the last success.
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial` and never waiting longer than `max` (before jitter).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            jitter: 0.0,
            attempt: 0,
        }
    }

    /// Adds up to `fraction` (0..=1) of each delay at random.
    pub fn with_jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// The delay after the `attempt`-th consecutive failure (1-based; 0 is treated as 1), without
    /// jitter: `initial * 2^(attempt-1)`, capped at `max`.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        self.initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay to wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let d = self.delay_for(self.attempt);
        if self.jitter > 0.0 {
            let extra = d.mul_f64(self.jitter * rand::random::<f64>());
            d + extra
        } else {
            d
        }
    }

    /// Failures since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut b = Backoff::new(MS(100), MS(350));
        let seen: Vec<_> = (0..4).map(|_| b.next_delay()).collect();
        assert_eq!(seen, [MS(100), MS(200), MS(350), MS(350)]);
        assert_eq!(b.attempts(), 4);
        b.reset();
        assert_eq!(b.next_delay(), MS(100));
    }

    #[test]
    fn delay_for_is_pure_and_saturates() {
        let b = Backoff::new(Duration::from_secs(30), Duration::from_secs(600));
        assert_eq!(b.delay_for(0), Duration::from_secs(30));
        assert_eq!(b.delay_for(1), Duration::from_secs(30));
        assert_eq!(b.delay_for(3), Duration::from_secs(120));
        assert_eq!(b.delay_for(u32::MAX), Duration::from_secs(600));
    }

    #[test]
    fn jitter_adds_at_most_its_fraction() {
        let mut b = Backoff::new(MS(100), MS(100)).with_jitter(0.5);
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d >= MS(100) && d <= MS(150), "{d:?}");
        }
    }

    #[test]
    fn a_cap_below_the_start_is_the_start() {
        let b = Backoff::new(MS(500), MS(100));
        assert_eq!(b.delay_for(5), MS(500));
    }
}
