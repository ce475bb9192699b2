//! The node-lifecycle controller: a node whose heartbeats (its Lease in `kube-node-lease`, or its Ready
//! condition's `lastHeartbeatTime`) stop for the grace period becomes Ready=Unknown with the
//! `node.kubernetes.io/unreachable` NoSchedule and NoExecute taints, and its pods not Ready; after the
//! eviction timeout (or a pod's own `tolerationSeconds`) its pods are deleted. A heartbeat again
//! removes the taints.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{events, id, log_err, ControllerConfig};

/// The event source.
const COMPONENT: &str = "node-controller";
use crate::objects::{
    condition_status, set_condition, tolerates, toleration_seconds, UNREACHABLE_TAINT,
};
use crate::resources::Kind;
use crate::store::Store;
use crate::time;

/// The namespace of node heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The last sign of life of a node.
pub fn last_heartbeat(store: &Store, node: &Value) -> Option<DateTime<Utc>> {
    let name = node["metadata"]["name"].as_str().unwrap_or("");
    let lease = store
        .get(Kind::Lease, NODE_LEASE_NAMESPACE, name)
        .and_then(|l| l["spec"]["renewTime"].as_str().and_then(time::parse));
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["lastHeartbeatTime"].as_str().and_then(time::parse));
    let created = node["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(time::parse);
    [lease, ready, created].into_iter().flatten().max()
}

fn has_taint(node: &Value, key: &str, effect: &str) -> bool {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["key"] == key && t["effect"] == effect)
}

/// One pass over every node.
pub fn reconcile(store: &Store, config: &ControllerConfig, now: DateTime<Utc>) {
    let (nodes, _) = store.list(Kind::Node, None);
    let grace = chrono::Duration::from_std(config.node_monitor_grace)
        .unwrap_or(chrono::Duration::seconds(40));
    for node in &nodes {
        let (_, name) = id(node);
        let silent = last_heartbeat(store, node).is_none_or(|hb| now - hb > grace);
        let unreachable = has_taint(node, UNREACHABLE_TAINT, "NoExecute");
        if silent {
            if condition_status(node, "Ready") != Some("Unknown") || !unreachable {
                tracing::info!(
                    node = name,
                    "node stopped posting status: marking it NotReady"
                );
                let message = format!("Node {name} status is now: NodeNotReady");
                events::record(store, node, false, "NodeNotReady", &message, COMPONENT);
                log_err(
                    "mark node unknown",
                    store.update(Kind::Node, "", name, None, |old| Ok(mark_unknown(old, now))),
                );
                mark_pods_not_ready(store, name);
            }
        } else if condition_status(node, "Ready") == Some("True")
            && (unreachable || has_taint(node, UNREACHABLE_TAINT, "NoSchedule"))
        {
            tracing::info!(
                node = name,
                "node is posting status again: removing the unreachable taints"
            );
            log_err(
                "untaint node",
                store.update(Kind::Node, "", name, None, |old| {
                    let mut n = old.clone();
                    if let Some(t) = n["spec"]["taints"].as_array_mut() {
                        t.retain(|t| t["key"] != UNREACHABLE_TAINT);
                    }
                    Ok(n)
                }),
            );
        }
    }
    evict_from_unreachable(store, config, now);
}

fn mark_unknown(old: &Value, now: DateTime<Utc>) -> Value {
    let mut n = old.clone();
    let types: Vec<String> = n["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str().map(String::from))
        .collect();
    let types = if types.iter().any(|t| t == "Ready") {
        types
    } else {
        vec!["Ready".to_string()]
    };
    for t in types {
        let heartbeat = n["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t.as_str()))
            .map(|c| c["lastHeartbeatTime"].clone())
            .unwrap_or(Value::Null);
        set_condition(
            &mut n,
            &t,
            "Unknown",
            "NodeStatusUnknown",
            "Kubelet stopped posting node status.",
            json!({"lastHeartbeatTime": heartbeat}),
        );
    }
    if !n["spec"]["taints"].is_array() {
        n["spec"]["taints"] = json!([]);
    }
    let added = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for effect in ["NoSchedule", "NoExecute"] {
        if !has_taint(&n, UNREACHABLE_TAINT, effect) {
            if let Some(t) = n["spec"]["taints"].as_array_mut() {
                let mut taint = json!({"key": UNREACHABLE_TAINT, "effect": effect});
                if effect == "NoExecute" {
                    taint["timeAdded"] = json!(added);
                }
                t.push(taint);
            }
        }
    }
    n
}

fn mark_pods_not_ready(store: &Store, node: &str) {
    let (pods, _) = store.list(Kind::Pod, None);
    for p in pods.iter().filter(|p| p["spec"]["nodeName"] == node) {
        if condition_status(p, "Ready") == Some("True") {
            let (ns, name) = id(p);
            log_err(
                "mark pod not ready",
                store.update(Kind::Pod, ns, name, None, |old| {
                    let mut p = old.clone();
                    set_condition(&mut p, "Ready", "False", "NodeNotReady", "", json!({}));
                    if let Some(cs) = p["status"]["containerStatuses"].as_array_mut() {
                        for c in cs {
                            c["ready"] = json!(false);
                        }
                    }
                    Ok(p)
                }),
            );
        }
    }
}

fn evict_from_unreachable(store: &Store, config: &ControllerConfig, now: DateTime<Utc>) {
    let (nodes, _) = store.list(Kind::Node, None);
    let (pods, _) = store.list(Kind::Pod, None);
    for node in &nodes {
        let Some(taint) = node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["key"] == UNREACHABLE_TAINT && t["effect"] == "NoExecute")
        else {
            continue;
        };
        let added = taint["timeAdded"]
            .as_str()
            .and_then(time::parse)
            .unwrap_or(now);
        let (_, node_name) = id(node);
        for p in pods.iter().filter(|p| p["spec"]["nodeName"] == node_name) {
            let tolerated_for = match toleration_seconds(p, UNREACHABLE_TAINT) {
                Some(s) => chrono::Duration::seconds(s),
                // Tolerating the taint with no time set: stays forever.
                None if tolerates(p, taint) => continue,
                None => chrono::Duration::from_std(config.pod_eviction_timeout)
                    .unwrap_or(chrono::Duration::seconds(300)),
            };
            if now - added >= tolerated_for {
                let (ns, name) = id(p);
                tracing::info!(
                    pod = name,
                    namespace = ns,
                    node = node_name,
                    "evicting pod from unreachable node"
                );
                let message = format!("Marking for deletion Pod {ns}/{name}");
                events::record(
                    store,
                    p,
                    false,
                    "TaintManagerEviction",
                    &message,
                    "taint-eviction-controller",
                );
                log_err(
                    "evict pod from unreachable node",
                    store.delete(Kind::Pod, ns, name),
                );
            }
        }
    }
}
