//! Audit and admin queries: the trail by id or time range and type, follow, dead letters, group state,
//! group rewind.

use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply, StreamReadOptions};
use redis::{AsyncCommands, Value};

use crate::connection::Bus;
use crate::consumer::{DLQ_FIELDS, RETRY_FOR};
use crate::entry::{parse_entries, parse_read, present, RawEntry};
use crate::error::{BusError, Result};

/// Entries per XRANGE page.
const PAGE: usize = 512;

/// Re-adds a dead letter's original fields to the stream and deletes it from the DLQ, atomically (a
/// second retry of the same id finds nothing). The dead-letter fields are the last occurrence of each of
/// `DLQ_FIELDS`; an original field of the same name written earlier is kept. A `retry_for` left by an
/// earlier retry is dropped too. With mode `group`, the entry gets `retry_for = <the dead letter's group>`,
/// so that only that group handles it again.
///
/// KEYS: dlq, stream. ARGV: dead letter id, max length, mode (`group` or `all`), the fields to drop.
/// Returns {new stream id, the group it is for or ''}.
const DLQ_RETRY: &str = r#"
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return false end
local f = e[1][2]
local drop = {}
for i = 4, #ARGV do drop[ARGV[i]] = true end
local keep = {}
local group = ''
for i = #f - 1, 1, -2 do
  local k = f[i]
  if drop[k] then
    drop[k] = nil
    if k == 'group' then group = f[i + 1] end
  else
    table.insert(keep, 1, f[i + 1])
    table.insert(keep, 1, k)
  end
end
if #keep == 0 then
  return redis.error_reply('dead letter ' .. ARGV[1] .. ' has no original fields (the entry was deleted before it was dead-lettered)')
end
local target = ''
if ARGV[3] == 'group' and group ~= '' then
  target = group
  table.insert(keep, 'retry_for')
  table.insert(keep, group)
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(keep))
redis.call('XDEL', KEYS[1], ARGV[1])
return {id, target}
"#;

/// Who handles a retried dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryTo {
    /// Only the group that dead-lettered it.
    Group,
    /// Every group, as if it were published anew.
    AllGroups,
}

/// A dead letter put back on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retried {
    /// Its new stream id.
    pub stream_id: String,
    /// The only group that handles it (`retry_for`), or `None` for every group.
    pub group: Option<String>,
}

/// Which entries to read.
#[derive(Debug, Clone)]
pub struct Query {
    /// First id (inclusive), `-` for the start.
    pub start: String,
    /// Last id (inclusive), `+` for the end.
    pub end: String,
    /// Only these event types (empty: all). Undecodable entries pass only without a type filter.
    pub types: Vec<String>,
    /// At most this many entries.
    pub count: Option<usize>,
    /// With `count`: the newest `count` entries (still returned oldest first) instead of the oldest.
    pub newest: bool,
}

impl Default for Query {
    fn default() -> Self {
        Self {
            start: "-".into(),
            end: "+".into(),
            types: Vec::new(),
            count: None,
            newest: false,
        }
    }
}

impl Query {
    fn matches(&self, e: &RawEntry) -> bool {
        self.types.is_empty()
            || e.get("event_type")
                .is_some_and(|t| self.types.iter().any(|w| w.as_bytes() == t))
    }
}

/// A range of the stream read a page (XRANGE … COUNT) at a time; see [`Audit::pages`].
pub struct Pages {
    audit: Audit,
    /// The next page's XRANGE start.
    start: String,
    end: String,
    page: usize,
    done: bool,
}

impl Pages {
    /// Entries per page (default 512).
    pub fn with_page_size(mut self, page: usize) -> Self {
        self.page = page.max(1);
        self
    }

    /// The next page, `None` at the end of the range. Deleted entries are left out.
    pub async fn next_page(&mut self) -> Result<Option<Vec<RawEntry>>> {
        if self.done {
            return Ok(None);
        }
        let mut conn = self.audit.bus.connection();
        let v: Value = conn
            .xrange_count(
                &self.audit.bus.config().stream,
                &self.start,
                &self.end,
                self.page,
            )
            .await
            .map_err(BusError::redis("XRANGE"))?;
        let raw = parse_entries("XRANGE", v)?;
        let Some(last) = raw.last() else {
            self.done = true;
            return Ok(None);
        };
        self.start = format!("({}", last.id);
        self.done = raw.len() < self.page;
        Ok(Some(present(raw)))
    }
}

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its id in the DLQ.
    pub id: String,
    /// The id it had in the stream.
    pub original_id: String,
    pub group: String,
    pub error: String,
    pub deliveries: u32,
    pub failed_at: String,
    /// All fields, original ones first.
    pub entry: RawEntry,
}

impl DeadLetter {
    fn from_entry(entry: RawEntry) -> Self {
        // The dead-letter fields are the last of their names.
        let last = |name: &str| {
            entry
                .fields
                .iter()
                .rev()
                .find(|(k, _)| k.as_ref() == name.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        Self {
            id: entry.id.clone(),
            original_id: last("original_id"),
            group: last("group"),
            error: last("error"),
            deliveries: last("deliveries").parse().unwrap_or(0),
            failed_at: last("failed_at"),
            entry,
        }
    }
}

/// One consumer of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub name: String,
    /// Entries delivered to it and not acknowledged.
    pub pending: u64,
    /// Milliseconds since it last read or claimed (as XINFO CONSUMERS reports it, or since its heartbeat
    /// when Redis does not list it).
    pub idle_ms: u64,
    /// Milliseconds since its last heartbeat, if a bus consumer runs (or ran) under this name.
    pub heartbeat_ms_ago: Option<u64>,
}

impl ConsumerInfo {
    /// Read, claimed or heartbeat within `window`.
    pub fn active_within(&self, window: std::time::Duration) -> bool {
        let w = window.as_millis() as u64;
        self.idle_ms < w || self.heartbeat_ms_ago.is_some_and(|h| h < w)
    }
}

/// One consumer group: for `status` and `replay --execute`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    /// Delivered and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to the group (`None` when Redis cannot tell, e.g. after trimming/rewind).
    pub lag: Option<u64>,
    pub last_delivered_id: String,
    pub consumers: Vec<ConsumerInfo>,
}

/// Audit and admin queries on the stream and its DLQ.
#[derive(Clone)]
pub struct Audit {
    bus: Bus,
}

impl Audit {
    pub(crate) fn new(bus: Bus) -> Self {
        Self { bus }
    }

    /// Entries matching `q`, oldest first.
    pub async fn query(&self, q: &Query) -> Result<Vec<RawEntry>> {
        let stream = &self.bus.config().stream;
        let limit = q.count.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut conn = self.bus.connection();
        if q.newest {
            let mut end = q.end.clone();
            while out.len() < limit {
                let v: Value = conn
                    .xrevrange_count(stream, &end, &q.start, PAGE)
                    .await
                    .map_err(BusError::redis("XREVRANGE"))?;
                let page = present(parse_entries("XREVRANGE", v)?);
                let Some(last) = page.last() else { break };
                end = format!("({}", last.id);
                let full = page.len() == PAGE;
                out.extend(page.into_iter().filter(|e| q.matches(e)));
                if !full {
                    break;
                }
            }
            out.truncate(limit);
            out.reverse();
        } else {
            let mut pages = self.pages(&q.start, &q.end);
            while out.len() < limit {
                let Some(page) = pages.next_page().await? else {
                    break;
                };
                out.extend(page.into_iter().filter(|e| q.matches(e)));
            }
            out.truncate(limit);
        }
        Ok(out)
    }

    /// The entries from `start` to `end` (XRANGE bounds, inclusive unless `(`-prefixed), oldest first,
    /// a page at a time: memory holds one page however long the range.
    pub fn pages(&self, start: &str, end: &str) -> Pages {
        Pages {
            audit: self.clone(),
            start: start.to_string(),
            end: end.to_string(),
            page: PAGE,
            done: false,
        }
    }

    /// The id of the newest entry, if the stream has one.
    pub async fn last_id(&self) -> Result<Option<String>> {
        let mut conn = self.bus.connection();
        let v: Value = conn
            .xrevrange_count(&self.bus.config().stream, "+", "-", 1)
            .await
            .map_err(BusError::redis("XREVRANGE"))?;
        Ok(parse_entries("XREVRANGE", v)?
            .into_iter()
            .next()
            .map(|e| e.id))
    }

    /// Number of entries in the stream.
    pub async fn len(&self) -> Result<u64> {
        let mut conn = self.bus.connection();
        conn.xlen(&self.bus.config().stream)
            .await
            .map_err(BusError::redis("XLEN"))
    }

    /// Follows the stream from after `after` (an id; `$` = from now), on a blocking connection of its own.
    pub async fn follow(&self, after: &str) -> Result<Follower> {
        let last = if after == "$" {
            self.last_id().await?.unwrap_or_else(|| "0-0".to_string())
        } else {
            after.to_string()
        };
        Ok(Follower {
            conn: self.bus.blocking_connection().await?,
            stream: self.bus.config().stream.clone(),
            block_ms: self.bus.config().block.as_millis().max(1) as usize,
            last,
        })
    }

    /// The first `count` dead letters, oldest first.
    pub async fn dlq(&self, count: usize) -> Result<Vec<DeadLetter>> {
        let mut conn = self.bus.connection();
        let v: Value = conn
            .xrange_count(&self.bus.config().dlq, "-", "+", count)
            .await
            .map_err(BusError::redis("XRANGE (dlq)"))?;
        Ok(present(parse_entries("XRANGE", v)?)
            .into_iter()
            .map(DeadLetter::from_entry)
            .collect())
    }

    /// Number of dead letters.
    pub async fn dlq_len(&self) -> Result<u64> {
        let mut conn = self.bus.connection();
        conn.xlen(&self.bus.config().dlq)
            .await
            .map_err(BusError::redis("XLEN (dlq)"))
    }

    /// Puts dead letter `id`'s original fields back on the stream as a new entry and removes it from the
    /// DLQ, atomically. With [`RetryTo::Group`] only the group that dead-lettered it handles it again (the
    /// others, which handled it the first time, acknowledge it unseen); with [`RetryTo::AllGroups`] every
    /// group does.
    pub async fn dlq_retry(&self, id: &str, to: RetryTo) -> Result<Retried> {
        let cfg = self.bus.config();
        let script = redis::Script::new(DLQ_RETRY);
        let mut inv = script.prepare_invoke();
        inv.key(&cfg.dlq)
            .key(&cfg.stream)
            .arg(id)
            .arg(cfg.max_len)
            .arg(match to {
                RetryTo::Group => "group",
                RetryTo::AllGroups => "all",
            });
        for f in DLQ_FIELDS.iter().chain([&RETRY_FOR]) {
            inv.arg(*f);
        }
        let mut conn = self.bus.connection();
        let reply: Option<(String, String)> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(BusError::redis("DLQ retry"))?;
        let (stream_id, group) = reply.ok_or_else(|| BusError::NoSuchEntry {
            stream: cfg.dlq.clone(),
            id: id.to_string(),
        })?;
        Ok(Retried {
            stream_id,
            group: (!group.is_empty()).then_some(group),
        })
    }

    /// Deletes every dead letter; returns how many there were.
    pub async fn dlq_purge(&self) -> Result<u64> {
        let mut conn = self.bus.connection();
        let dlq = &self.bus.config().dlq;
        let (n, _): (u64, u64) = redis::pipe()
            .atomic()
            .xlen(dlq)
            .del(dlq)
            .query_async(&mut conn)
            .await
            .map_err(BusError::redis("DEL (dlq)"))?;
        Ok(n)
    }

    /// Every consumer group of the stream with its consumers.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>> {
        let stream = &self.bus.config().stream;
        let mut conn = self.bus.connection();
        let exists: bool = conn
            .exists(stream)
            .await
            .map_err(BusError::redis("EXISTS"))?;
        if !exists {
            return Ok(Vec::new());
        }
        let groups: StreamInfoGroupsReply = conn
            .xinfo_groups(stream)
            .await
            .map_err(BusError::redis("XINFO GROUPS"))?;
        let mut out = Vec::new();
        for g in groups.groups {
            let consumers: StreamInfoConsumersReply =
                conn.xinfo_consumers(stream, &g.name)
                    .await
                    .map_err(BusError::redis("XINFO CONSUMERS"))?;
            let beats: std::collections::HashMap<String, i64> = conn
                .hgetall(crate::consumer::heartbeat_key(stream, &g.name))
                .await
                .map_err(BusError::redis("HGETALL (heartbeats)"))?;
            let now = chrono::Utc::now().timestamp_millis();
            let age = |name: &str| {
                beats
                    .get(name)
                    .map(|t| now.saturating_sub(*t).max(0) as u64)
            };
            let mut list: Vec<ConsumerInfo> = consumers
                .consumers
                .into_iter()
                .map(|c| ConsumerInfo {
                    heartbeat_ms_ago: age(&c.name),
                    name: c.name,
                    pending: c.pending as u64,
                    idle_ms: c.idle as u64,
                })
                .collect();
            for name in beats.keys() {
                if !list.iter().any(|c| &c.name == name) {
                    let a = age(name);
                    list.push(ConsumerInfo {
                        name: name.clone(),
                        pending: 0,
                        idle_ms: a.unwrap_or(u64::MAX),
                        heartbeat_ms_ago: a,
                    });
                }
            }
            out.push(GroupInfo {
                pending: g.pending as u64,
                lag: g.lag.map(|l| l as u64),
                last_delivered_id: g.last_delivered_id,
                consumers: list,
                name: g.name,
            });
        }
        Ok(out)
    }

    /// One group, if it exists.
    pub async fn group(&self, group: &str) -> Result<Option<GroupInfo>> {
        Ok(self.groups().await?.into_iter().find(|g| g.name == group))
    }

    /// `XGROUP SETID`: the group's next delivery is the first entry after `last_delivered_id` (`$`: only
    /// new entries). Pending entries are not touched.
    pub async fn rewind(&self, group: &str, last_delivered_id: &str) -> Result<()> {
        let stream = &self.bus.config().stream;
        let mut conn = self.bus.connection();
        let res: redis::RedisResult<()> = conn.xgroup_setid(stream, group, last_delivered_id).await;
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("NOGROUP") => Err(BusError::NoSuchGroup {
                stream: stream.clone(),
                group: group.to_string(),
            }),
            Err(e) => Err(BusError::Redis {
                op: "XGROUP SETID",
                source: e,
            }),
        }
    }
}

/// Follows the stream with `XREAD BLOCK` on its own connection.
pub struct Follower {
    conn: crate::connection::Connection,
    stream: String,
    block_ms: usize,
    last: String,
}

impl Follower {
    /// The next entries (empty when BLOCK timed out).
    pub async fn next_batch(&mut self) -> Result<Vec<RawEntry>> {
        let opts = StreamReadOptions::default()
            .block(self.block_ms)
            .count(PAGE);
        let v: Value = self
            .conn
            .xread_options(&[&self.stream], &[&self.last], &opts)
            .await
            .map_err(BusError::redis("XREAD"))?;
        let entries = present(parse_read("XREAD", v)?);
        if let Some(last) = entries.last() {
            self.last = last.id.clone();
        }
        Ok(entries)
    }
}
