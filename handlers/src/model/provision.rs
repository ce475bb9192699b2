//! Provisioning retries: the size scale-ups are working towards, and the failed provisions so far.

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

/// The goal and the failures in a row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provision {
    pub goal: Option<ScaleUpGoal>,
    /// Failed provisions in a row (reset by a completed scale-up).
    pub failures: u32,
    pub last_failure: Option<Failure>,
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

    /// A worker of `pool` failed to provision (`env`).
    pub(super) fn failed(&mut self, env: &Envelope, pool: &str) {
        self.failures += 1;
        self.last_failure = Some(Failure {
            at: env.timestamp,
            pool: pool.to_string(),
            cause: Cause::from(env),
        });
    }

    /// The goal is given up, reached, or replaced by a scale-down.
    pub(super) fn abandon(&mut self) {
        self.goal = None;
    }
}

fn default_pool() -> String {
    crate::policy::DEFAULT_POOL.to_string()
}
