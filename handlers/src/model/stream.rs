//! Where the model is in the stream: how many events it folded, the last one, and the ids seen
//! recently (to drop redeliveries).

use std::collections::{BTreeSet, VecDeque};

use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How many event ids are remembered to drop redeliveries.
const SEEN_CAPACITY: usize = 8192;

/// The last event folded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LastEvent {
    pub id: Uuid,
    pub at: DateTime<Utc>,
}

/// The position.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    /// How many events were folded.
    pub position: u64,
    pub last_event: Option<LastEvent>,
    /// The metadata of the last event folded (for roots the timer emits).
    pub metadata: bus::Metadata,
    seen: VecDeque<Uuid>,
    seen_set: BTreeSet<Uuid>,
}

impl Stream {
    /// Whether `event_id` was already folded (a redelivery).
    pub fn has_seen(&self, event_id: Uuid) -> bool {
        self.seen_set.contains(&event_id)
    }

    /// Records `env` as folded; `false` if it already was.
    pub(super) fn advance(&mut self, env: &Envelope) -> bool {
        if !self.seen_set.insert(env.event_id) {
            return false;
        }
        self.seen.push_back(env.event_id);
        if self.seen.len() > SEEN_CAPACITY {
            if let Some(old) = self.seen.pop_front() {
                self.seen_set.remove(&old);
            }
        }
        self.position += 1;
        self.last_event = Some(LastEvent {
            id: env.event_id,
            at: env.timestamp,
        });
        if self.metadata != env.metadata {
            self.metadata = env.metadata.clone();
        }
        true
    }
}
