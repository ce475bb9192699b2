//! Stream ids and the `--since`/`--from` arguments of the audit commands.
//!
//! A Redis stream id is `<unix ms>-<seq>`, so a point in time maps to an id: `<ms>-0` is the first id that
//! can have been written at or after that millisecond.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A parsed stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// Parses `ms-seq` or a bare `ms` (sequence 0).
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = match s.split_once('-') {
            Some((ms, seq)) => (ms, Some(seq)),
            None => (s, None),
        };
        let ms = ms.parse().ok()?;
        let seq = match seq {
            Some(seq) => seq.parse().ok()?,
            None => 0,
        };
        Some(Self { ms, seq })
    }

    /// The id right before this one, if any: `XGROUP SETID` to it re-delivers this id and everything after.
    pub fn previous(self) -> Option<Self> {
        if self.seq > 0 {
            Some(Self {
                ms: self.ms,
                seq: self.seq - 1,
            })
        } else if self.ms > 0 {
            Some(Self {
                ms: self.ms - 1,
                seq: u64::MAX,
            })
        } else {
            None
        }
    }

    /// The time the id was generated (its millisecond part).
    pub fn time(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(i64::try_from(self.ms).ok()?)
    }

    /// The first id of a millisecond.
    pub fn at(t: DateTime<Utc>) -> Self {
        Self {
            ms: u64::try_from(t.timestamp_millis()).unwrap_or(0),
            seq: 0,
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a `--since`/`--from` argument was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is neither a stream id (1700000000000-0), an RFC 3339 time nor a duration ago (10m)"
)]
pub struct BadPosition {
    pub input: String,
}

/// Turns a stream id, an RFC 3339 time or a humantime duration ("10m" = ten minutes before `now`) into a
/// stream id.
pub fn parse_position(input: &str, now: DateTime<Utc>) -> Result<StreamId, BadPosition> {
    let s = input.trim();
    if let Some(id) = StreamId::parse(s) {
        return Ok(id);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(StreamId::at(t.with_timezone(&Utc)));
    }
    let ago = s.strip_suffix(" ago").unwrap_or(s);
    if let Ok(d) = humantime::parse_duration(ago) {
        let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        let t = now
            .checked_sub_signed(d)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        return Ok(StreamId::at(t));
    }
    Err(BadPosition {
        input: input.to_string(),
    })
}

/// How old an entry is, from its id.
pub fn age(id: &str, now: DateTime<Utc>) -> Option<Duration> {
    let t = StreamId::parse(id)?.time()?;
    (now - t).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-12-16T11:20:00.000Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn ids_times_and_durations_ago_become_stream_ids() {
        assert_eq!(
            parse_position("1765884000000-3", now())
                .unwrap()
                .to_string(),
            "1765884000000-3"
        );
        assert_eq!(parse_position("17", now()).unwrap().to_string(), "17-0");
        assert_eq!(
            parse_position("2025-12-16T11:20:00Z", now()).unwrap(),
            StreamId::at(now())
        );
        assert_eq!(
            parse_position("10m", now()).unwrap().ms,
            now().timestamp_millis() as u64 - 600_000
        );
        assert!(parse_position("yesterday-ish", now()).is_err());
    }

    #[test]
    fn previous_id_steps_back_across_milliseconds() {
        let id = StreamId::parse("5-0").unwrap();
        assert_eq!(
            id.previous().unwrap().to_string(),
            format!("4-{}", u64::MAX)
        );
        assert_eq!(
            StreamId::parse("5-2")
                .unwrap()
                .previous()
                .unwrap()
                .to_string(),
            "5-1"
        );
        assert_eq!(StreamId::parse("0-0").unwrap().previous(), None);
    }
}
