//! Reading: the consumer's own pending list first, then claims and new entries from a blocking reader
//! of its own, handed to the delivery loop while there is capacity.

use std::collections::HashMap;
use std::sync::Arc;

use crate::connection::Connection;
use redis::streams::{StreamPendingCountReply, StreamReadOptions};
use redis::{AsyncCommands, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::liveness::{self, DEAD_CHECK_EVERY};
use super::{redis_backoff, Ctx, Work};
use crate::connection::Bus;
use crate::entry::{parse_read, ReadEntry};
use crate::error::{BusError, Result};
use crate::reader::StreamReader;

/// Where the reader is.
pub(super) struct ReadState {
    group_ready: bool,
    /// `Some(cursor)` while the own pending list is being drained.
    pending_from: Option<String>,
    /// XAUTOCLAIM's cursor within the current claim round.
    pub(super) claim_from: String,
    pub(super) next_claim: Instant,
    /// The blocking reader's connection, made on first use and dropped after an error.
    blocking: Option<StreamReader>,
    /// When to look next for dead consumers whose entries to claim.
    next_dead_check: Instant,
}

impl ReadState {
    fn new() -> Self {
        Self {
            group_ready: false,
            pending_from: Some("0".into()),
            claim_from: "0-0".into(),
            next_claim: Instant::now(),
            blocking: None,
            next_dead_check: Instant::now() + DEAD_CHECK_EVERY,
        }
    }

    fn restart(&mut self) {
        self.group_ready = false;
        self.pending_from = Some("0".into());
    }
}

/// Fetches entries (own pending list, claims, new ones) while there is capacity and hands them over.
pub(super) async fn read_loop(
    ctx: Arc<Ctx>,
    bus: Bus,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Work>,
) {
    let mut state = ReadState::new();
    let mut backoff = redis_backoff();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match read_once(&ctx, &bus, &mut state, permit, &permits, &tx).await {
            Ok(true) => backoff.reset(),
            Ok(false) => return,
            Err(e) => {
                if e.code() == Some("NOGROUP") {
                    // The stream or group is gone (Redis restarted empty, or someone deleted it).
                    state.restart();
                }
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "bus read failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One read; `Ok(false)` when the runtime has stopped listening.
async fn read_once(
    ctx: &Ctx,
    bus: &Bus,
    state: &mut ReadState,
    permit: OwnedSemaphorePermit,
    permits: &Arc<Semaphore>,
    tx: &mpsc::Sender<Work>,
) -> Result<bool> {
    if !state.group_ready {
        ensure_group(&mut ctx.conn.clone(), &ctx.config.stream, &ctx.group).await?;
        state.group_ready = true;
    }
    let want = (1 + permits.available_permits()).min(ctx.config.batch_size.max(1));
    let batch = if let Some(from) = state.pending_from.clone() {
        own_pending(ctx, state, &from, want).await?
    } else if Instant::now() >= state.next_dead_check {
        state.next_dead_check = Instant::now() + DEAD_CHECK_EVERY;
        let claimed = liveness::claim_from_dead(ctx, want).await?;
        let counts = delivery_counts(ctx, &claimed).await?;
        with_counts(claimed, &counts)
    } else if Instant::now() >= state.next_claim {
        liveness::claim_idle(ctx, state, want).await?
    } else {
        read_new(ctx, bus, state, want).await?
    };
    Ok(hand_over(ctx, batch, permit, permits, tx).await)
}

/// The next entries of this consumer's own pending list after `from` (`XREADGROUP … from`): work it had
/// received but not acknowledged before a crash or restart. Ends the drain when there are none.
async fn own_pending(
    ctx: &Ctx,
    state: &mut ReadState,
    from: &str,
    want: usize,
) -> Result<Vec<(ReadEntry, u32)>> {
    let cfg = &ctx.config;
    let opts = StreamReadOptions::default()
        .group(&ctx.group, &ctx.consumer)
        .count(want);
    let v: Value = ctx
        .conn
        .clone()
        .xread_options(&[&cfg.stream], &[from], &opts)
        .await
        .map_err(BusError::redis("XREADGROUP (own pending)"))?;
    let entries = parse_read("XREADGROUP", v)?;
    let Some(last) = entries.last() else {
        debug!("own pending list drained");
        state.pending_from = None;
        return Ok(Vec::new());
    };
    let last = last.id.clone();
    let counts = delivery_counts(ctx, &entries).await?;
    state.pending_from = Some(last);
    Ok(with_counts(entries, &counts))
}

/// New entries (`XREADGROUP … >`) on the blocking reader's connection, waiting at most `block` and
/// never past the next claim or dead-consumer check.
async fn read_new(
    ctx: &Ctx,
    bus: &Bus,
    state: &mut ReadState,
    want: usize,
) -> Result<Vec<(ReadEntry, u32)>> {
    let cfg = &ctx.config;
    let reader = match &mut state.blocking {
        Some(r) => r,
        None => state.blocking.insert(bus.stream_reader().await?),
    };
    let until_claim = state
        .next_claim
        .min(state.next_dead_check)
        .saturating_duration_since(Instant::now());
    let read = reader
        .read_new(
            &cfg.stream,
            &ctx.group,
            &ctx.consumer,
            want,
            cfg.block.min(until_claim),
        )
        .await;
    match read {
        Ok(entries) => Ok(entries.into_iter().map(|e| (e, 1)).collect()),
        Err(e) => {
            // The connection may be mid-reply: start over on a new one.
            state.blocking = None;
            Err(e)
        }
    }
}

/// Hands each entry, with a concurrency permit (`first`, then one acquired per entry), to the delivery
/// loop; `false` when it has stopped listening.
pub(super) async fn hand_over(
    ctx: &Ctx,
    batch: Vec<(ReadEntry, u32)>,
    first: OwnedSemaphorePermit,
    permits: &Arc<Semaphore>,
    tx: &mpsc::Sender<Work>,
) -> bool {
    let mut first = Some(first);
    for (entry, deliveries) in batch {
        let permit = match first.take() {
            Some(p) => p,
            None => match permits.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return false,
            },
        };
        ctx.inflight().insert(entry.id.clone());
        let work = Work {
            entry,
            deliveries,
            permit,
        };
        if tx.send(work).await.is_err() {
            return false;
        }
    }
    true
}

pub(super) fn with_counts(
    entries: Vec<ReadEntry>,
    counts: &HashMap<String, u32>,
) -> Vec<(ReadEntry, u32)> {
    entries
        .into_iter()
        .map(|e| {
            let n = counts.get(&e.id).copied().unwrap_or(1);
            (e, n)
        })
        .collect()
}

/// Delivery counts of entries this consumer now owns (one XPENDING over their id range).
pub(super) async fn delivery_counts(
    ctx: &Ctx,
    entries: &[ReadEntry],
) -> Result<HashMap<String, u32>> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(HashMap::new());
    };
    let mut conn = ctx.conn.clone();
    let reply: StreamPendingCountReply = conn
        .xpending_consumer_count(
            &ctx.config.stream,
            &ctx.group,
            &first.id,
            &last.id,
            entries.len(),
            &ctx.consumer,
        )
        .await
        .map_err(BusError::redis("XPENDING"))?;
    Ok(reply
        .ids
        .into_iter()
        .map(|p| (p.id, u32::try_from(p.times_delivered).unwrap_or(u32::MAX)))
        .collect())
}

/// `XGROUP CREATE stream group 0 MKSTREAM`; `BUSYGROUP` (it exists) is success.
pub(super) async fn ensure_group(conn: &mut Connection, stream: &str, group: &str) -> Result<()> {
    let res: redis::RedisResult<()> = conn.xgroup_create_mkstream(stream, group, "0").await;
    match res {
        Ok(()) => {
            info!(stream, group, "consumer group created");
            Ok(())
        }
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(BusError::Redis {
            op: "XGROUP CREATE",
            source: e,
        }),
    }
}
