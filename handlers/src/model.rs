//! [`Model`]: the projection every handler reads — a pure fold over the whole event stream.
//!
//! Every replica folds the same stream, so a handler's output on an event is a deterministic function
//! of (the model folded up to and including that event, the event, the policy, now). That is what makes
//! decisions replayable and safe with several replicas.
//!
//! **Contract for the runtime**: call [`Model::apply`] on every event in stream order, and call a
//! handler's `handle` with a model that has folded every event up to and including the one handled.
//! Time is the events' `timestamp`, never the wall clock.
//!
//! **Pending pods** are the last `PendingPodsDetected` report; they are cleared by a report with
//! `pending_count: 0`, by the completion of a scale-up that started after they were first reported
//! (its capacity is Ready; the watcher reports again if they still do not fit), or after
//! `scaling.pending_pods_ttl` without a report.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bus::event::{Event, PodRequest, ScalingAction};
use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::Cause;
use crate::policy::{chrono, Policy, Thresholds};

/// Where a worker is in its life. Scale-up: Requested → Creating → Registered → Ready (or Failed);
/// scale-down: Cordoning → Draining → Removing → Removed; NotReady and Lost come from the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Named in `ScaleUpStarted`; the create command is issued.
    Requested,
    /// The container exists (`NodeCreated`).
    Creating,
    /// The Node object exists but is not Ready yet.
    Registered,
    Ready,
    NotReady,
    /// `ScaleDownStarted`: being cordoned and tainted.
    Cordoning,
    /// Cordoned; its pods are being evicted.
    Draining,
    /// Drained; container and Node object are being removed.
    Removing,
    Removed,
    /// Did not become Ready in time, or could not be created.
    Failed,
    /// Vanished without a scale-down asking for it.
    Lost,
}

impl WorkerState {
    /// Being created: counts against `max_nodes`.
    pub fn is_provisioning(self) -> bool {
        matches!(
            self,
            WorkerState::Requested | WorkerState::Creating | WorkerState::Registered
        )
    }

    /// Part of the cluster and not on its way out.
    pub fn is_live(self) -> bool {
        matches!(self, WorkerState::Ready | WorkerState::NotReady)
    }

    /// Being removed by a scale-down.
    pub fn is_leaving(self) -> bool {
        matches!(
            self,
            WorkerState::Cordoning | WorkerState::Draining | WorkerState::Removing
        )
    }

    /// Gone for good.
    pub fn is_gone(self) -> bool {
        matches!(
            self,
            WorkerState::Removed | WorkerState::Failed | WorkerState::Lost
        )
    }
}

/// One worker as the record knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub name: String,
    pub state: WorkerState,
    /// When it entered `state`.
    pub since: DateTime<Utc>,
    /// The event that moved it into `state`: handlers act only on the event that made a transition,
    /// so a duplicated or late notice for the same node coalesces with the first (single-flight).
    pub transitioned_by: Uuid,
    pub requested_at: Option<DateTime<Utc>>,
    pub ready_at: Option<DateTime<Utc>>,
    /// The `ScaleUpStarted` that named it.
    pub requested_by: Option<Cause>,
    /// The `ScaleDownStarted` (or interruption) removing it.
    pub removal: Option<Cause>,
    /// Annotated `cluster-autoscaler.kubernetes.io/scale-down-disabled: "true"` (from `ClusterObserved`).
    pub scale_down_disabled: bool,
    /// A `NodeInterruptionNotice` said someone else is stopping it.
    pub interruption: Option<Cause>,
    /// The worker started to replace it after an interruption.
    pub replacement: Option<String>,
}

/// A scaling action in flight: one `ScaleUpStarted` or `ScaleDownStarted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub kind: ScalingAction,
    pub nodes: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub previous_workers: u32,
    pub target_workers: u32,
    /// The Started event.
    pub cause: Cause,
}

/// The pods the scheduler cannot place, as last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub count: u32,
    pub pods: Vec<PodRequest>,
    pub since: DateTime<Utc>,
    pub last_report: DateTime<Utc>,
    pub cause: Cause,
}

/// In [`Model::provided_for`]: a scale-up answered a report that listed no pods.
const UNLISTED_PODS: &str = "*";

fn pod_key(p: &PodRequest) -> String {
    format!("{}/{}", p.namespace, p.name)
}

/// The latest utilisation sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub workers: u32,
    pub cpu_avg: f64,
    pub memory_avg: f64,
    /// node → (cpu %, memory %).
    pub nodes: BTreeMap<String, (f64, f64)>,
}

/// The last decision any handler published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub event_type: String,
    pub target_workers: Option<u32>,
    pub at: DateTime<Utc>,
    pub event_id: Uuid,
}

/// The knobs the fold itself needs (copied from the [`Policy`] it was built with).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Knobs {
    name_prefix: String,
    thresholds: Thresholds,
    alert_dedup_window: std::time::Duration,
    emergency_window: std::time::Duration,
    pending_pods_ttl: std::time::Duration,
}

/// How many event ids are remembered to drop redeliveries.
const SEEN_CAPACITY: usize = 8192;

/// The projection of the stream (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    knobs: Knobs,
    /// Every worker ever seen, by name (removed ones stay, so names are never reused).
    pub workers: BTreeMap<String, Worker>,
    /// Highest `n` of any `<name_prefix><n>` ever seen.
    pub max_seq: u64,
    pub pending: Option<Pending>,
    /// Pending pods (`namespace/name`) a `pending_pods` scale-up sized, kept while they stay pending
    /// (beyond the scale-up's completion): the workers made for them can be Ready before the scheduler
    /// binds them. [`UNLISTED_PODS`] stands for reports that list no pods.
    #[serde(default)]
    pub provided_for: BTreeSet<String>,
    pub sample: Option<Sample>,
    /// Consecutive samples above a high threshold.
    pub high_streak: u32,
    /// Consecutive samples with both figures below the low thresholds.
    pub low_streak: u32,
    /// Start of the current low streak.
    pub low_since: Option<DateTime<Utc>>,
    /// `OptimalStateTrigger` was published for the current low streak at the minimum.
    pub optimal_announced: bool,
    pub last_scale_up: Option<DateTime<Utc>>,
    pub last_scale_down: Option<DateTime<Utc>>,
    /// Actions in flight, by the id of their Started event.
    pub actions: BTreeMap<Uuid, Action>,
    pub last_blocked: Option<(String, DateTime<Utc>)>,
    pub last_decision: Option<DecisionRecord>,
    /// Decisions by (cause, type) → the first one's id: a second decision with the same cause (another
    /// replica's copy) is the same decision, and the NodeManager acts on the first only.
    pub decisions: BTreeMap<(Uuid, String), Uuid>,
    /// The open `MinimumNodesViolation`, if any.
    pub violation: Option<(Cause, DateTime<Utc>)>,
    /// Workers lost recently (within the emergency window), for `EmergencyScaleUp`.
    pub recent_losses: Vec<(DateTime<Utc>, String)>,
    /// The size scale-ups are working towards; failed workers are replaced until it is reached.
    pub scale_up_goal: Option<(u32, Cause)>,
    /// Failed provisions in a row, and the last one.
    pub provision_failures: u32,
    pub last_failure: Option<(DateTime<Utc>, Cause)>,
    /// Alert key → (window start, the event that opened it).
    pub alert_windows: BTreeMap<String, (DateTime<Utc>, Uuid)>,
    /// The last `ClusterStateSynced`: (time, workers).
    pub last_synced: Option<(DateTime<Utc>, u32)>,
    /// The live workers when `ClusterStateSynced` was last published.
    pub last_synced_names: BTreeSet<String>,
    /// Managed containers with no Node and no record, and when first seen so.
    pub unknown_containers: BTreeMap<String, DateTime<Utc>>,
    /// The last event folded, and how many were.
    pub last_event: Option<(Uuid, DateTime<Utc>)>,
    pub position: u64,
    /// The metadata of the last event folded (for roots the timer emits).
    pub metadata: bus::Metadata,
    seen: VecDeque<Uuid>,
    seen_set: BTreeSet<Uuid>,
}

impl Model {
    /// An empty model for `policy`.
    pub fn new(policy: &Policy) -> Self {
        Self {
            knobs: Knobs {
                name_prefix: policy.workers.name_prefix.clone(),
                thresholds: policy.thresholds.clone(),
                alert_dedup_window: policy.alerts.dedup_window,
                emergency_window: policy.enforcement.emergency_window,
                pending_pods_ttl: policy.scaling.pending_pods_ttl,
            },
            workers: BTreeMap::new(),
            max_seq: 0,
            pending: None,
            provided_for: BTreeSet::new(),
            sample: None,
            high_streak: 0,
            low_streak: 0,
            low_since: None,
            optimal_announced: false,
            last_scale_up: None,
            last_scale_down: None,
            actions: BTreeMap::new(),
            last_blocked: None,
            last_decision: None,
            decisions: BTreeMap::new(),
            violation: None,
            recent_losses: Vec::new(),
            scale_up_goal: None,
            provision_failures: 0,
            last_failure: None,
            alert_windows: BTreeMap::new(),
            last_synced: None,
            last_synced_names: BTreeSet::new(),
            unknown_containers: BTreeMap::new(),
            last_event: None,
            position: 0,
            metadata: bus::Metadata::default(),
            seen: VecDeque::new(),
            seen_set: BTreeSet::new(),
        }
    }

    /// Folds every event of `events` in order.
    pub fn from_events<'a>(
        policy: &Policy,
        events: impl IntoIterator<Item = &'a Envelope>,
    ) -> Self {
        let mut m = Self::new(policy);
        for e in events {
            m.apply(e);
        }
        m
    }

    // ---- queries --------------------------------------------------------------------------------

    /// Workers in the cluster and not leaving (Ready or NotReady): what the minimum counts.
    pub fn current_workers(&self) -> u32 {
        self.count(|w| w.state.is_live())
    }

    /// Workers a scale-up created that became Ready less than `grace` before `at`.
    pub fn newly_ready(&self, at: DateTime<Utc>, grace: std::time::Duration) -> u32 {
        self.count(|w| {
            w.state == WorkerState::Ready
                && w.requested_by.is_some()
                && w.ready_at.is_some_and(|r| at - r < chrono(grace))
        })
    }

    /// Some pod of the pending report was already sized by a `pending_pods` scale-up.
    pub fn pending_awaits_provided_capacity(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| {
            if p.pods.is_empty() {
                self.provided_for.contains(UNLISTED_PODS)
            } else {
                p.pods
                    .iter()
                    .any(|pod| self.provided_for.contains(&pod_key(pod)))
            }
        })
    }

    /// Workers being created.
    pub fn provisioning(&self) -> u32 {
        self.count(|w| w.state.is_provisioning())
    }

    /// Workers the cluster will have once creations finish: live ones not being replaced after an
    /// interruption, plus those being created. Never above `max_nodes` by our own doing.
    pub fn planned_workers(&self) -> u32 {
        self.count(|w| w.state.is_provisioning() || (w.state.is_live() && w.replacement.is_none()))
    }

    /// Live workers that are NotReady.
    pub fn unhealthy_workers(&self) -> u32 {
        self.count(|w| w.state == WorkerState::NotReady)
    }

    /// Live workers, in name order.
    pub fn live(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values().filter(|w| w.state.is_live())
    }

    pub fn worker(&self, name: &str) -> Option<&Worker> {
        self.workers.get(name)
    }

    /// Whether `event_id` moved `node` into its current state (see [`Worker::transitioned_by`]).
    pub fn transitioned(&self, node: &str, event_id: Uuid) -> bool {
        self.workers
            .get(node)
            .is_some_and(|w| w.transitioned_by == event_id)
    }

    /// A scale-down is in flight.
    pub fn scale_down_in_flight(&self) -> bool {
        self.actions
            .values()
            .any(|a| a.kind == ScalingAction::ScaleDown)
    }

    /// Pods pending now.
    pub fn pending_count(&self) -> u32 {
        self.pending.as_ref().map_or(0, |p| p.count)
    }

    /// The next free worker name (`<prefix><n>` above every name ever seen).
    pub fn next_names(&self, count: u32) -> Vec<String> {
        (1..=u64::from(count))
            .map(|i| format!("{}{}", self.knobs.name_prefix, self.max_seq + i))
            .collect()
    }

    /// Whether `event_id` was already folded (a redelivery).
    pub fn has_seen(&self, event_id: Uuid) -> bool {
        self.seen_set.contains(&event_id)
    }

    fn count(&self, f: impl Fn(&Worker) -> bool) -> u32 {
        u32::try_from(self.workers.values().filter(|w| f(w)).count()).unwrap_or(u32::MAX)
    }

    // ---- the fold -------------------------------------------------------------------------------

    /// Folds one event. Returns `false` (and changes nothing) for an event already folded.
    pub fn apply(&mut self, env: &Envelope) -> bool {
        if self.seen_set.contains(&env.event_id) {
            return false;
        }
        self.seen.push_back(env.event_id);
        self.seen_set.insert(env.event_id);
        if self.seen.len() > SEEN_CAPACITY {
            if let Some(old) = self.seen.pop_front() {
                self.seen_set.remove(&old);
            }
        }
        self.position += 1;
        self.last_event = Some((env.event_id, env.timestamp));
        if self.metadata != env.metadata {
            self.metadata = env.metadata.clone();
        }
        let ts = env.timestamp;

        if let Some(p) = &self.pending {
            if ts - p.last_report > chrono(self.knobs.pending_pods_ttl) {
                self.pending = None;
            }
        }
        let window = chrono(self.knobs.emergency_window);
        self.recent_losses.retain(|(t, _)| ts - *t <= window);
        self.open_alert_window(env);

        match &env.event {
            Event::MetricsSampled(s) => self.on_sample(env, s),
            Event::PendingPodsDetected(p) => {
                // Pods no longer pending were bound: nothing is on its way for them any more.
                if !p.pods.is_empty() {
                    let now: BTreeSet<String> = p.pods.iter().map(pod_key).collect();
                    self.provided_for.retain(|k| now.contains(k));
                } else if p.pending_count == 0 {
                    self.provided_for.clear();
                }
                if p.pending_count == 0 {
                    self.pending = None;
                } else {
                    let since = self.pending.as_ref().map_or(ts, |old| old.since);
                    self.pending = Some(Pending {
                        count: p.pending_count,
                        pods: p.pods.clone(),
                        since,
                        last_report: ts,
                        cause: Cause::from(env),
                    });
                }
            }
            Event::OptimalStateTrigger(_) => self.optimal_announced = true,
            Event::ScaleUpDecision(d) => {
                if d.reason == crate::codes::reason::PENDING_PODS {
                    if let Some(p) = &self.pending {
                        self.provided_for.extend(p.pods.iter().map(pod_key));
                        if p.pods.is_empty() {
                            self.provided_for.insert(UNLISTED_PODS.to_string());
                        }
                    }
                }
                self.decided(env, Some(d.target_workers))
            }
            Event::ScaleDownDecision(d) => self.decided(env, Some(d.target_workers)),
            Event::AutoScaleUpToMinimum(d) => self.decided(env, Some(d.target_workers)),
            Event::EmergencyScaleUp(d) => {
                // Only the decision itself answers the losses so far: a late copy of it (another
                // replica's) must not wipe out losses that happened after it.
                let first = self.is_first_decision(env);
                self.decided(env, Some(d.target_workers));
                if first {
                    self.recent_losses.clear();
                }
            }
            Event::ScaleDownBlocked(b) => self.last_blocked = Some((b.reason.clone(), ts)),
            Event::ScaleUpStarted(s) => {
                let previous = self.current_workers();
                let replaced = env.causation_id.and_then(|c| {
                    self.workers
                        .values()
                        .find(|w| w.interruption.as_ref().is_some_and(|i| i.event_id == c))
                        .map(|w| w.name.clone())
                });
                let fresh: Vec<String> = s
                    .nodes
                    .iter()
                    .filter(|n| self.workers.get(*n).is_none_or(|w| w.state.is_gone()))
                    .cloned()
                    .collect();
                for n in &fresh {
                    let mut w = self.new_worker(n, WorkerState::Requested, env);
                    w.requested_at = Some(ts);
                    w.requested_by = Some(Cause::from(env));
                    self.workers.insert(n.clone(), w);
                }
                if let (Some(old), Some(new)) = (replaced, s.nodes.first()) {
                    if let Some(w) = self.workers.get_mut(&old) {
                        w.replacement = Some(new.clone());
                    }
                }
                // A repeated start naming workers already on their way adds no action.
                if fresh.is_empty() {
                    return true;
                }
                self.actions.insert(
                    env.event_id,
                    Action {
                        kind: ScalingAction::ScaleUp,
                        nodes: fresh,
                        started_at: ts,
                        previous_workers: previous,
                        target_workers: s.target_workers,
                        cause: Cause::from(env),
                    },
                );
                self.last_scale_up = Some(ts);
                let goal = self
                    .scale_up_goal
                    .as_ref()
                    .map_or(0, |(g, _)| *g)
                    .max(s.target_workers);
                self.scale_up_goal = Some((goal, Cause::from(env)));
            }
            Event::NodeCreated(c) => match self.workers.get(&c.node_name).map(|w| w.state) {
                Some(WorkerState::Requested) => {
                    self.transition(&c.node_name, WorkerState::Creating, env)
                }
                Some(_) => {}
                None => {
                    let w = self.new_worker(&c.node_name, WorkerState::Creating, env);
                    self.workers.insert(c.node_name.clone(), w);
                }
            },
            Event::NodeReady(r) => self.became_ready(&r.node_name, env),
            Event::NodeHealthDegraded(h) => {
                if self.state_of(&h.node_name) == Some(WorkerState::Ready) {
                    self.transition(&h.node_name, WorkerState::NotReady, env);
                }
            }
            Event::NodeUnexpectedlyLost(l) => {
                if self
                    .workers
                    .get(&l.node_name)
                    .is_some_and(|w| !w.state.is_gone())
                {
                    self.transition(&l.node_name, WorkerState::Lost, env);
                    self.recent_losses.push((ts, l.node_name.clone()));
                    self.drop_from_actions(&l.node_name);
                }
            }
            Event::NodeInterruptionNotice(n) => {
                if let Some(w) = self.workers.get_mut(&n.node_name) {
                    if w.state.is_live() && w.interruption.is_none() {
                        w.interruption = Some(Cause::from(env));
                    }
                }
            }
            Event::ScaleDownStarted(s) => {
                let previous = self.current_workers();
                let fresh: Vec<String> = s
                    .nodes
                    .iter()
                    .filter(|n| self.state_of(n).is_some_and(|st| st.is_live()))
                    .cloned()
                    .collect();
                for n in &fresh {
                    self.transition(n, WorkerState::Cordoning, env);
                    if let Some(w) = self.workers.get_mut(n) {
                        w.removal = Some(Cause::from(env));
                    }
                }
                // Single-flight: a node already leaving is not started again.
                if fresh.is_empty() {
                    return true;
                }
                self.actions.insert(
                    env.event_id,
                    Action {
                        kind: ScalingAction::ScaleDown,
                        nodes: fresh,
                        started_at: ts,
                        previous_workers: previous,
                        target_workers: s.target_workers,
                        cause: Cause::from(env),
                    },
                );
                self.last_scale_down = Some(ts);
                self.scale_up_goal = None;
            }
            Event::NodeCordoned(c) => {
                if self.state_of(&c.node_name) == Some(WorkerState::Cordoning) {
                    self.transition(&c.node_name, WorkerState::Draining, env);
                }
            }
            Event::NodeDrained(d) => {
                if self.state_of(&d.node_name) == Some(WorkerState::Draining) {
                    self.transition(&d.node_name, WorkerState::Removing, env);
                }
            }
            Event::NodeRemoved(r) => {
                if self
                    .workers
                    .get(&r.node_name)
                    .is_some_and(|w| !matches!(w.state, WorkerState::Removed | WorkerState::Lost))
                {
                    self.transition(&r.node_name, WorkerState::Removed, env);
                }
                self.unknown_containers.remove(&r.node_name);
            }
            Event::ScalingActionCompleted(c) => {
                let done: Vec<Uuid> = self
                    .actions
                    .iter()
                    .filter(|(_, a)| {
                        a.kind == c.action && c.nodes.iter().all(|n| a.nodes.contains(n))
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for id in done {
                    if let Some(a) = self.actions.remove(&id) {
                        if a.kind == ScalingAction::ScaleUp {
                            if self
                                .pending
                                .as_ref()
                                .is_some_and(|p| p.since <= a.started_at)
                            {
                                self.pending = None;
                            }
                            self.provision_failures = 0;
                        }
                    }
                }
                if c.action == ScalingAction::ScaleUp
                    && self
                        .scale_up_goal
                        .as_ref()
                        .is_some_and(|(g, _)| self.current_workers() >= *g)
                {
                    self.scale_up_goal = None;
                }
            }
            Event::ScalingActionFailed(f) => {
                if f.action == ScalingAction::ScaleUp
                    && f.node_name.is_none()
                    && f.error.starts_with(crate::codes::GIVING_UP)
                {
                    self.scale_up_goal = None;
                }
                if let Some(node) = &f.node_name {
                    match (f.action, self.state_of(node)) {
                        (ScalingAction::ScaleUp, Some(st)) if st.is_provisioning() => {
                            self.transition(node, WorkerState::Failed, env);
                            self.drop_from_actions(node);
                            self.provision_failures += 1;
                            self.last_failure = Some((ts, Cause::from(env)));
                        }
                        (
                            ScalingAction::ScaleDown,
                            Some(WorkerState::Cordoning | WorkerState::Draining),
                        ) => {
                            // The node stays: back to Ready (the NodeManager uncordons it).
                            self.transition(node, WorkerState::Ready, env);
                            if let Some(w) = self.workers.get_mut(node) {
                                w.removal = None;
                            }
                            self.drop_from_actions(node);
                        }
                        _ => {}
                    }
                }
            }
            Event::MinimumNodesViolation(_) => {
                if self.violation.is_none() {
                    self.violation = Some((Cause::from(env), ts));
                }
            }
            Event::MinimumNodesRestored(_) => self.violation = None,
            Event::ClusterStateSynced(s) => {
                self.last_synced = Some((ts, s.db_workers));
                // The live names now are those reported only if the count agrees; otherwise the
                // report raced a change and no names are known to have been reported.
                self.last_synced_names = if self.current_workers() == s.db_workers {
                    self.live().map(|w| w.name.clone()).collect()
                } else {
                    BTreeSet::new()
                };
            }
            Event::ClusterObserved(o) => self.on_observed(env, o),
            Event::UnderutilizationWarning(_)
            | Event::ResourcePressureAlert(_)
            | Event::ManualScaleRequested(_) => {}
        }
        true
    }

    fn on_sample(&mut self, env: &Envelope, s: &bus::event::MetricsSampled) {
        let t = &self.knobs.thresholds;
        let high = s.cpu_avg > t.cpu_high || s.memory_avg > t.memory_high;
        let low = s.cpu_avg < t.cpu_low && s.memory_avg < t.memory_low;
        if high {
            self.high_streak += 1;
        } else {
            self.high_streak = 0;
        }
        if low {
            self.low_streak += 1;
            self.low_since.get_or_insert(env.timestamp);
        } else {
            self.low_streak = 0;
            self.low_since = None;
            self.optimal_announced = false;
        }
        self.sample = Some(Sample {
            at: env.timestamp,
            workers: s.workers,
            cpu_avg: s.cpu_avg,
            memory_avg: s.memory_avg,
            nodes: s
                .nodes
                .iter()
                .map(|n| (n.node_name.clone(), (n.cpu, n.memory)))
                .collect(),
        });
    }

    fn on_observed(&mut self, env: &Envelope, o: &bus::event::ClusterObserved) {
        for n in &o.k8s_nodes {
            let state = self.state_of(&n.name);
            match state {
                // A Node object without a container is an orphan for the StateSynchronizer, not a worker.
                None if !o.docker_containers.contains(&n.name) => {}
                None => {
                    let st = if n.ready {
                        WorkerState::Ready
                    } else {
                        WorkerState::NotReady
                    };
                    let mut w = self.new_worker(&n.name, st, env);
                    if n.ready {
                        w.ready_at = Some(env.timestamp);
                    }
                    self.workers.insert(n.name.clone(), w);
                }
                Some(st) if st.is_provisioning() => {
                    if n.ready {
                        self.became_ready(&n.name, env);
                    } else if st != WorkerState::Registered {
                        self.transition(&n.name, WorkerState::Registered, env);
                    }
                }
                Some(WorkerState::Ready) if !n.ready => {
                    self.transition(&n.name, WorkerState::NotReady, env)
                }
                Some(WorkerState::NotReady) if n.ready => {
                    self.transition(&n.name, WorkerState::Ready, env)
                }
                _ => {}
            }
            if let Some(w) = self.workers.get_mut(&n.name) {
                w.scale_down_disabled = n.scale_down_disabled;
            }
        }
        let in_k8s: BTreeSet<&str> = o.k8s_nodes.iter().map(|n| n.name.as_str()).collect();
        // A worker being removed that neither Kubernetes nor Docker shows any more is removed, even
        // if the executor's report was lost or its last step failed after doing its work.
        let vanished: Vec<String> = self
            .workers
            .values()
            .filter(|w| w.state.is_leaving())
            .filter(|w| !in_k8s.contains(w.name.as_str()) && !o.docker_containers.contains(&w.name))
            .map(|w| w.name.clone())
            .collect();
        for name in vanished {
            self.transition(&name, WorkerState::Removed, env);
        }
        let unknown: Vec<&String> = o
            .docker_containers
            .iter()
            .filter(|c| !in_k8s.contains(c.as_str()))
            .filter(|c| self.workers.get(*c).is_none_or(|w| w.state.is_gone()))
            .collect();
        self.unknown_containers
            .retain(|name, _| unknown.contains(&name));
        for u in unknown {
            self.unknown_containers
                .entry(u.clone())
                .or_insert(env.timestamp);
        }
    }

    fn became_ready(&mut self, name: &str, env: &Envelope) {
        match self.state_of(name) {
            None => {
                let mut w = self.new_worker(name, WorkerState::Ready, env);
                w.ready_at = Some(env.timestamp);
                self.workers.insert(name.to_string(), w);
            }
            Some(st) if st.is_provisioning() || st == WorkerState::NotReady => {
                self.transition(name, WorkerState::Ready, env);
                if let Some(w) = self.workers.get_mut(name) {
                    w.ready_at.get_or_insert(env.timestamp);
                }
            }
            _ => {}
        }
    }

    /// Whether `env` is the first decision of its type for its cause (see [`Model::decisions`]).
    pub fn is_first_decision(&self, env: &Envelope) -> bool {
        let key = (
            env.causation_id.unwrap_or(env.event_id),
            env.event_type().to_string(),
        );
        self.decisions
            .get(&key)
            .is_none_or(|id| *id == env.event_id)
    }

    fn decided(&mut self, env: &Envelope, target: Option<u32>) {
        let key = (
            env.causation_id.unwrap_or(env.event_id),
            env.event_type().to_string(),
        );
        self.decisions.entry(key).or_insert(env.event_id);
        if self.decisions.len() > 4096 {
            // Oldest causes are not ordered by key; dropping any old entry only weakens coalescing of
            // very late copies, which absolute targets still make harmless.
            if let Some(k) = self.decisions.keys().next().cloned() {
                self.decisions.remove(&k);
            }
        }
        self.last_decision = Some(DecisionRecord {
            event_type: env.event_type().to_string(),
            target_workers: target,
            at: env.timestamp,
            event_id: env.event_id,
        });
    }

    fn open_alert_window(&mut self, env: &Envelope) {
        if let Some(key) = crate::codes::dedup_key(&env.event) {
            let window = chrono(self.knobs.alert_dedup_window);
            let open = self
                .alert_windows
                .get(&key)
                .is_some_and(|(start, _)| env.timestamp - *start < window);
            if !open {
                self.alert_windows
                    .insert(key, (env.timestamp, env.event_id));
            }
        }
    }

    fn drop_from_actions(&mut self, node: &str) {
        for a in self.actions.values_mut() {
            a.nodes.retain(|n| n != node);
        }
        self.actions.retain(|_, a| !a.nodes.is_empty());
    }

    fn state_of(&self, name: &str) -> Option<WorkerState> {
        self.workers.get(name).map(|w| w.state)
    }

    fn transition(&mut self, name: &str, state: WorkerState, env: &Envelope) {
        if let Some(w) = self.workers.get_mut(name) {
            w.state = state;
            w.since = env.timestamp;
            w.transitioned_by = env.event_id;
        }
    }

    fn new_worker(&mut self, name: &str, state: WorkerState, env: &Envelope) -> Worker {
        if let Some(n) = name
            .strip_prefix(&self.knobs.name_prefix)
            .and_then(|s| s.parse::<u64>().ok())
        {
            self.max_seq = self.max_seq.max(n);
        }
        Worker {
            name: name.to_string(),
            state,
            since: env.timestamp,
            transitioned_by: env.event_id,
            requested_at: None,
            ready_at: None,
            requested_by: None,
            removal: None,
            scale_down_disabled: false,
            interruption: None,
            replacement: None,
        }
    }
}
