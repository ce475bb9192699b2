//! Events the controllers record, so `kubectl describe` and `kubectl get events` tell what happened
//! (FailedScheduling, Scheduled, NodeNotReady, SuccessfulCreate, …). Recorded on transitions only, so
//! a level-triggered pass that changes nothing records nothing.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::resources::Kind;
use crate::store::Store;
use crate::time::{self, now_rfc3339};

/// How long events are kept (the API server's default `--event-ttl`).
pub const EVENT_TTL: chrono::Duration = chrono::Duration::hours(1);

/// Records an event about `involved` from `component`.
pub fn record(
    store: &Store,
    involved: &Value,
    warning: bool,
    reason: &str,
    message: &str,
    component: &str,
) {
    let meta = &involved["metadata"];
    let name = meta["name"].as_str().unwrap_or("");
    // Events about cluster-scoped objects (nodes) live in `default`, as the real ones do.
    let ns = meta["namespace"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let now = now_rfc3339();
    let event = json!({
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": {
            "apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": name,
            "namespace": meta["namespace"], "uid": meta["uid"], "resourceVersion": meta["resourceVersion"],
        },
        "reason": reason,
        "message": message,
        "type": if warning { "Warning" } else { "Normal" },
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    if let Err(e) = store.create(Kind::Event, ns, event) {
        tracing::debug!(error = %e, reason, "recording an event failed");
    }
}

/// Deletes events older than [`EVENT_TTL`].
pub fn expire(store: &Store, now: DateTime<Utc>) {
    for e in store.list(Kind::Event, None).0 {
        let last = e["lastTimestamp"].as_str().and_then(time::parse);
        if last.is_some_and(|t| now - t > EVENT_TTL) {
            let ns = e["metadata"]["namespace"].as_str().unwrap_or("");
            let _ = store.delete(
                Kind::Event,
                ns,
                e["metadata"]["name"].as_str().unwrap_or(""),
            );
        }
    }
}
