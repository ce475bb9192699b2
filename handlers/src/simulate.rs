//! A whole-system driver with a simulated world: the stream, the model, every handler, the leader's
//! timers and an executor that "creates" and "removes" workers with delays. No side effects; used by
//! the tests, the example flows and the what-if replay.
//!
//! It behaves like the real runtime on one replica: events are published once (deterministic ids
//! de-duplicate), folded in order, and each handler sees the model with the event folded.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bus::event::{ClusterObserved, Event, NodeReady, ObservedNode};
use bus::{Envelope, Metadata};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::command::{Command, Issued};
use crate::executor::SOURCE as EXECUTOR;
use crate::model::Model;
use crate::policy::{chrono, Policy};
use crate::Handler;

/// How the simulated world answers commands.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedWorld {
    /// Container started → `NodeCreated`.
    pub create_delay: Duration,
    /// Container started → `NodeReady` (from the "node_watcher").
    pub ready_delay: Duration,
    /// Cordon, drain, delete → their facts.
    pub step_delay: Duration,
    /// Workers whose creation "hangs" (never become Ready).
    pub never_ready: BTreeSet<String>,
    /// Worker containers that exist.
    pub containers: BTreeSet<String>,
    /// Node objects: name → Ready.
    pub nodes: BTreeMap<String, bool>,
    /// The provider does not answer: every create fails at once with `provider_unavailable: …`.
    pub engine_down: bool,
    /// Pools whose creates the provider refuses (a retryable server error).
    pub failing_pools: BTreeSet<String>,
    /// Containers that exist stopped (kept warm): a create starts them again.
    pub stopped: BTreeSet<String>,
}

impl Default for SimulatedWorld {
    fn default() -> Self {
        Self {
            create_delay: Duration::from_secs(5),
            ready_delay: Duration::from_secs(40),
            step_delay: Duration::from_secs(2),
            never_ready: BTreeSet::new(),
            containers: BTreeSet::new(),
            nodes: BTreeMap::new(),
            engine_down: false,
            failing_pools: BTreeSet::new(),
            stopped: BTreeSet::new(),
        }
    }
}

/// The driver.
#[derive(Debug, Clone)]
pub struct Simulation {
    pub policy: Policy,
    pub model: Model,
    pub world: SimulatedWorld,
    /// Every event published, in stream order.
    pub log: Vec<Envelope>,
    /// Every command issued, in order.
    pub commands: Vec<Issued>,
    /// Run the executor (off: commands are only recorded).
    pub execute: bool,
    /// Call the leader's ticks.
    pub ticks: bool,
    pub metadata: Metadata,
    pub now: DateTime<Utc>,
    queue: VecDeque<Envelope>,
    published: BTreeSet<Uuid>,
    scheduled: Vec<(DateTime<Utc>, u64, Envelope)>,
    /// Orders scheduled facts.
    seq: u64,
    /// Numbers observations (their ids), apart from `seq` so re-executed commands do not shift them.
    observations: u64,
    next_tick: DateTime<Utc>,
}

impl Simulation {
    pub fn new(policy: Policy, start: DateTime<Utc>) -> Self {
        let model = Model::new(&policy);
        let next_tick = start + chrono(tick_every(&policy));
        Self {
            policy,
            model,
            world: SimulatedWorld::default(),
            log: Vec::new(),
            commands: Vec::new(),
            execute: true,
            ticks: true,
            metadata: Metadata::new("k3s-lab", "local"),
            now: start,
            queue: VecDeque::new(),
            published: BTreeSet::new(),
            scheduled: Vec::new(),
            seq: 0,
            observations: 0,
            next_tick,
        }
    }

    /// Puts `n` Ready workers (`<prefix>1..n`) in the world and lets the record learn them.
    pub fn with_workers(mut self, n: u32) -> Self {
        for i in 1..=n {
            let name = format!("{}{i}", self.policy.workers.name_prefix);
            self.world.containers.insert(name.clone());
            self.world.nodes.insert(name, true);
        }
        self.observe_cluster();
        self
    }

    /// A root observation at the current time (deterministic id from a counter).
    pub fn root(&mut self, source: &str, event: impl Into<Event>) -> Envelope {
        self.observations += 1;
        Envelope::root(source, event, self.metadata.clone())
            .with_deterministic_id(&format!("sim:obs:{}", self.observations))
            .with_timestamp(self.now)
    }

    /// Advances the clock to `at` (running due facts and ticks), then publishes `event` as a root.
    pub fn observe_at(
        &mut self,
        at: DateTime<Utc>,
        source: &str,
        event: impl Into<Event>,
    ) -> Envelope {
        self.advance_to(at);
        let env = self.root(source, event);
        self.publish(env.clone());
        env
    }

    /// Publishes a root observation now.
    pub fn observe(&mut self, source: &str, event: impl Into<Event>) -> Envelope {
        let at = self.now;
        self.observe_at(at, source, event)
    }

    /// Publishes what Kubernetes and Docker show now (`ClusterObserved`).
    pub fn observe_cluster(&mut self) -> Envelope {
        let obs = ClusterObserved {
            k8s_nodes: self
                .world
                .nodes
                .iter()
                .map(|(name, ready)| ObservedNode {
                    name: name.clone(),
                    ready: *ready,
                    scale_down_disabled: false,
                })
                .collect(),
            docker_containers: self.world.containers.iter().cloned().collect(),
            unreachable: Vec::new(),
        };
        self.observe("state_observer", obs)
    }

    /// A container dies: its Node stays, NotReady (what k3s shows after `docker kill`).
    pub fn kill(&mut self, name: &str) {
        self.world.containers.remove(name);
        if let Some(r) = self.world.nodes.get_mut(name) {
            *r = false;
        }
    }

    /// Publishes an envelope (dropped if its id was already published) and runs everything it causes.
    pub fn publish(&mut self, env: Envelope) {
        if self.published.insert(env.event_id) {
            self.queue.push_back(env);
        }
        self.drain_queue();
    }

    /// Re-delivers an already published envelope to the model and handlers (as a consumer group
    /// does after a crash): outputs carry the same ids, so nothing new is published.
    pub fn redeliver(&mut self, env: &Envelope) {
        self.model.apply(env);
        self.run_handlers(env);
        self.drain_queue();
    }

    fn drain_queue(&mut self) {
        while let Some(env) = self.queue.pop_front() {
            self.model.apply(&env);
            self.log.push(env.clone());
            self.run_handlers(&env);
        }
    }

    fn run_handlers(&mut self, env: &Envelope) {
        for h in Handler::ALL {
            let out = h.handle(&self.model, env, &self.policy, self.now);
            self.take(out);
        }
    }

    fn take(&mut self, out: crate::Outcome) {
        for e in out.events {
            if self.published.insert(e.event_id) {
                self.queue.push_back(e);
            }
        }
        for c in out.commands {
            self.commands.push(c.clone());
            if self.execute {
                self.run_command(&c);
            }
        }
    }

    fn schedule(&mut self, after: Duration, env: Envelope) {
        let at = self.now + chrono(after);
        self.seq += 1;
        self.scheduled.push((at, self.seq, env.with_timestamp(at)));
    }

    fn run_command(&mut self, i: &Issued) {
        let w = self.world.clone();
        match &i.command {
            Command::CreateWorker { name, pool, .. } => {
                let refused = if w.engine_down {
                    Some(format!(
                        "{}: cannot reach the Docker engine (simulated)",
                        crate::codes::PROVIDER_UNAVAILABLE
                    ))
                } else if w.failing_pools.contains(pool) {
                    Some("Docker engine call `create_container` failed: 500 (simulated)".into())
                } else {
                    None
                };
                if let Some(error) = refused {
                    let failed = i.fact(
                        EXECUTOR,
                        bus::event::ScalingActionFailed {
                            action: bus::event::ScalingAction::ScaleUp,
                            node_name: Some(name.clone()),
                            error,
                            retryable: true,
                        },
                        self.now,
                    );
                    self.schedule(Duration::ZERO, failed);
                } else if self.world.stopped.remove(name)
                    || self.world.containers.insert(name.clone())
                {
                    let created = i.fact(
                        EXECUTOR,
                        bus::event::NodeCreated {
                            node_name: name.clone(),
                            container_id: Some(format!("sim-{name}")),
                            pool: crate::policy::pool_field(pool),
                        },
                        self.now,
                    );
                    self.schedule(w.create_delay, created);
                    if !w.never_ready.contains(name) {
                        let ready = Envelope::root(
                            "node_watcher",
                            NodeReady {
                                node_name: name.clone(),
                            },
                            self.metadata.clone(),
                        )
                        .with_deterministic_id(&format!("sim:ready:{name}:{}", i.cause.event_id));
                        self.schedule(w.ready_delay, ready);
                    }
                }
            }
            Command::CordonAndTaint { node } => {
                let f = i.fact(
                    EXECUTOR,
                    bus::event::NodeCordoned {
                        node_name: node.clone(),
                    },
                    self.now,
                );
                self.schedule(w.step_delay, f);
            }
            Command::Drain { node, .. } => {
                let f = i.fact(
                    EXECUTOR,
                    bus::event::NodeDrained {
                        node_name: node.clone(),
                        evicted_pods: 0,
                    },
                    self.now,
                );
                self.schedule(w.step_delay, f);
            }
            Command::RemoveWorker { node, keep_warm_in } => {
                if let (Some(pool), true) = (keep_warm_in, self.world.containers.contains(node)) {
                    self.world.stopped.insert(node.clone());
                    let f = i.fact(
                        EXECUTOR,
                        bus::event::WarmPoolEntered {
                            node_name: node.clone(),
                            pool: crate::policy::pool_field(pool),
                        },
                        self.now,
                    );
                    self.schedule(Duration::ZERO, f);
                } else {
                    self.world.containers.remove(node);
                    self.world.stopped.remove(node);
                }
            }
            Command::DeleteNode { node, pool } => {
                self.world.nodes.remove(node);
                let f = i.fact(
                    EXECUTOR,
                    bus::event::NodeRemoved {
                        node_name: node.clone(),
                        pool: crate::policy::pool_field(pool),
                    },
                    self.now,
                );
                self.schedule(w.step_delay, f);
            }
            Command::Uncordon { .. } | Command::AnnotateNode { .. } | Command::Notify { .. } => {}
        }
    }

    /// Runs scheduled facts and ticks up to `at`, in time order, and sets the clock to `at`.
    pub fn advance_to(&mut self, at: DateTime<Utc>) {
        loop {
            let next_fact = self
                .scheduled
                .iter()
                .enumerate()
                .filter(|(_, (t, _, _))| *t <= at)
                .min_by_key(|(_, (t, s, _))| (*t, *s))
                .map(|(i, (t, _, _))| (i, *t));
            let tick_due = self.ticks && self.next_tick <= at;
            match next_fact {
                Some((i, t)) if !tick_due || t <= self.next_tick => {
                    let (_, _, env) = self.scheduled.remove(i);
                    self.now = t.max(self.now);
                    if let Event::NodeReady(r) = &env.event {
                        if self.world.containers.contains(&r.node_name) {
                            self.world.nodes.insert(r.node_name.clone(), true);
                        } else {
                            continue; // removed before it became Ready
                        }
                    }
                    self.publish(env);
                }
                _ if tick_due => {
                    self.now = self.next_tick.max(self.now);
                    self.next_tick += chrono(tick_every(&self.policy));
                    for h in [Handler::NodeManager, Handler::MinimumNodeEnforcer] {
                        let out = h.tick(&self.model, &self.policy, self.now);
                        self.take(out);
                        self.drain_queue();
                    }
                }
                _ => break,
            }
        }
        self.now = self.now.max(at);
    }

    /// Advances by `d`.
    pub fn advance(&mut self, d: Duration) {
        let at = self.now + chrono(d);
        self.advance_to(at);
    }

    /// The event types of the log, in order.
    pub fn types(&self) -> Vec<&'static str> {
        self.log.iter().map(|e| e.event_type()).collect()
    }
}

fn tick_every(policy: &Policy) -> Duration {
    policy
        .enforcement
        .min_violation_check_interval
        .max(Duration::from_secs(1))
}
