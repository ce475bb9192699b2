//! The scheduled minimums' windows open on the stream (`ScheduledMinimumStarted` until its
//! `ScheduledMinimumEnded`), and the minimum they make (see [`crate::schedule`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use bus::event::{ScheduledMinimumEnded, ScheduledMinimumStarted};
use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::command::Cause;
use crate::policy::{Policy, DEFAULT_POOL};

/// One open window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenWindow {
    /// The pool it raises; `None`: the cluster's minimum.
    pub pool: Option<String>,
    pub min_nodes: u32,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// The `ScheduledMinimumStarted` that opened it: top-ups while it is open continue its chain.
    pub cause: Cause,
}

/// The open windows, by schedule key (`cluster/<i>`, `pool/<name>/<i>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Schedules {
    pub open: BTreeMap<String, OpenWindow>,
}

impl Schedules {
    /// `ScheduledMinimumStarted` (also used by the enforcer to see the windows it is opening).
    pub fn started(&mut self, env: &Envelope, s: &ScheduledMinimumStarted) {
        self.open.insert(
            s.schedule.clone(),
            OpenWindow {
                pool: s.pool.clone(),
                min_nodes: s.min_nodes,
                start: s.window_start,
                end: s.window_end,
                cause: Cause::from(env),
            },
        );
    }

    /// `ScheduledMinimumEnded`.
    pub fn ended(&mut self, e: &ScheduledMinimumEnded) {
        // Only the window it names: a late end of an earlier window leaves a newer one open.
        if self
            .open
            .get(&e.schedule)
            .is_some_and(|w| w.start == e.window_start)
        {
            self.open.remove(&e.schedule);
        }
    }

    /// The cluster's minimum while the windows are open: the configured one or the largest
    /// window's, never above `max_nodes`.
    pub fn cluster_min(&self, policy: &Policy) -> u32 {
        self.raised(None, policy.limits.min_nodes)
            .min(policy.limits.max_nodes)
    }

    /// `pool`'s minimum while the windows are open (for the default pool of a configuration
    /// without pools, the cluster's).
    pub fn pool_min(&self, policy: &Policy, pool: &str) -> u32 {
        if policy.pools.is_empty() && pool == DEFAULT_POOL {
            return self.cluster_min(policy);
        }
        policy
            .pool(pool)
            .map_or(0, |p| self.raised(Some(pool), p.min_nodes).min(p.max_nodes))
    }

    fn raised(&self, pool: Option<&str>, configured: u32) -> u32 {
        self.open
            .values()
            .filter(|w| w.pool.as_deref() == pool)
            .map(|w| w.min_nodes)
            .fold(configured, u32::max)
    }

    /// `policy` with the minimums the open windows raise: what every rule that reads a minimum
    /// sees, so a window holds the capacity it asked for (scale-down stops at it). Borrowed when
    /// no window is open.
    pub fn effective<'p>(&self, policy: &'p Policy) -> Cow<'p, Policy> {
        if self.open.is_empty() {
            return Cow::Borrowed(policy);
        }
        let mut p = policy.clone();
        p.limits.min_nodes = self.cluster_min(policy);
        for pool in &mut p.pools {
            pool.min_nodes = self
                .raised(Some(&pool.name), pool.min_nodes)
                .min(pool.max_nodes);
        }
        Cow::Owned(p)
    }
}
