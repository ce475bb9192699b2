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
//!   retries, the scheduled minimums' edges); a timer that fired and said nothing left no trace and
//!   needs none — but an edge of the replayed policy's schedules that the recording has no twin of
//!   is published where the replayed clock crosses it;
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
//!
//! **Streaming.** [`WhatIf`] takes the recorded entries one by one ([`WhatIf::push`]) and keeps
//! only a look-ahead of [`LOOKAHEAD`] entries, the models, the simulated world and the decisions:
//! what the walk above needs of the future (a twin's position, whether the recording answered a
//! command, where a timer fired, which workers the recording created, the delays it shows) is
//! found in the look-ahead, so a week of history replays in the memory of a few hours of it.

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
    /// Whether `e` is a decision (checked before anything is encoded: most entries are not).
    fn is(e: &Envelope) -> bool {
        matches!(
            e.event,
            Event::ScaleUpDecision(_)
                | Event::ScaleDownDecision(_)
                | Event::AutoScaleUpToMinimum(_)
                | Event::EmergencyScaleUp(_)
                | Event::ScaleDownBlocked(_)
                | Event::ScaleUpBlocked(_)
        ) || (matches!(e.event, Event::ScalingActionFailed(_))
            && e.source == crate::engine::HANDLER)
    }

    fn of(e: &Envelope) -> Option<Self> {
        if !Self::is(e) {
            return None;
        }
        let data = e.event.data_json();
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

    /// Whether it changes the number of workers (a scale action), rather than blocking one.
    pub fn scales(&self) -> bool {
        matches!(
            self.event_type.as_str(),
            "ScaleUpDecision" | "ScaleDownDecision" | "AutoScaleUpToMinimum" | "EmergencyScaleUp"
        )
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

/// The summary figures of one run over the replayed interval.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Totals {
    /// ∫ live workers dt, in minutes.
    pub node_minutes: f64,
    /// Seconds during which pods were pending.
    pub pending_seconds: f64,
    /// ∫ pending pods dt: each pod's wait, added up.
    pub pod_pending_seconds: f64,
    /// The most workers at once.
    pub peak_workers: u32,
    /// Decisions that change the number of workers (`ScaleUpDecision`, `ScaleDownDecision`,
    /// `AutoScaleUpToMinimum`, `EmergencyScaleUp`).
    pub scale_actions: usize,
    pub decisions: usize,
}

/// A step function over time: each point holds until the next one.
pub type Series = Vec<(DateTime<Utc>, u32)>;

/// What one run looked like over time, for the plot: a point wherever a value changed.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Timeline {
    /// Live workers.
    pub workers: Series,
    /// Pods pending.
    pub pending_pods: Series,
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
    /// The series the plot draws (left out of `--json`: a point per change, a long list over a week).
    #[serde(skip)]
    pub recorded_timeline: Timeline,
    #[serde(skip)]
    pub replayed_timeline: Timeline,
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
        let (r, w) = (&self.recorded, &self.replayed);
        out.push_str(&format!(
            "\n{} observations, {} decisions recorded, {} replayed, {} changed\n\
             {:<28}{:>12}{:>12}\n\
             {:<28}{:>12.1}{:>12.1}\n\
             {:<28}{:>12.0}{:>12.0}\n\
             {:<28}{:>12.0}{:>12.0}\n\
             {:<28}{:>12}{:>12}\n\
             {:<28}{:>12}{:>12}\n",
            self.observations,
            r.decisions,
            w.decisions,
            self.decisions_changed,
            "",
            "recorded",
            "what-if",
            "node-minutes",
            r.node_minutes,
            w.node_minutes,
            "seconds with pods pending",
            r.pending_seconds,
            w.pending_seconds,
            "pod-pending-seconds",
            r.pod_pending_seconds,
            w.pod_pending_seconds,
            "peak workers",
            r.peak_workers,
            w.peak_workers,
            "scale actions",
            r.scale_actions,
            w.scale_actions,
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
    replay_with_lookahead(recorded, policy, handlers, LOOKAHEAD)
}

/// [`replay`] with another look-ahead (tests: a short one must replay a long history alike).
pub fn replay_with_lookahead(
    recorded: &[Envelope],
    policy: &Policy,
    handlers: &[Handler],
    lookahead: usize,
) -> Replayed {
    let mut replay = Replay::new(policy, handlers, lookahead);
    let mut log = Vec::new();
    for e in recorded {
        replay.push(e.clone());
        log.append(&mut replay.log);
        replay.states.clear();
    }
    replay.finish();
    log.append(&mut replay.log);
    Replayed {
        log,
        observations: replay.observations,
    }
}

/// Replays `recorded` (in stream order) under `policy`, running only `handlers` (the configuration's
/// `events.handlers`, as the live process did), and pairs the decisions.
pub fn what_if_with(recorded: &[Envelope], policy: &Policy, handlers: &[Handler]) -> WhatIfReport {
    let mut w = WhatIf::new(policy, handlers);
    for e in recorded {
        w.push(e.clone());
    }
    w.finish()
}

/// How many recorded entries the replay reads ahead of the one it takes: an output's recorded
/// twin, an executor's fact and a timer's position are looked for among them. The live handlers
/// publish an output a few entries after its input; 10,000 entries is hours of a quiet cluster and
/// minutes of a busy one, a few MB of memory.
pub const LOOKAHEAD: usize = 10_000;

/// The what-if replay as a stream: [`WhatIf::push`] each recorded entry in stream order (from any
/// source: the archive, pages of the stream), then [`WhatIf::finish`]. Memory holds the look-ahead,
/// the models and the decisions, never the whole history.
pub struct WhatIf<'a> {
    replay: Replay<'a>,
    pairing: Pairing,
    /// The recorded run's model, for its figures.
    recorded_model: Model,
    recorded: Integral,
    replayed: Integral,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

impl<'a> WhatIf<'a> {
    pub fn new(policy: &'a Policy, handlers: &'a [Handler]) -> Self {
        Self::with_lookahead(policy, handlers, LOOKAHEAD)
    }

    pub fn with_lookahead(policy: &'a Policy, handlers: &'a [Handler], lookahead: usize) -> Self {
        Self {
            replay: Replay::new(policy, handlers, lookahead),
            pairing: Pairing::default(),
            recorded_model: Model::new(policy),
            recorded: Integral::new(),
            replayed: Integral::new(),
            from: None,
            to: None,
        }
    }

    /// The next recorded entry, in stream order.
    pub fn push(&mut self, e: Envelope) {
        self.from = Some(self.from.map_or(e.timestamp, |f| f.min(e.timestamp)));
        self.to = Some(self.to.map_or(e.timestamp, |t| t.max(e.timestamp)));
        self.pairing.root(&e);
        self.pairing.recorded(&e);
        self.recorded_model.apply(&e);
        let m = &self.recorded_model;
        self.recorded
            .push(&e, m.current_workers(), m.pending_count());
        self.replay.push(e);
        self.drain_log();
    }

    fn drain_log(&mut self) {
        for (e, (workers, pending)) in self.replay.log.drain(..).zip(self.replay.states.drain(..)) {
            self.pairing.root(&e);
            self.pairing.replayed(&e);
            self.replayed.push(&e, workers, pending);
        }
    }

    pub fn finish(mut self) -> WhatIfReport {
        self.replay.finish();
        self.drain_log();
        let (Some(from), Some(to)) = (self.from, self.to) else {
            return WhatIfReport {
                from: None,
                to: None,
                observations: 0,
                pairs: Vec::new(),
                decisions_changed: 0,
                recorded: Totals::default(),
                replayed: Totals::default(),
                recorded_timeline: Timeline::default(),
                replayed_timeline: Timeline::default(),
            };
        };
        let pairs = self.pairing.pairs();
        let decisions_changed = pairs.iter().filter(|p| p.changed).count();
        let (recorded, recorded_timeline) = self.recorded.finish(to);
        let (replayed, replayed_timeline) = self.replayed.finish(to);
        WhatIfReport {
            from: Some(from),
            to: Some(to),
            observations: self.replay.observations,
            pairs,
            decisions_changed,
            recorded,
            replayed,
            recorded_timeline,
            replayed_timeline,
        }
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

/// A `MinimumNodeEnforcer` tick output: the position its key names, and the tick's clock.
/// `earlier` holds the ids of the entries just before it, newest last, the last at position `i - 1`.
fn minimum_tick(
    earlier: &VecDeque<Uuid>,
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
    if key_at("").contains(&e.event_id) {
        return Some((None, now));
    }
    earlier
        .iter()
        .rev()
        .enumerate()
        .find(|(_, id)| key_at(&id.to_string()).contains(&e.event_id))
        .map(|(back, _)| (Some(i - 1 - back), now))
}

/// A scheduled minimum's edge: the enforcer's timer publishes it as a root, right after the
/// position it read.
fn schedule_edge(i: usize, e: &Envelope) -> Option<(Option<usize>, DateTime<Utc>)> {
    let edge = matches!(
        e.event,
        Event::ScheduledMinimumStarted(_) | Event::ScheduledMinimumEnded(_)
    );
    (edge && e.causation_id.is_none()).then(|| (i.checked_sub(1), e.timestamp))
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

/// The replay's state as it walks the recorded stream. Entries are pushed into a look-ahead
/// window and taken from its front: what the replay needs to know of the future (an output's
/// recorded twin, whether the recording answered a command, where a timer fired, which workers
/// the recording creates) is looked up in the window, so memory does not grow with the history.
struct Replay<'a> {
    policy: &'a Policy,
    handlers: &'a [Handler],
    lookahead: usize,
    /// Recorded entries pushed and not yet taken; `window[0]` is at position `base`.
    window: VecDeque<Envelope>,
    base: usize,
    /// The first position of each recorded id in the window.
    index: HashMap<Uuid, usize>,
    /// The ids of the last entries taken (a command's cause is looked up there too).
    behind: VecDeque<Uuid>,
    behind_set: HashSet<Uuid>,
    /// The ids of the last [`TICK_LOOKBACK`] entries pushed.
    recent: VecDeque<Uuid>,
    /// The last recorded entry taken (outputs whose twin comes later are held for it).
    floor: Option<usize>,
    model: Model,
    /// The replayed stream since the caller last drained it, in order.
    log: Vec<Envelope>,
    /// The model's workers and pods pending after each entry of `log`.
    states: Vec<(u32, u32)>,
    /// Decided outputs waiting for their recorded twin's position.
    held: HashMap<Uuid, Envelope>,
    /// Decided outputs the recording does not have (or had earlier), folded next.
    queue: VecDeque<Envelope>,
    /// Where the recorded leader's timers fired: after the recorded entry at the key (`None`:
    /// before the first), the handler and its clock. Found from their outputs' deterministic ids.
    ticks: BTreeMap<Option<usize>, Vec<(Handler, DateTime<Utc>)>>,
    world: World,
    observations: usize,
    /// The recorded process ran dry (its entries say `dry_run`): the replay executes nothing
    /// either, and marks its outputs so.
    dry: bool,
    started: bool,
    /// The newest timestamp pushed: the simulated world runs up to it at the end.
    to: Option<DateTime<Utc>>,
}

impl<'a> Replay<'a> {
    fn new(policy: &'a Policy, handlers: &'a [Handler], lookahead: usize) -> Self {
        Self {
            policy,
            handlers,
            // A timer's position must still be ahead when its output is pushed.
            lookahead: lookahead.max(TICK_LOOKBACK + 1),
            window: VecDeque::new(),
            base: 0,
            index: HashMap::new(),
            behind: VecDeque::new(),
            behind_set: HashSet::new(),
            recent: VecDeque::new(),
            floor: None,
            model: Model::new(policy),
            log: Vec::new(),
            states: Vec::new(),
            held: HashMap::new(),
            queue: VecDeque::new(),
            ticks: BTreeMap::new(),
            world: World::new(&policy.node_pools()),
            observations: 0,
            dry: false,
            started: false,
            to: None,
        }
    }

    /// The next recorded entry, in stream order.
    fn push(&mut self, e: Envelope) {
        let i = self.base + self.window.len();
        if i == 0 {
            self.dry = e.metadata.dry_run;
        }
        self.to = Some(self.to.map_or(e.timestamp, |t| t.max(e.timestamp)));
        self.world.note(&e);
        let found = if e.source == crate::minimum::HANDLER {
            minimum_tick(&self.recent, i, &e)
                .or_else(|| schedule_edge(i, &e))
                .map(|(at, now)| (at, Handler::MinimumNodeEnforcer, now))
        } else if e.source == crate::node_manager::HANDLER && node_manager_tick(&e) {
            Some((i.checked_sub(1), Handler::NodeManager, e.timestamp))
        } else {
            None
        };
        if let Some((at, handler, now)) = found {
            let list = self.ticks.entry(at).or_default();
            if !list.contains(&(handler, now)) {
                list.push((handler, now));
            }
        }
        self.recent.push_back(e.event_id);
        if self.recent.len() > TICK_LOOKBACK {
            self.recent.pop_front();
        }
        if !self.behind_set.contains(&e.event_id) {
            self.index.entry(e.event_id).or_insert(i);
        }
        self.window.push_back(e);
        while self.window.len() > self.lookahead {
            self.step();
        }
    }

    /// Takes what is left, and runs the simulated world up to the last recorded time.
    fn finish(&mut self) {
        while !self.window.is_empty() {
            self.step();
        }
        if let Some(to) = self.to {
            self.advance(to);
        }
    }

    /// Takes the window's first entry.
    fn step(&mut self) {
        let Some(e) = self.window.pop_front() else {
            return;
        };
        let i = self.base;
        self.base += 1;
        if self.index.get(&e.event_id) == Some(&i) {
            self.index.remove(&e.event_id);
        }
        if self.behind_set.insert(e.event_id) {
            self.behind.push_back(e.event_id);
            if self.behind.len() > self.lookahead {
                if let Some(old) = self.behind.pop_front() {
                    self.behind_set.remove(&old);
                }
            }
        }
        if !self.started {
            self.started = true;
            let first = self.window.iter().map(|w| w.timestamp).min();
            self.world.clock = first.map_or(e.timestamp, |f| f.min(e.timestamp));
            self.ticks_after(None);
        }
        self.advance(e.timestamp);
        self.schedule_edges_at(e.timestamp);
        self.floor = Some(i);
        self.take(e);
        self.drain();
        self.ticks_after(Some(i));
    }

    /// One recorded entry.
    fn take(&mut self, e: Envelope) {
        self.dry = e.metadata.dry_run;
        if is_observation(&e) {
            self.observations += 1;
            match self.world.observe(&e) {
                View::Same => self.fold(e),
                View::Changed(seen) => self.fold(*seen),
                View::Hidden => {}
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
                self.world.reported(&e);
                self.fold(e);
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
        let now = e.timestamp;
        self.log.push(e);
        self.states
            .push((self.model.current_workers(), self.model.pending_count()));
        self.route(out, now);
    }

    /// The position of a recorded entry with this id still to come.
    fn ahead(&self, id: &Uuid) -> Option<usize> {
        self.index
            .get(id)
            .copied()
            .filter(|&j| self.floor.is_none_or(|f| j > f))
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
            let twin = self
                .ahead(&e.event_id)
                .and_then(|j| self.window.get(j - self.base))
                .is_some_and(|r| r.event == e.event);
            if twin {
                self.held.insert(e.event_id, e);
            } else {
                self.queue.push_back(e);
            }
        }
        if self.dry {
            return;
        }
        for c in &out.commands {
            let answered = self.ahead(&c.id()).is_some();
            let cause_recorded = self.index.contains_key(&c.cause.event_id)
                || self.behind_set.contains(&c.cause.event_id);
            self.world.execute(c, answered, cause_recorded, now);
        }
    }

    fn drain(&mut self) {
        while let Some(e) = self.queue.pop_front() {
            self.fold(e);
        }
    }

    /// Edges of the replayed policy's scheduled minimums that the recording has no twin of (a
    /// what-if that adds or moves a schedule): the enforcer's timer publishes them at `t`, as the
    /// live one would have within its check interval. Edges the recording has come from its timer.
    fn schedule_edges_at(&mut self, t: DateTime<Utc>) {
        if !self.handlers.contains(&Handler::MinimumNodeEnforcer) {
            return;
        }
        let (roots, _) = crate::minimum::schedule_edges(&self.model, self.policy, t);
        let untwinned = roots.iter().any(|r| {
            self.ahead(&r.event_id).is_none()
                && !self.model.has_seen(r.event_id)
                && !self.held.contains_key(&r.event_id)
        });
        if untwinned {
            let out = crate::minimum::MinimumNodeEnforcer.schedules(&self.model, self.policy, t);
            self.route(out, t);
            self.drain();
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
        let mut m = DelayMeter::default();
        for e in recorded {
            m.note(e);
        }
        m.delays()
    }
}

/// How many samples of each delay are kept (the first ones: a week of scale actions is far fewer).
const DELAY_SAMPLES: usize = 4096;

/// [`Delays`] measured as the recording streams by.
#[derive(Debug, Default)]
struct DelayMeter {
    started: HashMap<String, DateTime<Utc>>,
    leaving: HashMap<String, DateTime<Utc>>,
    create: Vec<chrono::Duration>,
    ready: Vec<chrono::Duration>,
    step: Vec<chrono::Duration>,
}

impl DelayMeter {
    fn note(&mut self, e: &Envelope) {
        let keep = |v: &mut Vec<chrono::Duration>, d| {
            if v.len() < DELAY_SAMPLES {
                v.push(d);
            }
        };
        match &e.event {
            Event::ScaleUpStarted(s) => {
                for n in &s.nodes {
                    self.started.entry(n.clone()).or_insert(e.timestamp);
                }
            }
            Event::ScaleDownStarted(s) => {
                for n in &s.nodes {
                    self.leaving.entry(n.clone()).or_insert(e.timestamp);
                }
            }
            Event::NodeCreated(c) if e.source == EXECUTOR => {
                if let Some(t) = self.started.get(c.node_name.as_str()) {
                    keep(&mut self.create, e.timestamp - *t);
                }
            }
            Event::NodeReady(r) => {
                if let Some(t) = self.started.remove(r.node_name.as_str()) {
                    keep(&mut self.ready, e.timestamp - t);
                }
            }
            Event::NodeCordoned(c) => {
                if let Some(t) = self.leaving.remove(c.node_name.as_str()) {
                    keep(&mut self.step, e.timestamp - t);
                }
            }
            _ => {}
        }
    }

    fn delays(&self) -> Delays {
        let defaults = SimulatedWorld::default();
        let median = |v: &[chrono::Duration], default: Duration| {
            let mut v = v.to_vec();
            v.sort();
            v.get(v.len() / 2)
                .and_then(|d| d.to_std().ok())
                .unwrap_or(default)
        };
        Delays {
            create: median(&self.create, defaults.create_delay),
            ready: median(&self.ready, defaults.ready_delay),
            step: median(&self.step, defaults.step_delay),
        }
    }
}

/// A recorded observation in the replay's world.
enum View {
    /// As recorded.
    Same,
    /// With other data (same id); boxed, as it is the rare case.
    Changed(Box<Envelope>),
    /// About a worker the replay does not have alike: not folded.
    Hidden,
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
    /// How long the recorded world took (for the simulated workers).
    meter: DelayMeter,
    /// Workers the recording created (named by its `ScaleUpStarted`s, up to the look-ahead).
    by_recording: BTreeSet<String>,
    /// Workers the recording shows at all, up to the look-ahead (the others it did not create
    /// existed before).
    known: BTreeSet<String>,
    /// Of those, the ones the replay created by the same command.
    adopted: BTreeSet<String>,
    /// The recorded world's last view of each worker.
    recorded: BTreeMap<String, Seen>,
    /// The names in `recorded` that may show a container or a Node (the others were reset by a
    /// cluster observation since): the next one resets only these, not every worker ever seen.
    shown: BTreeSet<String>,
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
    fn new(pools: &[PoolTemplate]) -> Self {
        Self {
            meter: DelayMeter::default(),
            by_recording: BTreeSet::new(),
            known: BTreeSet::new(),
            adopted: BTreeSet::new(),
            recorded: BTreeMap::new(),
            shown: BTreeSet::new(),
            simulated: BTreeMap::new(),
            pools: pools.to_vec(),
            specs: BTreeMap::new(),
            simulated_specs: BTreeMap::new(),
            placement_seen: false,
            expected: HashSet::new(),
            scheduled: Vec::new(),
            seq: 0,
            clock: DateTime::<Utc>::MIN_UTC,
        }
    }

    /// A recorded entry pushed into the look-ahead: the workers it names and the delays it shows.
    fn note(&mut self, e: &Envelope) {
        self.meter.note(e);
        let known = &mut self.known;
        // Names a `ScaleUpStarted` gave before the world showed them. A worker that existed
        // first and was started again later under its name (a warm worker, a create retried
        // under the failed one's name) is the recording's world's from the start.
        if let Event::ScaleUpStarted(s) = &e.event {
            for n in &s.nodes {
                if !known.contains(n) {
                    self.by_recording.insert(n.clone());
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
                let seen = self.recorded.get(name).copied().unwrap_or_default();
                // What the placement shows of it: the recorded view, or (no snapshot named it
                // yet) its pool's template, as for a worker the replay creates.
                let spec = self.specs.get(name).cloned().or_else(|| {
                    let pool = self
                        .pools
                        .iter()
                        .find(|p| name.contains(&format!("{}-", p.name)))
                        .or_else(|| {
                            self.pools
                                .iter()
                                .find(|p| p.name == crate::policy::DEFAULT_POOL)
                        })?;
                    let mut spec = pool.node(name.to_string());
                    spec.ready = seen.node.unwrap_or(false);
                    Some(spec)
                });
                if let Some(spec) = spec {
                    self.simulated_specs.insert(name.to_string(), spec);
                }
                seen
            }
            _ => Seen::default(),
        };
        self.simulated.insert(name.to_string(), seen);
    }

    /// The recorded world's view of `name`, to change.
    fn recorded_mut(&mut self, name: &str) -> &mut Seen {
        if !self.shown.contains(name) {
            self.shown.insert(name.to_string());
        }
        self.recorded.entry(name.to_string()).or_default()
    }

    /// A recorded executor fact the replay expected: what it says of the worker.
    fn reported(&mut self, e: &Envelope) {
        let Some(name) = e.event.node_name() else {
            return;
        };
        let seen = self.recorded_mut(name);
        match &e.event {
            Event::NodeCreated(_) => seen.container = true,
            Event::NodeRemoved(_) => seen.node = None,
            _ => {}
        }
    }

    /// A recorded observation as the replay's world shows it.
    fn observe(&mut self, e: &Envelope) -> View {
        let changed = match &e.event {
            Event::ClusterObserved(o) => self.cluster_observed(e, o),
            Event::MetricsSampled(m) => self.sampled(e, m),
            Event::PlacementSnapshot(p) => self.placement_snapshot(e, p),
            Event::PlacementChanged(p) => self.placement_changed(e, p),
            event => {
                let Some(name) = event.node_name() else {
                    return View::Same;
                };
                let seen = self.recorded_mut(name);
                match event {
                    Event::NodeReady(_) => seen.node = Some(true),
                    Event::NodeHealthDegraded(_) => seen.node = seen.node.map(|_| false),
                    _ => {}
                }
                return if self.owner(name) == Owner::Recorded {
                    View::Same
                } else {
                    View::Hidden
                };
            }
        };
        changed.map_or(View::Same, |e| View::Changed(Box::new(e)))
    }

    fn cluster_observed(&mut self, e: &Envelope, o: &ClusterObserved) -> Option<Envelope> {
        // A full listing: what it leaves out is gone.
        for name in std::mem::take(&mut self.shown) {
            if let Some(seen) = self.recorded.get_mut(&name) {
                seen.container = false;
                seen.node = None;
            }
        }
        for n in &o.k8s_nodes {
            let seen = self.recorded_mut(&n.name);
            seen.node = Some(n.ready);
            seen.scale_down_disabled = n.scale_down_disabled;
        }
        for c in &o.docker_containers {
            self.recorded_mut(c).container = true;
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
            unreachable: o.unreachable.clone(),
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
            return None;
        }
        view.k8s_nodes.sort_by(|a, b| a.name.cmp(&b.name));
        view.docker_containers.sort();
        Some(with_event(e, view))
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
    fn placement_snapshot(&mut self, e: &Envelope, p: &PlacementSnapshot) -> Option<Envelope> {
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
            return None;
        }
        Some(with_event(e, view))
    }

    fn placement_changed(&mut self, e: &Envelope, p: &PlacementChanged) -> Option<Envelope> {
        for n in &p.nodes {
            self.specs.insert(n.name.clone(), n.clone());
        }
        let mut view = p.clone();
        view.nodes.retain(|n| self.placed(&n.name));
        view.nodes_removed.retain(|n| self.placed(n));
        view.pods = self.placed_pods(&p.pods);
        if &view == p {
            return None;
        }
        Some(with_event(e, view))
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
    fn sampled(&self, e: &Envelope, m: &MetricsSampled) -> Option<Envelope> {
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
            return None;
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
        Some(with_event(
            e,
            MetricsSampled {
                workers,
                cpu_avg,
                memory_avg,
                source: m.source.clone(),
                nodes,
            },
        ))
    }

    /// A command the replay issued: answered by the recording when it issued the same one (its
    /// fact, same id, comes later), else by the simulation.
    fn execute(&mut self, i: &Issued, answered: bool, cause_recorded: bool, now: DateTime<Utc>) {
        let Some(node) = i.command.node().map(str::to_string) else {
            return; // notifications change nothing in the world
        };
        let fact = i.id();
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
            Owner::Recorded if !reports && cause_recorded => return,
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
        let d = self.meter.delays();
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

/// How many recent roots are remembered to name a decision's root (a decision follows its root
/// closely; an older one is shown with its own time, as for a root trimmed from the stream).
const ROOTS: usize = 4 * LOOKAHEAD;

/// The decisions of both runs by root, as they stream by.
#[derive(Default)]
struct Pairing {
    /// Recent roots: id → (type, time), oldest first in `order`.
    roots: HashMap<Uuid, (&'static str, DateTime<Utc>)>,
    order: VecDeque<Uuid>,
    by_root: BTreeMap<Uuid, Root>,
}

#[derive(Default)]
struct Root {
    seen: Option<(&'static str, DateTime<Utc>)>,
    recorded: Vec<Decision>,
    replayed: Vec<Decision>,
}

impl Pairing {
    fn root(&mut self, e: &Envelope) {
        if e.causation_id.is_some() {
            return;
        }
        if self
            .roots
            .insert(e.event_id, (e.event_type(), e.timestamp))
            .is_none()
        {
            self.order.push_back(e.event_id);
            if self.order.len() > ROOTS {
                if let Some(old) = self.order.pop_front() {
                    self.roots.remove(&old);
                }
            }
        }
    }

    fn entry(&mut self, e: &Envelope) -> &mut Root {
        let seen = self.roots.get(&e.correlation_id).copied();
        let root = self.by_root.entry(e.correlation_id).or_default();
        root.seen = root.seen.or(seen);
        root
    }

    fn recorded(&mut self, e: &Envelope) {
        if let Some(d) = Decision::of(e) {
            self.entry(e).recorded.push(d);
        }
    }

    fn replayed(&mut self, e: &Envelope) {
        if let Some(d) = Decision::of(e) {
            self.entry(e).replayed.push(d);
        }
    }

    fn pairs(self) -> Vec<Pair> {
        let mut pairs = Vec::new();
        for (root_id, root) in self.by_root {
            let Root {
                seen,
                recorded: rec,
                replayed: rep,
            } = root;
            let root_at = seen
                .map(|(_, at)| at)
                .or_else(|| rec.first().or(rep.first()).map(|d| d.at))
                .unwrap_or_default();
            let root_type = seen.map_or("(timer)".to_string(), |(t, _)| t.to_string());
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
}

/// The summary figures and the timeline of one run, as its entries stream by with the state of a
/// model folded through each (the recorded run's own model; for the replayed run, the replay's).
struct Integral {
    /// Workers and pods pending after the last entry.
    state: (u32, u32),
    prev: Option<DateTime<Utc>>,
    totals: Totals,
    timeline: Timeline,
}

impl Integral {
    fn new() -> Self {
        Self {
            state: (0, 0),
            prev: None,
            totals: Totals::default(),
            timeline: Timeline::default(),
        }
    }

    /// Adds the time from `from` to `until` under the current state.
    fn add(&mut self, from: DateTime<Utc>, until: DateTime<Utc>) {
        let secs = (until - from).num_milliseconds().max(0) as f64 / 1000.0;
        let t = &mut self.totals;
        let (workers, pending) = self.state;
        t.node_minutes += f64::from(workers) * secs / 60.0;
        if pending > 0 {
            t.pending_seconds += secs;
            t.pod_pending_seconds += f64::from(pending) * secs;
        }
    }

    /// `e`, after which the model shows `workers` and `pending` pods.
    fn push(&mut self, e: &Envelope, workers: u32, pending: u32) {
        if let Some(p) = self.prev {
            self.add(p, e.timestamp.max(p));
        }
        let now = self.prev.map_or(e.timestamp, |p| p.max(e.timestamp));
        self.prev = Some(now);
        if Decision::is(e) {
            self.totals.decisions += 1;
            if matches!(
                e.event,
                Event::ScaleUpDecision(_)
                    | Event::ScaleDownDecision(_)
                    | Event::AutoScaleUpToMinimum(_)
                    | Event::EmergencyScaleUp(_)
            ) {
                self.totals.scale_actions += 1;
            }
        }
        self.state = (workers, pending);
        self.totals.peak_workers = self.totals.peak_workers.max(workers);
        step(&mut self.timeline.workers, now, workers);
        step(&mut self.timeline.pending_pods, now, pending);
    }

    fn finish(mut self, to: DateTime<Utc>) -> (Totals, Timeline) {
        if let Some(p) = self.prev {
            self.add(p, to.max(p));
        }
        (self.totals, self.timeline)
    }
}

/// Appends `(at, value)` to a step series when the value changes (a later value at the same
/// time replaces the earlier one).
fn step(series: &mut Series, at: DateTime<Utc>, value: u32) {
    match series.last_mut() {
        Some((_, v)) if *v == value => {}
        Some((t, v)) if *t == at => {
            *v = value;
            if series.len() >= 2 && series[series.len() - 2].1 == value {
                series.pop();
            }
        }
        _ => series.push((at, value)),
    }
}
