//! `metrics.k8s.io/v1beta1`, computed rather than measured: a node's usage is what its Running pods
//! declare (their requests, or the `lab.k3s-autoscaler/*-usage` annotations) — exactly the load the node
//! agent burns — so `kubectl top` and metrics-based utilisation see the lab's load. NotReady nodes have
//! no metrics, as with metrics-server.

use serde_json::{json, Value};

use super::status::ApiError;
use crate::objects::{node_is_ready, pod_is_terminal, pod_usage};
use crate::resources::Kind;
use crate::store::Store;
use crate::time::now_rfc3339;

/// The group and version served.
pub const GROUP: &str = "metrics.k8s.io";
/// The version served.
pub const VERSION: &str = "v1beta1";

/// Discovery for `/apis/metrics.k8s.io/v1beta1`.
pub fn resource_list() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"), "resources": [
        {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
        {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
    ]})
}

/// Whether the pod counts towards its node's usage.
fn running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && !pod_is_terminal(pod)
        && pod["metadata"]["deletionTimestamp"].is_null()
}

fn usage(cpu_millis: u64, memory_bytes: u64) -> Value {
    json!({"cpu": format!("{}n", cpu_millis * 1_000_000), "memory": format!("{}Ki", memory_bytes / 1024)})
}

/// Answers a GET under `/apis/metrics.k8s.io/v1beta1/…` (`rest` is the path after the version).
pub fn get(store: &Store, rest: &[&str]) -> Result<Value, ApiError> {
    let now = now_rfc3339();
    let not_found = |what: &str| ApiError::not_found(format!("{what} not found"));
    match rest {
        ["nodes"] | ["nodes", _] => {
            let (nodes, _) = store.list(Kind::Node, None);
            let (pods, _) = store.list(Kind::Pod, None);
            let items: Vec<Value> = nodes
                .iter()
                .filter(|n| node_is_ready(n))
                .filter(|n| rest.len() == 1 || n["metadata"]["name"] == rest[1])
                .map(|n| {
                    let name = n["metadata"]["name"].as_str().unwrap_or("");
                    let (c, m) = pods
                        .iter()
                        .filter(|p| p["spec"]["nodeName"] == name && running(p))
                        .map(|p| pod_usage(p))
                        .fold((0, 0), |a, u| (a.0 + u.0, a.1 + u.1));
                    json!({"kind": "NodeMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
                        "metadata": {"name": name, "creationTimestamp": now, "labels": n["metadata"]["labels"]},
                        "timestamp": now, "window": "10s", "usage": usage(c, m)})
                })
                .collect();
            if rest.len() == 2 {
                return items
                    .into_iter()
                    .next()
                    .ok_or_else(|| not_found(&format!("nodemetrics \"{}\"", rest[1])));
            }
            Ok(
                json!({"kind": "NodeMetricsList", "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items}),
            )
        }
        ["pods"] | ["namespaces", _, "pods"] | ["namespaces", _, "pods", _] => {
            let ns = if rest.len() >= 3 { Some(rest[1]) } else { None };
            let (pods, _) = store.list(Kind::Pod, ns);
            let items: Vec<Value> = pods
                .iter()
                .filter(|p| running(p))
                .filter(|p| rest.len() < 4 || p["metadata"]["name"] == rest[3])
                .map(|p| {
                    let (c, m) = pod_usage(p);
                    let containers: Vec<Value> = p["spec"]["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .enumerate()
                        .map(|(i, ct)| {
                            let u = if i == 0 { usage(c, m) } else { usage(0, 0) };
                            json!({"name": ct["name"], "usage": u})
                        })
                        .collect();
                    json!({"kind": "PodMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
                        "metadata": {"name": p["metadata"]["name"], "namespace": p["metadata"]["namespace"],
                            "creationTimestamp": now, "labels": p["metadata"]["labels"]},
                        "timestamp": now, "window": "10s", "containers": containers})
                })
                .collect();
            if rest.len() == 4 {
                return items
                    .into_iter()
                    .next()
                    .ok_or_else(|| not_found(&format!("podmetrics \"{}\"", rest[3])));
            }
            Ok(
                json!({"kind": "PodMetricsList", "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items}),
            )
        }
        _ => Err(ApiError::not_found(
            "the server could not find the requested resource",
        )),
    }
}
