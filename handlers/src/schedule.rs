//! Scheduled minimums: `schedules: [{cron, duration, min_nodes}]`, cluster-wide (`autoscaler.schedules`,
//! raising `limits.min_nodes`) or per pool (`pools[].schedules`, raising the pool's `min_nodes`).
//!
//! A window opens at each occurrence of `cron` (UTC; 5 fields, or 6 with seconds first) and lasts
//! `duration`; overlapping windows of one schedule are one window. The edges are facts on the stream,
//! `ScheduledMinimumStarted` / `ScheduledMinimumEnded`, published by the MinimumNodeEnforcer at the
//! first event or timer after the edge (see [`crate::minimum`]). While a window is open (as the
//! model folded it, so a replay sees the same), the minimum is the larger of the configured one and
//! the window's ([`crate::model::Schedules::effective`]).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::policy::{chrono, Policy};

/// One scheduled minimum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// When windows open, in UTC.
    pub cron: String,
    /// How long each window lasts.
    pub duration: Duration,
    /// The minimum while it is open.
    pub min_nodes: u32,
}

/// A cron expression that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cron {cron:?}: {reason}")]
pub struct CronError {
    pub cron: String,
    pub reason: String,
}

/// An open window: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Schedule {
    /// Checks the expression (the configuration's validation calls this).
    pub fn parse(&self) -> Result<croner::Cron, CronError> {
        croner::Cron::from_str(&self.cron).map_err(|e| CronError {
            cron: self.cron.clone(),
            reason: e.to_string(),
        })
    }

    /// The window open at `at`, if any: the latest occurrence at or before `at`, when `at` is
    /// within `duration` of it. An expression that does not parse has no windows (the
    /// configuration rejects it before it gets here).
    pub fn window_at(&self, at: DateTime<Utc>) -> Option<Window> {
        let cron = self.parse().ok()?;
        // croner keeps the sub-second part of `at`: an occurrence is a whole second.
        let start = cron.find_previous_occurrence(&at, true).ok()?;
        let start = start.with_nanosecond(0).unwrap_or(start);
        let end = start + chrono(self.duration);
        (at < end).then_some(Window { start, end })
    }
}

/// A schedule of the policy with its place: `cluster/<i>`, or `pool/<name>/<i>` with the pool.
#[derive(Debug, Clone, Copy)]
pub struct Placed<'p> {
    pub pool: Option<&'p str>,
    pub index: usize,
    pub schedule: &'p Schedule,
}

impl Placed<'_> {
    /// Its key in events and in the model.
    pub fn key(&self) -> String {
        match self.pool {
            None => format!("cluster/{}", self.index),
            Some(p) => format!("pool/{p}/{}", self.index),
        }
    }
}

/// Every schedule of `policy`: the cluster's, then each configured pool's.
pub fn all(policy: &Policy) -> Vec<Placed<'_>> {
    let cluster = policy
        .schedules
        .iter()
        .enumerate()
        .map(|(index, schedule)| Placed {
            pool: None,
            index,
            schedule,
        });
    let pools = policy.pools.iter().flat_map(|p| {
        p.schedules
            .iter()
            .enumerate()
            .map(move |(index, schedule)| Placed {
                pool: Some(p.name.as_str()),
                index,
                schedule,
            })
    });
    cluster.chain(pools).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn weekdays_8_to_18() -> Schedule {
        Schedule {
            cron: "0 8 * * 1-5".into(),
            duration: Duration::from_secs(10 * 3600),
            min_nodes: 4,
        }
    }

    #[test]
    fn a_window_is_open_from_the_occurrence_for_its_duration() {
        let s = weekdays_8_to_18();
        // Thursday 2026-12-03.
        assert_eq!(s.window_at(at("2026-12-03T07:59:59Z")), None);
        let w = s.window_at(at("2026-12-03T08:00:00Z")).unwrap();
        assert_eq!(w.start, at("2026-12-03T08:00:00Z"));
        assert_eq!(w.end, at("2026-12-03T18:00:00Z"));
        assert_eq!(s.window_at(at("2026-12-03T17:59:59Z")), Some(w));
        assert_eq!(s.window_at(at("2026-12-03T18:00:00Z")), None);
        // Saturday: none.
        assert_eq!(s.window_at(at("2026-12-05T09:00:00Z")), None);
    }

    #[test]
    fn seconds_are_allowed_first_and_a_bad_expression_is_an_error() {
        let s = Schedule {
            cron: "30 * * * * *".into(),
            duration: Duration::from_secs(20),
            min_nodes: 1,
        };
        let w = s.window_at(at("2026-12-03T10:00:40.250Z")).unwrap();
        assert_eq!(w.start, at("2026-12-03T10:00:30Z"), "whole seconds");
        assert!(s.window_at(at("2026-12-03T10:00:50Z")).is_none());
        let bad = Schedule {
            cron: "every monday".into(),
            ..s
        };
        assert!(bad.parse().is_err());
        assert_eq!(bad.window_at(at("2026-12-03T10:00:40Z")), None);
    }

    #[test]
    fn overlapping_windows_are_one() {
        let s = Schedule {
            cron: "* * * * *".into(),
            duration: Duration::from_secs(90),
            min_nodes: 1,
        };
        let w = s.window_at(at("2026-12-03T10:00:30Z")).unwrap();
        assert_eq!(w.start, at("2026-12-03T10:00:00Z"));
        assert!(s.window_at(at("2026-12-03T10:01:59Z")).is_some());
    }
}
