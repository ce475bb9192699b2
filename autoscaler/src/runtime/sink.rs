//! Where watchers and pollers put their observations: a channel drained into the stream.
//!
//! Observations are published with `publish_idempotent` keyed by their event id, so an event that two
//! replicas both derived deterministically (same v5 id), or that a retry sends twice, lands once.

use std::sync::Arc;
use std::time::Duration;

use bus::{Envelope, RedisPublisher};
use primitives::Backoff;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Room for bursts (a re-list after a watch restart) without blocking watchers.
pub const SINK_CAPACITY: usize = 1024;

/// Drains `rx` into the stream until every sender is gone. A failed publish is retried with backoff:
/// an observation is not dropped because Redis restarted.
pub async fn drain(
    mut rx: mpsc::Receiver<Envelope>,
    publisher: RedisPublisher,
    metrics: Arc<Metrics>,
) {
    while let Some(envelope) = rx.recv().await {
        let key = format!("event:{}", envelope.event_id);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match publisher.publish_idempotent(&key, &envelope).await {
                Ok(Some(id)) => {
                    metrics.observe_published(&envelope.event);
                    tracing::debug!(stream_id = %id, event_type = envelope.event_type(), "observation published");
                    break;
                }
                Ok(None) => {
                    tracing::debug!(event_id = %envelope.event_id, "observation already published");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, event_type = envelope.event_type(), "cannot publish observation; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}
