//! Settling deliveries: batched plain acks, the handler's outputs and the input's XACK in one Lua
//! script, and dead letters written atomically with their XACK.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use redis::AsyncCommands;
use tokio::sync::mpsc;
use tracing::warn;

use super::retry::Retry;
use super::{redis_backoff, Ctx, DeliveryOutcome, Finish, Outlets};
use crate::envelope::format_timestamp;
use crate::error::{BusError, Result};
use crate::publisher::add_options;
use crate::Envelope;

/// The fields a dead letter adds after the original ones.
pub const DLQ_FIELDS: [&str; 5] = ["original_id", "group", "error", "deliveries", "failed_at"];

/// Entry ids in the order they were kept, and their outputs.
type Kept = (
    std::collections::VecDeque<String>,
    HashMap<String, Vec<Envelope>>,
);

/// Outputs whose publish-and-ack failed, by entry id: the next delivery of the entry to this
/// consumer publishes them with its own outputs (those with the same event id once). Bounded: past
/// [`Unsettled::CAPACITY`] entries the oldest is forgotten (its entry was claimed elsewhere or will
/// not come back; the loss is then what it was without this).
#[derive(Default)]
pub(super) struct Unsettled {
    by_entry: std::sync::Mutex<Kept>,
}

impl Unsettled {
    const CAPACITY: usize = 10_000;

    /// Keeps `outputs` of entry `id` after its settle failed.
    pub(super) fn keep(&self, id: &str, outputs: &[Envelope]) {
        let mut guard = self.by_entry.lock().unwrap_or_else(|p| p.into_inner());
        let (order, map) = &mut *guard;
        if !map.contains_key(id) {
            order.push_back(id.to_string());
        }
        map.insert(id.to_string(), outputs.to_vec());
        while order.len() > Self::CAPACITY {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// `outputs` of a new delivery of entry `id` after what an earlier one could not publish, in
    /// that one's order (an output returned again, with the same event id, is taken once).
    pub(super) fn merge(&self, id: &str, outputs: Vec<Envelope>) -> Vec<Envelope> {
        let guard = self.by_entry.lock().unwrap_or_else(|p| p.into_inner());
        let Some(kept) = guard.1.get(id) else {
            return outputs;
        };
        let earlier: HashSet<uuid::Uuid> = kept.iter().map(|e| e.event_id).collect();
        kept.iter()
            .cloned()
            .chain(
                outputs
                    .into_iter()
                    .filter(|e| !earlier.contains(&e.event_id)),
            )
            .collect()
    }

    /// Entry `id` is settled (acked with its outputs, or dead-lettered).
    pub(super) fn forget(&self, id: &str) {
        let mut guard = self.by_entry.lock().unwrap_or_else(|p| p.into_inner());
        let (order, map) = &mut *guard;
        if map.remove(id).is_some() {
            order.retain(|o| o != id);
        }
    }
}

/// Batched XACK of plain acks: takes whatever has gathered (up to `batch_size`), acks it, repeats. After
/// the channel closes it flushes the rest, giving up after a few failed attempts (those entries stay
/// pending and are redelivered).
pub(super) async fn ack_loop(ctx: Arc<Ctx>, mut rx: mpsc::UnboundedReceiver<String>) {
    let batch = ctx.config.batch_size.max(1);
    let mut ids: Vec<String> = Vec::with_capacity(batch);
    let mut backoff = redis_backoff();
    let mut failures = 0u32;
    loop {
        if !gather(&mut rx, &mut ids, batch).await {
            return;
        }
        let mut conn = ctx.conn.clone();
        let res: redis::RedisResult<u64> = conn.xack(&ctx.config.stream, &ctx.group, &ids).await;
        match res {
            Ok(n) => {
                let sent = ids.len() as u64;
                ctx.stats
                    .record_acks(&ctx.group, n.min(sent), sent.saturating_sub(n));
                let mut inflight = ctx.inflight();
                for id in ids.drain(..) {
                    inflight.remove(&id);
                }
                backoff.reset();
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if rx.is_closed() && failures >= 5 {
                    warn!(group = %ctx.group, error = %e, unacked = ids.len() + rx.len(),
                        "could not acknowledge handled entries before stopping; they will be redelivered");
                    return;
                }
                let delay = backoff.next_delay();
                warn!(group = %ctx.group, error = %e, pending = ids.len(), retry_in_ms = delay.as_millis() as u64, "XACK failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Tops `ids` up to `batch` with what has gathered, waiting for one if there is none; `false` once the
/// channel is closed and nothing is left.
async fn gather(
    rx: &mut mpsc::UnboundedReceiver<String>,
    ids: &mut Vec<String>,
    batch: usize,
) -> bool {
    if ids.len() >= batch {
        return true;
    }
    if ids.is_empty() {
        return rx.recv_many(ids, batch).await > 0;
    }
    while ids.len() < batch {
        match rx.try_recv() {
            Ok(id) => ids.push(id),
            Err(_) => break,
        }
    }
    true
}

/// Passes a finished delivery on: a plain ack to the acker, a retry to the retry task (the entry stays
/// in `inflight` while it waits, so a claim here does not start it early), anything else out of
/// `inflight`.
pub(super) fn finish(ctx: &Ctx, done: Finish, outlets: &Outlets) {
    match done {
        Finish::Ack(id) => {
            if let Err(unsent) = outlets.acks.send(id) {
                // Only after the acker ended: the entry stays pending and is redelivered.
                ctx.inflight().remove(&unsent.0);
            }
        }
        Finish::Retry { id, delay } => {
            if let Err(unsent) = outlets.retries.send(Retry { id, delay }) {
                // Stopping: the entry stays pending and is redelivered on the next start.
                ctx.inflight().remove(&unsent.0.id);
            }
        }
        Finish::Settled(id) => {
            ctx.inflight().remove(&id);
        }
    }
}

/// The handler's outputs and the input's XACK in one script, so they happen together or not at all.
/// Each output is written only if its event id was not written within `idempotency_ttl` (the same key
/// `publish_idempotent` uses for `event:<id>`): handlers give their outputs deterministic ids, so a
/// redelivered input, or two inputs that mean the same thing, publish each output once.
///
/// KEYS: stream, then each output's idempotency key (declared, so that on a Redis Cluster the script
/// is routed and checked with every key it touches; they share the stream's hash tag). ARGV: group,
/// input id, ttl ms, max length, then per output: number of field/value items, the items.
const OUTPUTS_AND_ACK: &str = r#"
local stream = KEYS[1]
local i = 5
for k = 2, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  if redis.call('SET', KEYS[k], '', 'NX', 'PX', ARGV[3]) then
    local id = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, i, i + n - 1))
    redis.call('SET', KEYS[k], id, 'KEEPTTL')
  end
  i = i + n
end
return redis.call('XACK', stream, ARGV[1], ARGV[2])
"#;

/// The handler's outputs (each at most once per event id) and the input's XACK, atomically.
pub(super) async fn publish_and_ack(ctx: &Ctx, id: &str, outputs: &[Envelope]) -> Result<()> {
    // Hashed once; EVALSHA falls back to EVAL after a Redis restart flushed the script cache.
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(OUTPUTS_AND_ACK));
    let mut invocation = SCRIPT.prepare_invoke();
    invocation
        .key(&ctx.config.stream)
        .arg(&ctx.group)
        .arg(id)
        .arg(ctx.config.idempotency_ttl.as_millis().max(1).to_string())
        .arg(ctx.config.max_len);
    for e in outputs {
        // The key `publish_idempotent` uses for `event:<id>`.
        invocation.key(crate::publisher::idempotency_key(
            &ctx.config.stream,
            &format!("event:{}", e.event_id),
        ));
        let fields = e.to_fields();
        invocation.arg(fields.len() * 2);
        for (field, value) in fields {
            invocation.arg(field).arg(value);
        }
    }
    let mut conn = ctx.conn.clone();
    invocation
        .invoke_async::<i64>(&mut conn)
        .await
        .map(|_| ())
        .map_err(BusError::redis("outputs + XACK script"))
}

/// Moves an entry to the DLQ atomically with its XACK. On failure the entry stays pending (retried later).
pub(super) async fn dead_letter(
    ctx: &Ctx,
    id: &str,
    fields: &[(Bytes, Bytes)],
    reason: &str,
    deliveries: u32,
    event_type: &str,
) {
    let mut all: Vec<(&[u8], &[u8])> = fields
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    let added = [
        id.to_string(),
        ctx.group.clone(),
        reason.to_string(),
        deliveries.to_string(),
        format_timestamp(crate::envelope::now_millis()),
    ];
    for (name, value) in DLQ_FIELDS.iter().zip(&added) {
        all.push((name.as_bytes(), value.as_bytes()));
    }
    let mut pipe = redis::pipe();
    pipe.atomic()
        .xadd_options(&ctx.config.dlq, "*", &all, &add_options(ctx.config.max_len))
        .ignore()
        .xack(&ctx.config.stream, &ctx.group, &[id])
        .ignore();
    let mut conn = ctx.conn.clone();
    match pipe.query_async::<()>(&mut conn).await {
        Ok(()) => {
            warn!(group = %ctx.group, stream_id = %id, event_type, deliveries, error = %reason, "dead-lettered");
            ctx.stats
                .record(&ctx.group, event_type, DeliveryOutcome::DeadLettered);
        }
        Err(e) => {
            warn!(group = %ctx.group, stream_id = %id, error = %e, "could not dead-letter; the entry stays pending");
            ctx.stats
                .record(&ctx.group, event_type, DeliveryOutcome::Failed);
        }
    }
}
