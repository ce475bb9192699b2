//! The decision core of k3s-autoscaler: pure rules over (model, event, policy, now), no I/O.
//!
//! Map of the crate (the architecture as a whole is described in `docs/ARCHITECTURE.md`):
//! - [`model`]: [`Model`], the projection every handler reads — a pure fold over the whole stream,
//!   its state grouped by concern (workers, pending pods, streaks, decisions, …);
//! - [`policy`]: [`Policy`], the knobs (defaults of `config.yaml`); `autoscaler` maps its settings onto it;
//! - [`command`]: [`Outcome`] (events + [`Command`]s) and how outputs get causation and deterministic ids;
//! - [`codes`]: the reason codes, error prefixes and alert keys handlers write and the model reads;
//! - the handlers, one per file: [`metrics_listener`] (samples → resource events with
//!   hysteresis), [`engine`] (ScalingDecisionEngine), [`minimum`] (MinimumNodeEnforcer),
//!   [`node_manager`] (per-node state machine), [`sync`] (StateSynchronizer and trigger de-duplication),
//!   [`alerts`] (AlertManager, payloads, redaction);
//! - [`binpack`]: how many workers pending pods need when a report lists none (pod slots only);
//! - [`buffer`]: capacity buffers (spare workers or headroom kept per pool ahead of demand);
//!   [`schedule`]: scheduled minimums (cron windows that raise a minimum);
//! - [`scheduling`]: the scheduling simulation over node pools (predicates, scale-up with
//!   expanders, scale-down), pure and deterministic;
//! - [`traits`]: the async I/O boundary `autoscaler` implements, with fakes; [`executor`]: commands →
//!   trait calls → facts;
//! - [`simulate`]: a whole-system driver with a [`simulate::SimulatedWorld`] (tests, what-if);
//! - [`explain`]: a causation chain as readable lines; [`replay`]: what-if replays.
//!
//! Choices worth knowing (each documented where it is made):
//! - handlers act on the model *with* the event folded; rule time is the event's timestamp;
//! - output ids are `v5(<handler>:<input id>:<n>)`, or keyed by what they resolve (one
//!   `MinimumNodesRestored` per violation, one `ScalingActionCompleted` per action), so redelivery and
//!   several replicas publish each output once;
//! - a decision names an absolute target; the NodeManager acts only on the first decision of a type
//!   (and pool) per cause and only on the event that made a node's transition (single-flight);
//! - pending pods are cleared by a report of 0, by a completed scale-up started after them, or after
//!   `pending_pods_ttl` ([`model`]); pods without requests count as one pod slot each ([`binpack`]);
//! - workers being created, and those Ready for less than `new_worker_grace` while pods a scale-up
//!   made them for are still pending, count as capacity for pending pods ([`engine::up_need`]), which
//!   sizes listed pods with the [`scheduling`] simulation over the pools;
//! - `NodeReady` comes from the node watcher as a root, so a scale-up's `ScalingActionCompleted` is
//!   caused by it (the chain back to the decision is the worker's `ScaleUpStarted`);
//! - the executor reports `NodeCordoned`, `NodeDrained`, `NodeRemoved` after acting; the NodeManager
//!   issues the next step on each report ([`executor`]).
//!
//! Runtime contract: fold every event into the model in stream order ([`Model::apply`]); call a
//! handler with a model that has folded the event it handles; publish the outcome's events (their ids
//! are deterministic, so a redelivered input republishes nothing new) and hand its commands to the
//! executor (leader only); call `tick` on the leader on a timer.

pub mod alerts;
pub mod binpack;
pub mod buffer;
pub mod codes;
pub mod command;
pub mod engine;
pub mod executor;
pub mod explain;
pub mod metrics_listener;
pub mod minimum;
pub mod model;
pub mod node_manager;
pub mod policy;
pub mod replay;
pub mod schedule;
pub mod scheduling;
pub mod simulate;
pub mod sync;
pub mod traits;

use bus::Envelope;
use chrono::{DateTime, Utc};

pub use alerts::AlertManager;
pub use command::{Command, Issued, Outcome};
pub use engine::ScalingDecisionEngine;
pub use metrics_listener::MetricsListener;
pub use minimum::MinimumNodeEnforcer;
pub use model::{Model, WorkerState};
pub use node_manager::NodeManager;
pub use policy::Policy;
pub use sync::{StateSynchronizer, SyncTriggers};

/// The handlers, by their consumer-group names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handler {
    MetricsListener,
    ScalingDecisionEngine,
    NodeManager,
    MinimumNodeEnforcer,
    StateSynchronizer,
    AlertManager,
}

impl Handler {
    /// All handlers, in the order a single-threaded driver runs them on one event.
    pub const ALL: [Handler; 6] = [
        Handler::MetricsListener,
        Handler::ScalingDecisionEngine,
        Handler::NodeManager,
        Handler::MinimumNodeEnforcer,
        Handler::StateSynchronizer,
        Handler::AlertManager,
    ];

    /// The consumer-group name, which is also the `source` of its events.
    pub fn name(self) -> &'static str {
        match self {
            Handler::MetricsListener => metrics_listener::HANDLER,
            Handler::ScalingDecisionEngine => engine::HANDLER,
            Handler::NodeManager => node_manager::HANDLER,
            Handler::MinimumNodeEnforcer => minimum::HANDLER,
            Handler::StateSynchronizer => sync::HANDLER,
            Handler::AlertManager => alerts::HANDLER,
        }
    }

    /// The handler named `name` (as in `events.handlers`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.name() == name)
    }

    /// Handles one event; `model` must have folded it.
    pub fn handle(
        self,
        model: &Model,
        event: &Envelope,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> Outcome {
        // An open window of a scheduled minimum raises the minimum every rule reads; the
        // enforcer reads the configured one (a window is no violation) and the windows themselves.
        let effective = model.schedules.effective(policy);
        let raised = &*effective;
        match self {
            Handler::MetricsListener => MetricsListener.handle(model, event, raised, now),
            Handler::ScalingDecisionEngine => {
                ScalingDecisionEngine.handle(model, event, raised, now)
            }
            Handler::NodeManager => NodeManager.handle(model, event, raised, now),
            Handler::MinimumNodeEnforcer => MinimumNodeEnforcer.handle(model, event, policy, now),
            Handler::StateSynchronizer => StateSynchronizer.handle(model, event, raised, now),
            Handler::AlertManager => AlertManager.handle(model, event, raised, now),
        }
    }

    /// Timer work (leader only): the minimum check and provisioning timeouts/retries.
    pub fn tick(self, model: &Model, policy: &Policy, now: DateTime<Utc>) -> Outcome {
        let effective = model.schedules.effective(policy);
        match self {
            Handler::NodeManager => NodeManager.tick(model, &effective, now),
            Handler::MinimumNodeEnforcer => MinimumNodeEnforcer.tick(model, policy, now),
            _ => Outcome::default(),
        }
    }

    /// How often [`Handler::tick`] should run, if it has timer work.
    pub fn tick_interval(self, policy: &Policy) -> Option<std::time::Duration> {
        match self {
            Handler::MinimumNodeEnforcer => Some(policy.enforcement.min_violation_check_interval),
            Handler::NodeManager => Some(std::time::Duration::from_secs(5)),
            _ => None,
        }
    }
}

/// The `source` values of the handlers' own events (to tell decisions from observations).
pub fn is_handler_source(source: &str) -> bool {
    Handler::ALL.iter().any(|h| h.name() == source)
}

/// What one replica does with one event: fold it, then run `handlers` on it (in the given order).
/// Returns the outputs of all of them; an event already folded (a redelivery) is handled again, and
/// its outputs carry the same ids as the first time.
pub fn step(
    model: &mut Model,
    event: &Envelope,
    policy: &Policy,
    now: DateTime<Utc>,
    handlers: &[Handler],
) -> Outcome {
    model.apply(event);
    let mut out = Outcome::default();
    for h in handlers {
        out.extend(h.handle(model, event, policy, now));
    }
    out
}
