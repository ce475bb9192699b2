//! [`GroupRunner`]: one handler of the decision core run as the handler of its bus consumer group.
//!
//! For each delivery: fold the stream up to and including the delivered entry, decide (pure), carry
//! out the decision's commands through the real adapters (unless this is a dry run), and return the
//! decision's events plus the executor's facts — which the bus publishes atomically with the ack.
//!
//! A decision with commands is published *before* they run (creating or draining a worker takes
//! seconds): other handlers then see e.g. `ScaleUpStarted`'s workers as being created instead of
//! deciding the same thing again meanwhile. It is published under the key the ack script uses for its
//! outputs (`event:<id>`, ids are deterministic), so returning it again with the facts, or deciding it
//! again after a crash, writes it once.
//!
//! An uncordon that fails transiently (the API server away) after a failed drain would leave the node
//! cordoned while the record says Ready: nothing else would uncordon it. The delivery is then failed
//! with [`HandlerError::Retry`] after publishing what it produced, so the bus delivers it again (1 s,
//! doubling to 30 s, up to `max_deliveries`, then the dead-letter stream names the node). The
//! redelivery decides on the newer record: the uncordon is issued again only while the failure is
//! still the node's last transition, so a later scale-down of the node is never undone.

use std::sync::Arc;

use bus::{Delivery, Envelope, HandlerError};
use chrono::Utc;
use handlers::{Model, Policy};
use tokio::sync::Mutex;

use super::adapters::Adapters;
use super::projection::{Fold, Projection};
use crate::metrics::Metrics;

impl Fold for Model {
    fn apply(&mut self, envelope: &Envelope) {
        Model::apply(self, envelope);
    }
}

/// The consumer-group adapter of one decision-core handler: it folds each delivery into its own view
/// of history, has the handler decide, publishes the decision ahead of its commands, executes them
/// through the [`Adapters`] and returns the outputs for the bus to publish with the ack.
pub struct GroupRunner {
    pub handler: handlers::Handler,
    pub policy: Arc<Policy>,
    /// Held for the whole delivery: deliveries of one group are decided one at a time, in order.
    pub projection: Mutex<Projection<Model>>,
    /// `None` in a dry run.
    pub adapters: Option<Arc<Adapters>>,
    /// Publishes decisions ahead of their commands.
    pub publisher: bus::RedisPublisher,
    pub metrics: Arc<Metrics>,
}

/// What [`GroupRunner::execute`] did: the facts to publish, and the failed commands that must be
/// tried again for the world to match the record.
#[derive(Debug, Default)]
pub struct Ran {
    pub facts: Vec<Envelope>,
    /// `<command> <node>: <error>` of each such failure.
    pub retry: Vec<String>,
}

/// Whether a command that reports no fact must be retried when it fails: an uncordon is the only
/// step that puts a node back after a failed drain, and the record already says Ready.
pub fn must_retry(command: &handlers::Command, error: &handlers::traits::ActionError) -> bool {
    matches!(command, handlers::Command::Uncordon { .. }) && error.retryable
}

impl GroupRunner {
    /// Runs `issued` through the adapters (or only logs them in a dry run).
    pub async fn execute(
        adapters: Option<&Adapters>,
        handler: &str,
        issued: &[handlers::Issued],
    ) -> Ran {
        let mut ran = Ran::default();
        if issued.is_empty() {
            return ran;
        }
        let Some(adapters) = adapters else {
            for i in issued {
                tracing::info!(
                    handler,
                    command = i.command.kind(),
                    node = i.command.node().unwrap_or(""),
                    "dry run: not executed"
                );
            }
            return ran;
        };
        let done = handlers::executor::execute(
            issued,
            &adapters.workers,
            &adapters.nodes,
            &adapters.alerts,
            Utc::now(),
        )
        .await;
        for (command, error) in &done.unreported {
            let node = command.node().unwrap_or("");
            let retry = must_retry(command, error);
            tracing::warn!(handler, command = command.kind(), node, error = %error, retry, "command failed");
            if retry {
                ran.retry
                    .push(format!("{} {node}: {error}", command.kind()));
            }
        }
        ran.facts = done.facts;
        ran
    }
}

impl bus::GroupHandler for GroupRunner {
    async fn handle(&self, delivery: &Delivery) -> Result<Vec<Envelope>, HandlerError> {
        let mut projection = self.projection.lock().await;
        projection
            .catch_up_through(&delivery.stream_id, &delivery.envelope)
            .await
            .map_err(HandlerError::retry)?;
        let outcome = self.handler.handle(
            projection.model(),
            &delivery.envelope,
            &self.policy,
            Utc::now(),
        );
        let name = self.handler.name();
        let mut events = outcome.events;
        if self.adapters.is_some() && !outcome.commands.is_empty() {
            for e in &events {
                self.publisher
                    .publish_idempotent(&format!("event:{}", e.event_id), e)
                    .await
                    .map_err(HandlerError::retry)?;
            }
        }
        let ran = Self::execute(self.adapters.as_deref(), name, &outcome.commands).await;
        events.extend(ran.facts);
        mark_dry_run(self.adapters.is_none(), &mut events);
        if !ran.retry.is_empty() {
            // What this delivery produced is kept (ids are deterministic, so the redelivery writes
            // it once); the delivery itself fails, so the bus delivers it again.
            for e in &events {
                self.publisher
                    .publish_idempotent(&format!("event:{}", e.event_id), e)
                    .await
                    .map_err(HandlerError::retry)?;
                self.metrics.observe_published(&e.event);
            }
            return Err(HandlerError::retry(format!(
                "to be retried: {}",
                ran.retry.join("; ")
            )));
        }
        for e in &events {
            self.metrics.observe_published(&e.event);
        }
        if !events.is_empty() {
            tracing::debug!(
                handler = name,
                input = delivery.envelope.event_type(),
                outputs = events.len(),
                "decided"
            );
        }
        Ok(events)
    }
}

/// In a dry run every decision says so, whatever its cause carried.
pub fn mark_dry_run(dry_run: bool, events: &mut [Envelope]) {
    if dry_run {
        for e in events {
            e.metadata.dry_run = true;
        }
    }
}
