//! The handler contract: [`GroupHandler`], the [`Delivery`] it gets, the [`HandlerError`] it may return and
//! the [`ErrorPolicy`] that error stands for.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use primitives::Backoff;

use crate::Envelope;

/// One delivered event.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The entry's stream id.
    pub stream_id: String,
    /// The decoded event.
    pub envelope: Envelope,
    /// How many times the entry has been delivered to this group, this delivery included (1 = first).
    pub deliveries: u32,
    /// The consumer group (= handler name).
    pub group: String,
}

/// What the runtime does with an entry whose handler failed ([`HandlerError::policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Deliver it to the same consumer again after this delay. It stays in the consumer's pending list
    /// meanwhile, kept from looking idle so no other consumer claims it; the redelivery (`XCLAIM` to
    /// itself) counts as a delivery, so `max_deliveries` still ends the retries. If the consumer stops
    /// first, the entry is redelivered when it restarts, or claimed by another after `claim_idle`.
    RetryAfter(Duration),
    /// Move it to the DLQ now, atomically with its XACK.
    DeadLetter,
}

/// The delays of a plain [`HandlerError::Retry`] by delivery count: 1 s after the first delivery
/// failed, doubling, at most 30 s. Far below `claim_idle`, which must exceed the slowest handler run.
pub fn default_retry_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
}

/// A handler's failure; the variant chooses the [`ErrorPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A transient failure: try again after [`default_retry_backoff`]'s delay for the delivery count.
    #[error("{0}")]
    Retry(String),
    /// A transient failure that should be tried again after `delay` (e.g. a dependency said when).
    #[error("{reason}")]
    RetryAfter { delay: Duration, reason: String },
    /// The event can never be handled: dead-letter it at once.
    #[error("{0}")]
    DeadLetter(String),
}

impl HandlerError {
    /// A transient failure, retried after the default delay.
    #[must_use]
    pub fn retry(reason: impl fmt::Display) -> Self {
        HandlerError::Retry(reason.to_string())
    }

    /// A transient failure, retried after `delay`.
    #[must_use]
    pub fn retry_after(delay: Duration, reason: impl fmt::Display) -> Self {
        HandlerError::RetryAfter {
            delay,
            reason: reason.to_string(),
        }
    }

    /// A permanent failure.
    #[must_use]
    pub fn dead_letter(reason: impl fmt::Display) -> Self {
        HandlerError::DeadLetter(reason.to_string())
    }

    /// Why the handler failed (the `error` field of a dead letter).
    pub fn reason(&self) -> &str {
        match self {
            HandlerError::Retry(r) | HandlerError::DeadLetter(r) => r,
            HandlerError::RetryAfter { reason, .. } => reason,
        }
    }

    /// What the runtime does with an entry whose `deliveries`-th delivery failed with this error: a
    /// transient failure is retried until the entry has been delivered `max_deliveries` times (0 is
    /// taken as 1), then dead-lettered.
    pub fn policy(&self, deliveries: u32, max_deliveries: u32) -> ErrorPolicy {
        match self {
            HandlerError::DeadLetter(_) => ErrorPolicy::DeadLetter,
            _ if deliveries >= max_deliveries.max(1) => ErrorPolicy::DeadLetter,
            HandlerError::Retry(_) => {
                ErrorPolicy::RetryAfter(default_retry_backoff().delay_for(deliveries))
            }
            HandlerError::RetryAfter { delay, .. } => ErrorPolicy::RetryAfter(*delay),
        }
    }
}

/// A handler of one consumer group. Returns the events it caused (published atomically with the ack).
pub trait GroupHandler: Send + Sync + 'static {
    /// Handles one delivery. Must be idempotent: a delivery can come again (see the module docs).
    fn handle(
        &self,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<Vec<Envelope>, HandlerError>> + Send;
}

/// A [`GroupHandler`] from a closure taking an owned [`Delivery`].
pub struct FnHandler<F>(F);

/// Wraps `f` as a [`GroupHandler`].
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Envelope>, HandlerError>> + Send + 'static,
{
    FnHandler(f)
}

impl<F, Fut> GroupHandler for FnHandler<F>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Envelope>, HandlerError>> + Send + 'static,
{
    fn handle(
        &self,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<Vec<Envelope>, HandlerError>> + Send {
        (self.0)(delivery.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_plain_retry_waits_one_second_doubling_to_thirty() {
        let e = HandlerError::retry("node agent unreachable");
        let delays: Vec<_> = (1..=7).map(|n| e.policy(n, 10)).collect();
        let want: Vec<_> = [1, 2, 4, 8, 16, 30, 30]
            .map(|s| ErrorPolicy::RetryAfter(S(s)))
            .into();
        assert_eq!(delays, want);
    }

    #[test]
    fn retry_after_waits_the_delay_it_names() {
        let e = HandlerError::retry_after(Duration::from_millis(250), "drain in progress");
        assert_eq!(
            e.policy(1, 5),
            ErrorPolicy::RetryAfter(Duration::from_millis(250))
        );
        assert_eq!(e.policy(4, 5), e.policy(1, 5));
        assert_eq!(e.reason(), "drain in progress");
        assert_eq!(e.to_string(), "drain in progress");
    }

    #[test]
    fn retries_end_in_the_dlq_at_max_deliveries() {
        for e in [
            HandlerError::retry("boom"),
            HandlerError::retry_after(S(1), "boom"),
        ] {
            assert_eq!(e.policy(5, 5), ErrorPolicy::DeadLetter);
            assert_eq!(e.policy(6, 5), ErrorPolicy::DeadLetter);
            // max_deliveries 0 is taken as 1: no retry.
            assert_eq!(e.policy(1, 0), ErrorPolicy::DeadLetter);
        }
    }

    #[test]
    fn a_dead_letter_is_one_at_once() {
        assert_eq!(
            HandlerError::dead_letter("never").policy(1, 5),
            ErrorPolicy::DeadLetter
        );
    }
}
