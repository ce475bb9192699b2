//! The record of workers: every worker ever seen, where it is in its life, and the names used.

use std::collections::{BTreeMap, BTreeSet};

use bus::event::{ClusterObserved, ObservedNode, ScaleDownStarted, ScaleUpStarted};
use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::Cause;
use crate::policy::{chrono, pool_name, DEFAULT_POOL};

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
    /// Its pool: from the `ScaleUpStarted` or `NodeCreated` that named it, else the one its name
    /// says (`<prefix><pool>-<n>`; `<prefix><n>` is the default pool).
    pub pool: String,
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
    /// Failed before its container existed (a create the provider never carried out): its name
    /// is free again, and the next create of its pool takes it (see [`Workers::next_names_in`]).
    #[serde(default)]
    pub name_reusable: bool,
    /// Its container is stopped and kept in its pool's warm pool (`WarmPoolEntered`): removed
    /// from the cluster, and the first name its pool's next scale-up takes.
    #[serde(default)]
    pub warm: bool,
}

/// Every worker ever seen, by name (removed ones stay, so names are never reused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "WorkersRecord")]
pub struct Workers {
    name_prefix: String,
    by_name: BTreeMap<String, Worker>,
    /// Highest `n` of any `<name_prefix><n>` ever seen (the default pool's names).
    pub max_seq: u64,
    /// Per other pool `p`, the highest `n` of any `<name_prefix><p>-<n>` ever seen.
    pub pool_seq: BTreeMap<String, u64>,
    /// The names of the [active](Workers::active) workers, kept in step with every change of
    /// `by_name`: the queries of every event (counts, live workers) cost the workers there are,
    /// not every worker ever seen (a long history has thousands of removed ones). Derived, so
    /// not serialized; rebuilt on deserialize.
    #[serde(skip_serializing)]
    active: BTreeSet<String>,
}

/// The serialized form of [`Workers`] (its fields but the derived index).
#[derive(Deserialize)]
struct WorkersRecord {
    name_prefix: String,
    by_name: BTreeMap<String, Worker>,
    max_seq: u64,
    pool_seq: BTreeMap<String, u64>,
}

impl From<WorkersRecord> for Workers {
    fn from(r: WorkersRecord) -> Self {
        let active = r
            .by_name
            .values()
            .filter(|w| w.is_active())
            .map(|w| w.name.clone())
            .collect();
        Self {
            name_prefix: r.name_prefix,
            by_name: r.by_name,
            max_seq: r.max_seq,
            pool_seq: r.pool_seq,
            active,
        }
    }
}

impl Worker {
    /// Not gone, or gone and still holding something a query looks for: a warm container, a
    /// name free again (see [`Workers::active`]).
    fn is_active(&self) -> bool {
        !self.state.is_gone() || self.warm || self.name_reusable
    }
}

impl std::ops::Index<&str> for Workers {
    type Output = Worker;

    /// The worker named `name`; panics if there is none (like a map's index).
    fn index(&self, name: &str) -> &Worker {
        &self.by_name[name]
    }
}

impl Workers {
    pub(super) fn new(name_prefix: &str) -> Self {
        Self {
            name_prefix: name_prefix.to_string(),
            by_name: BTreeMap::new(),
            max_seq: 0,
            pool_seq: BTreeMap::new(),
            active: BTreeSet::new(),
        }
    }

    /// The pool and sequence number a worker name says: `<prefix><n>` is `(default, n)`,
    /// `<prefix><pool>-<n>` is `(pool, n)`; `None` for other names.
    pub fn parse_name<'n>(&self, name: &'n str) -> Option<(&'n str, u64)> {
        crate::policy::parse_worker_name(&self.name_prefix, name)
    }

    // ---- queries --------------------------------------------------------------------------------

    /// Every worker ever seen, in name order.
    pub fn values(&self) -> impl Iterator<Item = &Worker> {
        self.by_name.values()
    }

    /// The workers not gone, and the gone ones that are warm or whose name is free again, in
    /// name order: every worker a query of the handlers looks for but the Lost ones (what
    /// [`Workers::values`] holds beyond these is history).
    pub fn active(&self) -> impl Iterator<Item = &Worker> {
        self.active.iter().filter_map(|n| self.by_name.get(n))
    }

    pub fn get(&self, name: &str) -> Option<&Worker> {
        self.by_name.get(name)
    }

    pub fn state_of(&self, name: &str) -> Option<WorkerState> {
        self.by_name.get(name).map(|w| w.state)
    }

    /// Workers in the cluster and not leaving (Ready or NotReady): what the minimum counts.
    pub fn current(&self) -> u32 {
        self.count(|w| w.state.is_live())
    }

    /// Workers being created.
    pub fn provisioning(&self) -> u32 {
        self.count(|w| w.state.is_provisioning())
    }

    /// Live workers not being replaced after an interruption, plus those being created.
    pub fn planned(&self) -> u32 {
        self.count(|w| w.state.is_provisioning() || (w.state.is_live() && w.replacement.is_none()))
    }

    /// The pool of worker `name`: the record's, else the one its name says, else the default pool.
    pub fn pool_of(&self, name: &str) -> String {
        match self.by_name.get(name) {
            Some(w) => w.pool.clone(),
            None => self
                .parse_name(name)
                .map_or(DEFAULT_POOL, |(p, _)| p)
                .to_string(),
        }
    }

    /// Live workers of `pool`.
    pub fn current_in(&self, pool: &str) -> u32 {
        self.count(|w| w.pool == pool && w.state.is_live())
    }

    /// Workers of `pool` being created.
    pub fn provisioning_in(&self, pool: &str) -> u32 {
        self.count(|w| w.pool == pool && w.state.is_provisioning())
    }

    /// [`Workers::planned`] for `pool`.
    pub fn planned_in(&self, pool: &str) -> u32 {
        self.count(|w| {
            w.pool == pool
                && (w.state.is_provisioning() || (w.state.is_live() && w.replacement.is_none()))
        })
    }

    /// [`Workers::newly_ready`] for `pool`.
    pub fn newly_ready_in(&self, pool: &str, at: DateTime<Utc>, grace: std::time::Duration) -> u32 {
        self.count(|w| {
            w.pool == pool
                && w.state == WorkerState::Ready
                && w.requested_by.is_some()
                && w.ready_at.is_some_and(|r| at - r < chrono(grace))
        })
    }

    /// Live workers that are NotReady.
    pub fn unhealthy(&self) -> u32 {
        self.count(|w| w.state == WorkerState::NotReady)
    }

    /// Workers a scale-up created that became Ready less than `grace` before `at`.
    pub fn newly_ready(&self, at: DateTime<Utc>, grace: std::time::Duration) -> u32 {
        self.count(|w| {
            w.state == WorkerState::Ready
                && w.requested_by.is_some()
                && w.ready_at.is_some_and(|r| at - r < chrono(grace))
        })
    }

    /// Live workers, in name order.
    pub fn live(&self) -> impl Iterator<Item = &Worker> {
        self.active().filter(|w| w.state.is_live())
    }

    /// Whether `event_id` moved `node` into its current state (see [`Worker::transitioned_by`]).
    pub fn transitioned(&self, node: &str, event_id: Uuid) -> bool {
        self.by_name
            .get(node)
            .is_some_and(|w| w.transitioned_by == event_id)
    }

    /// The next `count` free worker names of the default pool (`<prefix><n>` above every name
    /// ever seen).
    pub fn next_names(&self, count: u32) -> Vec<String> {
        self.next_names_in(DEFAULT_POOL, count)
    }

    /// The next `count` free worker names of `pool`: first its warm workers ([`Worker::warm`]:
    /// the create starts the stopped container), then the names of its workers whose create never
    /// reached the provider ([`Worker::name_reusable`]), so an outage uses up no name, each lowest
    /// first; then new ones: the default pool's are `<prefix><n>`, another pool `p`'s
    /// `<prefix><p>-<n>`, each with its own sequence. Names stay unique and every replica picks
    /// the same.
    pub fn next_names_in(&self, pool: &str, count: u32) -> Vec<String> {
        let mut reusable: Vec<(bool, u64, &str)> = self
            .active()
            .filter(|w| w.pool == pool)
            .filter(|w| {
                (w.warm && w.state == WorkerState::Removed)
                    || (w.name_reusable && w.state == WorkerState::Failed)
            })
            .map(|w| {
                let n = self.parse_name(&w.name).map_or(0, |(_, n)| n);
                (!w.warm, n, w.name.as_str())
            })
            .collect();
        reusable.sort_unstable();
        let mut names: Vec<String> = reusable
            .into_iter()
            .take(count as usize)
            .map(|(_, _, n)| n.to_string())
            .collect();
        let fresh = u64::from(count) - names.len() as u64;
        let (seq, stem) = if pool == DEFAULT_POOL {
            (self.max_seq, self.name_prefix.clone())
        } else {
            let seq = self.pool_seq.get(pool).copied().unwrap_or(0);
            (seq, format!("{}{pool}-", self.name_prefix))
        };
        names.extend((1..=fresh).map(|i| format!("{stem}{}", seq + i)));
        names
    }

    /// Warm workers of `pool` (stopped and kept, or being removed into the warm pool).
    pub fn warm_in(&self, pool: &str) -> u32 {
        self.count(|w| w.pool == pool && w.warm)
    }

    /// Workers of `pool` whose container is being removed (drained, not yet gone) and that are
    /// not warm: each may still be kept warm.
    pub fn removing_in(&self, pool: &str) -> u32 {
        self.count(|w| w.pool == pool && w.state == WorkerState::Removing && !w.warm)
    }

    /// Every warm worker, in name order.
    pub fn warm(&self) -> impl Iterator<Item = &Worker> {
        self.active().filter(|w| w.warm)
    }

    /// `WarmPoolEntered` / `WarmPoolLeft`.
    pub(super) fn set_warm(&mut self, name: &str, warm: bool) {
        if let Some(w) = self.by_name.get_mut(name) {
            w.warm = warm;
        }
        self.reindex(name);
    }

    /// A worker that failed while Requested with a retryable error: its create never reached the
    /// provider (or, if it did, a create of the same name adopts that container: Docker's 409).
    pub(super) fn failed_before_created(&mut self, name: &str) {
        if let Some(w) = self.by_name.get_mut(name) {
            w.name_reusable = true;
        }
        self.reindex(name);
    }

    /// How many [active](Workers::active) workers `f` holds for (every count's `f` holds only
    /// for active ones).
    fn count(&self, f: impl Fn(&Worker) -> bool) -> u32 {
        u32::try_from(self.active().filter(|w| f(w)).count()).unwrap_or(u32::MAX)
    }

    /// Keeps `active` in step with the worker `name` after a change of its record.
    fn reindex(&mut self, name: &str) {
        match self.by_name.get(name) {
            Some(w) if w.is_active() => {
                if !self.active.contains(name) {
                    self.active.insert(name.to_string());
                }
            }
            _ => {
                self.active.remove(name);
            }
        }
    }

    // ---- the fold -------------------------------------------------------------------------------

    /// `ScaleUpStarted`: records the workers it names that are new (or whose names are gone) as
    /// Requested, marks the interrupted worker it replaces, and returns the new ones.
    pub(super) fn start_scale_up(&mut self, env: &Envelope, s: &ScaleUpStarted) -> Vec<String> {
        let replaced = env.causation_id.and_then(|c| {
            self.by_name
                .values()
                .find(|w| w.interruption.as_ref().is_some_and(|i| i.event_id == c))
                .map(|w| w.name.clone())
        });
        let fresh: Vec<String> = s
            .nodes
            .iter()
            .filter(|n| self.by_name.get(*n).is_none_or(|w| w.state.is_gone()))
            .cloned()
            .collect();
        for n in &fresh {
            let w = self.insert_new(n, WorkerState::Requested, env, s.pool.as_deref());
            w.requested_at = Some(env.timestamp);
            w.requested_by = Some(Cause::from(env));
        }
        if let (Some(old), Some(new)) = (replaced, s.nodes.first()) {
            if let Some(w) = self.by_name.get_mut(&old) {
                w.replacement = Some(new.clone());
            }
        }
        fresh
    }

    /// `ScaleDownStarted`: moves the live workers it names to Cordoning and returns them (a worker
    /// already leaving is not started again: single-flight).
    pub(super) fn start_scale_down(&mut self, env: &Envelope, s: &ScaleDownStarted) -> Vec<String> {
        let fresh: Vec<String> = s
            .nodes
            .iter()
            .filter(|n| self.state_of(n).is_some_and(|st| st.is_live()))
            .cloned()
            .collect();
        for n in &fresh {
            self.transition(n, WorkerState::Cordoning, env);
            if let Some(w) = self.by_name.get_mut(n) {
                w.removal = Some(Cause::from(env));
            }
        }
        fresh
    }

    /// `NodeCreated` (of a worker in `pool`, when the fact names one).
    pub(super) fn created(&mut self, name: &str, pool: Option<&str>, env: &Envelope) {
        match self.state_of(name) {
            Some(WorkerState::Requested) => self.transition(name, WorkerState::Creating, env),
            Some(_) => {}
            None => {
                self.insert_new(name, WorkerState::Creating, env, pool);
            }
        }
    }

    /// `NodeReady`, or a Ready node in `ClusterObserved`.
    pub(super) fn became_ready(&mut self, name: &str, env: &Envelope) {
        match self.state_of(name) {
            None => {
                let w = self.insert_new(name, WorkerState::Ready, env, None);
                w.ready_at = Some(env.timestamp);
            }
            Some(st) if st.is_provisioning() || st == WorkerState::NotReady => {
                self.transition(name, WorkerState::Ready, env);
                if let Some(w) = self.by_name.get_mut(name) {
                    w.ready_at.get_or_insert(env.timestamp);
                }
            }
            _ => {}
        }
    }

    /// `NodeHealthDegraded`.
    pub(super) fn degraded(&mut self, name: &str, env: &Envelope) {
        self.advance(name, WorkerState::Ready, WorkerState::NotReady, env);
    }

    /// `NodeUnexpectedlyLost`: whether it was a worker not gone yet (now Lost).
    pub(super) fn lost(&mut self, name: &str, env: &Envelope) -> bool {
        let known = self.by_name.get(name).is_some_and(|w| !w.state.is_gone());
        if known {
            self.transition(name, WorkerState::Lost, env);
        }
        known
    }

    /// `NodeInterruptionNotice`: the first one for a live worker is kept.
    pub(super) fn interrupted(&mut self, name: &str, env: &Envelope) {
        if let Some(w) = self.by_name.get_mut(name) {
            if w.state.is_live() && w.interruption.is_none() {
                w.interruption = Some(Cause::from(env));
            }
        }
    }

    /// Moves `name` from `from` to `to`; nothing if it is in another state (a late or repeated fact).
    pub(super) fn advance(
        &mut self,
        name: &str,
        from: WorkerState,
        to: WorkerState,
        env: &Envelope,
    ) {
        if self.state_of(name) == Some(from) {
            self.transition(name, to, env);
        }
    }

    /// `NodeRemoved`.
    pub(super) fn removed(&mut self, name: &str, env: &Envelope) {
        if self
            .by_name
            .get(name)
            .is_some_and(|w| !matches!(w.state, WorkerState::Removed | WorkerState::Lost))
        {
            self.transition(name, WorkerState::Removed, env);
        }
    }

    /// A scale-down of `name` failed while cordoning or draining: the node stays, back to Ready
    /// (the NodeManager uncordons it).
    pub(super) fn put_back(&mut self, name: &str, env: &Envelope) {
        self.transition(name, WorkerState::Ready, env);
        if let Some(w) = self.by_name.get_mut(name) {
            w.removal = None;
        }
    }

    /// The Kubernetes side of `ClusterObserved`: learns workers, follows readiness and annotations,
    /// and removes leaving workers that neither Kubernetes nor Docker shows any more.
    pub(super) fn observe(&mut self, env: &Envelope, o: &ClusterObserved) {
        for n in &o.k8s_nodes {
            self.observe_node(env, n, o.docker_containers.contains(&n.name));
        }
        let in_k8s: BTreeSet<&str> = o.k8s_nodes.iter().map(|n| n.name.as_str()).collect();
        // Removed even if the executor's report was lost or its last step failed after doing its work.
        let vanished: Vec<String> = self
            .active()
            .filter(|w| w.state.is_leaving())
            .filter(|w| !in_k8s.contains(w.name.as_str()) && !o.docker_containers.contains(&w.name))
            .map(|w| w.name.clone())
            .collect();
        for name in vanished {
            self.transition(&name, WorkerState::Removed, env);
        }
    }

    fn observe_node(&mut self, env: &Envelope, n: &ObservedNode, has_container: bool) {
        match self.state_of(&n.name) {
            // A Node object without a container is an orphan for the StateSynchronizer, not a worker.
            None if !has_container => {}
            None => {
                let st = if n.ready {
                    WorkerState::Ready
                } else {
                    WorkerState::NotReady
                };
                let w = self.insert_new(&n.name, st, env, None);
                if n.ready {
                    w.ready_at = Some(env.timestamp);
                }
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
        if let Some(w) = self.by_name.get_mut(&n.name) {
            w.scale_down_disabled = n.scale_down_disabled;
        }
    }

    pub(super) fn transition(&mut self, name: &str, state: WorkerState, env: &Envelope) {
        if let Some(w) = self.by_name.get_mut(name) {
            w.state = state;
            w.since = env.timestamp;
            w.transitioned_by = env.event_id;
        }
        self.reindex(name);
    }

    /// Records a new worker of `pool` (absent: the pool its name says, else the default pool),
    /// replacing a gone one of the same name, and keeps its pool's sequence above it.
    fn insert_new(
        &mut self,
        name: &str,
        state: WorkerState,
        env: &Envelope,
        pool: Option<&str>,
    ) -> &mut Worker {
        let parsed = self.parse_name(name).map(|(p, n)| (p.to_string(), n));
        if let Some((p, n)) = &parsed {
            if p == DEFAULT_POOL {
                self.max_seq = self.max_seq.max(*n);
            } else {
                let seq = self.pool_seq.entry(p.clone()).or_insert(0);
                *seq = (*seq).max(*n);
            }
        }
        let pool = match (pool, &parsed) {
            (Some(p), _) => p.to_string(),
            (None, Some((p, _))) => p.clone(),
            (None, None) => pool_name(None).to_string(),
        };
        let w = Worker {
            name: name.to_string(),
            pool,
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
            name_reusable: false,
            warm: false,
        };
        if w.is_active() {
            self.active.insert(name.to_string());
        } else {
            self.active.remove(name);
        }
        match self.by_name.entry(name.to_string()) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                e.insert(w);
                e.into_mut()
            }
            std::collections::btree_map::Entry::Vacant(e) => e.insert(w),
        }
    }
}
