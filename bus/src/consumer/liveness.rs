//! Liveness: heartbeats, dead-consumer detection and the claims that take over work left behind —
//! `XCLAIM` of a dead consumer's entries at once, `XAUTOCLAIM` of any entry idle longer than
//! `claim_idle`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::connection::Connection;
use redis::streams::StreamAutoClaimOptions;
use redis::{AsyncCommands, Value};
use tokio::time::Instant;
use tracing::{debug, info};

use super::read::{delivery_counts, with_counts, ReadState};
use super::settle::dead_letter;
use super::Ctx;
use crate::config::BusConfig;
use crate::entry::{parse_autoclaim, parse_entries, ReadEntry};
use crate::error::{BusError, Result};

/// How often a running consumer writes its heartbeat (see [`heartbeat_key`]).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// A consumer whose heartbeat is older than this is taken for dead: its pending entries are claimed at
/// once, instead of after `claim_idle` (which must exceed the slowest handler, so is long). A live
/// consumer's heartbeat runs on its own task, so a long handler run does not stop it.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// A dead consumer with nothing pending is forgotten (its heartbeat removed) after this long.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// How often a consumer looks for dead consumers of its group.
pub(super) const DEAD_CHECK_EVERY: Duration = Duration::from_secs(2);

/// The hash where running consumers of `group` write `consumer → unix ms` every [`HEARTBEAT_EVERY`],
/// from a task of their own. Redis 7.0 neither lists a consumer that has only read nothing nor updates
/// its idle time then, so XINFO CONSUMERS cannot tell a live consumer on a quiet stream from a dead one.
pub fn heartbeat_key(stream: &str, group: &str) -> String {
    format!("{stream}:consumers:{group}")
}

/// Writes this consumer's heartbeat every [`HEARTBEAT_EVERY`] until aborted (errors are retried).
pub(super) async fn beat_loop(ctx: Arc<Ctx>) {
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

/// Removes this consumer's heartbeat once it has stopped: a replay need not wait for it to age.
pub(super) async fn leave(ctx: &Ctx) {
    let mut conn = ctx.conn.clone();
    let gone: redis::RedisResult<()> = conn
        .hdel(heartbeat_key(&ctx.config.stream, &ctx.group), &ctx.consumer)
        .await;
    if let Err(e) = gone {
        debug!(error = %e, "could not remove the heartbeat");
    }
}

/// Redis's clock in unix milliseconds (`TIME`), the clock heartbeats are written with.
async fn server_millis(conn: &mut Connection) -> Result<i64> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME")
        .query_async(conn)
        .await
        .map_err(BusError::redis("TIME"))?;
    Ok(secs * 1000 + micros / 1000)
}

/// Claims, for this consumer, the pending entries of consumers of the group whose heartbeat is older than
/// [`DEAD_AFTER`] (killed without a chance to stop): at most `want`.
pub(super) async fn claim_from_dead(ctx: &Ctx, want: usize) -> Result<Vec<ReadEntry>> {
    let mut conn = ctx.conn.clone();
    let beats: HashMap<String, i64> = conn
        .hgetall(heartbeat_key(&ctx.config.stream, &ctx.group))
        .await
        .map_err(BusError::redis("HGETALL (heartbeats)"))?;
    let now = server_millis(&mut conn).await?;
    let mut out: Vec<ReadEntry> = Vec::new();
    for (name, beat) in beats {
        let silent_ms = now.saturating_sub(beat);
        if name == ctx.consumer || silent_ms < DEAD_AFTER.as_millis() as i64 || out.len() >= want {
            continue;
        }
        out.extend(claim_from(ctx, &mut conn, &name, silent_ms, want - out.len()).await?);
    }
    let inflight = ctx.inflight();
    Ok(out
        .into_iter()
        .filter(|e| !inflight.contains(&e.id))
        .collect())
}

/// XCLAIMs up to `want` entries of the dead consumer `name`, silent for `silent_ms`; forgets it once it
/// has been dead long and has nothing left.
async fn claim_from(
    ctx: &Ctx,
    conn: &mut Connection,
    name: &str,
    silent_ms: i64,
    want: usize,
) -> Result<Vec<ReadEntry>> {
    let cfg = &ctx.config;
    let dead_ms = DEAD_AFTER.as_millis() as i64;
    // Only entries it was given at least DEAD_AFTER ago; XCLAIM's min-idle says the same, so an
    // entry someone else claimed meanwhile is left alone.
    let v: Value = redis::cmd("XPENDING")
        .arg(&cfg.stream)
        .arg(&ctx.group)
        .arg("IDLE")
        .arg(dead_ms)
        .arg("-")
        .arg("+")
        .arg(want)
        .arg(name)
        .query_async(conn)
        .await
        .map_err(BusError::redis("XPENDING (dead consumer)"))?;
    let ids = pending_ids(v);
    if ids.is_empty() {
        if silent_ms > FORGET_AFTER.as_millis() as i64 {
            // Long dead and nothing left to claim: drop its heartbeat, so the hash does not grow
            // with every name a replica ever ran under. (Were it alive after all, its next beat
            // writes it back.)
            let _: redis::RedisResult<i64> = conn
                .hdel(heartbeat_key(&cfg.stream, &ctx.group), name)
                .await;
        }
        return Ok(Vec::new());
    }
    let v: Value = redis::cmd("XCLAIM")
        .arg(&cfg.stream)
        .arg(&ctx.group)
        .arg(&ctx.consumer)
        .arg(dead_ms)
        .arg(&ids)
        .query_async(conn)
        .await
        .map_err(BusError::redis("XCLAIM"))?;
    let claimed = parse_entries("XCLAIM", v)?;
    info!(group = %ctx.group, dead = %name, count = claimed.len(),
        heartbeat_ms_ago = silent_ms, "claimed the entries of a consumer whose heartbeat stopped");
    Ok(claimed)
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

/// One step of the `XAUTOCLAIM` round: up to `want` entries idle longer than `claim_idle` (work of dead
/// consumers, and this consumer's own entries left pending), with their delivery counts. Ids reported
/// deleted from the stream (trimmed before being acknowledged) are recorded in the DLQ.
pub(super) async fn claim_idle(
    ctx: &Ctx,
    state: &mut ReadState,
    want: usize,
) -> Result<Vec<(ReadEntry, u32)>> {
    let cfg = &ctx.config;
    let mut conn = ctx.conn.clone();
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
        state.next_claim = Instant::now() + claim_every(cfg);
    }
    state.claim_from = next;
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
        return Ok(Vec::new());
    }
    debug!(count = claimed.len(), "claimed idle entries");
    let counts = delivery_counts(ctx, &claimed).await?;
    Ok(with_counts(claimed, &counts))
}

/// How often the `XAUTOCLAIM` round runs: half of `claim_idle`, within 50 ms..10 s.
fn claim_every(cfg: &BusConfig) -> Duration {
    (cfg.claim_idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(10))
}
