//! What the MinimumNodeEnforcer follows: the open violation and the workers lost recently.

use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::command::Cause;
use crate::policy::chrono;

/// An open `MinimumNodesViolation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// The `MinimumNodesViolation` that opened it.
    pub cause: Cause,
    pub since: DateTime<Utc>,
}

/// A worker lost without a scale-down asking for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loss {
    pub at: DateTime<Utc>,
    pub node: String,
}

/// The violation and the recent losses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Minimum {
    emergency_window: std::time::Duration,
    /// The open `MinimumNodesViolation`, if any.
    pub violation: Option<Violation>,
    /// Workers lost recently (within the emergency window), for `EmergencyScaleUp`.
    pub recent_losses: Vec<Loss>,
}

impl Minimum {
    pub(super) fn new(emergency_window: std::time::Duration) -> Self {
        Self {
            emergency_window,
            violation: None,
            recent_losses: Vec::new(),
        }
    }

    /// Forgets losses older than the emergency window at `now`.
    pub(super) fn expire(&mut self, now: DateTime<Utc>) {
        let window = chrono(self.emergency_window);
        self.recent_losses.retain(|l| now - l.at <= window);
    }

    /// `MinimumNodesViolation`: the first one opens the violation.
    pub(super) fn violated(&mut self, env: &Envelope) {
        if self.violation.is_none() {
            self.violation = Some(Violation {
                cause: Cause::from(env),
                since: env.timestamp,
            });
        }
    }

    /// `MinimumNodesRestored`.
    pub(super) fn restored(&mut self) {
        self.violation = None;
    }

    /// A worker was lost.
    pub(super) fn lost(&mut self, at: DateTime<Utc>, node: &str) {
        self.recent_losses.push(Loss {
            at,
            node: node.to_string(),
        });
    }

    /// An `EmergencyScaleUp` answered the losses so far.
    pub(super) fn answered(&mut self) {
        self.recent_losses.clear();
    }
}
