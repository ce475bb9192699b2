//! `autoscaler events replay --what-if`: the recorded stream run again through the model and the
//! handlers under another policy, with no side effects; each new decision is paired with the recorded
//! one of the same root observation.
//!
//! **The replay folds what the live handlers folded, in stream order.** It walks the recorded
//! entries in their stream order (not by timestamp: a handler's output is stamped when it was
//! decided, and lands after entries published meanwhile) and:
//! - folds each recorded observation (from the watchers, the collector, the cluster observation, the
//!   CLI), through the replay's world (below), and runs the handlers on it with the model folded
//!   through it, as each consumer group does;
//! - folds each output the replay decides at the position, and with the timestamp, its recorded twin
//!   (same deterministic id, same data) has: cooldowns and "answered" checks then read the same
//!   stream prefix as the live handler did. An output the recording does not have, or has with other
//!   data (another decision), is folded right after its cause;
//! - runs the leader's timers where the recorded ones fired, at the stream position and time their
//!   outputs' ids name (`MinimumNodeEnforcer`'s `tick:<position>` keys, `NodeManager`'s timeouts and
//!   retries); a timer that fired and said nothing left no trace and needs none;
//! - executes nothing when the recording was a dry run (its entries carry `dry_run`), as the live
//!   process did not.
//!
//! **The world.** A worker both runs have (one the replay creates by the very command the recording
//! created it with, or one that existed before) is what the recording saw: its recorded
//! observations and executor facts are folded as they are. A worker only the recording has is
//! erased from observations. A worker only the replay has, or one the two runs treat differently
//! (one removes it, the other does not), is simulated from then on: created, Ready, cordoned,
//! drained and removed after the delays the recording shows (see [`Delays`]), and added to the
//! cluster observations, the metrics samples and the placement (its Node, from its pool's template,
//! empty: the recorded pods stay where the recording saw them; a worker only the recording has
//! leaves the placement with its pods). Utilisation is rescaled to the replayed worker count
//! (the same total load spread over the workers the replay has). Pending pods re-reported by the
//! recorded watcher stay pending in the replay too.
//!
//! So under the recorded configuration every recorded decision comes out again, and under another
//! one the decisions follow the simulation.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use bus::envelope::{deterministic_id, format_timestamp};
use bus::event::{
    ClusterObserved, Event, MetricsSampled, NodeCordoned, NodeCreated, NodeDrained, NodeReady,
    NodeRemoved, NodeUsage, ObservedNode, PlacementChanged, PlacementSnapshot,
};
use bus::placement::PodGroup;
use bus::scheduling::NodeSpec;
use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::command::{Command, Issued, Outcome};
use crate::executor::SOURCE as EXECUTOR;
use crate::model::Model;
use crate::policy::{Policy, PoolTemplate};
use crate::simulate::SimulatedWorld;
use crate::Handler;

/// A decision, reduced to what is compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub event_type: String,
    pub at: DateTime<Utc>,
    pub target_workers: Option<u32>,
    pub reason: Option<String>,
    pub nodes: Vec<String>,
    /// The pool it is about (absent: the default pool, or the whole cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The pods a `ScaleUpBlocked` names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
}

impl Decision {
    fn of(e: &Envelope) -> Option<Self> {
        let data = e.event.data_json();
        let is_decision = matches!(
            e.event,
            Event::ScaleUpDecision(_)
                | Event::ScaleDownDecision(_)
                | Event::AutoScaleUpToMinimum(_)
                | Event::EmergencyScaleUp(_)
                | Event::ScaleDownBlocked(_)
                | Event::ScaleUpBlocked(_)
        ) || (matches!(e.event, Event::ScalingActionFailed(_))
            && e.source == crate::engine::HANDLER);
        if !is_decision {
            return None;
        }
        Some(Self {
            event_type: e.event_type().to_string(),
            at: e.timestamp,
            target_workers: data
                .get("target_workers")
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok()),
            reason: data
                .get("reason")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            nodes: strings(&data, "nodes"),
            pool: data
                .get("pool")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            pods: strings(&data, "pods"),
        })
    }

    fn same(&self, other: &Decision) -> bool {
        self.event_type == other.event_type
            && self.target_workers == other.target_workers
            && self.reason == other.reason
            && self.pool == other.pool
            && self.pods == other.pods
    }

    fn line(&self) -> String {
        let mut s = self.event_type.clone();
        if let Some(t) = self.target_workers {
            s.push_str(&format!(" target={t}"));
        }
        if let Some(r) = &self.reason {
            s.push_str(&format!(" reason={r}"));
        }
        if let Some(p) = &self.pool {
            s.push_str(&format!(" pool={p}"));
        }
        if !self.pods.is_empty() {
            s.push_str(&format!(" pods={}", self.pods.join(",")));
        }
        if !self.nodes.is_empty() {
            s.push_str(&format!(" nodes={}", self.nodes.join(",")));
        }
        s
    }
}

/// The strings of the array `key` of `data`.
fn strings(data: &serde_json::Value, key: &str) -> Vec<String> {
    data.get(key)
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A recorded decision beside the replayed one, for one root observation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pair {
    pub root_id: Uuid,
    pub root_type: String,
    pub root_at: DateTime<Utc>,
    pub recorded: Option<Decision>,
    pub replayed: Option<Decision>,
    pub changed: bool,
}

/// Integrals over the replayed interval.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Totals {
    /// ∫ live workers dt, in minutes.
    pub node_minutes: f64,
    /// Seconds during which pods were pending.
    pub pending_seconds: f64,
    pub decisions: usize,
}

/// The what-if result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WhatIfReport {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub observations: usize,
    pub pairs: Vec<Pair>,
    pub decisions_changed: usize,
    pub recorded: Totals,
    pub replayed: Totals,
}

impl WhatIfReport {
    /// Decisions side by side, then the summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for p in &self.pairs {
            let show = |d: &Option<Decision>| d.as_ref().map_or("—".to_string(), Decision::line);
            out.push_str(&format!(
                "{} {} {:<24} recorded: {:<50} what-if: {}{}\n",
                format_timestamp(p.root_at),
                &p.root_id.to_string()[..8],
                p.root_type,
                show(&p.recorded),
                show(&p.replayed),
                if p.changed { "   << changed" } else { "" }
            ));
        }
        out.push_str(&format!(
            "\n{} observations, {} decisions recorded, {} replayed, {} changed\n\
             node-minutes: recorded {:.1}, what-if {:.1}\n\
             seconds with pods pending: recorded {:.0}, what-if {:.0}\n",
            self.observations,
            self.recorded.decisions,
            self.replayed.decisions,
            self.decisions_changed,
            self.recorded.node_minutes,
            self.replayed.node_minutes,
            self.recorded.pending_seconds,
            self.replayed.pending_seconds,
        ));
        out
    }
}

/// Replays `recorded` (in stream order) under `policy` with every handler (see the module docs).
pub fn what_if(recorded: &[Envelope], policy: &Policy) -> WhatIfReport {
    what_if_with(recorded, policy, &Handler::ALL)
}

/// The replayed stream: what the handlers decide and the world answers, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    pub log: Vec<Envelope>,
    /// Recorded observations taken.
    pub observations: usize,
}

/// Replays `recorded` (in stream order) under `policy`, running only `handlers` (see the module
/// docs); under the recorded configuration its log is the recorded stream (minus entries only
/// another process could make, none in practice).
pub fn replay(recorded: &[Envelope], policy: &Policy, handlers: &[Handler]) -> Replayed {
    let times = || recorded.iter().map(|e| e.timestamp);
    let (Some(from), Some(to)) = (times().min(), times().max()) else {
        return Replayed {
            log: Vec::new(),
            observations: 0,
        };
    };
    let mut replay = Replay::new(recorded, policy, handlers, from);
    replay.run(to);
    Replayed {
        log: replay.log,
        observations: replay.observations,
    }
}

/// Replays `recorded` (in stream order) under `policy`, running only `handlers` (the configuration's
/// `events.handlers`, as the live process did), and pairs the decisions.
pub fn what_if_with(recorded: &[Envelope], policy: &Policy, handlers: &[Handler]) -> WhatIfReport {
    let times = || recorded.iter().map(|e| e.timestamp);
    let (Some(from), Some(to)) = (times().min(), times().max()) else {
        return WhatIfReport {
            from: None,
            to: None,
            observations: 0,
            pairs: Vec::new(),
            decisions_changed: 0,
            recorded: Totals::default(),
            replayed: Totals::default(),
        };
    };
    let replay = replay(recorded, policy, handlers);

    let recorded_decisions: Vec<&Envelope> = recorded
        .iter()
        .filter(|e| Decision::of(e).is_some())
        .collect();
    let replayed_decisions: Vec<&Envelope> = replay
        .log
        .iter()
        .filter(|e| Decision::of(e).is_some())
        .collect();
    let roots: Vec<&Envelope> = recorded.iter().chain(replay.log.iter()).collect();
    let pairs = pair(&roots, &recorded_decisions, &replayed_decisions);
    let decisions_changed = pairs.iter().filter(|p| p.changed).count();
    let recorded_totals = Totals {
        decisions: recorded_decisions.len(),
        ..integrate(recorded.iter(), policy, to)
    };
    let replayed_totals = Totals {
        decisions: replayed_decisions.len(),
        ..integrate(replay.log.iter(), policy, to)
    };
    WhatIfReport {
        from: Some(from),
        to: Some(to),
        observations: replay.observations,
        pairs,
        decisions_changed,
        recorded: recorded_totals,
        replayed: replayed_totals,
    }
}

/// Whether `e` is an observation of the world (a watcher's, the collector's, the cluster
/// observation, the CLI's), rather than a handler's output or an executor's fact.
fn is_observation(e: &Envelope) -> bool {
    !crate::is_handler_source(&e.source) && e.source != EXECUTOR
}

/// How far back a timer output's position is looked for (a timer's output lands on the stream a
/// few entries after the position it read).
const TICK_LOOKBACK: usize = 256;

/// Where the recorded leader's timers fired: after the recorded entry at the key (`None`: before
/// the first), the handler and its clock. Found from their outputs' deterministic ids.
fn recorded_ticks(recorded: &[Envelope]) -> BTreeMap<Option<usize>, Vec<(Handler, DateTime<Utc>)>> {
    let mut ticks: BTreeMap<Option<usize>, Vec<(Handler, DateTime<Utc>)>> = BTreeMap::new();
    for (i, e) in recorded.iter().enumerate() {
        let found = if e.source == crate::minimum::HANDLER {
            minimum_tick(recorded, i, e).map(|(at, now)| (at, Handler::MinimumNodeEnforcer, now))
        } else if e.source == crate::node_manager::HANDLER && node_manager_tick(e) {
            Some((i.checked_sub(1), Handler::NodeManager, e.timestamp))
        } else {
            None
        };
        if let Some((at, handler, now)) = found {
            let list = ticks.entry(at).or_default();
            if !list.contains(&(handler, now)) {
                list.push((handler, now));
            }
        }
    }
    ticks
}

/// A `MinimumNodeEnforcer` tick output: the position its key names, and the tick's clock.
fn minimum_tick(
    recorded: &[Envelope],
    i: usize,
    e: &Envelope,
) -> Option<(Option<usize>, DateTime<Utc>)> {
    let handler = crate::minimum::HANDLER;
    let key_at = |position: &str| -> Vec<Uuid> {
        match e.causation_id {
            // The timer observed the violation itself (a root).
            None => vec![deterministic_id(&format!(
                "{handler}:tick:{position}:violation"
            ))],
            // The periodic check of an open violation.
            Some(cause) => (0..4)
                .map(|n| deterministic_id(&format!("{handler}:{cause}:tick:{position}:{n}")))
                .collect(),
        }
    };
    let now = match &e.event {
        Event::MinimumNodesViolation(v) => v.violation_time,
        _ => e.timestamp,
    };
    let earlier = (i.saturating_sub(TICK_LOOKBACK)..i).rev().map(Some);
    std::iter::once(None)
        .chain(earlier)
        .find(|at| {
            let position = at
                .map(|j| recorded[j].event_id.to_string())
                .unwrap_or_default();
            key_at(&position).contains(&e.event_id)
        })
        .map(|at| (at, now))
}

/// Whether `e` is one of the `NodeManager` timer's outputs (provisioning timeout, retry, giving up).
fn node_manager_tick(e: &Envelope) -> bool {
    let handler = crate::node_manager::HANDLER;
    let Some(cause) = e.causation_id else {
        return false;
    };
    let node = e.event.node_name().unwrap_or("");
    [
        format!("{handler}:timeout:{node}:{cause}"),
        format!("{handler}:give_up:{cause}"),
        format!("{handler}:retry:{cause}"),
    ]
    .iter()
    .any(|k| deterministic_id(k) == e.event_id)
}

/// The replay's state as it walks the recorded stream.
struct Replay<'a> {
    recorded: &'a [Envelope],
    policy: &'a Policy,
    handlers: &'a [Handler],
    /// The first position of each recorded id.
    index: HashMap<Uuid, usize>,
    /// The last recorded entry taken (outputs whose twin comes later are held for it).
    floor: Option<usize>,
    model: Model,
    /// The replayed stream, in order.
    log: Vec<Envelope>,
    /// Decided outputs waiting for their recorded twin's position.
    held: HashMap<Uuid, Envelope>,
    /// Decided outputs the recording does not have (or had earlier), folded next.
    queue: VecDeque<Envelope>,
    ticks: BTreeMap<Option<usize>, Vec<(Handler, DateTime<Utc>)>>,
    world: World,
    observations: usize,
    /// The recorded process ran dry (its entries say `dry_run`): the replay executes nothing
    /// either, and marks its outputs so.
    dry: bool,
}

impl<'a> Replay<'a> {
    fn new(
        recorded: &'a [Envelope],
        policy: &'a Policy,
        handlers: &'a [Handler],
        from: DateTime<Utc>,
    ) -> Self {
        let mut index = HashMap::new();
        for (i, e) in recorded.iter().enumerate() {
            index.entry(e.event_id).or_insert(i);
        }
        Self {
            recorded,
            policy,
            handlers,
            index,
            floor: None,
            model: Model::new(policy),
            log: Vec::new(),
            held: HashMap::new(),
            queue: VecDeque::new(),
            ticks: recorded_ticks(recorded),
            world: World::new(recorded, from, &policy.node_pools()),
            observations: 0,
            dry: recorded.first().is_some_and(|e| e.metadata.dry_run),
        }
    }

    fn run(&mut self, to: DateTime<Utc>) {
        self.ticks_after(None);
        for (i, e) in self.recorded.iter().enumerate() {
            self.advance(e.timestamp);
            self.floor = Some(i);
            self.take(e);
            self.drain();
            self.ticks_after(Some(i));
        }
        self.advance(to);
    }

    /// One recorded entry.
    fn take(&mut self, e: &Envelope) {
        self.dry = e.metadata.dry_run;
        if is_observation(e) {
            self.observations += 1;
            if let Some(seen) = self.world.observe(e) {
                self.fold(seen);
            }
            return;
        }
        if let Some(mut twin) = self.held.remove(&e.event_id) {
            twin.timestamp = e.timestamp;
            self.fold(twin);
            return;
        }
        if e.source == EXECUTOR {
            if self.world.expected.remove(&e.event_id) {
                self.world.reported(e);
                self.fold(e.clone());
            } else if let Some(node) = e.event.node_name() {
                // The recording acted on a worker the replay did not act on (alike).
                self.world.diverge(node);
            }
        }
        // Else a decision the replay did not make: it stays recorded only.
    }

    /// Folds `e` and runs the handlers on it, as every consumer group does.
    fn fold(&mut self, e: Envelope) {
        if !self.model.apply(&e) {
            return;
        }
        let mut out = Outcome::default();
        for h in self.handlers {
            out.extend(h.handle(&self.model, &e, self.policy, e.timestamp));
        }
        self.log.push(e.clone());
        self.route(out, e.timestamp);
    }

    /// Holds each output for its recorded twin's position, or queues it; executes the commands.
    fn route(&mut self, out: Outcome, now: DateTime<Utc>) {
        for mut e in out.events {
            e.metadata.dry_run |= self.dry;
            if self.model.has_seen(e.event_id) || self.held.contains_key(&e.event_id) {
                continue;
            }
            // Held only for a twin that says the same: one that says otherwise was decided in
            // another situation, and its position says nothing of where this one belongs.
            match self.index.get(&e.event_id) {
                Some(&j)
                    if self.floor.is_none_or(|f| j > f) && self.recorded[j].event == e.event =>
                {
                    self.held.insert(e.event_id, e);
                }
                _ => self.queue.push_back(e),
            }
        }
        if self.dry {
            return;
        }
        for c in &out.commands {
            self.world.execute(c, self.floor, now, &self.index);
        }
    }

    fn drain(&mut self) {
        while let Some(e) = self.queue.pop_front() {
            self.fold(e);
        }
    }

    /// The recorded timers that fired after the entry at `at`.
    fn ticks_after(&mut self, at: Option<usize>) {
        for (h, now) in self.ticks.remove(&at).unwrap_or_default() {
            if self.handlers.contains(&h) {
                let out = h.tick(&self.model, self.policy, now);
                self.route(out, now);
                self.drain();
            }
        }
    }

    /// Runs the simulated world's facts due by `t`.
    fn advance(&mut self, t: DateTime<Utc>) {
        while let Some(due) = self.world.next_due(t) {
            for e in due {
                self.fold(e);
                self.drain();
            }
        }
    }
}

/// How long the simulated world takes, measured on the recording where it shows them (the median
/// over its workers), else the [`SimulatedWorld`] defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delays {
    /// `ScaleUpStarted` → `NodeCreated`.
    pub create: Duration,
    /// `ScaleUpStarted` → `NodeReady`.
    pub ready: Duration,
    /// Cordon, drain, delete → their facts.
    pub step: Duration,
}

impl Delays {
    /// The delays `recorded` shows.
    pub fn measured(recorded: &[Envelope]) -> Self {
        let defaults = SimulatedWorld::default();
        let mut started: HashMap<&str, DateTime<Utc>> = HashMap::new();
        let (mut create, mut ready, mut step) = (Vec::new(), Vec::new(), Vec::new());
        let mut leaving: HashMap<&str, DateTime<Utc>> = HashMap::new();
        for e in recorded {
            match &e.event {
                Event::ScaleUpStarted(s) => {
                    for n in &s.nodes {
                        started.entry(n.as_str()).or_insert(e.timestamp);
                    }
                }
                Event::ScaleDownStarted(s) => {
                    for n in &s.nodes {
                        leaving.entry(n.as_str()).or_insert(e.timestamp);
                    }
                }
                Event::NodeCreated(c) if e.source == EXECUTOR => {
                    if let Some(t) = started.get(c.node_name.as_str()) {
                        create.push(e.timestamp - *t);
                    }
                }
                Event::NodeReady(r) => {
                    if let Some(t) = started.remove(r.node_name.as_str()) {
                        ready.push(e.timestamp - t);
                    }
                }
                Event::NodeCordoned(c) => {
                    if let Some(t) = leaving.remove(c.node_name.as_str()) {
                        step.push(e.timestamp - t);
                    }
                }
                _ => {}
            }
        }
        let median = |mut v: Vec<chrono::Duration>, default: Duration| {
            v.sort();
            v.get(v.len() / 2)
                .and_then(|d| d.to_std().ok())
                .unwrap_or(default)
        };
        Self {
            create: median(create, defaults.create_delay),
            ready: median(ready, defaults.ready_delay),
            step: median(step, defaults.step_delay),
        }
    }
}

/// Who answers for a worker in the replay (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Both runs have it alike: the recording's observations and facts are the truth.
    Recorded,
    /// Only the replay has it, or the runs treat it differently: the simulation answers.
    Simulated,
    /// Only the recording has it (yet): erased from the observations.
    Absent,
}

/// A worker as the world shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Seen {
    container: bool,
    /// The container is stopped, kept warm: a create starts it again.
    stopped: bool,
    /// The Node object, and whether it is Ready.
    node: Option<bool>,
    scale_down_disabled: bool,
}

/// The replay's world: the recording's, with the simulated workers laid over it.
struct World {
    delays: Delays,
    /// Workers the recording created (named by its `ScaleUpStarted`s).
    by_recording: BTreeSet<String>,
    /// Workers the recording shows at all (the others it did not create existed before).
    known: BTreeSet<String>,
    /// Of those, the ones the replay created by the same command.
    adopted: BTreeSet<String>,
    /// The recorded world's last view of each worker.
    recorded: BTreeMap<String, Seen>,
    /// The simulated workers and their state.
    simulated: BTreeMap<String, Seen>,
    /// The pools' templates: a simulated worker's Node as the placement shows it.
    pools: Vec<PoolTemplate>,
    /// The recorded placement's last view of each node.
    specs: BTreeMap<String, NodeSpec>,
    /// The simulated workers' Nodes in the placement.
    simulated_specs: BTreeMap<String, NodeSpec>,
    /// A recorded placement snapshot was seen (before it, the model ignores deltas).
    placement_seen: bool,
    /// Recorded executor facts that answer a command the replay issued alike.
    expected: HashSet<Uuid>,
    /// Simulated facts and observations: (due, order, event).
    scheduled: Vec<(DateTime<Utc>, u64, Envelope)>,
    seq: u64,
    clock: DateTime<Utc>,
}

impl World {
    fn new(recorded: &[Envelope], from: DateTime<Utc>, pools: &[PoolTemplate]) -> Self {
        // Names a `ScaleUpStarted` gave before the world showed them. A worker that existed
        // first and was started again later under its name (a warm worker, a create retried
        // under the failed one's name) is the recording's world's from the start.
        let mut by_recording = BTreeSet::new();
        let mut known = BTreeSet::new();
        for e in recorded {
            if let Event::ScaleUpStarted(s) = &e.event {
                for n in &s.nodes {
                    if !known.contains(n) {
                        by_recording.insert(n.clone());
                    }
                }
            }
            match &e.event {
                Event::ClusterObserved(o) => {
                    known.extend(o.k8s_nodes.iter().map(|n| n.name.clone()));
                    known.extend(o.docker_containers.iter().cloned());
                }
                Event::MetricsSampled(m) => {
                    known.extend(m.nodes.iter().map(|n| n.node_name.clone()));
                }
                // A node of no pool is not a worker (a server).
                Event::PlacementSnapshot(p) => known.extend(managed(&p.nodes)),
                Event::PlacementChanged(p) => known.extend(managed(&p.nodes)),
                event => known.extend(event.node_name().map(str::to_string)),
            }
        }
        Self {
            delays: Delays::measured(recorded),
            by_recording,
            known,
            adopted: BTreeSet::new(),
            recorded: BTreeMap::new(),
            simulated: BTreeMap::new(),
            pools: pools.to_vec(),
            specs: BTreeMap::new(),
            simulated_specs: BTreeMap::new(),
            placement_seen: false,
            expected: HashSet::new(),
            scheduled: Vec::new(),
            seq: 0,
            clock: from,
        }
    }

    fn owner(&self, name: &str) -> Owner {
        if self.simulated.contains_key(name) {
            Owner::Simulated
        } else if self.adopted.contains(name)
            || (self.known.contains(name) && !self.by_recording.contains(name))
        {
            Owner::Recorded
        } else {
            Owner::Absent
        }
    }

    /// From now on the simulation answers for `name`, starting from what the world showed of it.
    fn diverge(&mut self, name: &str) {
        if self.simulated.contains_key(name) {
            return;
        }
        let seen = match self.owner(name) {
            Owner::Recorded => {
                if let Some(spec) = self.specs.get(name) {
                    self.simulated_specs.insert(name.to_string(), spec.clone());
                }
                self.recorded.get(name).copied().unwrap_or_default()
            }
            _ => Seen::default(),
        };
        self.simulated.insert(name.to_string(), seen);
    }

    /// A recorded executor fact the replay expected: what it says of the worker.
    fn reported(&mut self, e: &Envelope) {
        let Some(name) = e.event.node_name() else {
            return;
        };
        let seen = self.recorded.entry(name.to_string()).or_default();
        match &e.event {
            Event::NodeCreated(_) => seen.container = true,
            Event::NodeRemoved(_) => seen.node = None,
            _ => {}
        }
    }

    /// A recorded observation as the replay's world shows it (`None`: it is about a worker the
    /// replay does not have alike).
    fn observe(&mut self, e: &Envelope) -> Option<Envelope> {
        match &e.event {
            Event::ClusterObserved(o) => Some(self.cluster_observed(e, o)),
            Event::MetricsSampled(m) => Some(self.sampled(e, m)),
            Event::PlacementSnapshot(p) => Some(self.placement_snapshot(e, p)),
            Event::PlacementChanged(p) => Some(self.placement_changed(e, p)),
            event => {
                let Some(name) = event.node_name() else {
                    return Some(e.clone());
                };
                let seen = self.recorded.entry(name.to_string()).or_default();
                match event {
                    Event::NodeReady(_) => seen.node = Some(true),
                    Event::NodeHealthDegraded(_) => seen.node = seen.node.map(|_| false),
                    _ => {}
                }
                (self.owner(name) == Owner::Recorded).then(|| e.clone())
            }
        }
    }

    fn cluster_observed(&mut self, e: &Envelope, o: &ClusterObserved) -> Envelope {
        // A full listing: what it leaves out is gone.
        for seen in self.recorded.values_mut() {
            seen.container = false;
            seen.node = None;
        }
        for n in &o.k8s_nodes {
            let seen = self.recorded.entry(n.name.clone()).or_default();
            seen.node = Some(n.ready);
            seen.scale_down_disabled = n.scale_down_disabled;
        }
        for c in &o.docker_containers {
            self.recorded.entry(c.clone()).or_default().container = true;
        }
        let mut view = ClusterObserved {
            k8s_nodes: o
                .k8s_nodes
                .iter()
                .filter(|n| self.owner(&n.name) == Owner::Recorded)
                .cloned()
                .collect(),
            docker_containers: o
                .docker_containers
                .iter()
                .filter(|c| self.owner(c) == Owner::Recorded)
                .cloned()
                .collect(),
        };
        for (name, s) in &self.simulated {
            if let Some(ready) = s.node {
                view.k8s_nodes.push(ObservedNode {
                    name: name.clone(),
                    ready,
                    scale_down_disabled: s.scale_down_disabled,
                });
            }
            if s.container {
                view.docker_containers.push(name.clone());
            }
        }
        if &view == o {
            return e.clone();
        }
        view.k8s_nodes.sort_by(|a, b| a.name.cmp(&b.name));
        view.docker_containers.sort();
        with_event(e, view)
    }

    /// Whether the recorded placement's entries about `node` hold in the replay: a worker both
    /// runs have alike, or a node that is no worker.
    fn placed(&self, node: &str) -> bool {
        let worker = self.known.contains(node)
            || self.by_recording.contains(node)
            || self.simulated.contains_key(node);
        !worker || self.owner(node) == Owner::Recorded
    }

    /// The recorded pods on nodes that hold in the replay.
    fn placed_pods(&self, groups: &[PodGroup]) -> Vec<PodGroup> {
        groups
            .iter()
            .map(|g| PodGroup {
                template: g.template.clone(),
                pods: g
                    .pods
                    .iter()
                    .filter(|(_, node)| self.placed(node))
                    .cloned()
                    .collect(),
            })
            .filter(|g| !g.pods.is_empty())
            .collect()
    }

    /// The simulated workers' Nodes, as the placement would show them.
    fn simulated_nodes(&self) -> Vec<NodeSpec> {
        self.simulated
            .iter()
            .filter_map(|(name, s)| {
                let ready = s.node?;
                let mut spec = self.simulated_specs.get(name)?.clone();
                spec.ready = ready;
                Some(spec)
            })
            .collect()
    }

    /// A snapshot of where pods run, with the workers only the recording has left out and the
    /// simulated ones in (empty: the recorded pods stay where the recording saw them).
    fn placement_snapshot(&mut self, e: &Envelope, p: &PlacementSnapshot) -> Envelope {
        self.placement_seen = true;
        for n in &p.nodes {
            self.specs.insert(n.name.clone(), n.clone());
        }
        let mut view = p.clone();
        view.nodes.retain(|n| self.placed(&n.name));
        view.pods = self.placed_pods(&p.pods);
        if p.part == 0 {
            view.nodes.extend(self.simulated_nodes());
        }
        if &view == p {
            return e.clone();
        }
        with_event(e, view)
    }

    fn placement_changed(&mut self, e: &Envelope, p: &PlacementChanged) -> Envelope {
        for n in &p.nodes {
            self.specs.insert(n.name.clone(), n.clone());
        }
        let mut view = p.clone();
        view.nodes.retain(|n| self.placed(&n.name));
        view.nodes_removed.retain(|n| self.placed(n));
        view.pods = self.placed_pods(&p.pods);
        if &view == p {
            return e.clone();
        }
        with_event(e, view)
    }

    /// What a simulated fact changes in where pods run, as the placement observer would publish it.
    fn placement_after(&mut self, fact: &Envelope) -> Option<Envelope> {
        if !self.placement_seen {
            return None;
        }
        let name = fact.event.node_name()?.to_string();
        let mut change = PlacementChanged::default();
        match &fact.event {
            Event::NodeReady(_) | Event::NodeCordoned(_) => {
                let spec = self.simulated_specs.get_mut(&name)?;
                spec.ready = true;
                spec.cordoned |= matches!(fact.event, Event::NodeCordoned(_));
                change.nodes.push(spec.clone());
            }
            Event::NodeRemoved(_) => {
                self.simulated_specs.remove(&name)?;
                change.nodes_removed.push(name);
            }
            _ => return None,
        }
        Some(
            Envelope::root("placement_observer", change, fact.metadata.clone())
                .with_deterministic_id(&format!("replay:placement:{}", fact.event_id))
                .with_timestamp(fact.timestamp),
        )
    }

    /// The same total load spread over the workers the replay has.
    fn sampled(&self, e: &Envelope, m: &MetricsSampled) -> Envelope {
        let kept: Vec<&NodeUsage> = m
            .nodes
            .iter()
            .filter(|n| self.owner(&n.node_name) == Owner::Recorded)
            .collect();
        let added: Vec<&String> = self
            .simulated
            .iter()
            .filter(|(_, s)| s.node == Some(true))
            .map(|(n, _)| n)
            .collect();
        if kept.len() == m.nodes.len() && added.is_empty() {
            return e.clone();
        }
        let workers = u32::try_from(kept.len() + added.len()).unwrap_or(u32::MAX);
        let recorded = f64::from(m.workers.max(u32::try_from(m.nodes.len()).unwrap_or(0)));
        let scale = if workers == 0 {
            0.0
        } else {
            recorded / f64::from(workers)
        };
        let (cpu_avg, memory_avg) = (
            (m.cpu_avg * scale).min(100.0),
            (m.memory_avg * scale).min(100.0),
        );
        let mut nodes: Vec<NodeUsage> = kept
            .iter()
            .map(|n| NodeUsage {
                node_name: n.node_name.clone(),
                cpu: (n.cpu * scale).min(100.0),
                memory: (n.memory * scale).min(100.0),
            })
            .collect();
        nodes.extend(added.into_iter().map(|n| NodeUsage {
            node_name: n.clone(),
            cpu: cpu_avg,
            memory: memory_avg,
        }));
        nodes.sort_by(|a, b| a.node_name.cmp(&b.node_name));
        with_event(
            e,
            MetricsSampled {
                workers,
                cpu_avg,
                memory_avg,
                source: m.source.clone(),
                nodes,
            },
        )
    }

    /// A command the replay issued: answered by the recording when it issued the same one (its
    /// fact, same id, comes later), else by the simulation.
    fn execute(
        &mut self,
        i: &Issued,
        floor: Option<usize>,
        now: DateTime<Utc>,
        index: &HashMap<Uuid, usize>,
    ) {
        let Some(node) = i.command.node().map(str::to_string) else {
            return; // notifications change nothing in the world
        };
        let fact = i.id();
        let answered = index
            .get(&fact)
            .is_some_and(|&j| floor.is_none_or(|f| j > f));
        let reports = !matches!(
            i.command,
            Command::RemoveWorker {
                keep_warm_in: None,
                ..
            } | Command::Uncordon { .. }
                | Command::AnnotateNode { .. }
                | Command::Notify { .. }
        );
        let creates = matches!(i.command, Command::CreateWorker { .. });
        match self.owner(&node) {
            Owner::Simulated => {}
            Owner::Recorded | Owner::Absent if answered => {
                self.expected.insert(fact);
                if creates {
                    self.adopted.insert(node);
                }
                return;
            }
            // A command that reports no fact, on a recorded cause: the recording's handler issued
            // it too (it decided on the same entry); its effect shows in the recorded observations.
            Owner::Recorded if !reports && index.contains_key(&i.cause.event_id) => return,
            // Creating a worker both runs already have changes nothing (Docker's 409): the
            // recording's world had it and said nothing more of it.
            Owner::Recorded if creates => return,
            // Nothing to do to a worker the replay does not have.
            Owner::Absent if !creates => return,
            Owner::Recorded | Owner::Absent => self.diverge(&node),
        }
        self.simulate(i, &node, now);
    }

    fn simulate(&mut self, i: &Issued, node: &str, now: DateTime<Utc>) {
        let d = self.delays;
        let Some(seen) = self.simulated.get_mut(node) else {
            return;
        };
        let later = |after: Duration| now + crate::policy::chrono(after);
        match &i.command {
            Command::CreateWorker { name, pool, .. } => {
                if seen.container && !seen.stopped {
                    return; // Docker's 409: already there
                }
                seen.container = true;
                seen.stopped = false;
                if let Some(p) = self.pools.iter().find(|p| p.name == *pool) {
                    let mut spec = p.node(name.clone());
                    spec.ready = false;
                    self.simulated_specs.insert(name.clone(), spec);
                }
                let created = i.fact(
                    EXECUTOR,
                    NodeCreated {
                        node_name: name.clone(),
                        container_id: Some(format!("replay-{name}")),
                        pool: crate::policy::pool_field(pool),
                    },
                    now,
                );
                let ready = Envelope::root(
                    "node_watcher",
                    NodeReady {
                        node_name: name.clone(),
                    },
                    i.cause.metadata.clone(),
                )
                .with_deterministic_id(&format!("replay:ready:{name}:{}", i.cause.event_id));
                self.schedule(later(d.create), created);
                self.schedule(later(d.ready), ready);
            }
            Command::CordonAndTaint { node } => {
                let f = i.fact(
                    EXECUTOR,
                    NodeCordoned {
                        node_name: node.clone(),
                    },
                    now,
                );
                self.schedule(later(d.step), f);
            }
            Command::Drain { node, .. } => {
                let f = i.fact(
                    EXECUTOR,
                    NodeDrained {
                        node_name: node.clone(),
                        evicted_pods: 0,
                    },
                    now,
                );
                self.schedule(later(d.step), f);
            }
            Command::RemoveWorker {
                node,
                keep_warm_in: Some(pool),
            } if seen.container => {
                seen.stopped = true;
                let f = i.fact(
                    EXECUTOR,
                    bus::event::WarmPoolEntered {
                        node_name: node.clone(),
                        pool: crate::policy::pool_field(pool),
                    },
                    now,
                );
                self.schedule(later(d.step), f);
            }
            Command::RemoveWorker { .. } => {
                seen.container = false;
                seen.stopped = false;
            }
            Command::DeleteNode { node, pool } => {
                seen.node = None;
                let f = i.fact(
                    EXECUTOR,
                    NodeRemoved {
                        node_name: node.clone(),
                        pool: crate::policy::pool_field(pool),
                    },
                    now,
                );
                self.schedule(later(d.step), f);
            }
            Command::Uncordon { .. } | Command::AnnotateNode { .. } | Command::Notify { .. } => {}
        }
    }

    fn schedule(&mut self, at: DateTime<Utc>, e: Envelope) {
        self.seq += 1;
        self.scheduled.push((at, self.seq, e.with_timestamp(at)));
    }

    /// The next simulated event due by `t` (the clock never goes back), with what it changes in
    /// the placement.
    fn next_due(&mut self, t: DateTime<Utc>) -> Option<Vec<Envelope>> {
        self.clock = self.clock.max(t);
        loop {
            let clock = self.clock;
            let (i, _) = self
                .scheduled
                .iter()
                .enumerate()
                .filter(|(_, (at, _, _))| *at <= clock)
                .min_by_key(|(_, (at, seq, _))| (*at, *seq))?;
            let (_, _, e) = self.scheduled.remove(i);
            if let Event::NodeReady(r) = &e.event {
                match self.simulated.get_mut(&r.node_name) {
                    Some(s) if s.container => s.node = Some(true),
                    _ => continue, // removed before it became Ready
                }
            }
            let placement = self.placement_after(&e);
            return Some(std::iter::once(e).chain(placement).collect());
        }
    }
}

/// The names of the nodes of a pool (workers; a node of none is a server).
fn managed(nodes: &[NodeSpec]) -> impl Iterator<Item = String> + '_ {
    nodes
        .iter()
        .filter(|n| n.pool.is_some())
        .map(|n| n.name.clone())
}

/// The recorded envelope with other data (same id, so decisions still pair by root).
fn with_event(e: &Envelope, event: impl Into<Event>) -> Envelope {
    let mut out = e.clone();
    out.event = event.into();
    out
}

fn pair(all: &[&Envelope], recorded: &[&Envelope], replayed: &[&Envelope]) -> Vec<Pair> {
    let roots: BTreeMap<Uuid, &Envelope> = all
        .iter()
        .filter(|e| e.causation_id.is_none())
        .map(|e| (e.event_id, *e))
        .collect();
    let mut by_root: BTreeMap<Uuid, (Vec<Decision>, Vec<Decision>)> = BTreeMap::new();
    for e in recorded {
        if let Some(d) = Decision::of(e) {
            by_root.entry(e.correlation_id).or_default().0.push(d);
        }
    }
    for e in replayed {
        if let Some(d) = Decision::of(e) {
            by_root.entry(e.correlation_id).or_default().1.push(d);
        }
    }
    let mut pairs = Vec::new();
    for (root_id, (rec, rep)) in by_root {
        let root = roots.get(&root_id);
        let root_at = root
            .map(|r| r.timestamp)
            .or_else(|| rec.first().or(rep.first()).map(|d| d.at))
            .unwrap_or_default();
        let root_type = root.map_or("(timer)".to_string(), |r| r.event_type().to_string());
        for i in 0..rec.len().max(rep.len()) {
            let (a, b) = (rec.get(i).cloned(), rep.get(i).cloned());
            let changed = match (&a, &b) {
                (Some(x), Some(y)) => !x.same(y),
                _ => true,
            };
            pairs.push(Pair {
                root_id,
                root_type: root_type.clone(),
                root_at,
                recorded: a,
                replayed: b,
                changed,
            });
        }
    }
    pairs.sort_by_key(|p| (p.root_at, p.root_id));
    pairs
}

/// Node-minutes and seconds with pods pending, folding `events` up to `to`.
fn integrate<'a>(
    events: impl Iterator<Item = &'a Envelope>,
    policy: &Policy,
    to: DateTime<Utc>,
) -> Totals {
    let mut model = Model::new(policy);
    let mut prev: Option<DateTime<Utc>> = None;
    let mut totals = Totals::default();
    let add = |model: &Model, from: DateTime<Utc>, until: DateTime<Utc>, t: &mut Totals| {
        let secs = (until - from).num_milliseconds().max(0) as f64 / 1000.0;
        t.node_minutes += f64::from(model.current_workers()) * secs / 60.0;
        if model.pending_count() > 0 {
            t.pending_seconds += secs;
        }
    };
    for e in events {
        if let Some(p) = prev {
            add(&model, p, e.timestamp.max(p), &mut totals);
        }
        prev = Some(prev.map_or(e.timestamp, |p| p.max(e.timestamp)));
        model.apply(e);
    }
    if let Some(p) = prev {
        add(&model, p, to.max(p), &mut totals);
    }
    totals
}
