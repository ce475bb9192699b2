//! What the pool itself is doing to which worker, so the events watcher does not report the pool's own
//! starts, stops and removals as surprises.
//!
//! The pool records an intent *before* calling the engine; the matching engine events arrive later and
//! asynchronously, so intents are not cleared when the call returns but expire after a TTL that covers
//! the call's timeout plus the event's delivery.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An action of the pool on one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intent {
    /// Creating or starting: `start` is expected.
    Start,
    /// Stopping into the warm pool: `kill`, `stop` and `die` are expected.
    Stop,
    /// Removing: `kill`, `stop`, `die` and `destroy` are expected.
    Remove,
}

/// The pool's own recent engine actions (start, stop, remove) per worker name, so the events watcher
/// expects the engine events they cause. Cheap to clone through an `Arc`.
#[derive(Debug)]
pub struct PoolIntents {
    /// How long an intent covers the engine's events.
    ttl: Duration,
    /// std mutex: short critical sections, never held across an await.
    entries: Mutex<HashMap<String, Vec<(Intent, Instant)>>>,
}

impl PoolIntents {
    /// An empty set whose intents expire after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(Intent, Instant)>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the pool is about to do `intent` to `name`.
    pub fn record(&self, name: &str, intent: Intent) {
        self.record_at(name, intent, Instant::now());
    }

    /// As [`PoolIntents::record`] at an explicit time.
    pub fn record_at(&self, name: &str, intent: Intent, now: Instant) {
        let mut entries = self.lock();
        let ttl = self.ttl;
        entries.retain(|_, v| {
            v.retain(|(_, at)| now.saturating_duration_since(*at) < ttl);
            !v.is_empty()
        });
        let list = entries.entry(name.to_string()).or_default();
        list.retain(|(i, _)| *i != intent);
        list.push((intent, now));
    }

    /// Whether the engine event `action` (`start`, `kill`, `stop`, `die`, `oom`, `destroy`) on `name`
    /// was caused by the pool.
    pub fn expects(&self, name: &str, action: &str) -> bool {
        self.expects_at(name, action, Instant::now())
    }

    /// As [`PoolIntents::expects`] at an explicit time.
    pub fn expects_at(&self, name: &str, action: &str, now: Instant) -> bool {
        let entries = self.lock();
        let Some(list) = entries.get(name) else {
            return false;
        };
        list.iter()
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .any(|(intent, _)| {
                matches!(
                    (intent, action),
                    (Intent::Start, "start")
                        | (Intent::Stop, "kill" | "stop" | "die")
                        | (Intent::Remove, "kill" | "stop" | "die" | "destroy")
                )
            })
    }

    /// Forgets the intents on `name` (e.g. a stop intent once the worker is started again).
    pub fn clear(&self, name: &str, intent: Intent) {
        let mut entries = self.lock();
        if let Some(list) = entries.get_mut(name) {
            list.retain(|(i, _)| *i != intent);
            if list.is_empty() {
                entries.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_intents_cover_their_events_until_they_expire() {
        let intents = PoolIntents::new(Duration::from_secs(60));
        let t0 = Instant::now();
        intents.record_at("w-1", Intent::Remove, t0);
        assert!(intents.expects_at("w-1", "kill", t0));
        assert!(intents.expects_at("w-1", "destroy", t0));
        assert!(!intents.expects_at("w-1", "start", t0));
        assert!(!intents.expects_at("w-2", "kill", t0));
        assert!(!intents.expects_at("w-1", "kill", t0 + Duration::from_secs(61)));
    }

    #[test]
    fn docker_stop_intent_does_not_cover_destroy() {
        let intents = PoolIntents::new(Duration::from_secs(60));
        intents.record("w-1", Intent::Stop);
        assert!(intents.expects("w-1", "die"));
        assert!(!intents.expects("w-1", "destroy"));
        intents.clear("w-1", Intent::Stop);
        assert!(!intents.expects("w-1", "die"));
    }
}
