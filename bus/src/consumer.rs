//! The consumer-group runtime: one group per handler, at-least-once delivery, retries, dead letters.
//!
//! How an entry travels:
//! 1. On start the group is created (`XGROUP CREATE … 0 MKSTREAM`; `BUSYGROUP` means it exists). It is
//!    created at `0`, not `$`: events published before a handler's group first existed (watchers start
//!    before handlers; Redis restarted empty and a publisher was quicker) are still handled. Rewind or
//!    fast-forward a group with [`crate::Audit::rewind`].
//! 2. The consumer first reads its own pending list (`XREADGROUP … 0`) until it is empty — work it had
//!    received but not acknowledged before a crash or restart — then new entries (`>`), blocking on a
//!    connection of its own.
//! 3. Every `claim_idle / 2` it runs `XAUTOCLAIM` for entries idle longer than `claim_idle`: work of dead
//!    consumers, and its own entries left pending by a handler error (that is the retry). Ids that
//!    XAUTOCLAIM reports deleted from the stream (trimmed before being acknowledged) are recorded in the DLQ.
//!    Every consumer writes a heartbeat every second from a task of its own; the entries of a consumer
//!    whose heartbeat is older than [`DEAD_AFTER`] (killed, its host gone) are claimed at once with
//!    XCLAIM, without waiting for `claim_idle`.
//! 4. At most `concurrency` deliveries are handled at once. A handler returns its output events; outputs
//!    and the input's XACK go in one Lua script (each output at most once per event id), so no input
//!    is acknowledged without its outputs and no output is published twice. Plain acks (no outputs) are batched.
//! 5. A handler error leaves the entry pending ([`HandlerError::Retry`]) or dead-letters it at once
//!    ([`HandlerError::DeadLetter`]). Once an entry has been delivered `max_deliveries` times and fails,
//!    it moves to `<stream>:dlq` — the original fields plus `original_id`, `group`, `error`, `deliveries`,
//!    `failed_at` — atomically with its XACK. An undecodable entry goes there at once.
//! 6. A dead letter put back with [`crate::Audit::dlq_retry`] carries [`RETRY_FOR`]: the other groups
//!    acknowledge it without handling it (they handled it the first time).
//!
//! What remains at-least-once: a crash after a handler ran but before its EXEC redelivers the input, so
//! the handler runs again. Handlers must be idempotent; outputs with deterministic ids
//! ([`Envelope::with_deterministic_id`]) let downstream handlers recognise the duplicate. A handler that
//! runs longer than `claim_idle` may be claimed by another consumer and run twice concurrently.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rand::Rng;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimOptions, StreamPendingCountReply, StreamReadOptions};
use redis::{AsyncCommands, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::BusConfig;
use crate::connection::Bus;
use crate::entry::{parse_autoclaim, parse_entries, parse_read, RawEntry, ReadEntry};
use crate::envelope::format_timestamp;
use crate::error::{BusError, Result};
use crate::publisher::add_options;
use crate::reader::StreamReader;
use crate::Envelope;

/// The fields a dead letter adds after the original ones.
pub const DLQ_FIELDS: [&str; 5] = ["original_id", "group", "error", "deliveries", "failed_at"];

/// The field a retried dead letter carries (`events dlq retry`): the one group that handles it again.
/// The other groups acknowledge the entry without handling it; they did so the first time.
pub const RETRY_FOR: &str = "retry_for";

/// How often a running consumer writes its heartbeat (see [`heartbeat_key`]).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// A consumer whose heartbeat is older than this is taken for dead: its pending entries are claimed at
/// once, instead of after `claim_idle` (which must exceed the slowest handler, so is long). A live
/// consumer's heartbeat runs on its own task, so a long handler run does not stop it.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// A dead consumer with nothing pending is forgotten (its heartbeat removed) after this long.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// How often a consumer looks for dead consumers of its group.
const DEAD_CHECK_EVERY: Duration = Duration::from_secs(2);

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
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery. Must be idempotent: a delivery can come again (see the module docs).
    fn handle(
        &self,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<Vec<Envelope>, HandlerError>> + Send;
}

/// A [`Handler`] from a closure taking an owned [`Delivery`].
pub struct FnHandler<F>(F);

/// Wraps `f` as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Envelope>, HandlerError>> + Send + 'static,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
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

/// What became of one delivery, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler succeeded (its outputs, if any, are published).
    Handled,
    /// The handler failed (or its outputs could not be published); the entry stays pending.
    Failed,
    /// The entry moved to the DLQ.
    DeadLettered,
}

/// Per group and event type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub handled: u64,
    pub failed: u64,
    pub dead_lettered: u64,
}

/// Batched-ack results per group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckCounters {
    /// Entries XACK removed from the pending list.
    pub acked: u64,
    /// Entries XACK found no longer pending (already acknowledged elsewhere): 0 unless something ran twice.
    pub misses: u64,
}

/// Called on every outcome with (group, event type, outcome): where Prometheus counters plug in.
pub type Observer = Arc<dyn Fn(&str, &str, Outcome) + Send + Sync>;

#[derive(Default)]
struct StatsInner {
    per_type: BTreeMap<(String, String), Counters>,
    acks: BTreeMap<String, AckCounters>,
}

/// Counters of handled, failed and dead-lettered deliveries, shared by clones.
#[derive(Clone, Default)]
pub struct Stats {
    inner: Arc<Mutex<StatsInner>>,
    observer: Option<Observer>,
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats")
            .field("per_type", &self.snapshot())
            .finish()
    }
}

impl Stats {
    /// Counters that also call `observer` on every outcome.
    pub fn with_observer(observer: impl Fn(&str, &str, Outcome) + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::default(),
            observer: Some(Arc::new(observer)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatsInner> {
        // Counters stay usable even if a holder panicked.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record(&self, group: &str, event_type: &str, outcome: Outcome) {
        {
            let mut inner = self.lock();
            let c = inner
                .per_type
                .entry((group.to_string(), event_type.to_string()))
                .or_default();
            match outcome {
                Outcome::Handled => c.handled += 1,
                Outcome::Failed => c.failed += 1,
                Outcome::DeadLettered => c.dead_lettered += 1,
            }
        }
        if let Some(observer) = &self.observer {
            observer(group, event_type, outcome);
        }
    }

    fn record_acks(&self, group: &str, acked: u64, misses: u64) {
        let mut inner = self.lock();
        let c = inner.acks.entry(group.to_string()).or_default();
        c.acked += acked;
        c.misses += misses;
    }

    /// The counters of one group and event type.
    pub fn counters(&self, group: &str, event_type: &str) -> Counters {
        self.lock()
            .per_type
            .get(&(group.to_string(), event_type.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// The counters of one group, all types summed.
    pub fn totals(&self, group: &str) -> Counters {
        self.lock()
            .per_type
            .iter()
            .filter(|((g, _), _)| g == group)
            .fold(Counters::default(), |a, (_, c)| Counters {
                handled: a.handled + c.handled,
                failed: a.failed + c.failed,
                dead_lettered: a.dead_lettered + c.dead_lettered,
            })
    }

    /// The batched-ack counters of one group.
    pub fn acks(&self, group: &str) -> AckCounters {
        self.lock().acks.get(group).copied().unwrap_or_default()
    }

    /// Every (group, type) with its counters.
    pub fn snapshot(&self) -> Vec<((String, String), Counters)> {
        self.lock()
            .per_type
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// Runs handlers as consumers of their groups. Cheap to clone; clones share [`Stats`].
#[derive(Clone)]
pub struct Consumer {
    bus: Bus,
    stats: Stats,
}

/// What the runtime shares with every delivery task.
struct Ctx {
    conn: ConnectionManager,
    config: Arc<BusConfig>,
    group: String,
    consumer: String,
    stats: Stats,
    /// Entries being handled by this process, so a claim does not start them a second time here.
    inflight: Mutex<HashSet<String>>,
}

impl Ctx {
    fn inflight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One entry handed from the reader to a delivery task, with its concurrency permit.
struct Work {
    entry: ReadEntry,
    deliveries: u32,
    permit: OwnedSemaphorePermit,
}

/// How a delivery task ended.
enum Finish {
    /// Handled without outputs: XACK in the next batch.
    Ack(String),
    /// Nothing left to do here (acked with its outputs, dead-lettered, or left pending).
    Settled(String),
}

impl Consumer {
    /// A runtime on `bus` counting into `stats`.
    pub fn new(bus: Bus, stats: Stats) -> Self {
        Self { bus, stats }
    }

    /// Counts into `stats` instead (e.g. one shared by all handlers, or one with an observer).
    #[must_use]
    pub fn with_stats(mut self, stats: Stats) -> Self {
        self.stats = stats;
        self
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Creates `group` at the start of the stream (and the stream), unless it exists.
    pub async fn ensure_group(&self, group: &str) -> Result<()> {
        ensure_group(&mut self.bus.connection(), &self.bus.config().stream, group).await
    }

    /// Runs `handler` as consumer `consumer_name` of `group` until `shutdown` completes, then stops
    /// reading, lets in-flight deliveries finish, acknowledges them and returns.
    ///
    /// Redis errors never end the loop: they are logged and retried with backoff (the connection
    /// reconnects by itself, a group lost with a restarted Redis is created again).
    pub async fn run<H: Handler>(
        &self,
        handler: H,
        group: &str,
        consumer_name: &str,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let config = self.bus.shared_config();
        let concurrency = config.concurrency.max(1);
        let ctx = Arc::new(Ctx {
            conn: self.bus.connection(),
            config: config.clone(),
            group: group.to_string(),
            consumer: consumer_name.to_string(),
            stats: self.stats.clone(),
            inflight: Mutex::default(),
        });
        let handler = Arc::new(handler);
        let permits = Arc::new(Semaphore::new(concurrency));
        let (tx, mut rx) = mpsc::channel::<Work>(concurrency);
        let _beat = AbortOnDropHandle::new(tokio::spawn(beat_loop(ctx.clone())));
        let reader =
            AbortOnDropHandle::new(tokio::spawn(
                read_loop(ctx.clone(), self.bus.clone(), permits.clone(), tx)
                    .instrument(info_span!("bus_reader", group, consumer = consumer_name)),
            ));
        // Deliveries run concurrently on this task rather than as tasks of their own: a spawn, a join
        // and the bookkeeping per event cost about a fifth of the consumer's CPU in the benchmark. A
        // consumer thus uses one core at a time; run more consumers for more.
        let mut deliveries = FuturesUnordered::new();
        // Plain acks go to a task of their own, so the dispatch loop never waits on Redis: while one XACK
        // is in flight the next batch gathers (one XACK per event when quiet, large batches under load).
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<String>();
        let acker = tokio::spawn(ack_loop(ctx.clone(), ack_rx));
        let acks = &ack_tx;
        tokio::pin!(shutdown);
        info!(
            group,
            consumer = consumer_name,
            stream = %config.stream,
            concurrency,
            "consumer started"
        );

        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = deliveries.next(), if !deliveries.is_empty() => settle(&ctx, done, acks),
                work = rx.recv() => match work {
                    Some(work) => deliveries.push(guarded(ctx.clone(), handler.clone(), work)),
                    // The reader only ends when aborted; nothing more will come.
                    None => break,
                },
            }
        }

        // Stop reading. Entries the reader had fetched but not handed over stay pending: this consumer
        // re-reads them first on its next start, or another claims them after claim_idle.
        drop(reader);
        drop(rx);
        while let Some(done) = deliveries.next().await {
            settle(&ctx, done, acks);
        }
        // The acker flushes what is left and ends once the channel is closed and empty.
        drop(ack_tx);
        if let Err(e) = acker.await {
            warn!(group, error = %e, "ack task failed; unacknowledged entries will be redelivered");
        }
        // No longer alive: a replay need not wait for this consumer's heartbeat to age.
        let mut conn = ctx.conn.clone();
        let gone: redis::RedisResult<()> = conn
            .hdel(heartbeat_key(&config.stream, group), consumer_name)
            .await;
        if let Err(e) = gone {
            debug!(error = %e, "could not remove the heartbeat");
        }
        info!(group, consumer = consumer_name, "consumer stopped");
        Ok(())
    }
}

/// Batched XACK of plain acks: takes whatever has gathered (up to `batch_size`), acks it, repeats. After
/// the channel closes it flushes the rest, giving up after a few failed attempts (those entries stay
/// pending and are redelivered).
async fn ack_loop(ctx: Arc<Ctx>, mut rx: mpsc::UnboundedReceiver<String>) {
    let batch = ctx.config.batch_size.max(1);
    let mut ids: Vec<String> = Vec::with_capacity(batch);
    let mut backoff = Backoff::default();
    let mut failures = 0u32;
    loop {
        if ids.len() < batch {
            if ids.is_empty() {
                if rx.recv_many(&mut ids, batch).await == 0 {
                    return;
                }
            } else {
                while ids.len() < batch {
                    match rx.try_recv() {
                        Ok(id) => ids.push(id),
                        Err(_) => break,
                    }
                }
            }
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

fn settle(ctx: &Ctx, done: Finish, acks: &mpsc::UnboundedSender<String>) {
    match done {
        Finish::Ack(id) => {
            if let Err(unsent) = acks.send(id) {
                // Only after the acker ended: the entry stays pending and is redelivered.
                ctx.inflight().remove(&unsent.0);
            }
        }
        Finish::Settled(id) => {
            ctx.inflight().remove(&id);
        }
    }
}

/// [`process`], with a panic outside the handler (which `process` already catches) leaving the entry
/// pending for a retry after claim_idle instead of ending the consumer.
async fn guarded<H: Handler>(ctx: Arc<Ctx>, handler: Arc<H>, work: Work) -> Finish {
    let id = work.entry.id.clone();
    let group = ctx.group.clone();
    match AssertUnwindSafe(process(ctx, handler, work))
        .catch_unwind()
        .await
    {
        Ok(finish) => finish,
        Err(panic) => {
            warn!(%group, stream_id = %id, error = %panic_message(panic.as_ref()), "delivery failed");
            Finish::Settled(id)
        }
    }
}

/// The hash where running consumers of `group` write `consumer → unix ms` every [`HEARTBEAT_EVERY`],
/// from a task of their own. Redis 7.0 neither lists a consumer that has only read nothing nor updates
/// its idle time then, so XINFO CONSUMERS cannot tell a live consumer on a quiet stream from a dead one.
pub fn heartbeat_key(stream: &str, group: &str) -> String {
    format!("{stream}:consumers:{group}")
}

/// Writes this consumer's heartbeat every [`HEARTBEAT_EVERY`] until aborted (errors are retried).
async fn beat_loop(ctx: Arc<Ctx>) {
    let key = heartbeat_key(&ctx.config.stream, &ctx.group);
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Redis's clock, not this host's: replicas on hosts whose clocks differ compare the same clock.
    static BEAT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(
            "local t = redis.call('TIME') \
             redis.call('HSET', KEYS[1], ARGV[1], t[1] * 1000 + math.floor(t[2] / 1000)) \
             return 1",
        )
    });
    loop {
        tick.tick().await;
        let mut conn = ctx.conn.clone();
        let res: redis::RedisResult<i64> = BEAT
            .key(&key)
            .arg(&ctx.consumer)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = res {
            debug!(group = %ctx.group, error = %e, "heartbeat not written");
        }
    }
}

/// Redis's clock in unix milliseconds (`TIME`), the clock heartbeats are written with.
async fn server_millis(conn: &mut ConnectionManager) -> Result<i64> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME")
        .query_async(conn)
        .await
        .map_err(BusError::redis("TIME"))?;
    Ok(secs * 1000 + micros / 1000)
}

/// Claims, for this consumer, the pending entries of consumers of the group whose heartbeat is older than
/// [`DEAD_AFTER`] (killed without a chance to stop): at most `want`.
async fn claim_from_dead(ctx: &Ctx, want: usize) -> Result<Vec<ReadEntry>> {
    let cfg = &ctx.config;
    let mut conn = ctx.conn.clone();
    let beats: HashMap<String, i64> = conn
        .hgetall(heartbeat_key(&cfg.stream, &ctx.group))
        .await
        .map_err(BusError::redis("HGETALL (heartbeats)"))?;
    let now = server_millis(&mut conn).await?;
    let dead_ms = DEAD_AFTER.as_millis() as i64;
    let mut out: Vec<ReadEntry> = Vec::new();
    for (name, beat) in beats {
        if name == ctx.consumer || now.saturating_sub(beat) < dead_ms || out.len() >= want {
            continue;
        }
        // Only entries it was given at least DEAD_AFTER ago; XCLAIM's min-idle says the same, so an
        // entry someone else claimed meanwhile is left alone.
        let v: Value = redis::cmd("XPENDING")
            .arg(&cfg.stream)
            .arg(&ctx.group)
            .arg("IDLE")
            .arg(dead_ms)
            .arg("-")
            .arg("+")
            .arg(want - out.len())
            .arg(&name)
            .query_async(&mut conn)
            .await
            .map_err(BusError::redis("XPENDING (dead consumer)"))?;
        let ids = pending_ids(v);
        if ids.is_empty() {
            if now.saturating_sub(beat) > FORGET_AFTER.as_millis() as i64 {
                // Long dead and nothing left to claim: drop its heartbeat, so the hash does not grow
                // with every name a replica ever ran under. (Were it alive after all, its next beat
                // writes it back.)
                let _: redis::RedisResult<i64> = conn
                    .hdel(heartbeat_key(&cfg.stream, &ctx.group), &name)
                    .await;
            }
            continue;
        }
        let v: Value = redis::cmd("XCLAIM")
            .arg(&cfg.stream)
            .arg(&ctx.group)
            .arg(&ctx.consumer)
            .arg(dead_ms)
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .map_err(BusError::redis("XCLAIM"))?;
        let claimed = parse_entries("XCLAIM", v)?;
        info!(group = %ctx.group, dead = %name, count = claimed.len(),
            heartbeat_ms_ago = now.saturating_sub(beat), "claimed the entries of a consumer whose heartbeat stopped");
        out.extend(claimed);
    }
    let inflight = ctx.inflight();
    Ok(out
        .into_iter()
        .filter(|e| !inflight.contains(&e.id))
        .collect())
}

/// The ids of an extended XPENDING reply (`[[id, consumer, idle, deliveries], …]`).
fn pending_ids(v: Value) -> Vec<String> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| match item {
            Value::Array(fields) => fields.first().and_then(crate::entry::string),
            _ => None,
        })
        .collect()
}

/// `XGROUP CREATE stream group 0 MKSTREAM`; `BUSYGROUP` (it exists) is success.
pub(crate) async fn ensure_group(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
) -> Result<()> {
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

/// Exponential backoff with jitter, 50 ms to 5 s.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::MIN }
    }
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let jitter = rand::rng().random_range(0..=d.as_millis() as u64 / 2);
        d + Duration::from_millis(jitter)
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// Where the reader is.
struct ReadState {
    group_ready: bool,
    /// `Some(cursor)` while the own pending list is being drained.
    pending_from: Option<String>,
    /// XAUTOCLAIM's cursor within the current claim round.
    claim_from: String,
    next_claim: Instant,
    /// The blocking reader's connection, made on first use and dropped after an error.
    blocking: Option<StreamReader>,
    /// When to look next for dead consumers whose entries to claim.
    next_dead_check: Instant,
}

impl ReadState {
    fn restart(&mut self) {
        self.group_ready = false;
        self.pending_from = Some("0".into());
    }
}

/// Fetches entries (own pending list, claims, new ones) while there is capacity and hands them over.
async fn read_loop(ctx: Arc<Ctx>, bus: Bus, permits: Arc<Semaphore>, tx: mpsc::Sender<Work>) {
    let mut state = ReadState {
        group_ready: false,
        pending_from: Some("0".into()),
        claim_from: "0-0".into(),
        next_claim: Instant::now(),
        blocking: None,
        next_dead_check: Instant::now() + DEAD_CHECK_EVERY,
    };
    let mut backoff = Backoff::default();
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
    let cfg = &ctx.config;
    let mut conn = ctx.conn.clone();
    if !state.group_ready {
        ensure_group(&mut conn, &cfg.stream, &ctx.group).await?;
        state.group_ready = true;
    }
    let want = (1 + permits.available_permits()).min(cfg.batch_size.max(1));
    let group_opts = || StreamReadOptions::default().group(&ctx.group, &ctx.consumer);

    let batch: Vec<(ReadEntry, u32)> = if let Some(from) = state.pending_from.clone() {
        let v: Value = conn
            .xread_options(&[&cfg.stream], &[&from], &group_opts().count(want))
            .await
            .map_err(BusError::redis("XREADGROUP (own pending)"))?;
        let entries = parse_read("XREADGROUP", v)?;
        let Some(last) = entries.last() else {
            debug!("own pending list drained");
            state.pending_from = None;
            return Ok(true);
        };
        let last = last.id.clone();
        let counts = delivery_counts(ctx, &entries).await?;
        state.pending_from = Some(last);
        with_counts(entries, &counts)
    } else if Instant::now() >= state.next_dead_check {
        state.next_dead_check = Instant::now() + DEAD_CHECK_EVERY;
        let claimed = claim_from_dead(ctx, want).await?;
        if claimed.is_empty() {
            return Ok(true);
        }
        let counts = delivery_counts(ctx, &claimed).await?;
        with_counts(claimed, &counts)
    } else if Instant::now() >= state.next_claim {
        let v: Value = conn
            .xautoclaim_options(
                &cfg.stream,
                &ctx.group,
                &ctx.consumer,
                cfg.claim_idle.as_millis() as u64,
                &state.claim_from,
                StreamAutoClaimOptions::default().count(want),
            )
            .await
            .map_err(BusError::redis("XAUTOCLAIM"))?;
        let (next, claimed, deleted) = parse_autoclaim(v)?;
        if next == "0-0" {
            state.claim_from = next;
            state.next_claim = Instant::now() + claim_every(cfg);
        } else {
            state.claim_from = next;
        }
        for id in deleted {
            let reason = "entry was deleted from the stream (trimmed?) before it was acknowledged";
            dead_letter(ctx, &id, &[], reason, 0, "<deleted>").await;
        }
        let claimed: Vec<ReadEntry> = {
            let inflight = ctx.inflight();
            claimed
                .into_iter()
                .filter(|e| !inflight.contains(&e.id))
                .collect()
        };
        if claimed.is_empty() {
            return Ok(true);
        }
        debug!(count = claimed.len(), "claimed idle entries");
        let counts = delivery_counts(ctx, &claimed).await?;
        with_counts(claimed, &counts)
    } else {
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
            Ok(entries) => entries.into_iter().map(|e| (e, 1)).collect(),
            Err(e) => {
                // The connection may be mid-reply: start over on a new one.
                state.blocking = None;
                return Err(e);
            }
        }
    };

    let mut first = Some(permit);
    for (entry, deliveries) in batch {
        let permit = match first.take() {
            Some(p) => p,
            None => match permits.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return Ok(false),
            },
        };
        ctx.inflight().insert(entry.id.clone());
        let work = Work {
            entry,
            deliveries,
            permit,
        };
        if tx.send(work).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

fn claim_every(cfg: &BusConfig) -> Duration {
    (cfg.claim_idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(10))
}

fn with_counts(entries: Vec<ReadEntry>, counts: &HashMap<String, u32>) -> Vec<(ReadEntry, u32)> {
    entries
        .into_iter()
        .map(|e| {
            let n = counts.get(&e.id).copied().unwrap_or(1);
            (e, n)
        })
        .collect()
}

/// Delivery counts of entries this consumer now owns (one XPENDING over their id range).
async fn delivery_counts(ctx: &Ctx, entries: &[ReadEntry]) -> Result<HashMap<String, u32>> {
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

/// Handles one delivery and settles it.
async fn process<H: Handler>(ctx: Arc<Ctx>, handler: Arc<H>, work: Work) -> Finish {
    let Work {
        entry,
        deliveries,
        permit: _permit,
    } = work;
    let max = ctx.config.max_deliveries.max(1);
    let Some(fields) = entry.fields else {
        let reason = "entry was deleted from the stream (trimmed?) before it was acknowledged";
        dead_letter(&ctx, &entry.id, &[], reason, deliveries, "<deleted>").await;
        return Finish::Settled(entry.id);
    };
    let raw = RawEntry {
        id: entry.id,
        fields,
    };
    if let Some(target) = raw.get(RETRY_FOR) {
        if target != ctx.group.as_bytes() {
            debug!(stream_id = %raw.id, retry_for = %String::from_utf8_lossy(target), "a retry for another group: acknowledged unhandled");
            return Finish::Ack(raw.id);
        }
    }
    let envelope = match raw.decode() {
        Ok(e) => e,
        Err(e) => {
            let reason = format!("undecodable entry: {e}");
            dead_letter(
                &ctx,
                &raw.id,
                &raw.fields,
                &reason,
                deliveries,
                &raw.type_label(),
            )
            .await;
            return Finish::Settled(raw.id);
        }
    };
    let event_type = envelope.event_type();
    if deliveries > max {
        // Delivered too often without an outcome (e.g. the handler crashes the process).
        let reason = format!("delivered {deliveries} times, more than max_deliveries ({max})");
        dead_letter(&ctx, &raw.id, &raw.fields, &reason, deliveries, event_type).await;
        return Finish::Settled(raw.id);
    }
    let span = info_span!(
        "delivery",
        stream_id = %raw.id,
        event_type,
        attempt = deliveries,
        group = %ctx.group
    );
    let delivery = Delivery {
        stream_id: raw.id.clone(),
        envelope,
        deliveries,
        group: ctx.group.clone(),
    };
    async {
        let result = match AssertUnwindSafe(handler.handle(&delivery))
            .catch_unwind()
            .await
        {
            Ok(r) => r,
            Err(panic) => Err(HandlerError::Retry(format!(
                "handler panicked: {}",
                panic_message(panic.as_ref())
            ))),
        };
        match result {
            Ok(outputs) if outputs.is_empty() => {
                ctx.stats.record(&ctx.group, event_type, Outcome::Handled);
                Finish::Ack(raw.id)
            }
            Ok(outputs) => {
                match publish_and_ack(&ctx, &raw.id, &outputs).await {
                    Ok(()) => ctx.stats.record(&ctx.group, event_type, Outcome::Handled),
                    Err(e) => {
                        warn!(error = %e, "could not publish the handler's outputs; the entry stays pending");
                        ctx.stats.record(&ctx.group, event_type, Outcome::Failed);
                    }
                }
                Finish::Settled(raw.id)
            }
            Err(HandlerError::DeadLetter(reason)) => {
                dead_letter(&ctx, &raw.id, &raw.fields, &reason, deliveries, event_type).await;
                Finish::Settled(raw.id)
            }
            Err(HandlerError::Retry(reason)) if deliveries >= max => {
                dead_letter(&ctx, &raw.id, &raw.fields, &reason, deliveries, event_type).await;
                Finish::Settled(raw.id)
            }
            Err(HandlerError::Retry(reason)) => {
                warn!(error = %reason, "handler failed; retried after claim_idle");
                ctx.stats.record(&ctx.group, event_type, Outcome::Failed);
                Finish::Settled(raw.id)
            }
        }
    }
    .instrument(span)
    .await
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_string()
    }
}

/// The handler's outputs and the input's XACK in one script, so they happen together or not at all.
/// Each output is written only if its event id was not written within `idempotency_ttl` (the same key
/// `publish_idempotent` uses for `event:<id>`): handlers give their outputs deterministic ids, so a
/// redelivered input, or two inputs that mean the same thing, publish each output once.
///
/// KEYS: stream. ARGV: group, input id, ttl ms, max length, idempotency key prefix, number of outputs,
/// then per output: event id, number of field/value items, the items.
const OUTPUTS_AND_ACK: &str = r#"
local stream = KEYS[1]
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  local key = ARGV[5] .. ARGV[i]
  local n = tonumber(ARGV[i + 1])
  i = i + 2
  if redis.call('SET', key, '', 'NX', 'PX', ARGV[3]) then
    local id = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, i, i + n - 1))
    redis.call('SET', key, id, 'KEEPTTL')
  end
  i = i + n
end
return redis.call('XACK', stream, ARGV[1], ARGV[2])
"#;

/// The handler's outputs (each at most once per event id) and the input's XACK, atomically.
async fn publish_and_ack(ctx: &Ctx, id: &str, outputs: &[Envelope]) -> Result<()> {
    // Hashed once; EVALSHA falls back to EVAL after a Redis restart flushed the script cache.
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(OUTPUTS_AND_ACK));
    let mut invocation = SCRIPT.prepare_invoke();
    invocation
        .key(&ctx.config.stream)
        .arg(&ctx.group)
        .arg(id)
        .arg(ctx.config.idempotency_ttl.as_millis().max(1).to_string())
        .arg(ctx.config.max_len)
        .arg(format!("{}:idem:event:", ctx.config.stream))
        .arg(outputs.len());
    for e in outputs {
        let fields = e.to_fields();
        invocation.arg(e.event_id.to_string()).arg(fields.len() * 2);
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
async fn dead_letter(
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
                .record(&ctx.group, event_type, Outcome::DeadLettered);
        }
        Err(e) => {
            warn!(group = %ctx.group, stream_id = %id, error = %e, "could not dead-letter; the entry stays pending");
            ctx.stats.record(&ctx.group, event_type, Outcome::Failed);
        }
    }
}
