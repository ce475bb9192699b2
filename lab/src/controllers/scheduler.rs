//! The scheduler: binds pending pods to Ready, schedulable nodes whose free allocatable covers their
//! requests and whose NoSchedule/NoExecute taints they tolerate; marks the rest `PodScheduled=False`,
//! reason `Unschedulable`, with the scheduler's kind of message.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{json, Value};

use super::{events, id, log_err};

/// The event source.
const COMPONENT: &str = "default-scheduler";
use crate::objects::{
    node_allocatable, node_is_ready, pod_is_terminal, pod_requests, set_condition, tolerates,
};
use crate::resources::Kind;
use crate::store::Store;

/// What is already bound to a node.
#[derive(Default, Clone, Copy)]
struct Used {
    cpu: u64,
    mem: u64,
    pods: u64,
}

/// Why a node cannot take a pod (the words of kube-scheduler's message).
fn misfit(node: &Value, used: Used, pod: &Value) -> Option<String> {
    if !node_is_ready(node) {
        return Some("node(s) were not ready".into());
    }
    if node["spec"]["unschedulable"].as_bool().unwrap_or(false) {
        return Some("node(s) were unschedulable".into());
    }
    for t in node["spec"]["taints"].as_array().into_iter().flatten() {
        let effect = t["effect"].as_str().unwrap_or("");
        if (effect == "NoSchedule" || effect == "NoExecute") && !tolerates(pod, t) {
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t["key"].as_str().unwrap_or(""),
                t["value"].as_str().unwrap_or("")
            ));
        }
    }
    if let Some(sel) = pod["spec"]["nodeSelector"].as_object() {
        let labels = &node["metadata"]["labels"];
        if sel.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return Some("node(s) didn't match Pod's node affinity/selector".into());
        }
    }
    let (cpu, mem, max_pods) = node_allocatable(node);
    let (req_cpu, req_mem) = pod_requests(pod);
    if used.pods + 1 > max_pods {
        return Some("Too many pods".into());
    }
    if used.cpu + req_cpu > cpu {
        return Some("Insufficient cpu".into());
    }
    if used.mem + req_mem > mem {
        return Some("Insufficient memory".into());
    }
    None
}

/// How full a node would be with the pod (lower is better: spread, like LeastAllocated).
fn score(node: &Value, used: Used, pod: &Value) -> f64 {
    let (cpu, mem, _) = node_allocatable(node);
    let (req_cpu, req_mem) = pod_requests(pod);
    let frac = |u: u64, r: u64, a: u64| {
        if a == 0 {
            1.0
        } else {
            (u + r) as f64 / a as f64
        }
    };
    frac(used.cpu, req_cpu, cpu) + frac(used.mem, req_mem, mem)
}

/// One scheduling pass.
pub fn reconcile(store: &Store) {
    let (nodes, _) = store.list(Kind::Node, None);
    let (mut pods, _) = store.list(Kind::Pod, None);
    let mut used: HashMap<String, Used> = HashMap::new();
    for p in &pods {
        if let Some(n) = p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            if !pod_is_terminal(p) {
                let (c, m) = pod_requests(p);
                let u = used.entry(n.to_string()).or_default();
                u.cpu += c;
                u.mem += m;
                u.pods += 1;
            }
        }
    }
    pods.sort_by(|a, b| {
        a["metadata"]["creationTimestamp"]
            .as_str()
            .cmp(&b["metadata"]["creationTimestamp"].as_str())
    });
    for pod in pods.iter().filter(|p| needs_scheduling(p)) {
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(&Arc<Value>, f64)> = None;
        for node in &nodes {
            let name = node["metadata"]["name"].as_str().unwrap_or("");
            let u = used.get(name).copied().unwrap_or_default();
            match misfit(node, u, pod) {
                Some(r) => *reasons.entry(r).or_default() += 1,
                None => {
                    let s = score(node, u, pod);
                    if best.is_none_or(|(_, b)| s < b) {
                        best = Some((node, s));
                    }
                }
            }
        }
        let (ns, pod_name) = id(pod);
        match best {
            Some((node, _)) => {
                let node_name = node["metadata"]["name"].as_str().unwrap_or("").to_string();
                let bound = log_err(
                    "bind pod",
                    store.update(Kind::Pod, ns, pod_name, None, |old| {
                        let mut p = old.clone();
                        p["spec"]["nodeName"] = json!(node_name);
                        set_condition(&mut p, "PodScheduled", "True", "", "", json!({}));
                        Ok(p)
                    }),
                );
                if let Some(bound) = bound {
                    tracing::debug!(pod = pod_name, namespace = ns, node = %node_name, "bound");
                    let message = format!("Successfully assigned {ns}/{pod_name} to {node_name}");
                    events::record(store, &bound, false, "Scheduled", &message, COMPONENT);
                    let (c, m) = pod_requests(pod);
                    let u = used.entry(node_name).or_default();
                    u.cpu += c;
                    u.mem += m;
                    u.pods += 1;
                }
            }
            None => {
                let message = if nodes.is_empty() {
                    "no nodes available to schedule pods".to_string()
                } else {
                    let parts: Vec<String> =
                        reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                    format!(
                        "0/{} nodes are available: {}.",
                        nodes.len(),
                        parts.join(", ")
                    )
                };
                let already = pod["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["type"] == "PodScheduled"
                            && c["status"] == "False"
                            && c["message"] == message.as_str()
                    });
                if !already {
                    events::record(store, pod, true, "FailedScheduling", &message, COMPONENT);
                }
                log_err(
                    "mark pod unschedulable",
                    store.update(Kind::Pod, ns, pod_name, None, |old| {
                        let mut p = old.clone();
                        set_condition(
                            &mut p,
                            "PodScheduled",
                            "False",
                            "Unschedulable",
                            &message,
                            json!({}),
                        );
                        Ok(p)
                    }),
                );
            }
        }
    }
}

fn needs_scheduling(pod: &Value) -> bool {
    pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
        && pod["metadata"]["deletionTimestamp"].is_null()
        && !pod_is_terminal(pod)
}
