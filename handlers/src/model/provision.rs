//! Provisioning retries: the size scale-ups are working towards, the failed provisions so far, and
//! each pool's backoff after failed creates.
//!
//! **Pool backoff.** A worker of a pool that fails to provision puts the pool in backoff: no create
//! in it until `provision_retry_backoff × 2^(failures in a row − 1)` (capped at
//! `provision_retry_backoff_max`) after the last failure. A failure because the provider did not
//! answer (`provider_unavailable: …`, an open circuit breaker included) ends its backoff early at
//! the first `ClusterObserved` after it: that observation listed the engine's containers, so the
//! engine answers again. A worker of the pool becoming Ready ends the backoff and its count. Being
//! folded from the stream, the backoff is the same on every replica and in a replay.

use std::collections::BTreeMap;

use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::command::Cause;

/// The size scale-ups are working towards; failed workers are replaced until it is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleUpGoal {
    pub target_workers: u32,
    /// The last `ScaleUpStarted` that raised or kept it.
    pub cause: Cause,
}

/// A failed provision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub at: DateTime<Utc>,
    /// The pool of the worker that failed: its replacement is made there.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// The `ScalingActionFailed`.
    pub cause: Cause,
}

/// One pool's failed creates in a row (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolBackoff {
    pub failures: u32,
    /// The last failure.
    pub at: DateTime<Utc>,
    /// The last failure was the provider not answering.
    pub provider: bool,
    /// A `ClusterObserved` after that failure: the engine answers again.
    pub engine_answered: Option<DateTime<Utc>>,
    /// The last failure's error, for `ScaleUpBlocked.detail`.
    pub error: String,
}

impl PoolBackoff {
    /// The `ScaleUpBlocked.reason` it gives: `provider_unavailable` or `pool_backoff`.
    pub fn reason(&self) -> &'static str {
        if self.provider {
            crate::codes::PROVIDER_UNAVAILABLE
        } else {
            crate::codes::POOL_BACKOFF
        }
    }

    /// Until when the pool backs off under `backoff`.
    pub fn until(&self, backoff: &primitives::Backoff) -> DateTime<Utc> {
        let end = self.at + crate::policy::chrono(backoff.delay_for(self.failures));
        match self.engine_answered {
            Some(t) if self.provider => end.min(t),
            _ => end,
        }
    }
}

/// The goal and the failures in a row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provision {
    pub goal: Option<ScaleUpGoal>,
    /// Failed provisions in a row (reset by a completed scale-up).
    pub failures: u32,
    pub last_failure: Option<Failure>,
    /// Pools whose last creates failed, by name.
    #[serde(default)]
    pub backoff: BTreeMap<String, PoolBackoff>,
}

impl Provision {
    /// A scale-up `env` towards `target` started: the goal is the larger of both.
    pub(super) fn started(&mut self, env: &Envelope, target: u32) {
        let goal = self
            .goal
            .as_ref()
            .map_or(0, |g| g.target_workers)
            .max(target);
        self.goal = Some(ScaleUpGoal {
            target_workers: goal,
            cause: Cause::from(env),
        });
    }

    /// A worker of `pool` failed to provision (`env`, with `error`; `provider`: the provider did
    /// not answer).
    pub(super) fn failed(&mut self, env: &Envelope, pool: &str, error: &str, provider: bool) {
        self.failures += 1;
        self.last_failure = Some(Failure {
            at: env.timestamp,
            pool: pool.to_string(),
            cause: Cause::from(env),
        });
        let b = self.backoff.entry(pool.to_string()).or_insert(PoolBackoff {
            failures: 0,
            at: env.timestamp,
            provider,
            engine_answered: None,
            error: String::new(),
        });
        b.failures += 1;
        b.at = env.timestamp;
        b.provider = provider;
        b.engine_answered = None;
        b.error = error.to_string();
    }

    /// A `ClusterObserved` at `at`: the engines answered their listing, but those of the pools in
    /// `unreachable`.
    pub(super) fn engine_answered<'a>(
        &mut self,
        at: DateTime<Utc>,
        unreachable: impl IntoIterator<Item = &'a str>,
    ) {
        let away: std::collections::BTreeSet<&str> = unreachable.into_iter().collect();
        for (pool, b) in self.backoff.iter_mut() {
            if away.contains(pool.as_str()) {
                continue;
            }
            if b.provider && b.engine_answered.is_none() && at >= b.at {
                b.engine_answered = Some(at);
            }
        }
    }

    /// A worker of `pool` became Ready: its creates work again.
    pub(super) fn ready_in(&mut self, pool: &str) {
        self.backoff.remove(pool);
    }

    /// The backoff of `pool` if it still holds at `at` under `backoff`.
    pub fn backing_off(
        &self,
        pool: &str,
        at: DateTime<Utc>,
        backoff: &primitives::Backoff,
    ) -> Option<&PoolBackoff> {
        self.backoff.get(pool).filter(|b| at < b.until(backoff))
    }

    /// The goal is given up, reached, or replaced by a scale-down.
    pub(super) fn abandon(&mut self) {
        self.goal = None;
    }
}

fn default_pool() -> String {
    crate::policy::DEFAULT_POOL.to_string()
}
