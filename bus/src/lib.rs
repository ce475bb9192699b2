//! `bus`: the event spine of k3s-autoscaler.
//!
//! - [`event`]: the typed catalogue of every observation, decision and action (DESIGN.md, seed 001).
//! - [`envelope`]: identity, time, origin and causation around an event, and the flat stream-entry codec
//!   that `redis-cli XRANGE` shows.
//! - with the default `redis` feature, the Redis Streams transport: publisher (trimmed, pipelined,
//!   idempotent), consumer-group runtime (pending drain, claim, retry, dead letters), audit queries and
//!   group rewind. The decision core (`handlers`) depends on this crate without that feature.

pub mod envelope;
pub mod event;

pub use envelope::{Envelope, Metadata, SCHEMA_VERSION};
pub use event::{Event, EVENT_TYPES};

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
