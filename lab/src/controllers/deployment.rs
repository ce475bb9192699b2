//! The Deployment controller: one ReplicaSet per pod template (named by the template's hash, as the
//! real controller does), sized to the Deployment; older ones are scaled to zero at once (a Recreate
//! rollout, which is all the lab needs). Status is summed from the ReplicaSets.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{events, id, log_err};

/// The event source.
const COMPONENT: &str = "deployment-controller";
use crate::objects::{controller_of, owner_reference, set_condition};
use crate::resources::Kind;
use crate::store::Store;

/// The `pod-template-hash` label.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// A short stable hash of a pod template (FNV-1a over its JSON, in the label alphabet).
pub fn template_hash(template: &Value) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in serde_json::to_vec(template).unwrap_or_default() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..10)
        .map(|i| ALPHABET[((h >> (i * 6)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// One pass over every Deployment.
pub fn reconcile(store: &Store) {
    let (deployments, _) = store.list(Kind::Deployment, None);
    let (sets, _) = store.list(Kind::ReplicaSet, None);
    for d in &deployments {
        reconcile_one(store, d, &sets);
    }
}

/// Deployment `d`'s ReplicaSets (among `sets`) and status.
fn reconcile_one(store: &Store, d: &Value, sets: &[Arc<Value>]) {
    let (ns, name) = id(d);
    let uid = d["metadata"]["uid"].as_str().unwrap_or("");
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let hash = template_hash(&d["spec"]["template"]);
    let rs_name = format!("{name}-{hash}");
    let owned: Vec<&Value> = sets
        .iter()
        .map(|rs| &**rs)
        .filter(|rs| controller_of(rs).is_some_and(|(_, _, u)| u == uid))
        .collect();
    let current = owned
        .iter()
        .copied()
        .find(|rs| rs["metadata"]["name"] == rs_name.as_str());
    match current {
        None => create_replica_set(store, d, &hash, &rs_name, want),
        Some(rs) if rs["spec"]["replicas"].as_i64() != Some(want) => {
            let from = rs["spec"]["replicas"].as_i64().unwrap_or(0);
            let verb = if want > from { "up" } else { "down" };
            let message = format!("Scaled {verb} replica set {rs_name} from {from} to {want}");
            events::record(store, d, false, "ScalingReplicaSet", &message, COMPONENT);
            log_err(
                "scale replicaset",
                store.update(Kind::ReplicaSet, ns, &rs_name, None, |old| {
                    let mut o = old.clone();
                    o["spec"]["replicas"] = json!(want);
                    Ok(o)
                }),
            );
        }
        Some(_) => {}
    }
    for old in owned
        .iter()
        .filter(|rs| rs["metadata"]["name"] != rs_name.as_str())
    {
        if old["spec"]["replicas"].as_i64() != Some(0) {
            let (ons, oname) = id(old);
            log_err(
                "scale down old replicaset",
                store.update(Kind::ReplicaSet, ons, oname, None, |o| {
                    let mut o = o.clone();
                    o["spec"]["replicas"] = json!(0);
                    Ok(o)
                }),
            );
        }
    }
    let updated = current.map_or(0, |rs| rs["status"]["replicas"].as_i64().unwrap_or(0));
    update_status(store, d, &owned, updated, want);
}

/// The ReplicaSet `rs_name` for `d`'s current template (`hash`), with `want` replicas.
fn create_replica_set(store: &Store, d: &Value, hash: &str, rs_name: &str, want: i64) {
    let (ns, _) = id(d);
    let template = &d["spec"]["template"];
    let mut labels = template["metadata"]["labels"].clone();
    labels[TEMPLATE_HASH_LABEL] = json!(hash);
    let mut selector = d["spec"]["selector"].clone();
    selector["matchLabels"][TEMPLATE_HASH_LABEL] = json!(hash);
    let mut rs_template = template.clone();
    rs_template["metadata"]["labels"] = labels.clone();
    let rs = json!({
        "metadata": {"name": rs_name, "namespace": ns, "labels": labels,
            "ownerReferences": [owner_reference(d)],
            "annotations": {"deployment.kubernetes.io/desired-replicas": want.to_string()}},
        "spec": {"replicas": want, "selector": selector, "template": rs_template},
        "status": {"replicas": 0},
    });
    if log_err("create replicaset", store.create(Kind::ReplicaSet, ns, rs)).is_some() {
        let message = format!("Scaled up replica set {rs_name} from 0 to {want}");
        events::record(store, d, false, "ScalingReplicaSet", &message, COMPONENT);
    }
}

/// `d`'s status summed from its ReplicaSets `owned`, `updated` of them from the current one.
fn update_status(store: &Store, d: &Value, owned: &[&Value], updated: i64, want: i64) {
    let (ns, name) = id(d);
    let sum = |field: &str| {
        owned
            .iter()
            .map(|rs| rs["status"][field].as_i64().unwrap_or(0))
            .sum::<i64>()
    };
    let (replicas, ready, available) = (
        sum("replicas"),
        sum("readyReplicas"),
        sum("availableReplicas"),
    );
    let generation = d["metadata"]["generation"].clone();
    log_err(
        "update deployment status",
        store.update(Kind::Deployment, ns, name, None, |old| {
            let mut o = old.clone();
            let conditions = old["status"]["conditions"].clone();
            o["status"] = json!({
                "observedGeneration": generation,
                "replicas": replicas,
                "updatedReplicas": updated,
                "readyReplicas": ready,
                "availableReplicas": available,
                "unavailableReplicas": (want - available).max(0),
                "conditions": if conditions.is_array() { conditions } else { json!([]) },
            });
            let (status, reason) = if available >= want {
                ("True", "MinimumReplicasAvailable")
            } else {
                ("False", "MinimumReplicasUnavailable")
            };
            set_condition(&mut o, "Available", status, reason, "", json!({}));
            let reason = if updated == want && available == want {
                "NewReplicaSetAvailable"
            } else {
                "ReplicaSetUpdated"
            };
            set_condition(&mut o, "Progressing", "True", reason, "", json!({}));
            Ok(o)
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hashes_are_stable_and_label_safe() {
        let t = json!({"metadata": {"labels": {"app": "web"}}});
        assert_eq!(template_hash(&t), template_hash(&t.clone()));
        assert_ne!(template_hash(&t), template_hash(&json!({})));
        assert!(template_hash(&t).chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
