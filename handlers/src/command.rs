//! What handlers return: events to publish and commands for the executor, as plain data.

use std::time::Duration;

use bus::event::Event;
use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::alerts::Alert;

/// Something the NodeManager (or StateSynchronizer, AlertManager) asks the world to do.
///
/// The executor in `autoscaler` maps each command to [`crate::traits`] calls and publishes the facts
/// (see [`crate::executor`]): `NodeCreated`, `NodeCordoned`, `NodeDrained`, `NodeRemoved`, or
/// `ScalingActionFailed {retryable}`; each fact is caused by [`Issued::cause`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Create and start worker `name` of `pool` (Docker answers 409 if another replica already
    /// did: success).
    CreateWorker {
        name: String,
        requested_by: Uuid,
        #[serde(default = "default_pool")]
        pool: String,
    },
    /// Taint `NoSchedule` and cordon.
    CordonAndTaint { node: String },
    /// Evict the node's pods (PDB-aware), giving up after `timeout`.
    Drain { node: String, timeout: Duration },
    /// Stop and remove the container with its volumes; with `keep_warm_in: Some(pool)`, stop it
    /// and keep it in that pool's warm pool (reported as `WarmPoolEntered`).
    RemoveWorker {
        node: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep_warm_in: Option<String>,
    },
    /// Make a node schedulable again after a scale-down of it failed.
    Uncordon { node: String },
    /// Delete the Node object and k3s's `<node>.node-password.k3s` secret; reported as `NodeRemoved`
    /// (with the worker's `pool`).
    DeleteNode {
        node: String,
        #[serde(default = "default_pool")]
        pool: String,
    },
    /// Record a note on the Node (why it is being removed).
    AnnotateNode { node: String, text: String },
    /// Send an alert to every configured webhook (retries and backoff live in `autoscaler`).
    Notify { alert: Alert },
}

impl Command {
    /// The node the command is about, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Command::CreateWorker { name, .. } => Some(name),
            Command::CordonAndTaint { node }
            | Command::Drain { node, .. }
            | Command::RemoveWorker { node, .. }
            | Command::DeleteNode { node, .. }
            | Command::Uncordon { node }
            | Command::AnnotateNode { node, .. } => Some(node),
            Command::Notify { .. } => None,
        }
    }

    /// Every [`Command::kind`], in declaration order.
    pub const KINDS: [&'static str; 8] = [
        "create_worker",
        "cordon_and_taint",
        "drain",
        "remove_worker",
        "delete_node",
        "uncordon",
        "annotate_node",
        "notify",
    ];

    /// A short stable name (`create_worker`, …) for ids, logs and metrics; one of [`Command::KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateWorker { .. } => "create_worker",
            Command::CordonAndTaint { .. } => "cordon_and_taint",
            Command::Drain { .. } => "drain",
            Command::RemoveWorker { .. } => "remove_worker",
            Command::DeleteNode { .. } => "delete_node",
            Command::Uncordon { .. } => "uncordon",
            Command::AnnotateNode { .. } => "annotate_node",
            Command::Notify { .. } => "notify",
        }
    }
}

fn default_pool() -> String {
    crate::policy::DEFAULT_POOL.to_string()
}

/// A command together with the event its resulting facts must name as their cause.
#[derive(Debug, Clone, PartialEq)]
pub struct Issued {
    pub command: Command,
    /// The event the executor's facts are `caused_by` (keeps every chain explainable).
    pub cause: Envelope,
}

impl Issued {
    /// A stable id for this command (the id its fact will have): an executor can skip a command whose
    /// fact is already on the stream, so a redelivered input does not repeat an effect.
    pub fn id(&self) -> Uuid {
        self.fact(
            crate::executor::SOURCE,
            Event::NodeRemoved(bus::event::NodeRemoved {
                node_name: String::new(),
                pool: None,
            }),
            self.cause.timestamp,
        )
        .event_id
    }

    /// A fact reported by the executor about this command, with a deterministic id
    /// (`executor:<cause>:<command>:<node>`), so a retried command reports the same fact once.
    pub fn fact(&self, source: &str, event: impl Into<Event>, now: DateTime<Utc>) -> Envelope {
        let key = format!(
            "{source}:{}:{}:{}",
            self.cause.event_id,
            self.command.kind(),
            self.command.node().unwrap_or("")
        );
        Envelope::caused_by(&self.cause, source, event)
            .with_deterministic_id(&key)
            .with_timestamp(now)
    }
}

/// The result of one handler on one event (or one tick).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Events to publish, in order.
    pub events: Vec<Envelope>,
    /// Commands for the executor, in order (for one node, in the order they must run).
    pub commands: Vec<Issued>,
}

impl Outcome {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.commands.is_empty()
    }

    /// Appends another outcome.
    pub fn extend(&mut self, other: Outcome) {
        self.events.extend(other.events);
        self.commands.extend(other.commands);
    }
}

/// What an output is caused by: an input envelope, or a remembered one (for timer-driven outputs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cause {
    pub event_id: Uuid,
    pub correlation_id: Uuid,
    pub metadata: bus::Metadata,
}

impl From<&Envelope> for Cause {
    fn from(e: &Envelope) -> Self {
        Self {
            event_id: e.event_id,
            correlation_id: e.correlation_id,
            metadata: e.metadata.clone(),
        }
    }
}

/// Builds handler outputs with causation and deterministic ids:
/// `<handler>:<input_event_id>:<index>` (or a caller-chosen key for outputs that must collapse
/// across different inputs, e.g. one `MinimumNodesRestored` per violation).
pub(crate) struct Emitter<'a> {
    handler: &'static str,
    cause: &'a Cause,
    now: DateTime<Utc>,
    outcome: Outcome,
    next: usize,
    tag: String,
}

impl<'a> Emitter<'a> {
    pub(crate) fn new(handler: &'static str, cause: &'a Cause, now: DateTime<Utc>) -> Self {
        Self {
            handler,
            cause,
            now,
            outcome: Outcome::default(),
            next: 0,
            tag: String::new(),
        }
    }

    /// Adds `tag` to the ids' keys (timer outputs: the same cause, a different model position).
    pub(crate) fn with_tag(mut self, tag: &str) -> Self {
        self.tag = format!(":{tag}");
        self
    }

    fn envelope(&self, parent: &Cause, event: Event, key: &str) -> Envelope {
        Envelope {
            event_id: Uuid::nil(),
            timestamp: bus::envelope::truncate_millis(self.now),
            source: self.handler.to_string(),
            event,
            metadata: parent.metadata.clone(),
            correlation_id: parent.correlation_id,
            causation_id: Some(parent.event_id),
            v: bus::envelope::SCHEMA_VERSION,
        }
        .with_deterministic_id(key)
    }

    /// Emits an event caused by the input; returns it (to chain a follow-up or a command on it).
    pub(crate) fn emit(&mut self, event: impl Into<Event>) -> Envelope {
        let key = format!(
            "{}:{}{}:{}",
            self.handler, self.cause.event_id, self.tag, self.next
        );
        self.next += 1;
        let env = self.envelope(self.cause, event.into(), &key);
        self.outcome.events.push(env.clone());
        env
    }

    /// Emits an event with an explicit de-duplication key.
    pub(crate) fn emit_keyed(&mut self, event: impl Into<Event>, key: &str) -> Envelope {
        let key = format!("{}:{key}", self.handler);
        let env = self.envelope(self.cause, event.into(), &key);
        self.outcome.events.push(env.clone());
        env
    }

    /// Emits an event with an explicit de-duplication key, caused by `parent` rather than the input.
    pub(crate) fn emit_keyed_after(
        &mut self,
        parent: &Cause,
        event: impl Into<Event>,
        key: &str,
    ) -> Envelope {
        let key = format!("{}:{key}", self.handler);
        let env = self.envelope(parent, event.into(), &key);
        self.outcome.events.push(env.clone());
        env
    }

    /// Emits an event caused by an earlier output (`parent`), continuing its chain.
    pub(crate) fn emit_after(&mut self, parent: &Envelope, event: impl Into<Event>) -> Envelope {
        let key = format!(
            "{}:{}{}:{}",
            self.handler, self.cause.event_id, self.tag, self.next
        );
        self.next += 1;
        let env = self.envelope(&Cause::from(parent), event.into(), &key);
        self.outcome.events.push(env.clone());
        env
    }

    /// Issues a command whose facts will be caused by `cause`.
    pub(crate) fn command(&mut self, command: Command, cause: &Envelope) {
        self.outcome.commands.push(Issued {
            command,
            cause: cause.clone(),
        });
    }

    /// The outputs.
    pub(crate) fn finish(self) -> Outcome {
        self.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_lists_the_kind_of_every_command() {
        let node = || "n".to_string();
        let violation = Envelope::root(
            "test",
            bus::event::MinimumNodesViolation {
                current_workers: 1,
                min_workers: 2,
                violation_time: DateTime::<Utc>::UNIX_EPOCH,
            },
            bus::Metadata::default(),
        );
        let alert = crate::alerts::alert_for(&violation).expect("a violation alerts");
        let all = [
            Command::CreateWorker {
                name: node(),
                requested_by: Uuid::nil(),
                pool: "default".into(),
            },
            Command::CordonAndTaint { node: node() },
            Command::Drain {
                node: node(),
                timeout: Duration::from_secs(1),
            },
            Command::RemoveWorker {
                node: node(),
                keep_warm_in: None,
            },
            Command::DeleteNode {
                node: node(),
                pool: "default".into(),
            },
            Command::Uncordon { node: node() },
            Command::AnnotateNode {
                node: node(),
                text: String::new(),
            },
            Command::Notify { alert },
        ];
        let mut kinds: Vec<&str> = all.iter().map(Command::kind).collect();
        let mut listed = Command::KINDS.to_vec();
        kinds.sort_unstable();
        listed.sort_unstable();
        assert_eq!(kinds, listed);
    }
}
