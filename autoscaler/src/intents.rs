//! What this process itself is doing to workers, so watchers can tell our own actions from someone else's.
//!
//! A removal we asked for must not come back as `NodeUnexpectedlyLost`; an interruption of a worker we are
//! stopping is not a notice. Watchers ask [`RemovalIntents::is_removing`]; executors record before they act.
//! Entries expire, so a crash mid-action cannot silence a watcher forever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The nodes this process is removing (stopping, draining, deleting), each until a deadline: what the
/// node and Docker events watchers consult. Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RemovalIntents {
    removing: Arc<Mutex<HashMap<String, Instant>>>,
}

impl RemovalIntents {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that we are removing (stopping, draining, deleting) `node` for up to `ttl`.
    pub fn removing(&self, node: &str, ttl: Duration) {
        let mut map = self.lock();
        map.insert(node.to_string(), Instant::now() + ttl);
    }

    /// Forgets an intent once the action is over.
    pub fn done(&self, node: &str) {
        self.lock().remove(node);
    }

    /// Whether a removal of `node` by us is in flight.
    pub fn is_removing(&self, node: &str) -> bool {
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, until| *until > now);
        map.contains_key(node)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        self.removing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_expires() {
        let i = RemovalIntents::new();
        i.removing("w1", Duration::from_millis(20));
        assert!(i.is_removing("w1"));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!i.is_removing("w1"));
    }

    #[test]
    fn done_forgets_at_once() {
        let i = RemovalIntents::new();
        i.removing("w1", Duration::from_secs(60));
        i.done("w1");
        assert!(!i.is_removing("w1"));
    }
}
