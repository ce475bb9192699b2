//! MinimumNodeEnforcer: the cluster never stays below `min_nodes`.
//!
//! - fewer live workers than the minimum → `MinimumNodesViolation` (once per violation), then
//!   `AutoScaleUpToMinimum {target_workers: min}` (when `auto_scale_to_min`) caused by it — also when
//!   workers already being created cover the gap (absolute target: nothing more is created); while
//!   the violation lasts, the decision is repeated only if nothing being created covers the gap;
//! - `emergency_scale_threshold` or more workers lost within `emergency_window` →
//!   `EmergencyScaleUp` (the NodeManager applies no cooldown to any decision);
//! - back at the minimum after a violation → `MinimumNodesRestored` (its id is derived from the
//!   violation's, so several events noticing the recovery publish it once);
//! - scheduled minimums (`schedules`): the timer publishes each window's edges and tops the cluster
//!   or pool up to an open window's minimum with the reason `schedule` (no violation: the window
//!   asked for it; see [`crate::schedule`]).
//!
//! Checked on events that change worker counts and on [`MinimumNodeEnforcer::tick`], which the
//! leader calls every `min_violation_check_interval`.

use bus::event::{
    AutoScaleUpToMinimum, EmergencyScaleUp, Event, MinimumNodesRestored, MinimumNodesViolation,
    ScaleUpDecision, ScheduledMinimumEnded, ScheduledMinimumStarted,
};
use std::collections::BTreeSet;

use bus::Envelope;
use chrono::{DateTime, Utc};

use crate::codes::reason;
use crate::command::{Cause, Emitter, Outcome};
use crate::model::{Model, OpenWindow, Violation};
use crate::policy::{pool_field, Policy};
use crate::schedule;

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

    /// The periodic check: the scheduled minimums' edges and top-ups (`schedules`), then the
    /// violation. Outputs continue the open violation's chain when there is one; otherwise a
    /// violation found by the timer is itself a root observation of the enforcer.
    pub fn tick(&self, model: &Model, policy: &Policy, now: DateTime<Utc>) -> Outcome {
        let mut o = self.schedules(model, policy, now);
        o.extend(self.violation_tick(model, policy, now));
        o
    }

    fn violation_tick(&self, model: &Model, policy: &Policy, now: DateTime<Utc>) -> Outcome {
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

    /// The scheduled minimums at `now` (see [`crate::schedule`]): a window that opened since the
    /// last tick is published as a root `ScheduledMinimumStarted` (it is the clock's observation),
    /// one that closed (or whose schedule left the configuration) as `ScheduledMinimumEnded`; their
    /// ids name the schedule and the window, so replicas publish each edge once. While a window is
    /// open, the cluster or pool it raises is topped up to its minimum with the reason `schedule`
    /// (absolute targets; not while a scale-up is starting or the pool backs off).
    pub(crate) fn schedules(&self, model: &Model, policy: &Policy, now: DateTime<Utc>) -> Outcome {
        let (roots, open) = schedule_edges(model, policy, now);
        let mut o = Outcome::default();
        if roots.is_empty() && open.open.is_empty() {
            return o;
        }
        o.events.extend(roots.iter().cloned());
        if policy.enforcement.auto_scale_to_min
            && !model.scale_up_starting(now, policy.scaling.new_worker_grace)
        {
            o.extend(self.schedule_top_ups(model, policy, &open, &roots, now));
        }
        o
    }

    /// Decisions that bring what open windows raise up to their minimum: the cluster's with an
    /// `AutoScaleUpToMinimum`, a pool's with a `ScaleUpDecision` for it. Caused by the window's
    /// `ScheduledMinimumStarted` (`just_opened`, or the one the model remembers).
    fn schedule_top_ups(
        &self,
        model: &Model,
        policy: &Policy,
        open: &crate::model::Schedules,
        just_opened: &[Envelope],
        now: DateTime<Utc>,
    ) -> Outcome {
        let position = model
            .stream
            .last_event
            .map(|e| e.id.to_string())
            .unwrap_or_default();
        let mut o = Outcome::default();
        // The window that asks for the most in a scope causes its top-up.
        let cause_of = |pool: Option<&str>| -> Option<(Cause, bool)> {
            let (key, _) = open
                .open
                .iter()
                .filter(|(_, w)| w.pool.as_deref() == pool)
                .max_by_key(|(_, w)| w.min_nodes)?;
            match just_opened.iter().find(
                |e| matches!(&e.event, Event::ScheduledMinimumStarted(s) if s.schedule == *key),
            ) {
                Some(e) => Some((Cause::from(e), true)),
                None => Some((open.open[key].cause.clone(), false)),
            }
        };
        fn emitter<'c>(
            cause: &'c Cause,
            fresh: bool,
            position: &str,
            now: DateTime<Utc>,
        ) -> Emitter<'c> {
            let out = Emitter::new(HANDLER, cause, now);
            if fresh {
                out
            } else {
                out.with_tag(&format!("tick:{position}"))
            }
        }
        let mut planned = model.planned_workers();
        let min = open.cluster_min(policy);
        let primary = policy.primary_pool();
        if min > policy.limits.min_nodes
            && planned < min
            && model.backing_off(&primary, now, policy).is_none()
        {
            if let Some((cause, fresh)) = cause_of(None) {
                let current = model.current_workers();
                let mut out = emitter(&cause, fresh, &position, now);
                out.emit(AutoScaleUpToMinimum {
                    current_workers: current,
                    min_workers: min,
                    scale_up_count: min.saturating_sub(current),
                    reason: reason::SCHEDULE.into(),
                    target_workers: min,
                });
                o.extend(out.finish());
                planned = min;
            }
        }
        for pool in &policy.pools {
            let min = open.pool_min(policy, &pool.name);
            let have = model.workers.planned_in(&pool.name);
            let room = policy.limits.max_nodes.saturating_sub(planned);
            let gap = min.saturating_sub(have).min(room);
            if min <= pool.min_nodes
                || gap == 0
                || model.backing_off(&pool.name, now, policy).is_some()
            {
                continue;
            }
            let Some((cause, fresh)) = cause_of(Some(&pool.name)) else {
                continue;
            };
            planned += gap;
            let mut out = emitter(&cause, fresh, &position, now);
            out.emit(ScaleUpDecision {
                current_workers: model.current_workers(),
                target_workers: planned,
                reason: reason::SCHEDULE.into(),
                pool: pool_field(&pool.name),
                pool_target: Some(have + gap),
            });
            o.extend(out.finish());
        }
        o
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

/// The edges of the scheduled minimums at `now`: a root `ScheduledMinimumStarted` for each window
/// open at `now` that the model does not have open, a root `ScheduledMinimumEnded` for each the
/// model has open that is not (or whose schedule left the configuration); and the windows open
/// once they are folded. (The what-if replay calls this to find edges its policy has and the
/// recording does not.)
pub fn schedule_edges(
    model: &Model,
    policy: &Policy,
    now: DateTime<Utc>,
) -> (Vec<Envelope>, crate::model::Schedules) {
    let placed = schedule::all(policy);
    if placed.is_empty() && model.schedules.open.is_empty() {
        return (Vec::new(), crate::model::Schedules::default());
    }
    let mut open = model.schedules.clone();
    let mut roots = Vec::new();
    for p in &placed {
        let key = p.key();
        match (p.schedule.window_at(now), model.schedules.open.get(&key)) {
            (Some(w), None) => {
                let started = ScheduledMinimumStarted {
                    schedule: key.clone(),
                    pool: p.pool.map(str::to_string),
                    min_nodes: p.schedule.min_nodes,
                    cron: p.schedule.cron.clone(),
                    window_start: w.start,
                    window_end: w.end,
                };
                let id = format!("{HANDLER}:schedule:{key}:start:{}", w.start.timestamp());
                let env = Envelope::root(HANDLER, started.clone(), model_metadata(model))
                    .with_deterministic_id(&id)
                    .with_timestamp(now);
                open.started(&env, &started);
                roots.push(env);
            }
            (None, Some(o)) => roots.push(ended(model, &key, o, now)),
            _ => {}
        }
    }
    for (key, o) in &model.schedules.open {
        if !placed.iter().any(|p| p.key() == *key) {
            roots.push(ended(model, key, o, now));
        }
    }
    for e in &roots {
        if let Event::ScheduledMinimumEnded(d) = &e.event {
            open.ended(d);
        }
    }
    (roots, open)
}

/// The root `ScheduledMinimumEnded` of the window `o` of schedule `key`.
fn ended(model: &Model, key: &str, o: &OpenWindow, now: DateTime<Utc>) -> Envelope {
    let id = format!("{HANDLER}:schedule:{key}:end:{}", o.start.timestamp());
    Envelope::root(
        HANDLER,
        ScheduledMinimumEnded {
            schedule: key.to_string(),
            pool: o.pool.clone(),
            min_nodes: o.min_nodes,
            window_start: o.start,
        },
        model_metadata(model),
    )
    .with_deterministic_id(&id)
    .with_timestamp(now)
}

fn model_metadata(model: &Model) -> bus::Metadata {
    model.stream.metadata.clone()
}
