//! `autoscaler events replay --what-if`: the recorded observations run again through the model,
//! the handlers and a simulated executor under another policy, with no side effects; each new decision
//! is paired with the recorded one of the same root observation.
//!
//! What is replayed: root events from outside the handlers (metrics samples, pending pods, manual
//! requests, node notices). What is not: facts about workers that only the recorded run created (their
//! `NodeReady`, losses, …) — the simulation creates its own workers; and `ClusterObserved` snapshots,
//! which are replaced by the simulated world's view at that time (the first one seeds the world).
//! Utilisation is rescaled to the replayed worker count (the same total load spread over the workers
//! the replay has). Pending pods re-reported by the recorded watcher stay pending in the replay too.

use std::collections::{BTreeMap, BTreeSet};

use bus::envelope::format_timestamp;
use bus::event::{ClusterObserved, Event, MetricsSampled};
use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::model::Model;
use crate::policy::Policy;
use crate::simulate::Simulation;

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

/// Replays the observations of `recorded` under `policy` (see the module docs).
pub fn what_if(recorded: &[Envelope], policy: &Policy) -> WhatIfReport {
    let mut events: Vec<&Envelope> = recorded.iter().collect();
    events.sort_by_key(|e| e.timestamp);
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
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
    let (from, to) = (first.timestamp, last.timestamp);
    // Workers the recorded run created: facts about them are not observations here.
    let created: BTreeSet<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpStarted(s) => Some(s.nodes.clone()),
            _ => None,
        })
        .flatten()
        .collect();

    let mut sim = Simulation::new(policy.clone(), from);
    sim.metadata = first.metadata.clone();
    let mut seeded = false;
    let mut observations = 0;
    for e in &events {
        if e.causation_id.is_some() || crate::is_handler_source(&e.source) {
            continue;
        }
        if e.event.node_name().is_some_and(|n| created.contains(n)) {
            continue;
        }
        sim.advance_to(e.timestamp);
        observations += 1;
        match &e.event {
            Event::ClusterObserved(o) => {
                if !seeded {
                    seeded = true;
                    for n in o.k8s_nodes.iter().filter(|n| !created.contains(&n.name)) {
                        sim.world.nodes.insert(n.name.clone(), n.ready);
                    }
                    for c in o.docker_containers.iter().filter(|c| !created.contains(*c)) {
                        sim.world.containers.insert(c.clone());
                    }
                }
                let mut obs: ClusterObserved = simulated_view(&sim);
                // Keep what the operator marked on nodes that also exist in the replay.
                for n in &mut obs.k8s_nodes {
                    n.scale_down_disabled = o
                        .k8s_nodes
                        .iter()
                        .any(|r| r.name == n.name && r.scale_down_disabled);
                }
                sim.publish(with_event(e, obs));
            }
            Event::MetricsSampled(m) => {
                let replayed = sim.model.current_workers().max(1);
                let scale = f64::from(m.workers.max(1)) / f64::from(replayed);
                let live: BTreeSet<String> = sim.model.live().map(|w| w.name.clone()).collect();
                let sample = MetricsSampled {
                    workers: replayed,
                    cpu_avg: (m.cpu_avg * scale).min(100.0),
                    memory_avg: (m.memory_avg * scale).min(100.0),
                    source: m.source.clone(),
                    nodes: m
                        .nodes
                        .iter()
                        .filter(|n| live.contains(&n.node_name))
                        .cloned()
                        .collect(),
                };
                sim.publish(with_event(e, sample));
            }
            Event::NodeReady(r) => {
                sim.world.containers.insert(r.node_name.clone());
                sim.world.nodes.insert(r.node_name.clone(), true);
                sim.publish((*e).clone());
            }
            Event::NodeUnexpectedlyLost(l) => {
                sim.kill(&l.node_name);
                sim.publish((*e).clone());
            }
            _ => sim.publish((*e).clone()),
        }
    }
    sim.advance_to(to);

    let recorded_decisions: Vec<&Envelope> = events
        .iter()
        .copied()
        .filter(|e| Decision::of(e).is_some())
        .collect();
    let replayed_decisions: Vec<&Envelope> = sim
        .log
        .iter()
        .filter(|e| Decision::of(e).is_some())
        .collect();
    let pairs = pair(&events, &recorded_decisions, &replayed_decisions);
    let decisions_changed = pairs.iter().filter(|p| p.changed).count();
    let recorded_totals = Totals {
        decisions: recorded_decisions.len(),
        ..integrate(events.iter().copied(), policy, to)
    };
    let replayed_totals = Totals {
        decisions: replayed_decisions.len(),
        ..integrate(sim.log.iter(), policy, to)
    };
    WhatIfReport {
        from: Some(from),
        to: Some(to),
        observations,
        pairs,
        decisions_changed,
        recorded: recorded_totals,
        replayed: replayed_totals,
    }
}

fn simulated_view(sim: &Simulation) -> ClusterObserved {
    ClusterObserved {
        k8s_nodes: sim
            .world
            .nodes
            .iter()
            .map(|(n, r)| bus::event::ObservedNode {
                name: n.clone(),
                ready: *r,
                scale_down_disabled: false,
            })
            .collect(),
        docker_containers: sim.world.containers.iter().cloned().collect(),
    }
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
