//! Counters of what became of deliveries, per group and event type, and of batched acks per group.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// What became of one delivery, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The handler succeeded (its outputs, if any, are published).
    Handled,
    /// The handler failed (or its outputs could not be published); the entry stays pending.
    Failed,
    /// The entry moved to the DLQ.
    DeadLettered,
}

/// Per group and event type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub handled: u64,
    pub failed: u64,
    pub dead_lettered: u64,
}

/// Batched-ack results per group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckCounters {
    /// Entries XACK removed from the pending list.
    pub acked: u64,
    /// Entries XACK found no longer pending (already acknowledged elsewhere): 0 unless something ran twice.
    pub misses: u64,
}

/// Called on every outcome with (group, event type, outcome): where Prometheus counters plug in.
pub type Observer = Arc<dyn Fn(&str, &str, DeliveryOutcome) + Send + Sync>;

#[derive(Default)]
struct StatsInner {
    per_type: BTreeMap<(String, String), Counters>,
    acks: BTreeMap<String, AckCounters>,
}

/// Counters of handled, failed and dead-lettered deliveries, shared by clones.
#[derive(Clone, Default)]
pub struct Stats {
    inner: Arc<Mutex<StatsInner>>,
    observer: Option<Observer>,
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats")
            .field("per_type", &self.snapshot())
            .finish()
    }
}

impl Stats {
    /// Counters that also call `observer` on every outcome.
    pub fn with_observer(
        observer: impl Fn(&str, &str, DeliveryOutcome) + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Arc::default(),
            observer: Some(Arc::new(observer)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatsInner> {
        // Counters stay usable even if a holder panicked.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record(&self, group: &str, event_type: &str, outcome: DeliveryOutcome) {
        {
            let mut inner = self.lock();
            let c = inner
                .per_type
                .entry((group.to_string(), event_type.to_string()))
                .or_default();
            match outcome {
                DeliveryOutcome::Handled => c.handled += 1,
                DeliveryOutcome::Failed => c.failed += 1,
                DeliveryOutcome::DeadLettered => c.dead_lettered += 1,
            }
        }
        if let Some(observer) = &self.observer {
            observer(group, event_type, outcome);
        }
    }

    pub(super) fn record_acks(&self, group: &str, acked: u64, misses: u64) {
        let mut inner = self.lock();
        let c = inner.acks.entry(group.to_string()).or_default();
        c.acked += acked;
        c.misses += misses;
    }

    /// The counters of one group and event type.
    pub fn counters(&self, group: &str, event_type: &str) -> Counters {
        self.lock()
            .per_type
            .get(&(group.to_string(), event_type.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// The counters of one group, all types summed.
    pub fn totals(&self, group: &str) -> Counters {
        self.lock()
            .per_type
            .iter()
            .filter(|((g, _), _)| g == group)
            .fold(Counters::default(), |a, (_, c)| Counters {
                handled: a.handled + c.handled,
                failed: a.failed + c.failed,
                dead_lettered: a.dead_lettered + c.dead_lettered,
            })
    }

    /// The batched-ack counters of one group.
    pub fn acks(&self, group: &str) -> AckCounters {
        self.lock().acks.get(group).copied().unwrap_or_default()
    }

    /// Every (group, type) with its counters.
    pub fn snapshot(&self) -> Vec<((String, String), Counters)> {
        self.lock()
            .per_type
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}
