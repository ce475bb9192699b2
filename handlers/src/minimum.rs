//! MinimumNodeEnforcer: the cluster never stays below `min_nodes`.
//!
//! - fewer live workers than the minimum → `MinimumNodesViolation` (once per violation), then
//!   `AutoScaleUpToMinimum {target_workers: min}` (when `auto_scale_to_min`) caused by it — also when
//!   workers already being created cover the gap (absolute target: nothing more is created); while
//!   the violation lasts, the decision is repeated only if nothing being created covers the gap;
//! - `emergency_scale_threshold` or more workers lost within `emergency_window` →
//!   `EmergencyScaleUp` (the NodeManager applies no cooldown to any decision);
//! - back at the minimum after a violation → `MinimumNodesRestored` (its id is derived from the
//!   violation's, so several events noticing the recovery publish it once).
//!
//! Checked on events that change worker counts and on [`MinimumNodeEnforcer::tick`], which the
//! leader calls every `min_violation_check_interval`.

use bus::event::{
    AutoScaleUpToMinimum, EmergencyScaleUp, Event, MinimumNodesRestored, MinimumNodesViolation,
    ScaleUpDecision,
};
use std::collections::BTreeSet;

use bus::Envelope;
use chrono::{DateTime, Utc};

use crate::command::{Cause, Emitter, Outcome};
use crate::model::{Model, Violation};
use crate::policy::{pool_field, Policy};

/// The handler's name (consumer group and event source).
pub const HANDLER: &str = "MinimumNodeEnforcer";

/// Guards the minimum.
#[derive(Debug, Clone, Copy, Default)]
pub struct MinimumNodeEnforcer;

impl MinimumNodeEnforcer {
    pub fn handle(
        &self,
        model: &Model,
        event: &Envelope,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> Outcome {
        let relevant = matches!(
            event.event,
            Event::NodeUnexpectedlyLost(_)
                | Event::NodeReady(_)
                | Event::ClusterObserved(_)
                | Event::ClusterStateSynced(_)
                | Event::ScalingActionCompleted(_)
                | Event::ScalingActionFailed(_)
                | Event::NodeRemoved(_)
        );
        if !relevant {
            return Outcome::default();
        }
        let cause = Cause::from(event);
        let mut out = Emitter::new(HANDLER, &cause, now);
        let emergency = matches!(event.event, Event::NodeUnexpectedlyLost(_))
            && self.emergency(model, policy, &mut out);
        self.check(model, policy, event.timestamp, None, emergency, &mut out);
        self.pool_minimums(model, policy, event.timestamp, &mut out);
        out.finish()
    }

    /// Tops up each configured pool below its own `min_nodes` (counting workers on their way) with
    /// a `ScaleUpDecision` for that pool, absolute in the pool's size. Without configured pools the
    /// default pool's minimum is the cluster's, which [`MinimumNodeEnforcer::check`] keeps.
    /// A pool that backs off after failed creates is skipped: its retry comes after the backoff.
    fn pool_minimums(
        &self,
        model: &Model,
        policy: &Policy,
        at: DateTime<Utc>,
        out: &mut Emitter<'_>,
    ) {
        if policy.pools.is_empty() || !policy.enforcement.auto_scale_to_min {
            return;
        }
        let mut planned = model.planned_workers();
        for pool in &policy.pools {
            let have = model.workers.planned_in(&pool.name);
            let room = policy.limits.max_nodes.saturating_sub(planned);
            let gap = pool.min_nodes.saturating_sub(have).min(room);
            if gap == 0 || model.backing_off(&pool.name, at, policy).is_some() {
                continue;
            }
            planned += gap;
            out.emit(ScaleUpDecision {
                current_workers: model.current_workers(),
                target_workers: planned,
                reason: "minimum_violation".into(),
                pool: pool_field(&pool.name),
                pool_target: Some(have + gap),
            });
        }
    }

    /// The periodic check. Outputs continue the open violation's chain when there is one; otherwise a
    /// violation found by the timer is itself a root observation of the enforcer.
    pub fn tick(&self, model: &Model, policy: &Policy, now: DateTime<Utc>) -> Outcome {
        let current = model.current_workers();
        let min = policy.limits.min_nodes;
        if current >= min && model.minimum.violation.is_none() {
            return Outcome::default();
        }
        let position = model
            .stream
            .last_event
            .map(|e| e.id.to_string())
            .unwrap_or_default();
        match &model.minimum.violation {
            Some(v) => {
                let mut out =
                    Emitter::new(HANDLER, &v.cause, now).with_tag(&format!("tick:{position}"));
                self.check(model, policy, now, Some(v.cause.clone()), false, &mut out);
                out.finish()
            }
            None => {
                // A root: the timer observed the violation.
                let root = Envelope::root(
                    HANDLER,
                    MinimumNodesViolation {
                        current_workers: current,
                        min_workers: min,
                        violation_time: now,
                    },
                    model_metadata(model),
                )
                .with_deterministic_id(&format!("{HANDLER}:tick:{position}:violation"))
                .with_timestamp(now);
                let cause = Cause::from(&root);
                let mut out = Emitter::new(HANDLER, &cause, now);
                self.auto_scale(model, policy, &root, &mut out);
                let mut o = out.finish();
                o.events.insert(0, root);
                o
            }
        }
    }

    /// `covered`: an `EmergencyScaleUp` was just emitted, whose target already includes the minimum.
    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        model: &Model,
        policy: &Policy,
        at: DateTime<Utc>,
        open: Option<Cause>,
        covered: bool,
        out: &mut Emitter<'_>,
    ) {
        let current = model.current_workers();
        let min = policy.limits.min_nodes;
        if current < min {
            match open.or_else(|| model.minimum.violation.as_ref().map(|v| v.cause.clone())) {
                None => {
                    let v = out.emit(MinimumNodesViolation {
                        current_workers: current,
                        min_workers: min,
                        violation_time: at,
                    });
                    if !covered {
                        self.auto_scale(model, policy, &v, out);
                    }
                }
                Some(_) if covered => {}
                Some(_) => {
                    // Still below: ask again only if nothing being created covers the gap (the
                    // decision is absolute, so a repeat is harmless anyway), and not while the
                    // pool it would create in backs off (the NodeManager's retry comes after).
                    let backing_off = model
                        .backing_off(&policy.primary_pool(), at, policy)
                        .is_some();
                    if current + model.provisioning() < min
                        && policy.enforcement.auto_scale_to_min
                        && !backing_off
                    {
                        out.emit(auto(current, min, "minimum_violation_persists"));
                    }
                }
            }
        } else if let Some(Violation { cause: v, .. }) = &model.minimum.violation {
            out.emit_keyed(
                MinimumNodesRestored {
                    current_workers: current,
                    min_workers: min,
                    restore_time: at,
                },
                &format!("restored:{}", v.event_id),
            );
        }
    }

    fn auto_scale(
        &self,
        model: &Model,
        policy: &Policy,
        violation: &Envelope,
        out: &mut Emitter<'_>,
    ) {
        // Always decided when a violation opens, so every violation is followed by an explicit
        // `AutoScaleUpToMinimum`, even if workers already being created (e.g. an interruption's
        // replacement) cover the gap: the target is absolute, so the NodeManager then creates
        // nothing more.
        let current = model.current_workers();
        let min = policy.limits.min_nodes;
        if policy.enforcement.auto_scale_to_min {
            out.emit_after(violation, auto(current, min, "minimum_violation"));
        }
    }

    /// Emits `EmergencyScaleUp` when enough workers were lost together; returns whether it did.
    fn emergency(&self, model: &Model, policy: &Policy, out: &mut Emitter<'_>) -> bool {
        let threshold = policy.enforcement.emergency_scale_threshold;
        let lost = u32::try_from(model.minimum.recent_losses.len()).unwrap_or(u32::MAX);
        if threshold == 0 || lost < threshold {
            return false;
        }
        // A lost worker may already have a replacement on its way: `docker kill` sends a signal first,
        // which the NodeManager answers as an interruption. That capacity is in `planned_workers`;
        // counting the loss again would overshoot.
        let replacing: BTreeSet<&str> = model
            .minimum
            .recent_losses
            .iter()
            .filter_map(|l| model.worker(&l.node)?.replacement.as_deref())
            .filter(|r| {
                model
                    .worker(r)
                    .is_some_and(|w| w.state.is_provisioning() || w.state.is_live())
            })
            .collect();
        let replacing = u32::try_from(replacing.len()).unwrap_or(u32::MAX);
        let remaining = model.current_workers();
        let min = policy.limits.min_nodes;
        let planned = model.planned_workers();
        let target = (planned + lost.saturating_sub(replacing))
            .max(min)
            .min(policy.limits.max_nodes)
            .max(planned);
        // Announced whenever the threshold is crossed, also when what is on its way covers it (then
        // it asks for nothing more: the target is absolute).
        out.emit(EmergencyScaleUp {
            lost_count: lost,
            remaining_workers: remaining,
            min_workers: min,
            emergency_scale: target - planned,
            target_workers: target,
        });
        true
    }
}

fn auto(current: u32, min: u32, reason: &str) -> AutoScaleUpToMinimum {
    AutoScaleUpToMinimum {
        current_workers: current,
        min_workers: min,
        scale_up_count: min.saturating_sub(current),
        reason: reason.into(),
        target_workers: min,
    }
}

fn model_metadata(model: &Model) -> bus::Metadata {
    model.stream.metadata.clone()
}
