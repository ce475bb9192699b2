//! Alert de-duplication windows: per alert key, which event opened the current window, so every
//! replica agrees on which event notifies.

use std::collections::BTreeMap;

use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codes::dedup_key;
use crate::policy::chrono;

/// One key's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertWindow {
    pub start: DateTime<Utc>,
    /// The event that opened it (the one that notifies).
    pub opened_by: Uuid,
}

/// The windows, by alert key ([`crate::codes::dedup_key`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertWindows {
    dedup_window: std::time::Duration,
    pub windows: BTreeMap<String, AlertWindow>,
}

impl AlertWindows {
    pub(super) fn new(dedup_window: std::time::Duration) -> Self {
        Self {
            dedup_window,
            windows: BTreeMap::new(),
        }
    }

    /// Whether `event_id` opened the current window of `key`.
    pub fn opened_by(&self, key: &str, event_id: Uuid) -> bool {
        self.windows.get(key).map(|w| w.opened_by) == Some(event_id)
    }

    /// Opens a window for `env`'s key unless one is open.
    pub(super) fn open(&mut self, env: &Envelope) {
        let Some(key) = dedup_key(&env.event) else {
            return;
        };
        let window = chrono(self.dedup_window);
        let open = self
            .windows
            .get(&key)
            .is_some_and(|w| env.timestamp - w.start < window);
        if !open {
            let opened = AlertWindow {
                start: env.timestamp,
                opened_by: env.event_id,
            };
            self.windows.insert(key, opened);
        }
    }
}
