//! Prometheus metrics (`/metrics`), through `prometheus-client`.
//!
//! One [`Metrics`] per process, shared by `Arc`. Names are part of the monitoring contract
//! (deploy/alerts.yml, the Grafana dashboard): change them together.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupTypeLabels {
    pub group: String,
    pub event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

fn action_buckets() -> Histogram {
    // Worker actions take seconds to minutes.
    Histogram::new([
        0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

/// Every metric the autoscaler exports.
pub struct Metrics {
    registry: Registry,
    /// Workers by state as the record sees them (`ready`, `not_ready`, `creating`, `draining`, …).
    pub workers: Family<StateLabel, Gauge>,
    /// The cluster's min_nodes in effect: the configured one, or an open schedule window's.
    pub workers_min: Gauge,
    pub workers_max: Gauge,
    /// Stopped workers kept in each pool's warm pool.
    pub warm_workers: Family<PoolLabel, Gauge>,
    /// Spare workers (Ready and empty, or on their way) of each pool with a capacity buffer.
    pub buffer_spare_workers: Family<PoolLabel, Gauge>,
    /// Workers each pool with a capacity buffer is short of it.
    pub buffer_shortfall_workers: Family<PoolLabel, Gauge>,
    /// Each pool's min_nodes in effect (raised by an open schedule window).
    pub pool_min: Family<PoolLabel, Gauge>,
    /// Open windows of scheduled minimums.
    pub schedule_windows_open: Gauge,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    pub events_published: Family<TypeLabel, Counter>,
    pub events_handled: Family<GroupTypeLabels, Counter>,
    pub events_failed: Family<GroupTypeLabels, Counter>,
    pub events_dead_lettered: Family<GroupLabel, Counter>,
    pub dlq_length: Gauge,
    pub group_pending: Family<GroupLabel, Gauge>,
    pub group_lag: Family<GroupLabel, Gauge>,
    pub decisions: Family<KindLabel, Counter>,
    pub scale_down_blocked: Family<ReasonLabel, Counter>,
    pub action_duration: Family<ActionLabel, Histogram, fn() -> Histogram>,
    pub actions_failed: Family<ActionLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("autoscaler");
        let m = Metrics {
            workers: Family::default(),
            workers_min: Gauge::default(),
            workers_max: Gauge::default(),
            warm_workers: Family::default(),
            buffer_spare_workers: Family::default(),
            buffer_shortfall_workers: Family::default(),
            pool_min: Family::default(),
            schedule_windows_open: Gauge::default(),
            leader: Gauge::default(),
            events_published: Family::default(),
            events_handled: Family::default(),
            events_failed: Family::default(),
            events_dead_lettered: Family::default(),
            dlq_length: Gauge::default(),
            group_pending: Family::default(),
            group_lag: Family::default(),
            decisions: Family::default(),
            scale_down_blocked: Family::default(),
            action_duration: Family::new_with_constructor(action_buckets),
            actions_failed: Family::default(),
            registry: Registry::default(),
        };
        registry.register("workers", "Workers by state", m.workers.clone());
        registry.register(
            "workers_min",
            "min_nodes in effect (configured, or raised by an open schedule window)",
            m.workers_min.clone(),
        );
        registry.register("workers_max", "Configured max_nodes", m.workers_max.clone());
        registry.register(
            "warm_workers",
            "Stopped workers kept in the pool's warm pool",
            m.warm_workers.clone(),
        );
        registry.register(
            "buffer_spare_workers",
            "Spare workers of a pool with a capacity buffer (Ready and empty, or on their way)",
            m.buffer_spare_workers.clone(),
        );
        registry.register(
            "buffer_shortfall_workers",
            "Workers a pool's capacity buffer is short of",
            m.buffer_shortfall_workers.clone(),
        );
        registry.register(
            "pool_min_nodes",
            "A pool's min_nodes in effect (raised by an open schedule window)",
            m.pool_min.clone(),
        );
        registry.register(
            "schedule_windows_open",
            "Open windows of scheduled minimums",
            m.schedule_windows_open.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        registry.register(
            "events_published",
            "Events published by type",
            m.events_published.clone(),
        );
        registry.register(
            "events_handled",
            "Events handled by group and type",
            m.events_handled.clone(),
        );
        registry.register(
            "events_failed",
            "Handler failures by group and type",
            m.events_failed.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Entries moved to the dead-letter stream, by group",
            m.events_dead_lettered.clone(),
        );
        registry.register(
            "dlq_length",
            "Entries in the dead-letter stream",
            m.dlq_length.clone(),
        );
        registry.register(
            "group_pending",
            "Delivered but unacknowledged entries per consumer group",
            m.group_pending.clone(),
        );
        registry.register(
            "group_lag",
            "Entries not yet delivered per consumer group",
            m.group_lag.clone(),
        );
        registry.register(
            "decisions",
            "Scaling decisions by kind",
            m.decisions.clone(),
        );
        registry.register(
            "scale_down_blocked",
            "ScaleDownBlocked events by reason code",
            m.scale_down_blocked.clone(),
        );
        registry.register(
            "action_duration_seconds",
            "Duration of completed scaling actions",
            m.action_duration.clone(),
        );
        registry.register(
            "actions_failed",
            "Failed scaling actions by action",
            m.actions_failed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one published event, and what it says about decisions.
    pub fn observe_published(&self, event: &bus::Event) {
        use bus::Event as E;
        self.events_published
            .get_or_create(&TypeLabel {
                event_type: event.event_type().to_string(),
            })
            .inc();
        let kind = match event {
            E::ScaleUpDecision(_) => Some("scale_up"),
            E::ScaleDownDecision(_) => Some("scale_down"),
            E::AutoScaleUpToMinimum(_) => Some("scale_up_to_minimum"),
            E::EmergencyScaleUp(_) => Some("emergency_scale_up"),
            E::ScaleDownBlocked(_) => Some("scale_down_blocked"),
            _ => None,
        };
        if let Some(kind) = kind {
            self.decisions
                .get_or_create(&KindLabel { kind: kind.into() })
                .inc();
        }
        match event {
            E::ScaleDownBlocked(b) => {
                self.scale_down_blocked
                    .get_or_create(&ReasonLabel {
                        reason: b.reason.clone(),
                    })
                    .inc();
            }
            E::ScalingActionCompleted(c) => {
                self.action_duration
                    .get_or_create(&ActionLabel {
                        action: c.action.as_str().into(),
                    })
                    .observe(c.duration);
            }
            E::ScalingActionFailed(f) => {
                self.actions_failed
                    .get_or_create(&ActionLabel {
                        action: f.action.as_str().into(),
                    })
                    .inc();
            }
            _ => {}
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_and_completed_events_show_up_in_the_exposition() {
        let m = Metrics::new();
        m.observe_published(&bus::Event::ScaleDownBlocked(
            bus::event::ScaleDownBlocked {
                reason: "pending_pods".into(),
                workers: 3,
                min_workers: 2,
                pending_count: Some(1),
                node_name: None,
                detail: None,
                pool: None,
            },
        ));
        m.observe_published(&bus::Event::ScalingActionCompleted(
            bus::event::ScalingActionCompleted {
                action: bus::event::ScalingAction::ScaleUp,
                count: 1,
                previous_workers: 2,
                new_workers: 3,
                duration: 4.2,
                nodes: vec![],
            },
        ));
        let text = m.encode();
        assert!(
            text.contains("autoscaler_scale_down_blocked_total{reason=\"pending_pods\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("autoscaler_decisions_total{kind=\"scale_down_blocked\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("autoscaler_action_duration_seconds_count{action=\"scale_up\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "autoscaler_events_published_total{event_type=\"ScalingActionCompleted\"} 1"
        ));
    }
}
