//! The ReplicaSet controller: keeps `spec.replicas` pods owned by each ReplicaSet, so evicted and
//! deleted pods come back Pending, and reports their readiness in its status.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{events, id, log_err};

/// The event source.
const COMPONENT: &str = "replicaset-controller";
use crate::defaults;
use crate::objects::{controller_of, owner_reference, pod_is_ready, pod_is_terminal};
use crate::resources::Kind;
use crate::store::Store;

/// One pass over every ReplicaSet.
pub fn reconcile(store: &Store) {
    let (sets, _) = store.list(Kind::ReplicaSet, None);
    let (pods, _) = store.list(Kind::Pod, None);
    for rs in &sets {
        reconcile_one(store, rs, &pods);
    }
}

fn owned_by<'a>(pods: &'a [Arc<Value>], owner: &Value) -> Vec<&'a Arc<Value>> {
    let uid = owner["metadata"]["uid"].as_str().unwrap_or("");
    pods.iter()
        .filter(|p| {
            controller_of(p).is_some_and(|(_, _, u)| u == uid)
                && p["metadata"]["deletionTimestamp"].is_null()
                && !pod_is_terminal(p)
        })
        .collect()
}

fn reconcile_one(store: &Store, rs: &Value, pods: &[Arc<Value>]) {
    let (ns, name) = id(rs);
    let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let mut owned = owned_by(pods, rs);
    let mut count = owned.len();
    while count < want {
        let template = &rs["spec"]["template"];
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": format!("{name}-"),
                "namespace": ns,
                "labels": template["metadata"]["labels"],
                "ownerReferences": [owner_reference(rs)],
            },
            "spec": template["spec"],
        });
        if template["metadata"]["annotations"].is_object() {
            pod["metadata"]["annotations"] = template["metadata"]["annotations"].clone();
        }
        defaults::apply(Kind::Pod, &mut pod);
        let Some(created) = log_err("create pod", store.create(Kind::Pod, ns, pod)) else {
            break;
        };
        let message = format!(
            "Created pod: {}",
            created["metadata"]["name"].as_str().unwrap_or("")
        );
        events::record(store, rs, false, "SuccessfulCreate", &message, COMPONENT);
        count += 1;
    }
    if owned.len() > want {
        // Remove the least useful first: unscheduled, then not ready, then the newest.
        owned.sort_by_key(|p| {
            (
                p["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty()),
                pod_is_ready(p),
                std::cmp::Reverse(
                    p["metadata"]["creationTimestamp"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                ),
            )
        });
        for p in owned.iter().take(owned.len() - want) {
            let (pns, pname) = id(p);
            if log_err("delete surplus pod", store.delete(Kind::Pod, pns, pname)).is_some() {
                events::record(
                    store,
                    rs,
                    false,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {pname}"),
                    COMPONENT,
                );
            }
            count -= 1;
        }
    }
    let ready = owned.iter().filter(|p| pod_is_ready(p)).count().min(count);
    let generation = rs["metadata"]["generation"].clone();
    log_err(
        "update replicaset status",
        store.update(Kind::ReplicaSet, ns, name, None, |old| {
            let mut o = old.clone();
            o["status"] = json!({
                "replicas": count,
                "fullyLabeledReplicas": count,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "observedGeneration": generation,
            });
            Ok(o)
        }),
    );
}
