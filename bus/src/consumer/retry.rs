//! Scheduled retries: an entry whose handler failed transiently stays in this consumer's pending list
//! and is delivered to it again once its delay ([`super::ErrorPolicy::RetryAfter`]) is over — seconds,
//! where `claim_idle` must exceed the slowest handler run (minutes when a delivery may carry out a
//! whole drain).
//!
//! While it waits, the entry's idle time is reset every `claim_idle / 4` (`XCLAIM … JUSTID` to this
//! consumer, which leaves its delivery count alone), so no consumer's `XAUTOCLAIM` takes it. When it is
//! due it is `XCLAIM`ed to this consumer again, which counts a delivery, so `max_deliveries` ends the
//! retries. Both happen only while the entry is still pending for this consumer, in a script: an entry
//! another consumer took after all is not taken back. Nothing is kept across a stop: the entries stay
//! pending and are redelivered when the consumer starts again (its own pending list comes first).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use primitives::Backoff;
use redis::Value;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::read::hand_over;
use super::{redis_backoff, Ctx, Work};
use crate::entry::{parse_entries, ReadEntry};
use crate::error::{BusError, Result};

/// A failed delivery to redeliver after `delay`.
pub(super) struct Retry {
    pub(super) id: String,
    pub(super) delay: Duration,
}

/// The longest a retry waits, so an absurd delay cannot overflow the clock.
const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

/// `XCLAIM`s to this consumer, with min-idle 0, those of the ids that are still pending for it. With
/// `JUSTID` only the idle time is reset (the delivery count stays); without, the claim counts as a
/// delivery and the entry comes back.
///
/// KEYS: stream. ARGV: group, consumer, `1` for JUSTID, ids…
/// Returns `{ids}` with JUSTID, else `{entries, delivery counts}`.
const CLAIM_OWN: &str = r#"
local stream, group, me = KEYS[1], ARGV[1], ARGV[2]
local found, counts = {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', stream, group, id, id, 1, me)[1]
  if p then
    if ARGV[3] == '1' then
      redis.call('XCLAIM', stream, group, me, 0, id, 'JUSTID')
      table.insert(found, id)
    else
      local e = redis.call('XCLAIM', stream, group, me, 0, id)[1]
      if e then
        table.insert(found, e)
        table.insert(counts, p[4] + 1)
      end
    end
  end
end
if ARGV[3] == '1' then return found end
return {found, counts}
"#;

static SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CLAIM_OWN));

/// Which retries are due when.
#[derive(Default)]
struct Schedule {
    due: BTreeSet<(Instant, String)>,
}

impl Schedule {
    fn insert(&mut self, id: String, delay: Duration) {
        self.due.insert((Instant::now() + delay.min(MAX_DELAY), id));
    }

    fn next(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Up to `max` ids due by now, removed from the schedule.
    fn take_due(&mut self, max: usize) -> Vec<String> {
        let now = Instant::now();
        let mut ids = Vec::new();
        while ids.len() < max && self.due.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, id)) = self.due.pop_first() {
                ids.push(id);
            }
        }
        ids
    }

    fn ids(&self) -> Vec<String> {
        self.due.iter().map(|(_, id)| id.clone()).collect()
    }

    /// Forgets the ids not in `kept`; returns them.
    fn retain(&mut self, kept: &HashSet<String>) -> Vec<String> {
        let gone: Vec<String> = self
            .due
            .iter()
            .filter(|(_, id)| !kept.contains(id))
            .map(|(_, id)| id.clone())
            .collect();
        self.due.retain(|(_, id)| kept.contains(id));
        gone
    }
}

/// Schedules what `rx` brings and hands each entry, with a concurrency permit, to the delivery loop
/// once it is due; keeps waiting entries from looking idle. Runs until aborted or the delivery loop
/// stops listening.
pub(super) async fn retry_loop(
    ctx: Arc<Ctx>,
    permits: Arc<Semaphore>,
    mut rx: mpsc::UnboundedReceiver<Retry>,
    tx: mpsc::Sender<Work>,
) {
    let mut schedule = Schedule::default();
    let mut keep =
        tokio::time::interval((ctx.config.claim_idle / 4).max(Duration::from_millis(10)));
    keep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = redis_backoff();
    loop {
        let next = schedule.next();
        tokio::select! {
            biased;
            retry = rx.recv() => match retry {
                Some(Retry { id, delay }) => schedule.insert(id, delay),
                None => return,
            },
            _ = keep.tick(), if next.is_some() => keep_waiting(&ctx, &mut schedule).await,
            Ok(permit) = permit_when_due(&permits, next) => {
                if !redeliver(&ctx, &mut schedule, permit, &permits, &tx, &mut backoff).await {
                    return;
                }
            }
        }
    }
}

/// A concurrency permit once the first retry is due (never if none is scheduled).
async fn permit_when_due(
    permits: &Arc<Semaphore>,
    next: Option<Instant>,
) -> std::result::Result<OwnedSemaphorePermit, tokio::sync::AcquireError> {
    match next {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
    permits.clone().acquire_owned().await
}

/// Claims the due entries back (counting a delivery) and hands them over; `false` when the delivery
/// loop has stopped listening. After a Redis error the ids are scheduled again after `backoff`.
async fn redeliver(
    ctx: &Ctx,
    schedule: &mut Schedule,
    permit: OwnedSemaphorePermit,
    permits: &Arc<Semaphore>,
    tx: &mpsc::Sender<Work>,
    backoff: &mut Backoff,
) -> bool {
    let max = (1 + permits.available_permits()).min(ctx.config.batch_size.max(1));
    let ids = schedule.take_due(max);
    if ids.is_empty() {
        return true;
    }
    let claimed = match claim_own(ctx, &ids).await {
        Ok(claimed) => claimed,
        Err(e) => {
            let delay = backoff.next_delay();
            warn!(group = %ctx.group, error = %e, count = ids.len(), retry_in_ms = delay.as_millis() as u64,
                "could not redeliver entries due for a retry; trying again");
            for id in ids {
                schedule.insert(id, delay);
            }
            return true;
        }
    };
    backoff.reset();
    forget_missing(ctx, &ids, claimed.iter().map(|(e, _)| e.id.as_str()));
    debug!(
        count = claimed.len(),
        "redelivering entries due for a retry"
    );
    hand_over(ctx, claimed, permit, permits, tx).await
}

/// Resets the idle time of the waiting entries; forgets those no longer pending for this consumer.
async fn keep_waiting(ctx: &Ctx, schedule: &mut Schedule) {
    let ids = schedule.ids();
    match claim_own_idle(ctx, &ids).await {
        Ok(kept) => {
            let gone = schedule.retain(&kept);
            forget_missing(ctx, &gone, std::iter::empty());
        }
        Err(e) => {
            debug!(group = %ctx.group, error = %e, waiting = ids.len(), "could not keep retries from looking idle");
        }
    }
}

/// Takes the ids of `asked` that are not in `found` out of `inflight`: acknowledged meanwhile, taken by
/// another consumer, or deleted from the stream.
fn forget_missing<'a>(ctx: &Ctx, asked: &[String], found: impl Iterator<Item = &'a str>) {
    let found: HashSet<&str> = found.collect();
    let mut inflight = ctx.inflight();
    for id in asked.iter().filter(|id| !found.contains(id.as_str())) {
        debug!(group = %ctx.group, stream_id = %id, "a scheduled retry is no longer pending here");
        inflight.remove(id);
    }
}

/// [`CLAIM_OWN`] with JUSTID: the ids still pending for this consumer, their idle time reset.
async fn claim_own_idle(ctx: &Ctx, ids: &[String]) -> Result<HashSet<String>> {
    let v = invoke(ctx, ids, true).await?;
    let Value::Array(items) = v else {
        return Ok(HashSet::new());
    };
    Ok(items.iter().filter_map(crate::entry::string).collect())
}

/// [`CLAIM_OWN`]: the entries still pending for this consumer with their delivery counts, this one
/// included.
async fn claim_own(ctx: &Ctx, ids: &[String]) -> Result<Vec<(ReadEntry, u32)>> {
    const OP: &str = "XCLAIM (retry)";
    let v = invoke(ctx, ids, false).await?;
    let mut parts = match v {
        Value::Array(parts) => parts.into_iter(),
        _ => return Ok(Vec::new()),
    };
    let entries = parse_entries(OP, parts.next().unwrap_or(Value::Nil))?;
    let counts: Vec<u32> = match parts.next() {
        Some(Value::Array(counts)) => counts
            .iter()
            .map(|c| match c {
                Value::Int(n) => u32::try_from(*n).unwrap_or(u32::MAX),
                _ => 1,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| (e, counts.get(i).copied().unwrap_or(1)))
        .collect())
}

async fn invoke(ctx: &Ctx, ids: &[String], just_id: bool) -> Result<Value> {
    let mut invocation = SCRIPT.prepare_invoke();
    invocation
        .key(&ctx.config.stream)
        .arg(&ctx.group)
        .arg(&ctx.consumer)
        .arg(if just_id { "1" } else { "0" })
        .arg(ids);
    let mut conn = ctx.conn.clone();
    invocation
        .invoke_async::<Value>(&mut conn)
        .await
        .map_err(BusError::redis("XCLAIM (retry) script"))
}
