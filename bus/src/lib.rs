//! `bus`: the event spine of k3s-autoscaler.
//!
//! - [`event`]: the typed catalogue of every observation, decision and action (DESIGN.md, seed 001).
//! - [`envelope`]: identity, time, origin and causation around an event, and the flat stream-entry codec
//!   that `redis-cli XRANGE` shows.
//! - [`stream_id`]: stream ids, and `--since`/`--from` positions (id, RFC 3339 time, `10m` ago).
//! - [`config`]: [`BusConfig`], the transport's settings.
//! - with the default `redis` feature, the Redis Streams transport:
//!   - [`connect`] → [`Bus`]: a self-healing shared connection, and one of its own per blocking reader;
//!   - [`publisher`]: [`RedisPublisher`] (trimmed, pipelined, idempotent);
//!   - [`consumer`]: the consumer-group runtime ([`GroupHandler`], [`Consumer::run`]: own pending list first,
//!     claims, retries, dead letters, batched acks, graceful shutdown);
//!   - [`audit`]: queries by id/time range and type, follow, DLQ list/retry/purge, group info and rewind.
//! - with the `testing` feature, [`testing::RedisServer`]: a throwaway `redis-server` for tests.
//!
//! The decision core (`handlers`) depends on this crate without the `redis` feature.

pub mod config;
pub mod envelope;
pub mod event;
pub mod stream_id;

#[cfg(feature = "redis")]
pub mod audit;
#[cfg(feature = "redis")]
mod connection;
#[cfg(feature = "redis")]
pub mod consumer;
#[cfg(feature = "redis")]
pub mod entry;
#[cfg(feature = "redis")]
pub mod error;
#[cfg(feature = "redis")]
pub mod publisher;
#[cfg(feature = "redis")]
mod reader;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::BusConfig;
pub use envelope::{Envelope, Metadata, SCHEMA_VERSION};
pub use event::{Event, EVENT_TYPES};

#[cfg(feature = "redis")]
pub use audit::{Audit, ConsumerInfo, DeadLetter, Follower, GroupInfo, Query, Retried, RetryTo};
#[cfg(feature = "redis")]
pub use connection::{connect, Bus};
#[cfg(feature = "redis")]
pub use consumer::{
    handler_fn, Consumer, Counters, Delivery, DeliveryOutcome, ErrorPolicy, GroupHandler,
    HandlerError, Stats, RETRY_FOR,
};
#[cfg(feature = "redis")]
pub use entry::RawEntry;
#[cfg(feature = "redis")]
pub use error::BusError;
#[cfg(feature = "redis")]
pub use publisher::RedisPublisher;

/// Why a stream entry could not be turned into an [`Envelope`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{0}` is not UTF-8")]
    NotUtf8(&'static str),
    #[error("field `{field}`: {reason}")]
    BadField { field: &'static str, reason: String },
    #[error("unknown event type `{0}`")]
    UnknownEventType(String),
    #[error("bad data for {event_type}: {source}")]
    BadData {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported schema version {0}")]
    UnsupportedVersion(u32),
}
