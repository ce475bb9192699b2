//! Decisions and the actions they started: the scaling actions in flight, the first decision of
//! each type per cause (single-flight), the last decision and the last blocked scale-down.

use std::collections::BTreeMap;

use bus::event::{Event, ScaleDownBlocked, ScalingAction, ScalingActionCompleted};
use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::command::Cause;

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

impl Action {
    /// The action a Started event `env` begins, on the `nodes` it newly names.
    pub fn started(
        kind: ScalingAction,
        env: &Envelope,
        nodes: Vec<String>,
        previous_workers: u32,
        target_workers: u32,
    ) -> Self {
        Self {
            kind,
            nodes,
            started_at: env.timestamp,
            previous_workers,
            target_workers,
            cause: Cause::from(env),
        }
    }
}

/// The last decision any handler published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub event_type: String,
    pub target_workers: Option<u32>,
    pub at: DateTime<Utc>,
    pub event_id: Uuid,
}

/// The last `ScaleDownBlocked`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocked {
    pub reason: String,
    pub at: DateTime<Utc>,
    /// What makes two blocks the same: reason, node and pool (see [`Blocked::key_of`]).
    #[serde(default)]
    pub key: String,
}

impl Blocked {
    /// The identity of a block: its detail may carry changing figures, so it is left out.
    pub fn key_of(b: &ScaleDownBlocked) -> String {
        format!(
            "{}:{}:{}",
            b.reason,
            b.node_name.as_deref().unwrap_or_default(),
            b.pool.as_deref().unwrap_or_default()
        )
    }
}

/// A decision's identity: its cause and its type. Serialized as `<cause>/<event type>`, so the map
/// of decisions is a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DecisionKey {
    /// The causing event's id (the decision's own id for a root).
    pub cause: Uuid,
    pub event_type: String,
}

impl DecisionKey {
    pub fn new(cause: Uuid, event_type: &str) -> Self {
        Self {
            cause,
            event_type: event_type.to_string(),
        }
    }

    /// The key of the decision `env`. A decision about a pool other than the default one is keyed
    /// `<event type>:<pool>`, since one cause can decide for several pools.
    pub fn of(env: &Envelope) -> Self {
        let pool = match &env.event {
            Event::ScaleUpDecision(d) => d.pool.as_deref(),
            Event::ScaleDownDecision(d) => d.pool.as_deref(),
            _ => None,
        };
        let cause = env.causation_id.unwrap_or(env.event_id);
        match pool {
            Some(p) => Self::new(cause, &format!("{}:{p}", env.event_type())),
            None => Self::new(cause, env.event_type()),
        }
    }
}

impl Serialize for DecisionKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.cause, self.event_type))
    }
}

impl<'de> Deserialize<'de> for DecisionKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let (cause, event_type) = text
            .split_once('/')
            .ok_or_else(|| serde::de::Error::custom("a decision key is <cause>/<event type>"))?;
        let cause = Uuid::parse_str(cause).map_err(serde::de::Error::custom)?;
        Ok(Self::new(cause, event_type))
    }
}

/// How many decisions are remembered for single-flight.
const DECISIONS_CAPACITY: usize = 4096;

/// Decisions and actions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Decisions {
    /// Actions in flight, by the id of their Started event.
    pub actions: BTreeMap<Uuid, Action>,
    /// Decisions by key → the first one's id: a second decision with the same cause (another
    /// replica's copy) is the same decision, and the NodeManager acts on the first only.
    pub by_cause: BTreeMap<DecisionKey, Uuid>,
    pub last: Option<DecisionRecord>,
    pub last_blocked: Option<Blocked>,
}

impl Decisions {
    /// Whether `env` is the first decision of its type for its cause (see [`Decisions::by_cause`]).
    pub fn is_first(&self, env: &Envelope) -> bool {
        self.by_cause
            .get(&DecisionKey::of(env))
            .is_none_or(|id| *id == env.event_id)
    }

    /// Whether a decision of `event_type` was made for the event `cause`.
    pub fn answered(&self, cause: Uuid, event_type: &str) -> bool {
        self.by_cause
            .contains_key(&DecisionKey::new(cause, event_type))
    }

    /// Whether a decision of `event_type`, for any pool, was made for the event `cause`.
    pub fn answered_any(&self, cause: Uuid, event_type: &str) -> bool {
        self.by_cause
            .range(DecisionKey::new(cause, event_type)..)
            .take_while(|(k, _)| k.cause == cause && k.event_type.starts_with(event_type))
            .any(|(k, _)| {
                k.event_type.len() == event_type.len()
                    || k.event_type[event_type.len()..].starts_with(':')
            })
    }

    /// A scale-down is in flight.
    pub fn scale_down_in_flight(&self) -> bool {
        self.actions
            .values()
            .any(|a| a.kind == ScalingAction::ScaleDown)
    }

    /// A decision towards `target` workers.
    pub(super) fn decided(&mut self, env: &Envelope, target: Option<u32>) {
        self.by_cause
            .entry(DecisionKey::of(env))
            .or_insert(env.event_id);
        if self.by_cause.len() > DECISIONS_CAPACITY {
            // Oldest causes are not ordered by key; dropping any old entry only weakens coalescing of
            // very late copies, which absolute targets still make harmless.
            if let Some(k) = self.by_cause.keys().next().cloned() {
                self.by_cause.remove(&k);
            }
        }
        // A decision ends the block: the next one is news again.
        self.last_blocked = None;
        self.last = Some(DecisionRecord {
            event_type: env.event_type().to_string(),
            target_workers: target,
            at: env.timestamp,
            event_id: env.event_id,
        });
    }

    /// `ScaleDownBlocked` at `at`.
    pub(super) fn blocked(&mut self, b: &ScaleDownBlocked, at: DateTime<Utc>) {
        self.last_blocked = Some(Blocked {
            reason: b.reason.clone(),
            at,
            key: Blocked::key_of(b),
        });
    }

    /// The Started event `env` began `action`.
    pub(super) fn start(&mut self, env: &Envelope, action: Action) {
        self.actions.insert(env.event_id, action);
    }

    /// `ScalingActionCompleted`: removes and returns the actions it completes.
    pub(super) fn complete(&mut self, c: &ScalingActionCompleted) -> Vec<Action> {
        let done: Vec<Uuid> = self
            .actions
            .iter()
            .filter(|(_, a)| a.kind == c.action && c.nodes.iter().all(|n| a.nodes.contains(n)))
            .map(|(id, _)| *id)
            .collect();
        done.iter()
            .filter_map(|id| self.actions.remove(id))
            .collect()
    }

    /// `node` is no longer part of any action (it failed or was lost); empty actions end.
    pub(super) fn drop_node(&mut self, node: &str) {
        for a in self.actions.values_mut() {
            a.nodes.retain(|n| n != node);
        }
        self.actions.retain(|_, a| !a.nodes.is_empty());
    }
}
