//! Publishing events: trimmed, pipelined, idempotent.

use std::sync::Arc;

use crate::connection::Connection;
use redis::streams::{StreamAddOptions, StreamTrimStrategy, StreamTrimmingMode};
use redis::AsyncCommands;

use crate::config::BusConfig;
use crate::error::{BusError, Result};
use crate::Envelope;

/// `SET NX` and `XADD` in one script, so that across processes and connections a key yields at most one
/// entry within its TTL (Redis 7.0 has no idempotent XADD). The key's value is the entry's stream id.
///
/// KEYS: idempotency key, stream. ARGV: ttl ms, max length, field, value, …
const IDEMPOTENT_XADD: &str = r#"
if redis.call('SET', KEYS[1], '', 'NX', 'PX', ARGV[1]) then
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
  redis.call('SET', KEYS[1], id, 'KEEPTTL')
  return id
end
return false
"#;

/// The key that makes `key` idempotent on `stream`: `<stream>:idem:<key>`, in the stream's hash slot
/// when the stream name has a hash tag.
pub(crate) fn idempotency_key(stream: &str, key: &str) -> String {
    format!("{stream}:idem:{key}")
}

/// `XADD … MAXLEN ~ max_len *`.
pub(crate) fn add_options(max_len: usize) -> StreamAddOptions {
    StreamAddOptions::default().trim(StreamTrimStrategy::maxlen(
        StreamTrimmingMode::Approx,
        max_len,
    ))
}

/// Publishes envelopes to the stream with `XADD … MAXLEN ~ max_len`. Cheap to clone; reconnects by itself.
#[derive(Clone)]
pub struct RedisPublisher {
    conn: Connection,
    config: Arc<BusConfig>,
    idempotent: Arc<redis::Script>,
}

impl RedisPublisher {
    pub(crate) fn new(conn: Connection, config: Arc<BusConfig>) -> Self {
        Self {
            conn,
            config,
            idempotent: Arc::new(redis::Script::new(IDEMPOTENT_XADD)),
        }
    }

    /// The stream this publisher writes to.
    pub fn stream(&self) -> &str {
        &self.config.stream
    }

    /// Appends one event; returns its stream id.
    pub async fn publish(&self, envelope: &Envelope) -> Result<String> {
        let mut conn = self.conn.clone();
        let id: Option<String> = conn
            .xadd_options(
                &self.config.stream,
                "*",
                envelope.to_fields(),
                &add_options(self.config.max_len),
            )
            .await
            .map_err(BusError::redis("XADD"))?;
        id.ok_or_else(|| BusError::Reply {
            op: "XADD",
            detail: "no id".into(),
        })
    }

    /// Appends several events in one round trip (pipelined, not atomic); returns their stream ids in order.
    pub async fn publish_batch(&self, envelopes: &[Envelope]) -> Result<Vec<String>> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        let opts = add_options(self.config.max_len);
        let mut pipe = redis::pipe();
        for e in envelopes {
            pipe.xadd_options(&self.config.stream, "*", e.to_fields(), &opts);
        }
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn)
            .await
            .map_err(BusError::redis("XADD (pipeline)"))
    }

    /// Appends the event unless `key` was published within `idempotency_ttl`: `Some(stream id)` if it was
    /// written, `None` if the key was already taken. Atomic in one Lua script (EVALSHA), so concurrent
    /// callers on any connection or process write exactly one entry.
    pub async fn publish_idempotent(
        &self,
        key: &str,
        envelope: &Envelope,
    ) -> Result<Option<String>> {
        let ttl_ms = self.config.idempotency_ttl.as_millis().max(1);
        let mut invocation = self.idempotent.prepare_invoke();
        invocation
            .key(idempotency_key(&self.config.stream, key))
            .key(&self.config.stream)
            .arg(ttl_ms.to_string())
            .arg(self.config.max_len);
        for (field, value) in envelope.to_fields() {
            invocation.arg(field).arg(value);
        }
        let mut conn = self.conn.clone();
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(BusError::redis("idempotent XADD"))
    }
}
