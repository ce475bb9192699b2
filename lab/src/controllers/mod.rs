//! The controllers inside `lab serve`. One task runs them in order after every change (and on a short
//! resync tick, for the time-based ones): each is a level-triggered pass over the whole store that
//! writes only what differs, so a pass that changes nothing produces no new events and the loop settles.
//!
//! The passes: [`scheduler`] (binds pending pods as kube-scheduler's filters allow), [`deployment`] and
//! [`replicaset`] (pods for their templates), [`node_lifecycle`] (NotReady when heartbeats stop, taints),
//! [`garbage`] (orphaned pods and owned objects), [`disruption_budget`] (PDB status), [`events`] (the
//! Events they record for `kubectl describe`).

pub mod deployment;
pub mod disruption_budget;
pub mod events;
pub mod garbage;
pub mod node_lifecycle;
pub mod replicaset;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How long a node may go without a heartbeat before it is marked NotReady (Ready=Unknown).
    pub node_monitor_grace: Duration,
    /// How long pods stay on an unreachable node before they are evicted (unless they tolerate it for
    /// a set time themselves).
    pub pod_eviction_timeout: Duration,
    /// How often the controllers run with no change to wake them.
    pub resync: Duration,
}

/// Runs every controller until `shutdown` is cancelled.
pub async fn run(store: Arc<Store>, config: ControllerConfig, shutdown: CancellationToken) {
    let mut changes = store.subscribe();
    let mut tick = tokio::time::interval(config.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            r = changes.recv() => {
                if let Err(RecvError::Closed) = r {
                    return;
                }
            }
        }
        // Coalesce a burst of changes into one pass.
        while changes.try_recv().is_ok() {}
        run_once(&store, &config, Utc::now());
    }
}

/// One pass of every controller at time `now`.
pub fn run_once(store: &Store, config: &ControllerConfig, now: DateTime<Utc>) {
    deployment::reconcile(store);
    replicaset::reconcile(store);
    node_lifecycle::reconcile(store, config, now);
    garbage::reconcile(store);
    scheduler::reconcile(store);
    disruption_budget::reconcile(store);
    events::expire(store, now);
}

/// A `metav1.LabelSelector` object as a selector string (`a=b,c in (d)`), for `Scale.status.selector`.
pub fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = sel["matchLabels"].as_object() {
        for (k, v) in m {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or("");
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match e["operator"].as_str().unwrap_or("") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

/// Name and namespace of an object.
pub(crate) fn id(obj: &Value) -> (&str, &str) {
    (
        obj["metadata"]["namespace"].as_str().unwrap_or(""),
        obj["metadata"]["name"].as_str().unwrap_or(""),
    )
}

/// Logs a failed controller write; the next pass retries it.
pub(crate) fn log_err<T>(what: &str, r: Result<T, crate::store::StoreError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::debug!(error = %e, what, "controller write failed; retrying on the next pass");
            None
        }
    }
}
