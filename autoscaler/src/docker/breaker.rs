//! Resilience around engine calls: a circuit breaker (the backoff of their retries is
//! [`primitives::Backoff`]).
//!
//! The breaker is a plain state machine over an explicit `now`, so its rules are tested without clocks:
//! closed → (N consecutive failures) → open → (cool-off elapsed) → half-open: one probe call goes
//! through; its success closes the breaker, its failure opens it again for another cool-off. Each call
//! holds a [`Permit`]; a permit dropped unreported (a cancelled call) frees the probe slot.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The state the breaker is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cool-off has passed.
    Open,
    /// One probe call is allowed; the others are refused until it reports.
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

/// Opens after `failure_threshold` consecutive engine failures; half-open after `cool_off`.
#[derive(Debug)]
pub struct CircuitBreaker {
    /// Consecutive failures that open the breaker (0 disables it).
    failure_threshold: u32,
    /// How long an open breaker refuses calls before letting a probe through.
    cool_off: Duration,
    /// A std mutex: the critical sections are a few assignments and never await.
    inner: Mutex<Inner>,
}

/// A refused call: the breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Consecutive failures seen so far.
    pub failures: u32,
    /// Time left until a probe is allowed.
    pub retry_in: Duration,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(failure_threshold: u32, cool_off: Duration) -> Self {
        Self {
            failure_threshold,
            cool_off,
            inner: Mutex::new(Inner {
                consecutive_failures: 0,
                opened_at: None,
                probe_in_flight: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere mid-update of plain counters: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        let inner = self.lock();
        match inner.opened_at {
            None => BreakerState::Closed,
            Some(at) if now.saturating_duration_since(at) >= self.cool_off => {
                BreakerState::HalfOpen
            }
            Some(_) => BreakerState::Open,
        }
    }

    /// Asks to make a call at `now`: a [`Permit`] lets it through (as the probe when half-open). The
    /// caller reports the outcome on the permit; a permit dropped without a report (the call's future
    /// was cancelled: a `select!` that ended, an HTTP client that went away) gives the probe slot back, so
    /// the next call can probe instead of the breaker refusing every call for good.
    pub fn try_acquire(&self, now: Instant) -> Result<Permit<'_>, Refused> {
        let mut inner = self.lock();
        let Some(at) = inner.opened_at else {
            return Ok(Permit::new(self, false));
        };
        let elapsed = now.saturating_duration_since(at);
        if elapsed >= self.cool_off && !inner.probe_in_flight {
            inner.probe_in_flight = true;
            return Ok(Permit::new(self, true));
        }
        Err(Refused {
            failures: inner.consecutive_failures,
            retry_in: self.cool_off.saturating_sub(elapsed),
        })
    }

    /// A successful call: closes the breaker.
    fn record_success(&self, probe: bool) {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        inner.opened_at = None;
        if probe {
            inner.probe_in_flight = false;
        }
    }

    /// A call that did not reach a healthy engine, at `now`.
    fn record_failure(&self, probe: bool, now: Instant) {
        let mut inner = self.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        if probe {
            inner.probe_in_flight = false;
        }
        if self.failure_threshold > 0
            && (probe || inner.consecutive_failures >= self.failure_threshold)
        {
            inner.opened_at = Some(now);
        }
    }

    /// A call that ended without saying anything about the engine (e.g. a 404). An answer to the
    /// probe is still a healthy answer: the engine is back.
    fn record_neutral(&self, probe: bool) {
        if probe {
            let mut inner = self.lock();
            inner.probe_in_flight = false;
            inner.consecutive_failures = 0;
            inner.opened_at = None;
        }
    }

    /// A probe that ended without an outcome: the slot is free again, the breaker stays as it was.
    fn release_probe(&self) {
        self.lock().probe_in_flight = false;
    }
}

/// Leave to make one call; report its outcome with [`Permit::success`], [`Permit::failure`] or
/// [`Permit::neutral`]. Dropped without a report, it frees the half-open probe slot (a drop guard:
/// a cancelled future never runs the code after its `await`).
#[derive(Debug)]
#[must_use = "report the call's outcome on the permit"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    /// This call is the half-open probe.
    probe: bool,
    /// An outcome was reported.
    settled: bool,
}

impl<'a> Permit<'a> {
    fn new(breaker: &'a CircuitBreaker, probe: bool) -> Self {
        Self {
            breaker,
            probe,
            settled: false,
        }
    }

    /// Whether this call is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call succeeded: closes the breaker.
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.record_success(self.probe);
    }

    /// The call did not reach a healthy engine, at `now`.
    pub fn failure(mut self, now: Instant) {
        self.settled = true;
        self.breaker.record_failure(self.probe, now);
    }

    /// The call ended with an answer that says nothing about the engine's health (a 404, a 409).
    pub fn neutral(mut self) {
        self.settled = true;
        self.breaker.record_neutral(self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_breaker_opens_after_n_consecutive_failures() {
        let b = CircuitBreaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            b.try_acquire(t0).unwrap().failure(t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.try_acquire(t0).unwrap().failure(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        let refused = b.try_acquire(t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(refused.failures, 3);
        assert_eq!(refused.retry_in, Duration::from_secs(6));
    }

    #[test]
    fn docker_breaker_success_resets_the_count() {
        let b = CircuitBreaker::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        b.try_acquire(t0).unwrap().failure(t0);
        b.try_acquire(t0).unwrap().success();
        b.try_acquire(t0).unwrap().failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn docker_breaker_half_open_lets_one_probe_through() {
        let b = CircuitBreaker::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        b.try_acquire(t0).unwrap().failure(t0);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        let probe = b.try_acquire(t1).unwrap();
        assert!(probe.is_probe());
        assert!(b.try_acquire(t1).is_err(), "only one probe at a time");
        // The probe fails: open again for a full cool-off.
        probe.failure(t1);
        assert!(b.try_acquire(t1 + Duration::from_secs(1)).is_err());
        let t2 = t1 + Duration::from_secs(5);
        b.try_acquire(t2).unwrap().success();
        assert_eq!(b.state(t2), BreakerState::Closed);
        assert!(b.try_acquire(t2).is_ok());
    }

    #[test]
    fn docker_breaker_with_zero_threshold_never_opens() {
        let b = CircuitBreaker::new(0, Duration::from_secs(5));
        let t0 = Instant::now();
        for _ in 0..100 {
            b.try_acquire(t0).unwrap().failure(t0);
        }
        assert!(b.try_acquire(t0).is_ok());
    }

    #[test]
    fn docker_breaker_dropped_probe_frees_the_slot() {
        let b = CircuitBreaker::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        b.try_acquire(t0).unwrap().failure(t0);
        let t1 = t0 + Duration::from_secs(5);
        let probe = b.try_acquire(t1).unwrap();
        assert!(b.try_acquire(t1).is_err());
        drop(probe);
        // Still half-open (nothing was learnt), and the next call is the probe.
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        let next = b.try_acquire(t1).unwrap();
        assert!(next.is_probe());
        next.neutral();
        assert_eq!(b.state(t1), BreakerState::Closed);
    }

    #[test]
    fn docker_breaker_a_plain_call_does_not_settle_the_probe() {
        let b = CircuitBreaker::new(2, Duration::from_secs(5));
        let t0 = Instant::now();
        // Started while closed, finishes after the breaker opened and a probe went out.
        let late = b.try_acquire(t0).unwrap();
        b.try_acquire(t0).unwrap().failure(t0);
        b.try_acquire(t0).unwrap().failure(t0);
        let t1 = t0 + Duration::from_secs(5);
        let probe = b.try_acquire(t1).unwrap();
        late.failure(t1);
        assert!(
            b.try_acquire(t1 + Duration::from_secs(6)).is_err(),
            "the probe is still out"
        );
        drop(probe);
    }

    /// The engine calls' retry delays, now those of [`primitives::Backoff`].
    #[test]
    fn docker_backoff_doubles_up_to_the_cap() {
        let mut b =
            primitives::Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
