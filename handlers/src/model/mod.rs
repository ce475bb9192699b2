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
//! The state is grouped by concern, each with its own fold methods:
//! - [`Workers`] (`model.workers`): every worker ever seen and its state, and the names used;
//! - [`PendingPods`] (`model.pending`): the last pending-pods report and the pods capacity is on
//!   its way for;
//! - [`Streaks`] (`model.streaks`): the latest sample, high/low streaks and the cooldown timestamps;
//! - [`Decisions`] (`model.decisions`): actions in flight, decisions by cause, the last decision and
//!   the last blocked scale-down;
//! - [`Provision`] (`model.provision`): the scale-up goal and failed provisions in a row;
//! - [`Minimum`] (`model.minimum`): the open minimum violation and the recent losses;
//! - [`AlertWindows`] (`model.alerts`): which event opened each alert key's window;
//! - [`SyncRecord`] (`model.sync`): the last `ClusterStateSynced` and unknown containers;
//! - [`Placement`] (`model.placement`): nodes and the pods placed on them, for the scale-down
//!   simulation (folded by `bus::placement`, the same code the observer writes with);
//! - [`Stream`] (`model.stream`): the position in the stream and the ids seen.
//!
//! The model is kept in memory only (each replica folds the stream again when it starts); its serde
//! form is for tests and debugging, not a stored format.

mod alerts;
mod decisions;
mod minimum;
mod pending;
mod provision;
mod schedules;
mod streaks;
mod stream;
mod sync;
mod workers;

use bus::event::{
    ClusterObserved, EmergencyScaleUp, Event, ScaleDownStarted, ScaleUpDecision, ScaleUpStarted,
    ScalingAction, ScalingActionCompleted, ScalingActionFailed,
};
use bus::placement::Placement;
use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codes;
use crate::policy::Policy;

pub use alerts::{AlertWindow, AlertWindows};
pub use decisions::{Action, Blocked, DecisionKey, DecisionRecord, Decisions};
pub use minimum::{Loss, Minimum, Violation};
pub use pending::{blocked_key, Pending, PendingPods, ProvidedFor};
pub use provision::{Failure, PoolBackoff, Provision, ScaleUpGoal};
pub use schedules::{OpenWindow, Schedules};
pub use streaks::{NodeLoad, Sample, Streaks};
pub use stream::{LastEvent, Stream};
pub use sync::{SyncRecord, Synced};
pub use workers::{Worker, WorkerState, Workers};

/// The projection of the stream (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub workers: Workers,
    pub pending: PendingPods,
    pub streaks: Streaks,
    pub decisions: Decisions,
    pub provision: Provision,
    pub minimum: Minimum,
    pub alerts: AlertWindows,
    pub sync: SyncRecord,
    /// Where pods run: nodes and placed pods, from `PlacementSnapshot`/`PlacementChanged`.
    pub placement: Placement,
    /// The scheduled minimums' open windows.
    #[serde(default)]
    pub schedules: Schedules,
    pub stream: Stream,
}

impl Model {
    /// An empty model for `policy` (each concern keeps the knobs its fold needs).
    pub fn new(policy: &Policy) -> Self {
        Self {
            workers: Workers::new(&policy.workers.name_prefix),
            pending: PendingPods::new(policy.scaling.pending_pods_ttl),
            streaks: Streaks::new(policy.thresholds.clone()),
            decisions: Decisions::default(),
            provision: Provision::default(),
            minimum: Minimum::new(policy.enforcement.emergency_window),
            alerts: AlertWindows::new(policy.alerts.dedup_window),
            sync: SyncRecord::default(),
            placement: Placement::new(),
            schedules: Schedules::default(),
            stream: Stream::default(),
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

    // ---- queries (shorthands for the handlers) --------------------------------------------------

    /// Workers in the cluster and not leaving (Ready or NotReady): what the minimum counts.
    pub fn current_workers(&self) -> u32 {
        self.workers.current()
    }

    /// Workers a scale-up created that became Ready less than `grace` before `at`.
    pub fn newly_ready(&self, at: DateTime<Utc>, grace: std::time::Duration) -> u32 {
        self.workers.newly_ready(at, grace)
    }

    /// Workers being created.
    pub fn provisioning(&self) -> u32 {
        self.workers.provisioning()
    }

    /// Workers the cluster will have once creations finish: live ones not being replaced after an
    /// interruption, plus those being created. Never above `max_nodes` by our own doing.
    pub fn planned_workers(&self) -> u32 {
        self.workers.planned()
    }

    /// Whether a scale-up was decided less than `grace` before `at` and its workers are not planned
    /// yet (the NodeManager's `ScaleUpStarted` is on its way): deciding again would only repeat it.
    pub fn scale_up_starting(&self, at: DateTime<Utc>, grace: std::time::Duration) -> bool {
        self.decisions.last.as_ref().is_some_and(|d| {
            matches!(
                d.event_type.as_str(),
                "ScaleUpDecision" | "AutoScaleUpToMinimum" | "EmergencyScaleUp"
            ) && d.target_workers > Some(self.planned_workers())
                && at - d.at < crate::policy::chrono(grace)
        })
    }

    /// Live workers that are NotReady.
    pub fn unhealthy_workers(&self) -> u32 {
        self.workers.unhealthy()
    }

    /// Live workers, in name order.
    pub fn live(&self) -> impl Iterator<Item = &Worker> {
        self.workers.live()
    }

    pub fn worker(&self, name: &str) -> Option<&Worker> {
        self.workers.get(name)
    }

    /// Whether `event_id` moved `node` into its current state (see [`Worker::transitioned_by`]).
    pub fn transitioned(&self, node: &str, event_id: Uuid) -> bool {
        self.workers.transitioned(node, event_id)
    }

    /// The next `count` free worker names of the default pool (`<prefix><n>` above every name
    /// ever seen).
    pub fn next_names(&self, count: u32) -> Vec<String> {
        self.workers.next_names(count)
    }

    /// The next `count` free worker names of `pool` (see [`Workers::next_names_in`]).
    pub fn next_names_in(&self, pool: &str, count: u32) -> Vec<String> {
        self.workers.next_names_in(pool, count)
    }

    /// The backoff of `pool` if its creates failed lately and it still holds at `at` (see
    /// [`Provision`]): no create in that pool until it ends.
    pub fn backing_off(
        &self,
        pool: &str,
        at: DateTime<Utc>,
        policy: &Policy,
    ) -> Option<&PoolBackoff> {
        self.provision
            .backing_off(pool, at, &policy.scaling.provision_backoff())
    }

    /// Pods pending now.
    pub fn pending_count(&self) -> u32 {
        self.pending.count()
    }

    /// Some pod of the pending report was already sized by a `pending_pods` scale-up.
    pub fn pending_awaits_provided_capacity(&self) -> bool {
        self.pending.awaits_provided_capacity()
    }

    /// A scale-down is in flight.
    pub fn scale_down_in_flight(&self) -> bool {
        self.decisions.scale_down_in_flight()
    }

    /// Whether `env` is the first decision of its type for its cause (see [`Decisions::by_cause`]).
    pub fn is_first_decision(&self, env: &Envelope) -> bool {
        self.decisions.is_first(env)
    }

    /// Whether `event_id` was already folded (a redelivery).
    pub fn has_seen(&self, event_id: Uuid) -> bool {
        self.stream.has_seen(event_id)
    }

    // ---- the fold -------------------------------------------------------------------------------

    /// Folds one event. Returns `false` (and changes nothing) for an event already folded.
    pub fn apply(&mut self, env: &Envelope) -> bool {
        if !self.stream.advance(env) {
            return false;
        }
        self.pending.expire(env.timestamp);
        self.minimum.expire(env.timestamp);
        self.alerts.open(env);
        let ts = env.timestamp;
        match &env.event {
            Event::MetricsSampled(s) => self.streaks.sampled(ts, s),
            Event::PendingPodsDetected(p) => self.pending.reported(env, p),
            Event::ScaleUpBlocked(b) => self.pending.blocked_published(b),
            Event::OptimalStateTrigger(_) => self.streaks.optimal_announced = true,
            Event::ScaleUpDecision(d) => self.on_scale_up_decision(env, d),
            Event::ScaleDownDecision(d) => self.decisions.decided(env, Some(d.target_workers)),
            Event::AutoScaleUpToMinimum(d) => self.decisions.decided(env, Some(d.target_workers)),
            Event::EmergencyScaleUp(d) => self.on_emergency(env, d),
            Event::ScaleDownBlocked(b) => self.decisions.blocked(b, ts),
            Event::ScaleUpStarted(s) => self.on_scale_up_started(env, s),
            Event::NodeCreated(c) => self.workers.created(&c.node_name, c.pool.as_deref(), env),
            Event::NodeReady(r) => {
                self.workers.became_ready(&r.node_name, env);
                if let Some(w) = self.workers.get(&r.node_name) {
                    let pool = w.pool.clone();
                    self.provision.ready_in(&pool);
                }
            }
            Event::NodeHealthDegraded(h) => self.workers.degraded(&h.node_name, env),
            Event::NodeUnexpectedlyLost(l) => self.on_lost(env, &l.node_name),
            Event::NodeInterruptionNotice(n) => self.workers.interrupted(&n.node_name, env),
            Event::ScaleDownStarted(s) => self.on_scale_down_started(env, s),
            Event::NodeCordoned(c) => {
                let (from, to) = (WorkerState::Cordoning, WorkerState::Draining);
                self.workers.advance(&c.node_name, from, to, env)
            }
            Event::NodeDrained(d) => {
                let (from, to) = (WorkerState::Draining, WorkerState::Removing);
                self.workers.advance(&d.node_name, from, to, env)
            }
            Event::NodeRemoved(r) => {
                self.workers.removed(&r.node_name, env);
                self.sync.removed(&r.node_name);
            }
            Event::ScalingActionCompleted(c) => self.on_completed(c),
            Event::ScalingActionFailed(f) => self.on_failed(env, f),
            Event::MinimumNodesViolation(_) => self.minimum.violated(env),
            Event::MinimumNodesRestored(_) => self.minimum.restored(),
            Event::ClusterStateSynced(s) => self.sync.synced(ts, s.db_workers, &self.workers),
            Event::ClusterObserved(o) => self.on_observed(env, o),
            Event::WarmPoolEntered(w) => self.workers.set_warm(&w.node_name, true),
            Event::WarmPoolLeft(w) => self.workers.set_warm(&w.node_name, false),
            Event::PlacementSnapshot(s) => self.placement.apply_snapshot(s),
            Event::PlacementChanged(c) => self.placement.apply_change(c),
            Event::ScheduledMinimumStarted(s) => self.schedules.started(env, s),
            Event::ScheduledMinimumEnded(e) => self.schedules.ended(e),
            Event::UnderutilizationWarning(_)
            | Event::ResourcePressureAlert(_)
            | Event::ManualScaleRequested(_) => {}
        }
        true
    }

    fn on_scale_up_decision(&mut self, env: &Envelope, d: &ScaleUpDecision) {
        // Only the decision itself sized the pods reported then: a late copy of it (another
        // replica's) arrives after a newer report that nothing has sized yet.
        if d.reason == codes::reason::PENDING_PODS && self.decisions.is_first(env) {
            self.pending.provided();
        }
        self.decisions.decided(env, Some(d.target_workers));
    }

    fn on_emergency(&mut self, env: &Envelope, d: &EmergencyScaleUp) {
        // Only the decision itself answers the losses so far: a late copy of it (another
        // replica's) must not wipe out losses that happened after it.
        let first = self.decisions.is_first(env);
        self.decisions.decided(env, Some(d.target_workers));
        if first {
            self.minimum.answered();
        }
    }

    fn on_scale_up_started(&mut self, env: &Envelope, s: &ScaleUpStarted) {
        let previous = self.workers.current();
        let fresh = self.workers.start_scale_up(env, s);
        // A repeated start naming workers already on their way adds no action.
        if fresh.is_empty() {
            return;
        }
        let action = Action::started(
            ScalingAction::ScaleUp,
            env,
            fresh,
            previous,
            s.target_workers,
        );
        self.decisions.start(env, action);
        self.streaks.last_scale_up = Some(env.timestamp);
        self.provision.started(env, s.target_workers);
    }

    fn on_scale_down_started(&mut self, env: &Envelope, s: &ScaleDownStarted) {
        let previous = self.workers.current();
        let fresh = self.workers.start_scale_down(env, s);
        // Single-flight: a node already leaving is not started again.
        if fresh.is_empty() {
            return;
        }
        let action = Action::started(
            ScalingAction::ScaleDown,
            env,
            fresh,
            previous,
            s.target_workers,
        );
        self.decisions.start(env, action);
        self.streaks.last_scale_down = Some(env.timestamp);
        self.provision.abandon();
    }

    fn on_lost(&mut self, env: &Envelope, node: &str) {
        if self.workers.lost(node, env) {
            self.minimum.lost(env.timestamp, node);
            self.decisions.drop_node(node);
        }
    }

    fn on_completed(&mut self, c: &ScalingActionCompleted) {
        for a in self.decisions.complete(c) {
            if a.kind == ScalingAction::ScaleUp {
                self.pending.scale_up_completed(a.started_at);
                self.provision.failures = 0;
            }
        }
        let current = self.workers.current();
        if c.action == ScalingAction::ScaleUp
            && self
                .provision
                .goal
                .as_ref()
                .is_some_and(|g| current >= g.target_workers)
        {
            self.provision.abandon();
        }
    }

    fn on_failed(&mut self, env: &Envelope, f: &ScalingActionFailed) {
        if f.action == ScalingAction::ScaleUp
            && f.node_name.is_none()
            && f.error.starts_with(codes::GIVING_UP)
        {
            self.provision.abandon();
        }
        let Some(node) = &f.node_name else {
            if f.action == ScalingAction::ScaleUp && self.pending.count() > 0 {
                self.pending.failed_published(codes::code_of(&f.error));
            }
            return;
        };
        match (f.action, self.workers.state_of(node)) {
            (ScalingAction::ScaleUp, Some(st)) if st.is_provisioning() => {
                let pool = self.workers[node.as_str()].pool.clone();
                self.workers.transition(node, WorkerState::Failed, env);
                if st == WorkerState::Requested && f.retryable {
                    self.workers.failed_before_created(node);
                }
                self.decisions.drop_node(node);
                let provider = codes::is_provider_unavailable(&f.error);
                self.provision.failed(env, &pool, &f.error, provider);
            }
            (ScalingAction::ScaleDown, Some(WorkerState::Cordoning | WorkerState::Draining)) => {
                self.workers.put_back(node, env);
                self.decisions.drop_node(node);
            }
            _ => {}
        }
    }

    fn on_observed(&mut self, env: &Envelope, o: &ClusterObserved) {
        self.provision
            .engine_answered(env.timestamp, o.unreachable_pools());
        self.workers.observe(env, o);
        self.sync.observed(env.timestamp, o, &self.workers);
    }
}
