//! ScalingDecisionEngine: decides scale-up and scale-down, and says why a scale-down does not happen
//! (`ScaleDownBlocked`) or why pending pods get no worker (`ScaleUpBlocked`, once per pod and reason).
//!
//! **Pools.** Listed pending pods go through the scheduling simulation ([`crate::scheduling`]) over
//! the policy's pools ([`Policy::node_pools`]): one `ScaleUpDecision` per pool that grows, with the
//! cluster's absolute `target_workers` and the pool's `pool_target`. Without configured pools there
//! is one pool, `default`, and the decisions are those of before pools.
//!
//! **Pending pods always win.** The engine first computes the scale-up need ([`up_need`]); only when
//! no pod is pending does it get a [`NoPendingPods`] token, and [`scale_down`] cannot be called without
//! one. So whatever the order rules are written in, no scale-down is decided while pods are pending.
//!
//! Rule time is the input event's timestamp (identical on every replica); `now` only stamps outputs.

use std::collections::BTreeMap;

use bus::event::{
    Event, ManualScaleRequested, ScaleDownBlocked, ScaleDownDecision, ScaleUpBlocked,
    ScaleUpDecision, ScalingAction, ScalingActionFailed,
};
use bus::Envelope;
use chrono::{DateTime, Utc};

use crate::binpack;
use crate::buffer;
use crate::codes::reason;
use crate::command::{Cause, Emitter, Outcome};
use crate::model::{blocked_key, Blocked, Model, Worker, WorkerState};
use crate::policy::{chrono, pool_field, Policy, WorkerTemplate, DEFAULT_POOL};
use crate::scheduling::{
    scale_down as simulate_scale_down, scale_up, BlockedPods, PoolTemplate, ScaleDownBlock,
    ScaleUpBlock, Snapshot, Unavailable,
};

/// The handler's name (consumer group and event source).
pub const HANDLER: &str = "ScalingDecisionEngine";

/// Proof that no pods are pending. Only [`up_need`] makes one.
#[derive(Debug)]
pub struct NoPendingPods(());

/// One pool's share of a scale-up: one `ScaleUpDecision` each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDecision {
    pub pool: String,
    /// Cluster-wide and absolute: what the cluster has once this and the decisions before it in
    /// the same answer are carried out.
    pub target_workers: u32,
    /// The pool's absolute size after it (`None` for the default pool of a configuration without
    /// pools, whose decisions look as they did before pools).
    pub pool_target: Option<u32>,
}

/// What the scale-up side wants.
#[derive(Debug)]
pub enum UpNeed {
    /// Grow the pools, in this order.
    ScaleUp {
        decisions: Vec<PoolDecision>,
        reason: &'static str,
        /// Pods that get no worker and whose reason is new (see [`UpNeed::Covered`]).
        blocked: Vec<ScaleUpBlocked>,
    },
    /// Pods are pending but capacity for them is already on its way, or no new worker can help.
    Covered {
        pending: u32,
        /// Pods that get no worker, grouped by reason, only those whose reason was not published
        /// yet (the model remembers the last one per pod), so a re-report says nothing again.
        blocked: Vec<ScaleUpBlocked>,
        /// Why more workers would not help pods the report does not list (old watchers):
        /// `max_nodes_reached`.
        short: Option<String>,
    },
    /// No pending pods and nothing else asks for more.
    Nothing(NoPendingPods),
}

/// The snapshot the scale-up simulation reads: the pending pods, and per pool the workers planned
/// (as nodes, only counted: kube-scheduler has already found the pods do not fit on them) and the
/// capacity on its way. Workers being created are on their way; so are workers Ready for less than
/// `new_worker_grace` while pods a scale-up made them for are still pending (the scheduler has not
/// bound those pods yet), like Karpenter's in-flight node claims.
fn snapshot(model: &Model, event: &Envelope, policy: &Policy, pools: &[PoolTemplate]) -> Snapshot {
    let awaiting = model.pending_awaits_provided_capacity();
    let grace = policy.scaling.new_worker_grace;
    let mut nodes = Vec::new();
    let mut provisioning = BTreeMap::new();
    for pool in pools {
        let w = &model.workers;
        let arriving = w.provisioning_in(&pool.name)
            + if awaiting {
                w.newly_ready_in(&pool.name, event.timestamp, grace)
            } else {
                0
            };
        let planned = w.planned_in(&pool.name);
        for i in 0..planned.saturating_sub(arriving) {
            // Placeholders: only their number matters (the pool's maximum).
            let mut n = pool.node(format!("planned:{}:{i}", pool.name));
            n.cordoned = true;
            nodes.push(n);
        }
        if arriving > 0 {
            provisioning.insert(pool.name.clone(), arriving);
        }
    }
    let mut snap = Snapshot::from_parts(
        nodes,
        std::iter::empty(),
        model.pending.pods().iter().cloned(),
        provisioning,
    );
    for pool in pools {
        snap.set_unavailable(&pool.name, unavailable(model, event, policy, &pool.name));
    }
    snap
}

/// Whether `pool` backs off after failed creates at the event's time, and why.
pub fn unavailable(
    model: &Model,
    event: &Envelope,
    policy: &Policy,
    pool: &str,
) -> Option<Unavailable> {
    let b = model.backing_off(pool, event.timestamp, policy)?;
    Some(if b.provider {
        Unavailable::Provider
    } else {
        Unavailable::Backoff
    })
}

/// `ScaleUpBlocked` for the pods of `b` whose reason the model has not published yet.
fn newly_blocked(
    model: &Model,
    b: &BlockedPods<'_>,
    policy: &Policy,
    cluster_full: bool,
) -> Option<ScaleUpBlocked> {
    // With no room left in the cluster at all, the cluster maximum is the reason, also when a pool
    // maximum (the default pool's is the cluster's) is reached as well.
    let reason = match &b.reason {
        ScaleUpBlock::PoolMaxReached { .. }
        | ScaleUpBlock::PoolBackoff { .. }
        | ScaleUpBlock::ProviderUnavailable { .. }
            if cluster_full =>
        {
            ScaleUpBlock::MaxNodesReached
        }
        r => r.clone(),
    };
    let max = policy.limits.max_nodes;
    let (pool, detail, predicates) = match &reason {
        ScaleUpBlock::NoPoolFits { predicates } => (
            None,
            format!(
                "no pool can run them: {}",
                predicates
                    .iter()
                    .map(|(p, why)| format!("{p}: {why}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            predicates
                .iter()
                .map(|(p, why)| (p.clone(), why.to_string()))
                .collect(),
        ),
        ScaleUpBlock::PoolMaxReached { pools } => (
            match pools.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            },
            format!("pools at their max_nodes: {}", pools.join(", ")),
            BTreeMap::new(),
        ),
        ScaleUpBlock::MaxNodesReached => (None, format!("max_nodes is {max}"), BTreeMap::new()),
        ScaleUpBlock::PoolBackoff { pools } | ScaleUpBlock::ProviderUnavailable { pools } => (
            match pools.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            },
            backoff_detail(model, policy, pools),
            BTreeMap::new(),
        ),
    };
    let mut block = ScaleUpBlocked {
        reason: reason.code().to_string(),
        pods: Vec::new(),
        pool,
        detail: Some(detail),
        predicates,
    };
    let key = blocked_key(&block);
    block.pods = b
        .pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .filter(|p| model.pending.blocked.get(p) != Some(&key))
        .collect();
    (!block.pods.is_empty()).then_some(block)
}

/// What the pools backing off last failed with, and until when (the first pool's figures when
/// several back off).
fn backoff_detail(model: &Model, policy: &Policy, pools: &[String]) -> String {
    let backoff = policy.scaling.provision_backoff();
    let said: Vec<String> = pools
        .iter()
        .filter_map(|p| {
            let b = model.provision.backoff.get(p)?;
            Some(format!(
                "pool {p}: {} failed create(s) in a row, no create before {} (last error: {})",
                b.failures,
                b.until(&backoff)
                    .to_rfc3339_opts(::chrono::SecondsFormat::Secs, true),
                b.error
            ))
        })
        .collect();
    said.join("; ")
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
            .answered_any(p.cause.event_id, "ScaleUpDecision")
    });
    if pending > 0 && answered {
        return UpNeed::Covered {
            pending,
            blocked: Vec::new(),
            short: None,
        };
    }
    if pending > 0 && model.pending.pods().is_empty() {
        if unavailable(model, event, policy, &policy.primary_pool()).is_some() {
            // A report that lists no pods (an older watcher) waits out the backoff silently.
            return UpNeed::Covered {
                pending,
                blocked: Vec::new(),
                short: None,
            };
        }
        return slots_need(model, event, policy, pending);
    }
    if pending > 0 {
        let pools = policy.node_pools();
        let snap = snapshot(model, event, policy, &pools);
        let room = max.saturating_sub(planned);
        let plan = scale_up(&snap, &pools, policy.expander, room);
        let mut decisions = Vec::new();
        let mut running = planned;
        for (pool, grow) in &plan.new_nodes {
            running += grow.new_nodes;
            decisions.push(PoolDecision {
                pool: pool.clone(),
                target_workers: running,
                pool_target: (!policy.pools.is_empty())
                    .then(|| model.workers.planned_in(pool) + grow.new_nodes),
            });
        }
        if policy.pools.is_empty() {
            // One pool: the decision of before pools, which also brings the cluster to its minimum.
            let target = running.max(policy.limits.min_nodes).min(max);
            let backing_off = unavailable(model, event, policy, DEFAULT_POOL).is_some();
            decisions = if target > planned && !backing_off {
                vec![PoolDecision {
                    pool: DEFAULT_POOL.to_string(),
                    target_workers: target,
                    pool_target: None,
                }]
            } else {
                Vec::new()
            };
        }
        let cluster_full = room == plan.total_new_nodes();
        let blocked = plan
            .blocked
            .iter()
            .filter_map(|b| newly_blocked(model, b, policy, cluster_full))
            .collect();
        return if decisions.is_empty() {
            UpNeed::Covered {
                pending,
                blocked,
                short: None,
            }
        } else {
            UpNeed::ScaleUp {
                decisions,
                reason: reason::PENDING_PODS,
                blocked,
            }
        };
    }
    if let Event::ResourcePressureAlert(_) = &event.event {
        let cooling = model
            .streaks
            .last_scale_up
            .is_some_and(|t| event.timestamp - t < chrono(policy.scaling.scale_up_cooldown));
        let backing_off = unavailable(model, event, policy, &policy.primary_pool()).is_some();
        if model.provisioning() == 0 && !cooling && !backing_off {
            let target = (planned + policy.scaling.scale_up_step.max(1))
                .max(policy.limits.min_nodes)
                .min(max);
            if target > planned {
                return UpNeed::ScaleUp {
                    decisions: vec![PoolDecision {
                        pool: policy.primary_pool(),
                        target_workers: target,
                        pool_target: None,
                    }],
                    reason: reason::RESOURCE_PRESSURE,
                    blocked: Vec::new(),
                };
            }
        }
    }
    UpNeed::Nothing(NoPendingPods(()))
}

/// A report that lists no pods (an older watcher): `pending` pods of one pod slot each, in the
/// primary pool, as before pools.
fn slots_need(model: &Model, event: &Envelope, policy: &Policy, pending: u32) -> UpNeed {
    let planned = model.planned_workers();
    let max = policy.limits.max_nodes;
    let pool = policy.primary_pool();
    let template = policy.pool(&pool).map_or_else(
        || policy.workers.clone(),
        |p| WorkerTemplate {
            cpu_millis: p.allocatable.cpu_millis,
            memory_bytes: p.allocatable.memory_bytes,
            max_pods: p.allocatable.pods,
            ..policy.workers.clone()
        },
    );
    let packing = binpack::workers_needed(&[], pending, &template);
    let awaiting = model.pending_awaits_provided_capacity();
    let arriving = model.provisioning()
        + if awaiting {
            model.newly_ready(event.timestamp, policy.scaling.new_worker_grace)
        } else {
            0
        };
    let base = planned - arriving.min(planned);
    let wanted = base + packing.workers;
    let target = wanted.max(planned).max(policy.limits.min_nodes).min(max);
    if target > planned {
        return UpNeed::ScaleUp {
            decisions: vec![PoolDecision {
                pool_target: (!policy.pools.is_empty())
                    .then(|| model.workers.planned_in(&pool) + (target - planned)),
                pool,
                target_workers: target,
            }],
            reason: reason::PENDING_PODS,
            blocked: Vec::new(),
        };
    }
    let short = (wanted > max && planned >= max).then(|| {
        format!(
            "max_nodes_reached: {pending} pending pods need {wanted} workers, max_nodes is {max}"
        )
    });
    UpNeed::Covered {
        pending,
        blocked: Vec::new(),
        short,
    }
}

/// The events after which the capacity buffers are checked: what changes where pods run or how
/// many workers a pool has.
fn checks_buffers(event: &Event) -> bool {
    matches!(
        event,
        Event::PlacementSnapshot(_)
            | Event::PlacementChanged(_)
            | Event::ClusterObserved(_)
            | Event::NodeReady(_)
            | Event::NodeRemoved(_)
            | Event::NodeUnexpectedlyLost(_)
            | Event::ScalingActionCompleted(_)
            | Event::ScalingActionFailed(_)
    )
}

/// The pools whose capacity buffer is short, with no pod pending: one decision each, absolute
/// like every other, within the pool's and the cluster's maximum; a pool that backs off after
/// failed creates waits (see [`crate::buffer`]).
pub fn buffer_need(model: &Model, event: &Envelope, policy: &Policy) -> Vec<PoolDecision> {
    if !policy.has_buffers()
        || model.pending_count() > 0
        || model.scale_up_starting(event.timestamp, policy.scaling.new_worker_grace)
    {
        return Vec::new();
    }
    let usage = buffer::Usage::of(model);
    let mut planned = model.planned_workers();
    let mut decisions = Vec::new();
    for pool in policy.node_pools().iter() {
        if pool.buffer.is_empty() || unavailable(model, event, policy, &pool.name).is_some() {
            continue;
        }
        let Some(spare) = buffer::spare(model, &usage, pool) else {
            continue;
        };
        let have = model.workers.planned_in(&pool.name);
        let grow = buffer::shortfall(pool, &spare)
            .min(pool.max_nodes.saturating_sub(have))
            .min(policy.limits.max_nodes.saturating_sub(planned));
        if grow == 0 {
            continue;
        }
        planned += grow;
        decisions.push(PoolDecision {
            pool: pool.name.clone(),
            target_workers: planned,
            pool_target: (!policy.pools.is_empty()).then_some(have + grow),
        });
    }
    decisions
}

/// The scale-down side's answer.
#[derive(Debug, PartialEq)]
pub enum Down {
    /// Not sustained long enough yet: nothing to say.
    NotDue,
    Remove {
        node: String,
        pool: String,
    },
    Blocked {
        reason: &'static str,
        node: Option<String>,
        detail: Option<String>,
        /// The pool the block is about (its minimum).
        pool: Option<String>,
    },
}

fn blocked(reason: &'static str) -> Down {
    Down::Blocked {
        reason,
        node: None,
        detail: None,
        pool: None,
    }
}

/// Whether removing one live worker of `pool` keeps the pool at or above its `min_nodes` (a pool
/// the policy does not know has no minimum of its own).
pub fn above_pool_min(model: &Model, policy: &Policy, pool: &str) -> bool {
    policy
        .pool(pool)
        .is_none_or(|p| model.workers.current_in(pool) > p.min_nodes)
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

/// `candidates` without the workers their pool's capacity buffer keeps.
fn without_buffered<'m>(
    model: &Model,
    policy: &Policy,
    candidates: Vec<&'m Worker>,
) -> Vec<&'m Worker> {
    if !policy.has_buffers() {
        return candidates;
    }
    let usage = buffer::Usage::of(model);
    let pools = policy.node_pools();
    candidates
        .into_iter()
        .filter(|w| {
            pools
                .iter()
                .find(|p| p.name == w.pool)
                .is_none_or(|p| !buffer::keeps(model, &usage, p, w))
        })
        .collect()
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
            pool: None,
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
            pool: None,
            detail: Some(format!("{unhealthy} of {current} workers NotReady")),
        };
    }
    let candidates = removal_candidates(model, policy);
    let Some(first) = candidates.first().copied() else {
        return blocked(reason::SCALE_DOWN_DISABLED);
    };
    // A worker its pool's capacity buffer keeps is spare on purpose, not underused.
    let candidates = without_buffered(model, policy, candidates);
    let Some(first) = candidates.first().copied() else {
        let pool = first.pool.clone();
        return Down::Blocked {
            reason: reason::CAPACITY_BUFFER,
            node: Some(first.name.clone()),
            detail: Some(format!("pool {pool} keeps it as spare capacity")),
            pool: pool_field(&pool),
        };
    };
    // Each pool keeps its own minimum: the best candidate of a pool above it goes.
    let Some(best) = candidates
        .iter()
        .find(|w| above_pool_min(model, policy, &w.pool))
    else {
        let min = policy.pool(&first.pool).map_or(0, |p| p.min_nodes);
        return Down::Blocked {
            reason: reason::MIN_NODES_REACHED,
            node: None,
            detail: Some(format!("pool {} is at its min_nodes ({min})", first.pool)),
            pool: Some(first.pool.clone()),
        };
    };
    let best = if model.placement.is_known() {
        match simulated_removal(model, policy, &candidates) {
            Ok(w) => w,
            Err(blocked) => return blocked,
        }
    } else {
        best
    };
    if let Err(why) = fits_on_fewer(model, policy) {
        return Down::Blocked {
            reason: reason::NO_PLACE_FOR_PODS,
            node: Some(best.name.clone()),
            pool: pool_field(&best.pool),
            detail: Some(why),
        };
    }
    Down::Remove {
        node: best.name.clone(),
        pool: best.pool.clone(),
    }
}

/// With the placement on the stream known, the scheduling simulation picks among the candidates of
/// pools above their minimum: the first whose pods all fit on the nodes that stay (under their
/// constraints and PDBs) and whose removal wastes least. When none can go, why the best candidate
/// stays. Without a known placement the fluid check ([`fits_on_fewer`]) alone decides.
fn simulated_removal<'m>(
    model: &Model,
    policy: &Policy,
    candidates: &[&'m Worker],
) -> Result<&'m Worker, Down> {
    let p = &model.placement;
    let snap = Snapshot::from_parts(
        p.nodes().values().cloned(),
        p.pods().values().cloned(),
        std::iter::empty(),
        BTreeMap::new(),
    );
    let names: Vec<&str> = candidates
        .iter()
        .filter(|w| above_pool_min(model, policy, &w.pool))
        .map(|w| w.name.as_str())
        .collect();
    let plan = simulate_scale_down(&snap, &policy.node_pools(), &names, 1);
    if let Some(w) = plan
        .removable
        .first()
        .and_then(|n| candidates.iter().find(|w| w.name == *n))
    {
        return Ok(w);
    }
    let Some((name, block)) = names
        .iter()
        .find_map(|n| plan.blocked.get(*n).map(|b| (*n, b)))
    else {
        return Err(blocked(reason::NO_PLACE_FOR_PODS));
    };
    let detail = match block {
        ScaleDownBlock::Pdb { pod } => {
            format!(
                "the PodDisruptionBudget of {}/{} allows no disruption",
                pod.namespace, pod.name
            )
        }
        ScaleDownBlock::NoPlaceForPods { pod } => {
            format!("{}/{} fits on no other node", pod.namespace, pod.name)
        }
        ScaleDownBlock::PoolMinReached { pool } => format!("pool {pool} is at its min_nodes"),
        ScaleDownBlock::MinNodesReached => "min_nodes reached".to_string(),
        ScaleDownBlock::UnknownNode => "not in the placement on the stream yet".to_string(),
    };
    let pool = candidates
        .iter()
        .find(|w| w.name == name)
        .and_then(|w| pool_field(&w.pool));
    Err(Down::Blocked {
        reason: block.code(),
        node: Some(name.to_string()),
        pool,
        detail: Some(detail),
    })
}

/// Whether a scale-down block is worth saying: another than the last one (reason, node, pool), or
/// the same after `blocked_reminder`. Re-reports of the same conditions say nothing new.
fn is_news(model: &Model, event: &Envelope, policy: &Policy, b: &ScaleDownBlocked) -> bool {
    model.decisions.last_blocked.as_ref().is_none_or(|last| {
        last.key != Blocked::key_of(b)
            || event.timestamp - last.at >= chrono(policy.scaling.blocked_reminder)
    })
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
                        decisions,
                        reason,
                        blocked,
                    } => {
                        for d in decisions {
                            out.emit(ScaleUpDecision {
                                current_workers: current,
                                target_workers: d.target_workers,
                                reason: reason.into(),
                                pool: pool_field(&d.pool),
                                pool_target: d.pool_target,
                            });
                        }
                        if matches!(event.event, Event::PendingPodsDetected(_)) {
                            for b in blocked {
                                out.emit(b);
                            }
                        }
                    }
                    UpNeed::Covered {
                        pending,
                        blocked,
                        short,
                    } => {
                        // Say why pending pods get no new worker (visible in `explain`), once per
                        // pod and reason, instead of staying silent or repeating it every report.
                        if matches!(event.event, Event::PendingPodsDetected(_)) {
                            for b in blocked {
                                out.emit(b);
                            }
                            let said = model.pending.failed_said.as_deref();
                            if let Some(error) =
                                short.filter(|e| said != Some(crate::codes::code_of(e).as_str()))
                            {
                                out.emit(ScalingActionFailed {
                                    action: ScalingAction::ScaleUp,
                                    node_name: None,
                                    error,
                                    retryable: false,
                                });
                            }
                        }
                        if matches!(event.event, Event::UnderutilizationWarning(_))
                            && !matches!(scale_down_due(model, event, policy), Down::NotDue)
                        {
                            let b = ScaleDownBlocked {
                                reason: reason::PENDING_PODS.into(),
                                workers: current,
                                min_workers: policy.limits.min_nodes,
                                pending_count: Some(pending),
                                node_name: None,
                                detail: None,
                                pool: None,
                            };
                            if is_news(model, event, policy, &b) {
                                out.emit(b);
                            }
                        }
                    }
                    UpNeed::Nothing(proof) => {
                        if matches!(event.event, Event::UnderutilizationWarning(_)) {
                            self.down(model, event, policy, proof, &mut out);
                        }
                    }
                }
            }
            e if checks_buffers(e) => {
                let current = model.current_workers();
                for d in buffer_need(model, event, policy) {
                    out.emit(ScaleUpDecision {
                        current_workers: current,
                        target_workers: d.target_workers,
                        reason: reason::CAPACITY_BUFFER.into(),
                        pool: pool_field(&d.pool),
                        pool_target: d.pool_target,
                    });
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
            Down::Remove { node, pool } => {
                out.emit(ScaleDownDecision {
                    current_workers: current,
                    target_workers: current - 1,
                    nodes: vec![node],
                    reason: reason::UNDERUTILIZED.into(),
                    pool: pool_field(&pool),
                });
            }
            Down::Blocked {
                reason,
                node,
                detail,
                pool,
            } => {
                // A pool's block names the pool's minimum; the cluster's names the cluster's.
                let min_workers = pool
                    .as_deref()
                    .and_then(|p| policy.pool(p))
                    .map_or(policy.limits.min_nodes, |p| p.min_nodes);
                let b = ScaleDownBlocked {
                    reason: reason.into(),
                    workers: current,
                    min_workers,
                    pending_count: None,
                    node_name: node,
                    detail,
                    pool: pool.and_then(|p| pool_field(&p)),
                };
                if is_news(model, event, policy, &b) {
                    out.emit(b);
                }
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
        let all = removal_candidates(model, policy);
        let wanted = (current - target) as usize;
        if all.len() < wanted {
            out.emit(block(
                reason::SCALE_DOWN_DISABLED,
                None,
                Some(format!("only {} removable workers", all.len())),
            ));
            return;
        }
        // Each pool keeps its own minimum.
        let mut left: BTreeMap<&str, u32> = BTreeMap::new();
        let mut candidates: Vec<&Worker> = Vec::new();
        for w in all {
            let live = left
                .entry(w.pool.as_str())
                .or_insert_with(|| model.workers.current_in(&w.pool));
            if policy.pool(&w.pool).is_none_or(|p| *live > p.min_nodes) {
                *live -= 1;
                candidates.push(w);
            }
        }
        if candidates.len() < wanted {
            out.emit(block(
                reason::MIN_NODES_REACHED,
                None,
                Some(format!(
                    "only {} workers can go without a pool below its min_nodes",
                    candidates.len()
                )),
            ));
            return;
        }
        let nodes: Vec<&Worker> = candidates[..wanted].to_vec();
        // One pool named when every node is of it.
        let pool = match nodes.first() {
            Some(w) if nodes.iter().all(|n| n.pool == w.pool) => pool_field(&w.pool),
            _ => None,
        };
        out.emit(ScaleDownDecision {
            current_workers: current,
            target_workers: target,
            nodes: nodes.iter().map(|w| w.name.clone()).collect(),
            reason: "manual".into(),
            pool,
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
