//! ScalingDecisionEngine: decides scale-up and scale-down, and says why a scale-down does not happen.
//!
//! **Pending pods always win.** The engine first computes the scale-up need ([`up_need`]); only when
//! no pod is pending does it get a [`NoPendingPods`] token, and [`scale_down`] cannot be called without
//! one. So whatever the order rules are written in, no scale-down is decided while pods are pending.
//!
//! Rule time is the input event's timestamp (identical on every replica); `now` only stamps outputs.

use bus::event::{
    Event, ManualScaleRequested, ScaleDownBlocked, ScaleDownDecision, ScaleUpDecision,
    ScalingAction, ScalingActionFailed,
};
use bus::Envelope;
use chrono::{DateTime, Utc};

use crate::binpack;
use crate::codes::reason;
use crate::command::{Cause, Emitter, Outcome};
use crate::model::{Model, Worker, WorkerState};
use crate::policy::{chrono, Policy};

/// The handler's name (consumer group and event source).
pub const HANDLER: &str = "ScalingDecisionEngine";

/// Proof that no pods are pending. Only [`up_need`] makes one.
#[derive(Debug)]
pub struct NoPendingPods(());

/// What the scale-up side wants.
#[derive(Debug)]
pub enum UpNeed {
    /// Grow to `target_workers`.
    ScaleUp {
        target_workers: u32,
        reason: &'static str,
    },
    /// Pods are pending but capacity for them is already on its way (or `max_nodes` is reached).
    Covered {
        pending: u32,
        /// Why more workers would not help, when that is the case: `max_nodes_reached` (more were
        /// needed than the limit allows) or `pods_too_large` (some pod fits no worker).
        short: Option<String>,
    },
    /// No pending pods and nothing else asks for more.
    Nothing(NoPendingPods),
}

/// The scale-up need for `event` (pending pods are considered whatever the event).
pub fn up_need(model: &Model, event: &Envelope, policy: &Policy) -> UpNeed {
    let planned = model.planned_workers();
    let max = policy.limits.max_nodes;
    let pending = model.pending_count();
    // One scale-up per pending-pods report: once a decision answered this report, its capacity is on
    // its way even before the NodeManager's ScaleUpStarted is on the stream (a new worker can be seen
    // Ready first), so another event must not size the same pods again. Pods still pending after
    // that capacity arrives are reported again, and that report is sized afresh.
    let answered = model.pending.report.as_ref().is_some_and(|p| {
        model
            .decisions
            .answered(p.cause.event_id, "ScaleUpDecision")
    });
    if pending > 0 && answered {
        return UpNeed::Covered {
            pending,
            short: None,
        };
    }
    if pending > 0 {
        let pods = model.pending.pods();
        let packing = binpack::workers_needed(pods, pending, &policy.workers);
        // Workers already being created count as capacity for these pods (like Karpenter's in-flight
        // node claims), so a repeated report does not add more. So do workers Ready for less than
        // `new_worker_grace` while pods a scale-up made them for are still pending: the scheduler has
        // not bound those pods yet.
        let awaiting = model.pending_awaits_provided_capacity();
        let arriving = model.provisioning()
            + if awaiting {
                model.newly_ready(event.timestamp, policy.scaling.new_worker_grace)
            } else {
                0
            };
        let base = planned - arriving.min(planned);
        let target = (base + packing.workers)
            .max(planned)
            .max(policy.limits.min_nodes)
            .min(max);
        return if target > planned {
            UpNeed::ScaleUp {
                target_workers: target,
                reason: reason::PENDING_PODS,
            }
        } else {
            let wanted = base + packing.workers;
            let short = if wanted > max && planned >= max {
                Some(format!(
                    "max_nodes_reached: {pending} pending pods need {} workers, max_nodes is {max}",
                    wanted
                ))
            } else if !packing.unschedulable.is_empty() {
                Some(format!(
                    "pods_too_large: {} fit no worker of the template",
                    packing.unschedulable.join(",")
                ))
            } else {
                None
            };
            UpNeed::Covered { pending, short }
        };
    }
    if let Event::ResourcePressureAlert(_) = &event.event {
        let cooling = model
            .streaks
            .last_scale_up
            .is_some_and(|t| event.timestamp - t < chrono(policy.scaling.scale_up_cooldown));
        if model.provisioning() == 0 && !cooling {
            let target = (planned + policy.scaling.scale_up_step.max(1))
                .max(policy.limits.min_nodes)
                .min(max);
            if target > planned {
                return UpNeed::ScaleUp {
                    target_workers: target,
                    reason: reason::RESOURCE_PRESSURE,
                };
            }
        }
    }
    UpNeed::Nothing(NoPendingPods(()))
}

/// The scale-down side's answer.
#[derive(Debug, PartialEq)]
pub enum Down {
    /// Not sustained long enough yet: nothing to say.
    NotDue,
    Remove {
        node: String,
    },
    Blocked {
        reason: &'static str,
        node: Option<String>,
        detail: Option<String>,
    },
}

fn blocked(reason: &'static str) -> Down {
    Down::Blocked {
        reason,
        node: None,
        detail: None,
    }
}

/// Live workers that may be removed, best candidate first: least utilised, then newest.
/// Protected names and scale-down-disabled nodes are left out.
pub fn removal_candidates<'m>(model: &'m Model, policy: &Policy) -> Vec<&'m Worker> {
    let mut c: Vec<&Worker> = model
        .live()
        .filter(|w| w.state == WorkerState::Ready && w.interruption.is_none())
        .filter(|w| !policy.workers.protected.contains(&w.name) && !w.scale_down_disabled)
        .collect();
    let usage = |w: &Worker| node_usage(model, &w.name);
    c.sort_by(|a, b| {
        usage(a)
            .total_cmp(&usage(b))
            .then_with(|| b.ready_at.cmp(&a.ready_at))
            .then_with(|| seq(b).cmp(&seq(a)))
            .then_with(|| b.name.cmp(&a.name))
    });
    c
}

fn seq(w: &Worker) -> u64 {
    let digits: String = w
        .name
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().unwrap_or(0)
}

/// A node's utilisation (the larger of CPU and memory %), the cluster average when unknown.
fn node_usage(model: &Model, name: &str) -> f64 {
    let Some(s) = &model.streaks.sample else {
        return 0.0;
    };
    match s.nodes.get(name) {
        Some(u) => u.cpu.max(u.memory),
        None => s.cpu_avg.max(s.memory_avg),
    }
}

/// Whether the load of the live workers fits on one worker fewer without crossing the pressure
/// thresholds (a fluid model: per-node figures are percentages of identical workers).
fn fits_on_fewer(model: &Model, policy: &Policy) -> Result<(), String> {
    let live: Vec<&Worker> = model.live().collect();
    let n = live.len();
    if n < 2 {
        return Err("no other worker".into());
    }
    let Some(s) = &model.streaks.sample else {
        return Ok(());
    };
    let (cpu, mem) = live.iter().fold((0.0, 0.0), |(c, m), w| {
        let (wc, wm) = s
            .nodes
            .get(&w.name)
            .map_or((s.cpu_avg, s.memory_avg), |u| (u.cpu, u.memory));
        (c + wc, m + wm)
    });
    let rest = (n - 1) as f64;
    let (pc, pm) = (cpu / rest, mem / rest);
    if pc > policy.thresholds.cpu_high || pm > policy.thresholds.memory_high {
        return Err(format!(
            "remaining workers would run at cpu {pc:.1} % / memory {pm:.1} %"
        ));
    }
    Ok(())
}

/// The scale-down rule; needs proof that no pods are pending.
pub fn scale_down(model: &Model, event: &Envelope, policy: &Policy, _: NoPendingPods) -> Down {
    let at = event.timestamp;
    let due = model
        .streaks
        .low_since
        .is_some_and(|since| at - since >= chrono(policy.scaling.underutilized_for));
    if !due {
        return Down::NotDue;
    }
    if !model.decisions.actions.is_empty() {
        return blocked(reason::ACTION_IN_PROGRESS);
    }
    let current = model.current_workers();
    if current <= policy.limits.min_nodes {
        return blocked(reason::MIN_NODES_REACHED);
    }
    let after_up = model
        .streaks
        .last_scale_up
        .is_some_and(|t| at - t < chrono(policy.scaling.scale_up_cooldown));
    let after_down = model
        .streaks
        .last_scale_down
        .is_some_and(|t| at - t < chrono(policy.scaling.scale_down_cooldown));
    if after_up || after_down {
        return Down::Blocked {
            reason: reason::COOLDOWN,
            node: None,
            detail: Some(
                if after_up {
                    "after scale-up"
                } else {
                    "after scale-down"
                }
                .into(),
            ),
        };
    }
    let unhealthy = model.unhealthy_workers();
    if f64::from(unhealthy) > policy.scaling.max_unhealthy_fraction * f64::from(current) {
        return Down::Blocked {
            reason: reason::UNHEALTHY_NODES,
            node: None,
            detail: Some(format!("{unhealthy} of {current} workers NotReady")),
        };
    }
    let candidates = removal_candidates(model, policy);
    let Some(best) = candidates.first() else {
        return blocked(reason::SCALE_DOWN_DISABLED);
    };
    if let Err(why) = fits_on_fewer(model, policy) {
        return Down::Blocked {
            reason: reason::NO_PLACE_FOR_PODS,
            node: Some(best.name.clone()),
            detail: Some(why),
        };
    }
    Down::Remove {
        node: best.name.clone(),
    }
}

/// Decides scale-up and scale-down.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScalingDecisionEngine;

impl ScalingDecisionEngine {
    pub fn handle(
        &self,
        model: &Model,
        event: &Envelope,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> Outcome {
        let cause = Cause::from(event);
        let mut out = Emitter::new(HANDLER, &cause, now);
        match &event.event {
            Event::ManualScaleRequested(m) => self.manual(model, event, m, policy, &mut out),
            Event::PendingPodsDetected(_)
            | Event::ResourcePressureAlert(_)
            | Event::UnderutilizationWarning(_) => {
                let current = model.current_workers();
                match up_need(model, event, policy) {
                    UpNeed::ScaleUp {
                        target_workers,
                        reason,
                    } => {
                        out.emit(ScaleUpDecision {
                            current_workers: current,
                            target_workers,
                            reason: reason.into(),
                            pool: None,
                            pool_target: None,
                        });
                    }
                    UpNeed::Covered { pending, short } => {
                        // Say once per report why pending pods get no new worker (alerted, and
                        // visible in `explain`), instead of staying silent.
                        if let (Event::PendingPodsDetected(_), Some(error)) = (&event.event, short)
                        {
                            out.emit(ScalingActionFailed {
                                action: ScalingAction::ScaleUp,
                                node_name: None,
                                error,
                                retryable: false,
                            });
                        }
                        if matches!(event.event, Event::UnderutilizationWarning(_))
                            && !matches!(scale_down_due(model, event, policy), Down::NotDue)
                        {
                            out.emit(ScaleDownBlocked {
                                reason: reason::PENDING_PODS.into(),
                                workers: current,
                                min_workers: policy.limits.min_nodes,
                                pending_count: Some(pending),
                                node_name: None,
                                detail: None,
                                pool: None,
                            });
                        }
                    }
                    UpNeed::Nothing(proof) => {
                        if matches!(event.event, Event::UnderutilizationWarning(_)) {
                            self.down(model, event, policy, proof, &mut out);
                        }
                    }
                }
            }
            _ => {}
        }
        out.finish()
    }

    fn down(
        &self,
        model: &Model,
        event: &Envelope,
        policy: &Policy,
        proof: NoPendingPods,
        out: &mut Emitter<'_>,
    ) {
        let current = model.current_workers();
        match scale_down(model, event, policy, proof) {
            Down::NotDue => {}
            Down::Remove { node } => {
                out.emit(ScaleDownDecision {
                    current_workers: current,
                    target_workers: current - 1,
                    nodes: vec![node],
                    reason: reason::UNDERUTILIZED.into(),
                    pool: None,
                });
            }
            Down::Blocked {
                reason,
                node,
                detail,
            } => {
                out.emit(ScaleDownBlocked {
                    reason: reason.into(),
                    workers: current,
                    min_workers: policy.limits.min_nodes,
                    pending_count: None,
                    node_name: node,
                    detail,
                    pool: None,
                });
            }
        }
    }

    /// `autoscaler scale --to N`: the same limits, the same pending-pods rule, single-flight.
    fn manual(
        &self,
        model: &Model,
        event: &Envelope,
        m: &ManualScaleRequested,
        policy: &Policy,
        out: &mut Emitter<'_>,
    ) {
        let (min, max) = (policy.limits.min_nodes, policy.limits.max_nodes);
        let current = model.current_workers();
        let planned = model.planned_workers();
        let target = m.target_workers;
        if target < min || target > max {
            out.emit(ScalingActionFailed {
                action: if target > current {
                    ScalingAction::ScaleUp
                } else {
                    ScalingAction::ScaleDown
                },
                node_name: None,
                error: format!("target_out_of_range: {target} is outside [{min}, {max}]"),
                retryable: false,
            });
            return;
        }
        if target > planned {
            out.emit(ScaleUpDecision {
                current_workers: current,
                target_workers: target,
                reason: "manual".into(),
                pool: None,
                pool_target: None,
            });
            return;
        }
        if target >= current {
            return;
        }
        let block = |reason: &str, pending: Option<u32>, detail: Option<String>| ScaleDownBlocked {
            reason: reason.into(),
            workers: current,
            min_workers: min,
            pending_count: pending,
            node_name: None,
            detail,
            pool: None,
        };
        match up_need(model, event, policy) {
            UpNeed::Nothing(_) => {}
            _ => {
                out.emit(block(
                    reason::PENDING_PODS,
                    Some(model.pending_count()),
                    None,
                ));
                return;
            }
        }
        if model.scale_down_in_flight() {
            out.emit(block(reason::ACTION_IN_PROGRESS, None, None));
            return;
        }
        let candidates = removal_candidates(model, policy);
        let wanted = (current - target) as usize;
        if candidates.len() < wanted {
            out.emit(block(
                reason::SCALE_DOWN_DISABLED,
                None,
                Some(format!("only {} removable workers", candidates.len())),
            ));
            return;
        }
        out.emit(ScaleDownDecision {
            current_workers: current,
            target_workers: target,
            nodes: candidates[..wanted]
                .iter()
                .map(|w| w.name.clone())
                .collect(),
            reason: "manual".into(),
            pool: None,
        });
    }
}

/// Whether a scale-down would be due now (only for reporting `pending_pods` blocks).
fn scale_down_due(model: &Model, event: &Envelope, policy: &Policy) -> Down {
    let due = model
        .streaks
        .low_since
        .is_some_and(|since| event.timestamp - since >= chrono(policy.scaling.underutilized_for));
    if due {
        blocked(reason::PENDING_PODS)
    } else {
        Down::NotDue
    }
}
