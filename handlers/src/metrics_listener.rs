//! MetricsListener: raw `MetricsSampled` → `ResourcePressureAlert`, `UnderutilizationWarning` or
//! `OptimalStateTrigger`, each only once a threshold has held for `consecutive_periods` samples
//! (the streaks are kept by the [`Model`]).
//!
//! Pressure and underutilisation are level-triggered (repeated on every qualifying sample, so the
//! engine re-evaluates as cooldowns run out); `OptimalStateTrigger` is edge-triggered (once per low
//! streak at the minimum, with no scale-down in flight).

use bus::event::{Event, OptimalStateTrigger, ResourcePressureAlert, UnderutilizationWarning};
use bus::Envelope;
use chrono::{DateTime, Utc};

use crate::command::{Cause, Emitter, Outcome};
use crate::model::Model;
use crate::policy::Policy;

/// The handler's name (consumer group and event source).
pub const HANDLER: &str = "MetricsListener";

/// Turns samples into resource events.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsListener;

impl MetricsListener {
    pub fn handle(
        &self,
        model: &Model,
        event: &Envelope,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> Outcome {
        let Event::MetricsSampled(s) = &event.event else {
            return Outcome::default();
        };
        let cause = Cause::from(event);
        let mut out = Emitter::new(HANDLER, &cause, now);
        let periods = policy.thresholds.consecutive_periods.max(1);
        let workers = model.current_workers();
        let min = policy.limits.min_nodes;
        if model.streaks.high >= periods {
            out.emit(ResourcePressureAlert {
                cpu_avg: s.cpu_avg,
                memory_avg: s.memory_avg,
                workers,
                max_workers: policy.limits.max_nodes,
            });
        } else if model.streaks.low >= periods {
            if workers > min {
                let duration = model.streaks.low_since.map_or(0.0, |since| {
                    (event.timestamp - since).num_milliseconds() as f64 / 1000.0
                });
                out.emit(UnderutilizationWarning {
                    workers,
                    min_workers: min,
                    cpu_avg: s.cpu_avg,
                    memory_avg: s.memory_avg,
                    duration,
                    nodes: s.nodes.clone(),
                });
            } else if workers == min
                && !model.streaks.optimal_announced
                && !model.scale_down_in_flight()
            {
                // A node being removed no longer counts, but it is not gone yet: announce the
                // minimum once the removal is done (the next sample), not during the drain.
                out.emit(OptimalStateTrigger {
                    current_workers: workers,
                    min_workers: min,
                    cpu_avg: s.cpu_avg,
                    memory_avg: s.memory_avg,
                });
            }
        }
        out.finish()
    }
}
