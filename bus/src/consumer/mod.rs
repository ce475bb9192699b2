//! The consumer-group runtime: one group per handler, at-least-once delivery, retries, dead letters.
//!
//! Its parts:
//! - this file: [`Consumer`] and its run loop (start the tasks, dispatch deliveries, shut down);
//! - `handler.rs`: the contract — [`GroupHandler`], [`Delivery`], [`HandlerError`] and its [`ErrorPolicy`];
//! - `read.rs`: the reader task — own pending list first, then claims and new entries;
//! - `liveness.rs`: heartbeats, dead-consumer detection, `XCLAIM`/`XAUTOCLAIM` claims;
//! - `retry.rs`: the retry task — a failed entry redelivered to this consumer after its delay;
//! - `deliver.rs`: one delivery — checks, the handler run, what its result means;
//! - `settle.rs`: batched acks, the outputs-and-ack Lua script, dead letters;
//! - `stats.rs`: [`Stats`], its [`Counters`] and the [`DeliveryOutcome`] they count.
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
//!    consumers, and entries whose scheduled retry (5.) was lost with its consumer. Ids that
//!    XAUTOCLAIM reports deleted from the stream (trimmed before being acknowledged) are recorded in the DLQ.
//!    Every consumer writes a heartbeat every second from a task of its own; the entries of a consumer
//!    whose heartbeat is older than [`DEAD_AFTER`] (killed, its host gone) are claimed at once with
//!    XCLAIM, without waiting for `claim_idle`.
//! 4. At most `concurrency` deliveries are handled at once. A handler returns its output events; outputs
//!    and the input's XACK go in one Lua script (each output at most once per event id), so no input
//!    is acknowledged without its outputs and no output is published twice. Plain acks (no outputs) are batched.
//!    When that script fails (Redis away), the outputs are kept in memory and go out with the entry's
//!    redelivery here, beside what the handler returns then: a handler with side effects (the
//!    executor's facts) does not report them a second time, and they must not be lost.
//! 5. A handler error chooses an [`ErrorPolicy`] ([`HandlerError::policy`]). A transient one
//!    ([`HandlerError::Retry`]: 1 s doubling to 30 s by delivery count; [`HandlerError::RetryAfter`]:
//!    the handler's delay) leaves the entry pending, and this consumer delivers it to itself again once
//!    the delay is over (`XCLAIM` to itself, which counts a delivery); meanwhile its idle time is kept
//!    low, so no consumer claims it. Shutdown does not wait for scheduled retries: those entries stay
//!    pending and come first on the next start (2.). [`HandlerError::DeadLetter`] dead-letters the entry
//!    at once. Once an entry has been delivered `max_deliveries` times and fails, it moves to
//!    `<stream>:dlq` — the original fields plus `original_id`, `group`, `error`, `deliveries`,
//!    `failed_at` — atomically with its XACK. An undecodable entry goes there at once.
//! 6. A dead letter put back with [`crate::Audit::dlq_retry`] carries [`RETRY_FOR`]: the other groups
//!    acknowledge it without handling it (they handled it the first time).
//!
//! What remains at-least-once: a crash after a handler ran but before its EXEC redelivers the input, so
//! the handler runs again. Handlers must be idempotent; outputs with deterministic ids
//! ([`Envelope::with_deterministic_id`]) let downstream handlers recognise the duplicate. A handler that
//! runs longer than `claim_idle` may be claimed by another consumer and run twice concurrently.

mod deliver;
mod handler;
mod liveness;
mod read;
mod retry;
mod settle;
mod stats;

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::connection::Connection;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use primitives::Backoff;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, info_span, warn, Instrument};

pub use handler::{
    default_retry_backoff, handler_fn, Delivery, ErrorPolicy, FnHandler, GroupHandler, HandlerError,
};
pub use liveness::{heartbeat_key, DEAD_AFTER, HEARTBEAT_EVERY};
pub use settle::DLQ_FIELDS;
pub use stats::{AckCounters, Counters, DeliveryOutcome, Observer, Stats};

use crate::config::BusConfig;
use crate::connection::Bus;
use crate::entry::ReadEntry;
use crate::error::Result;
#[cfg(doc)]
use crate::Envelope;

/// The field a retried dead letter carries (`events dlq retry`): the one group that handles it again.
/// The other groups acknowledge the entry without handling it; they did so the first time.
pub const RETRY_FOR: &str = "retry_for";

/// Runs handlers as consumers of their groups. Cheap to clone; clones share [`Stats`].
#[derive(Clone)]
pub struct Consumer {
    bus: Bus,
    stats: Stats,
}

/// What the runtime shares with every delivery task.
struct Ctx {
    conn: Connection,
    config: Arc<BusConfig>,
    group: String,
    consumer: String,
    stats: Stats,
    /// Entries being handled by this process, so a claim does not start them a second time here.
    inflight: Mutex<HashSet<String>>,
    /// Outputs whose publish-and-ack failed, by entry id, for the entry's redelivery (see
    /// [`settle::Unsettled`]).
    unsettled: settle::Unsettled,
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
    /// Failed: stays pending, and is delivered to this consumer again after `delay`.
    Retry { id: String, delay: Duration },
    /// Nothing left to do here (acked with its outputs, dead-lettered, or left pending).
    Settled(String),
}

/// Where finished deliveries go on to.
struct Outlets {
    /// Plain acks, to the acker task.
    acks: mpsc::UnboundedSender<String>,
    /// Retries, to the retry task.
    retries: mpsc::UnboundedSender<retry::Retry>,
}

/// The tasks that feed the delivery loop; dropping it stops them.
struct Sources {
    _reader: AbortOnDropHandle<()>,
    /// Scheduled retries are not waited for: they stay pending and come first on the next start.
    _retrier: AbortOnDropHandle<()>,
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
        read::ensure_group(&mut self.bus.connection(), &self.bus.config().stream, group).await
    }

    /// Runs `handler` as consumer `consumer_name` of `group` until `shutdown` completes, then stops
    /// reading, lets in-flight deliveries finish, acknowledges them and returns.
    ///
    /// Redis errors never end the loop: they are logged and retried with backoff (the connection
    /// reconnects by itself, a group lost with a restarted Redis is created again).
    pub async fn run<H: GroupHandler>(
        &self,
        handler: H,
        group: &str,
        consumer_name: &str,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let ctx = Arc::new(Ctx {
            conn: self.bus.connection(),
            config: self.bus.shared_config(),
            group: group.to_string(),
            consumer: consumer_name.to_string(),
            stats: self.stats.clone(),
            inflight: Mutex::default(),
            unsettled: settle::Unsettled::default(),
        });
        let concurrency = ctx.config.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let (tx, rx) = mpsc::channel::<Work>(concurrency);
        let _beat = AbortOnDropHandle::new(tokio::spawn(liveness::beat_loop(ctx.clone())));
        let span = || info_span!("bus_reader", group, consumer = consumer_name);
        let reader = read::read_loop(ctx.clone(), self.bus.clone(), permits.clone(), tx.clone());
        let (retry_tx, retry_rx) = mpsc::unbounded_channel();
        let retrier = retry::retry_loop(ctx.clone(), permits, retry_rx, tx);
        let sources = Sources {
            _reader: AbortOnDropHandle::new(tokio::spawn(reader.instrument(span()))),
            _retrier: AbortOnDropHandle::new(tokio::spawn(retrier.instrument(span()))),
        };
        // Plain acks go to a task of their own, so the dispatch loop never waits on Redis: while one XACK
        // is in flight the next batch gathers (one XACK per event when quiet, large batches under load).
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<String>();
        let acker = tokio::spawn(settle::ack_loop(ctx.clone(), ack_rx));
        let outlets = Outlets {
            acks: ack_tx,
            retries: retry_tx,
        };
        info!(
            group,
            consumer = consumer_name,
            stream = %ctx.config.stream,
            concurrency,
            "consumer started"
        );
        deliver_until(&ctx, Arc::new(handler), rx, sources, &outlets, shutdown).await;
        // The acker flushes what is left and ends once the channel is closed and empty.
        drop(outlets);
        if let Err(e) = acker.await {
            warn!(group, error = %e, "ack task failed; unacknowledged entries will be redelivered");
        }
        liveness::leave(&ctx).await;
        info!(group, consumer = consumer_name, "consumer stopped");
        Ok(())
    }
}

/// Handles what `rx` brings until `shutdown`, then stops `sources` and finishes the deliveries in flight.
async fn deliver_until<H: GroupHandler>(
    ctx: &Arc<Ctx>,
    handler: Arc<H>,
    mut rx: mpsc::Receiver<Work>,
    sources: Sources,
    outlets: &Outlets,
    shutdown: impl Future<Output = ()>,
) {
    // Deliveries run concurrently on this task rather than as tasks of their own: a spawn, a join
    // and the bookkeeping per event cost about a fifth of the consumer's CPU in the benchmark. A
    // consumer thus uses one core at a time; run more consumers for more.
    let mut deliveries = FuturesUnordered::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = deliveries.next(), if !deliveries.is_empty() => settle::finish(ctx, done, outlets),
            work = rx.recv() => match work {
                Some(work) => deliveries.push(deliver::guarded(ctx.clone(), handler.clone(), work)),
                // The reader only ends when aborted; nothing more will come.
                None => break,
            },
        }
    }
    // Stop reading. Entries the reader had fetched but not handed over stay pending: this consumer
    // re-reads them first on its next start, or another claims them after claim_idle.
    drop(sources);
    drop(rx);
    while let Some(done) = deliveries.next().await {
        settle::finish(ctx, done, outlets);
    }
}

/// The backoff of the consumer's retries after a Redis error: 50 ms doubling to 5 s, plus up to half
/// of each delay at random so consumers that failed together do not retry together.
fn redis_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(5)).with_jitter(0.5)
}
