//! Reading and writing the parts of Pod and Node JSON the controllers, the agent and the API share.

use serde_json::{json, Value};

use crate::time::now_rfc3339;
use primitives::quantity;

/// The annotation overriding the CPU a Running pod makes its node use, in millicores.
pub const CPU_USAGE_ANNOTATION: &str = "lab.k3s-autoscaler/cpu-usage";
/// The annotation overriding the memory a Running pod makes its node hold, in bytes.
pub const MEMORY_USAGE_ANNOTATION: &str = "lab.k3s-autoscaler/memory-usage";
/// The label every node carries with its name: the topology key of hostname anti-affinity.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// The taint the node-lifecycle controller puts on a node whose heartbeats stopped.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// A pod's total requests: (CPU millicores, memory bytes), summed over its containers.
pub fn pod_requests(pod: &Value) -> (u64, u64) {
    let mut cpu = 0;
    let mut mem = 0;
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let req = &c["resources"]["requests"];
        cpu += req["cpu"]
            .as_str()
            .and_then(|q| quantity::cpu_millis(q).ok())
            .unwrap_or(0);
        mem += req["memory"]
            .as_str()
            .and_then(|q| quantity::memory_bytes(q).ok())
            .unwrap_or(0);
    }
    (cpu, mem)
}

/// What a Running pod uses: its annotations when set, else its requests.
pub fn pod_usage(pod: &Value) -> (u64, u64) {
    let (cpu, mem) = pod_requests(pod);
    let ann = &pod["metadata"]["annotations"];
    let cpu = ann[CPU_USAGE_ANNOTATION]
        .as_str()
        .and_then(|s| s.trim().trim_end_matches('m').parse().ok())
        .unwrap_or(cpu);
    let mem = ann[MEMORY_USAGE_ANNOTATION]
        .as_str()
        .and_then(|q| quantity::memory_bytes(q).ok())
        .unwrap_or(mem);
    (cpu, mem)
}

/// A node's allocatable (falling back to capacity): (CPU millicores, memory bytes, pods).
pub fn node_allocatable(node: &Value) -> (u64, u64, u64) {
    let status = &node["status"];
    let read = |field: &str| {
        let a = &status["allocatable"][field];
        if a.is_null() {
            status["capacity"][field].clone()
        } else {
            a.clone()
        }
    };
    let as_str = |v: Value| match v {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let cpu = quantity::cpu_millis(&as_str(read("cpu"))).unwrap_or(0);
    let mem = quantity::memory_bytes(&as_str(read("memory"))).unwrap_or(0);
    let pods = quantity::memory_bytes(&as_str(read("pods"))).unwrap_or(110);
    (cpu, mem, pods)
}

/// The status (`True`, `False`, `Unknown`) of a condition of `obj`.
pub fn condition_status<'a>(obj: &'a Value, kind: &str) -> Option<&'a str> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
}

/// Whether the node's Ready condition is True.
pub fn node_is_ready(node: &Value) -> bool {
    condition_status(node, "Ready") == Some("True")
}

/// Whether the pod's Ready condition is True (and it is not being deleted).
pub fn pod_is_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null() && condition_status(pod, "Ready") == Some("True")
}

/// Whether the pod has finished (Succeeded or Failed).
pub fn pod_is_terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded") | Some("Failed")
    )
}

/// Sets (or adds) the condition `kind` in `obj.status.conditions`; `lastTransitionTime` moves only when
/// the status changes. Extra fields (like `lastHeartbeatTime`) are merged in.
pub fn set_condition(
    obj: &mut Value,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    extra: Value,
) {
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    if !obj["status"]["conditions"].is_array() {
        obj["status"]["conditions"] = json!([]);
    }
    let Some(conds) = obj["status"]["conditions"].as_array_mut() else {
        return;
    };
    let pos = conds.iter().position(|c| c["type"] == kind);
    let transition = match pos {
        Some(i) if conds[i]["status"] == status => conds[i]["lastTransitionTime"].clone(),
        _ => json!(now_rfc3339()),
    };
    let mut cond = json!({"type": kind, "status": status, "lastTransitionTime": transition});
    if !reason.is_empty() {
        cond["reason"] = json!(reason);
    }
    if !message.is_empty() {
        cond["message"] = json!(message);
    }
    if let (Some(c), Some(e)) = (cond.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    match pos {
        Some(i) => conds[i] = cond,
        None => conds.push(cond),
    }
}

/// The controller owner reference of `obj`: (kind, name, uid).
pub fn controller_of(obj: &Value) -> Option<(&str, &str, &str)> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"].as_bool().unwrap_or(false))
        .or_else(|| obj["metadata"]["ownerReferences"].as_array()?.first())
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or(""),
                r["uid"].as_str().unwrap_or(""),
            )
        })
}

/// An owner reference to `owner` marking it the controller.
pub fn owner_reference(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Whether a pod tolerates a taint.
pub fn tolerates(pod: &Value, taint: &Value) -> bool {
    let key = taint["key"].as_str().unwrap_or("");
    let value = taint["value"].as_str().unwrap_or("");
    let effect = taint["effect"].as_str().unwrap_or("");
    pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| {
            let t_effect = t["effect"].as_str().unwrap_or("");
            if !t_effect.is_empty() && t_effect != effect {
                return false;
            }
            let t_key = t["key"].as_str().unwrap_or("");
            match t["operator"].as_str().unwrap_or("Equal") {
                "Exists" => t_key.is_empty() || t_key == key,
                _ => t_key == key && t["value"].as_str().unwrap_or("") == value,
            }
        })
}

/// How long a pod tolerates a NoExecute taint, if it sets `tolerationSeconds` for it.
pub fn toleration_seconds(pod: &Value, taint_key: &str) -> Option<i64> {
    pod["spec"]["tolerations"]
        .as_array()?
        .iter()
        .find(|t| {
            (t["key"] == taint_key || (t["key"].is_null() && t["operator"] == "Exists"))
                && (t["effect"] == "NoExecute" || t["effect"].is_null())
        })
        .and_then(|t| t["tolerationSeconds"].as_i64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_sum_over_containers_and_annotations_override_usage() {
        let pod = json!({"metadata": {"annotations": {CPU_USAGE_ANNOTATION: "700"}},
            "spec": {"containers": [
                {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(pod_requests(&pod), (1250, 64 << 20));
        assert_eq!(pod_usage(&pod), (700, 64 << 20));
    }

    #[test]
    fn tolerations_match_key_value_and_effect() {
        let taint = json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"});
        let pod = |t: Value| json!({"spec": {"tolerations": [t]}});
        assert!(tolerates(
            &pod(json!({"key": "dedicated", "value": "gpu"})),
            &taint
        ));
        assert!(tolerates(
            &pod(json!({"key": "dedicated", "operator": "Exists"})),
            &taint
        ));
        assert!(tolerates(&pod(json!({"operator": "Exists"})), &taint));
        assert!(!tolerates(
            &pod(json!({"key": "dedicated", "value": "cpu"})),
            &taint
        ));
        assert!(!tolerates(
            &pod(json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"})),
            &taint
        ));
        assert!(!tolerates(&json!({}), &taint));
    }

    #[test]
    fn set_condition_keeps_transition_time_while_status_holds() {
        let mut node = json!({});
        set_condition(&mut node, "Ready", "True", "KubeletReady", "", json!({}));
        let t0 = node["status"]["conditions"][0]["lastTransitionTime"].clone();
        set_condition(
            &mut node,
            "Ready",
            "True",
            "KubeletReady",
            "",
            json!({"lastHeartbeatTime": "x"}),
        );
        assert_eq!(node["status"]["conditions"][0]["lastTransitionTime"], t0);
        assert_eq!(node["status"]["conditions"][0]["lastHeartbeatTime"], "x");
        assert!(node_is_ready(&node));
    }
}
