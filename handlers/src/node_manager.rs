//! NodeManager: carries decisions out as a per-node state machine with single-flight.
//!
//! Scale-up: a decision naming an absolute target above the planned size → `ScaleUpStarted` with
//! deterministic names (`<prefix><n>` above every name ever seen, so replicas pick the same names and
//! Docker's 409 makes a second create harmless) and one `CreateWorker` each. The executor reports
//! `NodeCreated`; the node watcher reports `NodeReady`; when every worker of a start is Ready the
//! manager publishes `ScalingActionCompleted`. A worker not Ready within `max_node_provision_time` is
//! failed on [`NodeManager::tick`] (`ScalingActionFailed`), removed, and replaced after its pool's
//! backoff (see `model::provision`: doubling per failure, ended early by the engine answering again
//! after a `provider_unavailable` failure), up to `max_provision_retries`. While a pool backs off no
//! decision creates in it. A create that never reached the engine removes nothing, and its name is
//! the next one the pool uses.
//!
//! Scale-down: `ScaleDownStarted` + `CordonAndTaint`; the executor reports `NodeCordoned` (→ `Drain`),
//! then `NodeDrained` (→ `RemoveWorker` + `DeleteNode`), then `NodeRemoved` (→ `ScalingActionCompleted`
//! once every node of the start is gone). Each step acts only on the event that made the node's
//! transition ([`Model::transitioned`]), so a repeated notice coalesces with the first.
//!
//! Interruption (`NodeInterruptionNotice`): the replacement is started first; the interrupted worker
//! is drained only once the replacement is Ready, so capacity never dips below what it was.

use bus::event::{
    Event, ScaleDownBlocked, ScaleDownStarted, ScaleUpBlocked, ScaleUpStarted, ScalingAction,
    ScalingActionCompleted, ScalingActionFailed, WarmPoolLeft,
};
use bus::Envelope;
use chrono::{DateTime, Utc};

use crate::codes;
use crate::command::{Cause, Command, Emitter, Outcome};
use crate::model::{Model, WorkerState};
use crate::policy::{chrono, pool_field, Policy};

/// The handler's name (consumer group and event source).
pub const HANDLER: &str = "NodeManager";

/// Carries decisions out.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeManager;

impl NodeManager {
    pub fn handle(
        &self,
        model: &Model,
        event: &Envelope,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> Outcome {
        let cause = Cause::from(event);
        let mut out = Emitter::new(HANDLER, &cause, now);
        let decision = matches!(
            event.event,
            Event::ScaleUpDecision(_)
                | Event::AutoScaleUpToMinimum(_)
                | Event::EmergencyScaleUp(_)
                | Event::ScaleDownDecision(_)
        );
        if decision && !model.is_first_decision(event) {
            return out.finish(); // another replica's copy of a decision already acted on
        }
        match &event.event {
            Event::ScaleUpDecision(d) => {
                let pool = d.pool.clone().unwrap_or_else(|| policy.primary_pool());
                let goal = Grow {
                    target: d.target_workers,
                    pool: &pool,
                    pool_target: d.pool_target,
                };
                self.grow(model, policy, event, goal, &mut out)
            }
            Event::AutoScaleUpToMinimum(d) => {
                let pool = policy.primary_pool();
                let goal = Grow::cluster(d.target_workers, &pool);
                self.grow(model, policy, event, goal, &mut out)
            }
            Event::EmergencyScaleUp(d) => {
                let pool = policy.primary_pool();
                let goal = Grow::cluster(d.target_workers, &pool);
                self.grow(model, policy, event, goal, &mut out)
            }
            Event::ScaleDownDecision(d) => self.shrink(model, policy, event, d, &mut out),
            Event::NodeInterruptionNotice(n) => {
                // Only the first notice, and only once (a redelivery finds the replacement named).
                let first = model.worker(&n.node_name).is_some_and(|w| {
                    w.replacement.is_none()
                        && w.interruption
                            .as_ref()
                            .is_some_and(|i| i.event_id == event.event_id)
                });
                if first {
                    // The replacement is made in the interrupted worker's pool.
                    let pool = model.workers.pool_of(&n.node_name);
                    let names = model.next_names_in(&pool, 1);
                    let started = out.emit(ScaleUpStarted {
                        count: 1,
                        target_workers: model.planned_workers(),
                        nodes: names.clone(),
                        pool: pool_field(&pool),
                    });
                    create(model, &names, &pool, &started, &mut out);
                }
            }
            Event::NodeCordoned(c) => {
                if model.transitioned(&c.node_name, event.event_id) {
                    out.command(
                        Command::Drain {
                            node: c.node_name.clone(),
                            timeout: policy.scaling.drain_timeout,
                        },
                        event,
                    );
                }
            }
            Event::NodeDrained(d) => {
                if model.transitioned(&d.node_name, event.event_id) {
                    let warm = keeps_warm(model, policy, &d.node_name);
                    remove(model, &d.node_name, warm, event, &mut out);
                }
            }
            Event::ScalingActionFailed(f) => {
                if let Some(node) = &f.node_name {
                    if model.transitioned(node, event.event_id) {
                        match f.action {
                            // A create that never reached the provider left nothing to remove; its
                            // name is taken again by the pool's next create.
                            ScalingAction::ScaleUp
                                if model.worker(node).is_some_and(|w| w.name_reusable) => {}
                            ScalingAction::ScaleUp => remove(model, node, false, event, &mut out),
                            ScalingAction::ScaleDown => {
                                // The node is back in service: say why the scale-down did not happen,
                                // with the executor's stable code (`pdb`, `drain_timeout`, …).
                                out.command(Command::Uncordon { node: node.clone() }, event);
                                out.emit(ScaleDownBlocked {
                                    reason: codes::code_of(&f.error),
                                    workers: model.current_workers(),
                                    min_workers: policy.limits.min_nodes,
                                    pending_count: None,
                                    node_name: Some(node.clone()),
                                    detail: Some(f.error.clone()),
                                    pool: None,
                                });
                            }
                        }
                    }
                }
            }
            Event::NodeReady(_)
            | Event::ClusterObserved(_)
            | Event::NodeRemoved(_)
            | Event::NodeUnexpectedlyLost(_) => {}
            _ => return out.finish(),
        }
        self.complete(model, event, &mut out);
        self.drain_replaced(model, event, &mut out);
        out.finish()
    }

    /// Timers: provisioning timeouts and retries after failures (leader only).
    pub fn tick(&self, model: &Model, policy: &Policy, now: DateTime<Utc>) -> Outcome {
        let mut outcome = Outcome::default();
        let limit = chrono(policy.scaling.max_node_provision_time);
        for w in model.workers.active() {
            if !w.state.is_provisioning() {
                continue;
            }
            let (Some(at), Some(by)) = (w.requested_at, &w.requested_by) else {
                continue;
            };
            if now - at < limit {
                if w.state == WorkerState::Requested && now - at >= chrono(RECREATE_AFTER) {
                    // Named by a ScaleUpStarted but never reported created: whoever was creating it
                    // died (the decision is published before it is carried out). Create it again,
                    // idempotently (an existing container of that name is started, Docker's 409).
                    create_again(&w.name, &w.pool, by, at, &mut outcome);
                }
                continue;
            }
            let mut out = Emitter::new(HANDLER, by, now);
            out.emit_keyed(
                ScalingActionFailed {
                    action: ScalingAction::ScaleUp,
                    node_name: Some(w.name.clone()),
                    error: format!(
                        "provision_timeout: not Ready within {}s",
                        policy.scaling.max_node_provision_time.as_secs()
                    ),
                    retryable: true,
                },
                &format!("timeout:{}:{}", w.name, by.event_id),
            );
            outcome.extend(out.finish());
        }
        if let (Some(goal), Some(last)) = (&model.provision.goal, &model.provision.last_failure) {
            let (goal, failure) = (&goal.target_workers, &last.cause);
            let planned = model.planned_workers();
            if *goal > planned && model.provisioning() == 0 && model.provision.failures > 0 {
                let mut out = Emitter::new(HANDLER, failure, now);
                if model.provision.failures > policy.scaling.max_provision_retries {
                    out.emit_keyed(
                        ScalingActionFailed {
                            action: ScalingAction::ScaleUp,
                            node_name: None,
                            error: format!(
                                "{}: {} provisioning failures in a row",
                                codes::GIVING_UP,
                                model.provision.failures
                            ),
                            retryable: false,
                        },
                        &format!("give_up:{}", failure.event_id),
                    );
                } else {
                    // The pool's backoff (the same rule the decision engine waits out).
                    let waiting = model.backing_off(&last.pool, now, policy).is_some();
                    if !waiting {
                        let target = (*goal).min(policy.limits.max_nodes);
                        // Failed workers are replaced in the pool they were made for.
                        let pool = &last.pool;
                        let count =
                            (target - planned.min(target)).min(pool_room(model, policy, pool));
                        if count > 0 {
                            let names = model.next_names_in(pool, count);
                            let started = out.emit_keyed(
                                ScaleUpStarted {
                                    count,
                                    target_workers: planned + count,
                                    nodes: names.clone(),
                                    pool: pool_field(pool),
                                },
                                &format!("retry:{}", failure.event_id),
                            );
                            create(model, &names, pool, &started, &mut out);
                        }
                    }
                }
                outcome.extend(out.finish());
            }
        }
        outcome
    }

    /// Creates workers in `goal.pool` up to the cluster target and the pool's target (and never
    /// beyond `max_nodes` or the pool's `max_nodes`).
    fn grow(
        &self,
        model: &Model,
        policy: &Policy,
        event: &Envelope,
        goal: Grow<'_>,
        out: &mut Emitter<'_>,
    ) {
        if let Some(b) = model.backing_off(goal.pool, event.timestamp, policy) {
            // The pool's creates failed lately: this decision creates nothing (the retry after the
            // backoff, or a later decision, does), and says so once, as the decision engine would.
            out.emit(ScaleUpBlocked {
                reason: b.reason().to_string(),
                pods: Vec::new(),
                pool: pool_field(goal.pool),
                detail: Some(format!(
                    "pool {}: {} failed create(s) in a row (last error: {})",
                    goal.pool, b.failures, b.error
                )),
                predicates: Default::default(),
            });
            return;
        }
        let target = goal.target.min(policy.limits.max_nodes);
        let planned = model.planned_workers();
        // Absolute targets: an older or repeated decision is already satisfied.
        let mut count = target.saturating_sub(planned);
        if let Some(pool_target) = goal.pool_target {
            count = count.min(pool_target.saturating_sub(model.workers.planned_in(goal.pool)));
        }
        count = count.min(pool_room(model, policy, goal.pool));
        if count == 0 {
            return;
        }
        let names = model.next_names_in(goal.pool, count);
        let started = out.emit(ScaleUpStarted {
            count,
            target_workers: planned + count,
            nodes: names.clone(),
            pool: pool_field(goal.pool),
        });
        create(model, &names, goal.pool, &started, out);
    }

    fn shrink(
        &self,
        model: &Model,
        policy: &Policy,
        event: &Envelope,
        d: &bus::event::ScaleDownDecision,
        out: &mut Emitter<'_>,
    ) {
        let current = model.current_workers();
        let min = policy.limits.min_nodes;
        let nodes: Vec<String> = d
            .nodes
            .iter()
            .filter(|n| {
                model
                    .worker(n)
                    .is_some_and(|w| w.state.is_live() && w.removal.is_none())
            })
            .filter(|n| !policy.workers.protected.contains(n))
            .cloned()
            .collect();
        if nodes.is_empty() {
            return; // already leaving or gone: coalesced
        }
        let after = current.saturating_sub(u32::try_from(nodes.len()).unwrap_or(u32::MAX));
        if after < min || d.target_workers < min {
            out.emit(ScaleDownBlocked {
                reason: codes::reason::MIN_NODES_REACHED.into(),
                workers: current,
                min_workers: min,
                pending_count: None,
                node_name: None,
                detail: Some(format!("decision {} would leave {after}", event.event_id)),
                pool: None,
            });
            return;
        }
        // Each pool keeps its own minimum too.
        let mut leaving: std::collections::BTreeMap<String, u32> = Default::default();
        for n in &nodes {
            *leaving.entry(model.workers.pool_of(n)).or_default() += 1;
        }
        for (pool, going) in &leaving {
            let Some(p) = policy.pool(pool) else { continue };
            let left = model.workers.current_in(pool).saturating_sub(*going);
            if left < p.min_nodes {
                out.emit(ScaleDownBlocked {
                    reason: codes::reason::MIN_NODES_REACHED.into(),
                    workers: current,
                    min_workers: p.min_nodes,
                    pending_count: None,
                    node_name: None,
                    detail: Some(format!(
                        "decision {} would leave pool {pool} with {left}",
                        event.event_id
                    )),
                    pool: pool_field(pool),
                });
                return;
            }
        }
        let started = out.emit(ScaleDownStarted {
            count: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
            target_workers: after,
            nodes: nodes.clone(),
        });
        for n in &nodes {
            out.command(
                Command::AnnotateNode {
                    node: n.clone(),
                    text: format!("k3s-autoscaler: removing ({})", d.reason),
                },
                &started,
            );
            out.command(Command::CordonAndTaint { node: n.clone() }, &started);
        }
    }

    /// `ScalingActionCompleted` for every action whose workers all reached their end state.
    fn complete(&self, model: &Model, event: &Envelope, out: &mut Emitter<'_>) {
        for (id, a) in &model.decisions.actions {
            let done = match a.kind {
                ScalingAction::ScaleUp => a.nodes.iter().all(|n| {
                    model.worker(n).is_some_and(|w| {
                        !w.state.is_provisioning() && w.state != WorkerState::Failed
                    })
                }),
                ScalingAction::ScaleDown => a
                    .nodes
                    .iter()
                    .all(|n| model.worker(n).is_none_or(|w| w.state.is_gone())),
            };
            if !done {
                continue;
            }
            let duration = (event.timestamp - a.started_at).num_milliseconds() as f64 / 1000.0;
            let completed = ScalingActionCompleted {
                action: a.kind,
                count: u32::try_from(a.nodes.len()).unwrap_or(u32::MAX),
                previous_workers: a.previous_workers,
                new_workers: model.current_workers(),
                duration: duration.max(0.0),
                nodes: a.nodes.clone(),
            };
            let key = format!("completed:{id}");
            if event.causation_id.is_none() {
                // Completed by an observation (the watcher's `NodeReady`, a root): continue the
                // action's own chain, so `explain` leads from the completion back to why it started.
                out.emit_keyed_after(&a.cause, completed, &key);
            } else {
                // Completed by a fact of the action's chain (`NodeRemoved`): it follows that fact.
                out.emit_keyed(completed, &key);
            }
        }
    }

    /// Drains interrupted workers whose replacement is Ready.
    fn drain_replaced(&self, model: &Model, _event: &Envelope, out: &mut Emitter<'_>) {
        for w in model.live() {
            let Some(rep) = &w.replacement else { continue };
            if w.removal.is_some() || model.worker(rep).map(|r| r.state) != Some(WorkerState::Ready)
            {
                continue;
            }
            let started = out.emit_keyed(
                ScaleDownStarted {
                    count: 1,
                    target_workers: model.current_workers().saturating_sub(1),
                    nodes: vec![w.name.clone()],
                },
                &format!("interrupted:{}", w.name),
            );
            out.command(
                Command::CordonAndTaint {
                    node: w.name.clone(),
                },
                &started,
            );
        }
    }
}

/// How long a worker named by a `ScaleUpStarted` may go without `NodeCreated` before [`NodeManager::tick`]
/// creates it again. Well below `max_node_provision_time`; a create that is merely slow meets Docker's 409.
pub const RECREATE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// `CreateWorker` for `name` again, its facts caused by the `ScaleUpStarted` that named it (`by`), as the
/// first command's were: the same fact ids, so a create that did complete is reported once.
fn create_again(name: &str, pool: &str, by: &Cause, at: DateTime<Utc>, outcome: &mut Outcome) {
    // The executor only needs the cause's identity, correlation and metadata.
    let started = Envelope {
        event_id: by.event_id,
        timestamp: at,
        source: HANDLER.to_string(),
        event: ScaleUpStarted {
            count: 1,
            target_workers: 0,
            nodes: vec![name.to_string()],
            pool: pool_field(pool),
        }
        .into(),
        metadata: by.metadata.clone(),
        correlation_id: by.correlation_id,
        causation_id: None,
        v: bus::envelope::SCHEMA_VERSION,
    };
    outcome.commands.push(crate::command::Issued {
        command: Command::CreateWorker {
            name: name.to_string(),
            requested_by: by.event_id,
            pool: pool.to_string(),
        },
        cause: started,
    });
}

/// What a scale-up decision asks of [`NodeManager::grow`].
#[derive(Debug, Clone, Copy)]
struct Grow<'a> {
    /// Cluster-wide, absolute.
    target: u32,
    pool: &'a str,
    /// The pool's absolute size, when the decision names one.
    pool_target: Option<u32>,
}

impl<'a> Grow<'a> {
    fn cluster(target: u32, pool: &'a str) -> Self {
        Grow {
            target,
            pool,
            pool_target: None,
        }
    }
}

/// Whether the drained worker `node` goes into its pool's warm pool: while the pool keeps fewer
/// than its `warm_pool` (counting the other workers being removed, which may be kept too).
fn keeps_warm(model: &Model, policy: &Policy, node: &str) -> bool {
    let pool = model.workers.pool_of(node);
    let others = model.workers.removing_in(&pool).saturating_sub(1);
    model.workers.warm_in(&pool) + others < policy.warm_pool(&pool)
}

/// How many more workers `pool` may get (its `max_nodes` minus those planned); a pool the policy
/// does not know is bounded by the cluster only.
fn pool_room(model: &Model, policy: &Policy, pool: &str) -> u32 {
    policy.pool(pool).map_or(u32::MAX, |p| {
        p.max_nodes.saturating_sub(model.workers.planned_in(pool))
    })
}

/// `CreateWorker` for each of `names` (a warm worker's create starts its stopped container, and
/// `WarmPoolLeft {started}` says it left the warm pool).
fn create(model: &Model, names: &[String], pool: &str, started: &Envelope, out: &mut Emitter<'_>) {
    for n in names {
        if model.worker(n).is_some_and(|w| w.warm) {
            out.emit_after(
                started,
                WarmPoolLeft {
                    node_name: n.clone(),
                    pool: pool_field(pool),
                    reason: "started".into(),
                },
            );
        }
        out.command(
            Command::CreateWorker {
                name: n.clone(),
                requested_by: started.event_id,
                pool: pool.to_string(),
            },
            started,
        );
    }
}

/// `RemoveWorker` + `DeleteNode` for `node`; with `keep_warm` its container is stopped into its
/// pool's warm pool instead (see [`keeps_warm`]).
fn remove(model: &Model, node: &str, keep_warm: bool, cause: &Envelope, out: &mut Emitter<'_>) {
    out.command(
        Command::RemoveWorker {
            node: node.to_string(),
            keep_warm_in: keep_warm.then(|| model.workers.pool_of(node)),
        },
        cause,
    );
    out.command(
        Command::DeleteNode {
            node: node.to_string(),
            pool: model.workers.pool_of(node),
        },
        cause,
    );
}
