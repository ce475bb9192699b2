//! The bus's settings: one plain struct, filled from `autoscaler.events.event_bus` by the binary.

use std::time::Duration;

/// How the bus talks to Redis and how its consumer groups behave.
///
/// `Debug` shows the URL, which may hold a password: log the fields you need, not the struct.
#[derive(Debug, Clone, PartialEq)]
pub struct BusConfig {
    /// `redis://host:port/db` (or `rediss://`, `unix://`).
    pub url: String,
    /// The stream every event goes to (`autoscaler_events`).
    pub stream: String,
    /// Where dead letters go: `<stream>:dlq` by contract (tools and `events dlq` look there).
    pub dlq: String,
    /// `XADD … MAXLEN ~ max_len`: the stream (and the DLQ) are trimmed near this length.
    pub max_len: usize,
    /// An entry pending longer than this is claimed by any live consumer of its group (a dead consumer's
    /// work, or an entry whose scheduled retry was lost with its consumer). Must exceed the slowest
    /// handler's run time. A handler error is retried sooner, by the consumer itself (see
    /// `bus::HandlerError`).
    pub claim_idle: Duration,
    /// After this many failed deliveries an entry moves to the DLQ.
    pub max_deliveries: u32,
    /// `XREADGROUP … BLOCK`: how long one blocking read waits for new entries.
    pub block: Duration,
    /// Entries per read and per batched XACK.
    pub batch_size: usize,
    /// Deliveries handled at once by one consumer.
    pub concurrency: usize,
    /// `publish_idempotent`: a key yields at most one entry within this time.
    pub idempotency_ttl: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self::new("redis://127.0.0.1:6379", "autoscaler_events")
    }
}

impl BusConfig {
    /// The defaults of `config.yaml` for `url` and `stream`; the DLQ is `<stream>:dlq`.
    pub fn new(url: impl Into<String>, stream: impl Into<String>) -> Self {
        let stream = stream.into();
        Self {
            url: url.into(),
            dlq: dlq_name(&stream),
            stream,
            max_len: 10_000,
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            block: Duration::from_secs(2),
            batch_size: 64,
            concurrency: 16,
            idempotency_ttl: Duration::from_secs(600),
        }
    }
}

/// The dead-letter stream of `stream`.
pub fn dlq_name(stream: &str) -> String {
    format!("{stream}:dlq")
}
