//! StateSynchronizer: compares what Kubernetes and Docker show (`ClusterObserved`) with the record.
//!
//! - everything agrees and nothing is in flight → `ClusterStateSynced` (again when the count changes,
//!   or every `sync.report_every`);
//! - a recorded worker (Ready/NotReady/Registered) missing from both, or whose container is gone,
//!   with no scale-down in flight for it → `NodeUnexpectedlyLost`;
//! - a lost worker's leftovers (the exited container and NotReady Node a `docker kill` leaves) →
//!   `RemoveWorker` + `DeleteNode`, once no worker is being provisioned;
//! - a Node object without a container → `DeleteNode`; a managed container with no Node and no record
//!   for longer than `max_node_provision_time` → `RemoveWorker` (an orphan). Workers the record is
//!   creating are the NodeManager's to time out.
//!
//! Observations are triggered by events ([`wants_sync`]) and by a timer; [`SyncTriggers`] collapses
//! many triggers within `sync.min_gap` into one observation (like a channel of size one, as a pure
//! struct).

use std::collections::BTreeSet;

use bus::event::{ClusterObserved, ClusterStateSynced, Event, NodeUnexpectedlyLost, WarmPoolLeft};
use bus::Envelope;
use chrono::{DateTime, Utc};

use crate::command::{Cause, Command, Emitter, Outcome};
use crate::model::{Model, Synced, WorkerState};
use crate::policy::{chrono, pool_field, Policy, SyncPolicy};

/// The handler's name (consumer group and event source).
pub const HANDLER: &str = "StateSynchronizer";

/// Events after which the cluster should be observed again soon.
pub fn wants_sync(event: &Event) -> bool {
    matches!(
        event,
        Event::NodeUnexpectedlyLost(_)
            | Event::NodeInterruptionNotice(_)
            | Event::NodeHealthDegraded(_)
            | Event::ScalingActionCompleted(_)
            | Event::ScalingActionFailed(_)
            | Event::NodeRemoved(_)
            | Event::NodeReady(_)
    )
}

/// Trigger de-duplication: any number of [`SyncTriggers::trigger`] calls between two runs yield one
/// run, no sooner than `min_gap` after the previous; with no trigger, a run every `interval`.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncTriggers {
    policy: SyncPolicy,
    pending: bool,
    last_run: Option<DateTime<Utc>>,
}

impl SyncTriggers {
    pub fn new(policy: SyncPolicy) -> Self {
        Self {
            policy,
            pending: false,
            last_run: None,
        }
    }

    /// Asks for an observation (idempotent until the next run).
    pub fn trigger(&mut self) {
        self.pending = true;
    }

    /// Whether to observe now; if so, the trigger is consumed and `now` becomes the last run.
    pub fn due(&mut self, now: DateTime<Utc>) -> bool {
        let due = match self.last_run {
            None => true,
            Some(last) => {
                let since = now - last;
                (self.pending && since >= chrono(self.policy.min_gap))
                    || since >= chrono(self.policy.interval)
            }
        };
        if due {
            self.pending = false;
            self.last_run = Some(now);
        }
        due
    }

    /// When [`SyncTriggers::due`] will next say yes (for sleeping until then).
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        let last = self.last_run?;
        Some(if self.pending {
            last + chrono(self.policy.min_gap)
        } else {
            last + chrono(self.policy.interval)
        })
    }
}

/// Reconciles Kubernetes, Docker and the record.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateSynchronizer;

impl StateSynchronizer {
    pub fn handle(
        &self,
        model: &Model,
        event: &Envelope,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> Outcome {
        let Event::ClusterObserved(o) = &event.event else {
            return Outcome::default();
        };
        let cause = Cause::from(event);
        let mut out = Emitter::new(HANDLER, &cause, now);
        let disagreements = self.reconcile(model, event, o, policy, &mut out);
        let settled = model.decisions.actions.is_empty() && model.provisioning() == 0;
        if disagreements == 0 && settled {
            let workers = model.current_workers();
            let names: BTreeSet<String> = model.live().map(|w| w.name.clone()).collect();
            // Compared with what the last report said, not with the record when it was folded: a
            // report lands on the stream after the entries that raced it (a scale-down started
            // meanwhile), so the names live at its fold may already be the new ones.
            let repeat = match model.sync.last {
                None => true,
                Some(Synced {
                    at,
                    workers: reported,
                }) => {
                    reported != workers
                        || names != model.sync.last_names
                        || event.timestamp - at >= chrono(policy.sync.report_every)
                }
            };
            if repeat {
                // Warm workers' stopped containers are kept on purpose: not cluster workers.
                let warm = o
                    .docker_containers
                    .iter()
                    .filter(|c| model.worker(c).is_some_and(|w| w.warm))
                    .count();
                out.emit(ClusterStateSynced {
                    k8s_nodes: count(o.k8s_nodes.len()),
                    docker_containers: count(o.docker_containers.len() - warm),
                    db_workers: workers,
                    last_sync: event.timestamp,
                });
            }
        }
        out.finish()
    }

    /// Emits what differs; returns how many things differ.
    fn reconcile(
        &self,
        model: &Model,
        event: &Envelope,
        o: &ClusterObserved,
        policy: &Policy,
        out: &mut Emitter<'_>,
    ) -> usize {
        let k8s: BTreeSet<&str> = o.k8s_nodes.iter().map(|n| n.name.as_str()).collect();
        let docker: BTreeSet<&str> = o.docker_containers.iter().map(|s| s.as_str()).collect();
        let unreachable: BTreeSet<&str> = o.unreachable_pools().collect();
        let ready: BTreeSet<&str> = o
            .k8s_nodes
            .iter()
            .filter(|n| n.ready)
            .map(|n| n.name.as_str())
            .collect();
        let mut differ = 0;
        for w in model.workers.active() {
            let recorded = matches!(
                w.state,
                WorkerState::Ready | WorkerState::NotReady | WorkerState::Registered
            );
            if !recorded || w.removal.is_some() {
                continue;
            }
            let (in_k8s, in_docker) = (
                k8s.contains(w.name.as_str()),
                docker.contains(w.name.as_str()),
            );
            if in_docker {
                continue;
            }
            // A worker on a host that did not answer is unknown, not missing: while its Node is Ready
            // it runs (only the way to its engine is cut); once the Node is not, it is lost with the
            // host, and replaced elsewhere (docs/TOPOLOGY.md, "Docker hosts").
            let host_down = unreachable.contains(w.pool.as_str());
            if host_down && ready.contains(w.name.as_str()) {
                continue;
            }
            differ += 1;
            out.emit(NodeUnexpectedlyLost {
                node_name: w.name.clone(),
                last_seen: w.since,
                cause: if host_down {
                    "host_unreachable"
                } else if in_k8s {
                    "container_missing"
                } else {
                    "vanished"
                }
                .into(),
            });
            if in_k8s {
                out.command(
                    Command::DeleteNode {
                        node: w.name.clone(),
                        pool: w.pool.clone(),
                    },
                    event,
                );
            }
        }
        // What a lost worker left behind: `docker kill` leaves an exited container and a NotReady Node
        // (with k3s's node-password secret). The record keeps it Lost for good and a replacement takes its
        // place, so nothing else would ever remove them. Once no worker is being provisioned (the
        // replacement is in; the pods of the dead Node are not pushed out before), remove the container,
        // then the Node and its secret.
        if model.provisioning() == 0 {
            // Looked up by container (in name order, as `docker` is): Lost workers are history
            // the record keeps for good, too many to walk on every observation.
            let lost = docker
                .iter()
                .filter_map(|c| model.worker(c))
                .filter(|w| w.state == WorkerState::Lost);
            for w in lost {
                differ += 1;
                out.command(
                    Command::RemoveWorker {
                        node: w.name.clone(),
                        keep_warm_in: None,
                    },
                    event,
                );
                if k8s.contains(w.name.as_str()) {
                    out.command(
                        Command::DeleteNode {
                            node: w.name.clone(),
                            pool: w.pool.clone(),
                        },
                        event,
                    );
                }
            }
        }
        // Node objects with no container that the record does not hold as live.
        for n in &o.k8s_nodes {
            let name = n.name.as_str();
            let known_live = model.worker(name).is_some_and(|w| {
                matches!(
                    w.state,
                    WorkerState::Ready | WorkerState::NotReady | WorkerState::Registered
                )
            });
            // Cordoning/Draining workers still have their container; a Removing one whose container
            // is gone but whose Node remains had its DeleteNode fail: retry it.
            let leaving = model
                .worker(name)
                .is_some_and(|w| matches!(w.state, WorkerState::Cordoning | WorkerState::Draining));
            if !docker.contains(name) && !known_live && !leaving {
                differ += 1;
                out.command(
                    Command::DeleteNode {
                        node: n.name.clone(),
                        pool: model.workers.pool_of(name),
                    },
                    event,
                );
            }
        }
        differ += self.warm(model, policy, &docker, &unreachable, event, out);
        // Managed containers nobody knows, with no Node for longer than a worker needs to register.
        let limit = chrono(policy.scaling.max_node_provision_time);
        for (name, first_seen) in &model.sync.unknown_containers {
            differ += 1;
            if event.timestamp - *first_seen >= limit {
                out.command(
                    Command::RemoveWorker {
                        node: name.clone(),
                        keep_warm_in: None,
                    },
                    event,
                );
            }
        }
        differ
    }
}

impl StateSynchronizer {
    /// The warm pools: a warm worker whose stopped container is gone leaves its pool's warm pool;
    /// a pool with more warm workers than its `warm_pool` (lowered since) removes the extra ones,
    /// highest names first. Returns how many things differ.
    fn warm(
        &self,
        model: &Model,
        policy: &Policy,
        docker: &BTreeSet<&str>,
        unreachable: &BTreeSet<&str>,
        event: &Envelope,
        out: &mut Emitter<'_>,
    ) -> usize {
        let mut differ = 0;
        let mut kept: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for w in model.workers.warm() {
            if w.state != WorkerState::Removed || unreachable.contains(w.pool.as_str()) {
                continue; // still being removed into the warm pool, or on a host that is away
            }
            if docker.contains(w.name.as_str()) {
                kept.entry(w.pool.as_str())
                    .or_default()
                    .push(w.name.as_str());
                continue;
            }
            differ += 1;
            out.emit(WarmPoolLeft {
                node_name: w.name.clone(),
                pool: pool_field(&w.pool),
                reason: "container_gone".into(),
            });
        }
        for (pool, names) in kept {
            let cap = policy.warm_pool(pool) as usize;
            for name in names.iter().skip(cap) {
                differ += 1;
                out.emit(WarmPoolLeft {
                    node_name: name.to_string(),
                    pool: pool_field(pool),
                    reason: "over_capacity".into(),
                });
                out.command(
                    Command::RemoveWorker {
                        node: name.to_string(),
                        keep_warm_in: None,
                    },
                    event,
                );
            }
        }
        differ
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
