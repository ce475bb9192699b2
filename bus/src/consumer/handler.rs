//! The handler contract: [`GroupHandler`], the [`Delivery`] it gets, the [`HandlerError`] it may return and
//! the [`ErrorPolicy`] that error stands for.

use std::fmt;
use std::future::Future;

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

/// What to do with an entry whose handler failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Leave it pending: redelivered after `claim_idle` (or when the consumer restarts), and dead-lettered
    /// once it has been delivered `max_deliveries` times.
    Retry,
    /// Move it to the DLQ now.
    DeadLetter,
}

/// A handler's failure; the variant is the error policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A transient failure: try again later.
    #[error("{0}")]
    Retry(String),
    /// The event can never be handled: dead-letter it at once.
    #[error("{0}")]
    DeadLetter(String),
}

impl HandlerError {
    /// A transient failure.
    #[must_use]
    pub fn retry(reason: impl fmt::Display) -> Self {
        HandlerError::Retry(reason.to_string())
    }

    /// A permanent failure.
    #[must_use]
    pub fn dead_letter(reason: impl fmt::Display) -> Self {
        HandlerError::DeadLetter(reason.to_string())
    }

    /// What the runtime does with the entry.
    pub fn policy(&self) -> ErrorPolicy {
        match self {
            HandlerError::Retry(_) => ErrorPolicy::Retry,
            HandlerError::DeadLetter(_) => ErrorPolicy::DeadLetter,
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
