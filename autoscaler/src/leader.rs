//! The leader lease: one replica at a time runs the watchers and pollers, so each observation is
//! published once. A lease is a Redis key with a TTL, renewed at a third of it; whoever takes it gets a
//! fencing token (a counter increased on every takeover) that it stamps on what it publishes, so a
//! stale leader's late writes can be told apart in the audit trail. When the leader dies, its key
//! expires and another replica takes over within `lease_ttl`.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::Script;
use tokio::sync::watch;

/// Who leads, as this replica sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leadership {
    /// This replica holds the lease.
    pub leader: bool,
    /// The fencing token of this replica's tenure (0 when not leading).
    pub token: u64,
}

/// Takes the lease when free, renews it when ours: returns the fencing token, or -1 when another holds it.
const ACQUIRE_OR_RENEW: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then
  local token = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
  return token
end
local sep = string.find(cur, '|', 1, true)
if sep and string.sub(cur, 1, sep - 1) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(string.sub(cur, sep + 1))
end
return -1
";

/// Deletes the lease only if it is ours.
const RELEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if sep and string.sub(cur, 1, sep - 1) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
  end
end
return 0
";

/// The lease keys of a stream.
pub fn lease_key(stream: &str) -> String {
    format!("{stream}:leader")
}

fn epoch_key(stream: &str) -> String {
    format!("{stream}:leader:epoch")
}

/// The current holder (`replica|token`), for `status`.
pub async fn current_holder(
    conn: &mut (impl ConnectionLike + Send),
    stream: &str,
) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET")
        .arg(lease_key(stream))
        .query_async(conn)
        .await
}

/// One acquire-or-renew attempt.
pub async fn try_acquire(
    conn: &mut (impl ConnectionLike + Send),
    stream: &str,
    replica: &str,
    ttl: Duration,
) -> redis::RedisResult<Option<u64>> {
    let token: i64 = Script::new(ACQUIRE_OR_RENEW)
        .key(lease_key(stream))
        .key(epoch_key(stream))
        .arg(replica)
        .arg(ttl.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(u64::try_from(token).ok())
}

/// Releases the lease if ours (graceful shutdown: the next replica need not wait for the TTL).
pub async fn release(
    conn: &mut (impl ConnectionLike + Send),
    stream: &str,
    replica: &str,
) -> redis::RedisResult<()> {
    let _: i64 = Script::new(RELEASE)
        .key(lease_key(stream))
        .arg(replica)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// Keeps trying to lead until `shutdown`; publishes every change of leadership. A Redis error counts as
/// losing the lease: better no leader for a moment than two.
pub async fn run(
    mut conn: impl ConnectionLike + Send,
    stream: String,
    replica: String,
    ttl: Duration,
    tx: watch::Sender<Leadership>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let period = ttl / 3;
    tokio::pin!(shutdown);
    loop {
        let now = match try_acquire(&mut conn, &stream, &replica, ttl).await {
            Ok(Some(token)) => Leadership {
                leader: true,
                token,
            },
            Ok(None) => Leadership::default(),
            Err(e) => {
                tracing::warn!(error = %e, "leader: cannot reach Redis; stepping down");
                Leadership::default()
            }
        };
        tx.send_if_modified(|cur| {
            if *cur != now {
                tracing::info!(leader = now.leader, token = now.token, replica = %replica, "leader: leadership changed");
                *cur = now;
                true
            } else {
                false
            }
        });
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(period) => {}
        }
    }
    if tx.borrow().leader {
        if let Err(e) = release(&mut conn, &stream, &replica).await {
            tracing::warn!(error = %e, "leader: release failed; the lease expires by itself");
        }
        tx.send_replace(Leadership::default());
    }
}
