//! `bus`: the event spine of k3s-autoscaler.
//!
//! Always built (the decision core, `handlers`, depends on this crate without the `redis` feature):
//! - [`event`]: the typed catalogue of every observation, decision and action; names and fields are
//!   contracts (`docs/ARCHITECTURE.md`).
//! - [`envelope`]: identity, time, origin and causation around an event, and the flat stream-entry codec
//!   that `redis-cli XRANGE` shows; [`DecodeError`] says why an entry is not an envelope.
//! - [`stream_id`]: stream ids, and `--since`/`--from` positions (id, RFC 3339 time, `10m` ago).
//! - [`config`]: [`BusConfig`], the transport's settings.
//! - [`placement`]: where pods run on the stream: snapshots in parts, deltas, and their fold.
//! - [`scheduling`]: what the scheduling simulation reads — [`PodSpec`], [`NodeSpec`], [`Resources`],
//!   taints, tolerations, node affinity and pod anti-affinity, with Kubernetes' matching semantics.
//!
//! With the default `redis` feature, the Redis Streams transport:
//! - `connection`: [`connect`] → [`Bus`], a self-healing shared [`Connection`], and one of its own per
//!   blocking reader — to one Redis, the master the sentinels name, or a Redis Cluster
//!   ([`Topology`], `docs/TOPOLOGY.md`);
//! - `access`: the URL's or the config's ACL user and password, and TLS (`rediss://`, a CA file, an
//!   optional client certificate) for redis-rs and for the consumers' own reader;
//! - [`publisher`]: [`RedisPublisher`] (trimmed, pipelined, idempotent);
//! - [`consumer`]: the consumer-group runtime — [`GroupHandler`] and [`Consumer::run`]. Its parts:
//!   - `consumer/mod.rs`: [`Consumer`] and the run loop (start, dispatch, graceful shutdown);
//!   - `consumer/handler.rs`: the contract — [`GroupHandler`], [`Delivery`], [`HandlerError`] and the
//!     [`ErrorPolicy`] it stands for (retry after a delay, or dead-letter);
//!   - `consumer/read.rs`: own pending list first, then new entries from a blocking reader;
//!   - `consumer/liveness.rs`: heartbeats, dead-consumer detection, `XCLAIM`/`XAUTOCLAIM` claims;
//!   - `consumer/retry.rs`: retries after a delay, redelivered to the same consumer;
//!   - `consumer/deliver.rs`: one delivery — checks, the handler run, what its result means;
//!   - `consumer/settle.rs`: batched acks, the outputs-and-ack Lua script, dead letters;
//!   - `consumer/stats.rs`: [`Stats`], [`Counters`], [`DeliveryOutcome`];
//! - `reader`: the consumers' blocking `XREADGROUP`, decoded with `redis-protocol` (the hot path);
//! - [`entry`]: raw stream entries ([`RawEntry`]) parsed from Redis replies, bytes kept exactly;
//! - [`audit`]: queries by id/time range and type, follow, DLQ list/retry/purge, group info and rewind;
//! - [`error`]: [`BusError`], the transport's error.
//!
//! With the `testing` feature, [`testing::RedisServer`]: a throwaway `redis-server` for tests, and
//! [`testing::RedisSentinels`] / [`testing::RedisCluster`]: a primary with a replica and three
//! sentinels, and a Redis Cluster of three primaries.

pub mod config;
pub mod envelope;
pub mod event;
pub mod placement;
pub mod scheduling;
pub mod stream_id;

#[cfg(feature = "redis")]
mod access;
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

pub use config::{hash_tag, redact_url, BusConfig, RedisAccess, Topology};
pub use envelope::{Envelope, Metadata, SCHEMA_VERSION};
pub use event::{Event, EVENT_TYPES};
pub use scheduling::{NodeSpec, PodRef, PodSpec, Resources, Taint, TaintEffect, Toleration};

#[cfg(feature = "redis")]
pub use audit::{
    Audit, ConsumerInfo, DeadLetter, Follower, GroupInfo, Pages, Query, Retried, RetryTo,
};
#[cfg(feature = "redis")]
pub use connection::{connect, Bus, Connection};
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
