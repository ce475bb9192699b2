//! Garbage collection: pods bound to a node that no longer exists (pod GC), and objects whose
//! controller owner is gone (cascading deletion of Deployments and ReplicaSets).

use std::collections::HashSet;

use super::{id, log_err};
use crate::objects::controller_of;
use crate::resources::Kind;
use crate::store::Store;

/// One pass.
pub fn reconcile(store: &Store) {
    let (nodes, _) = store.list(Kind::Node, None);
    let node_names: HashSet<&str> = nodes
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    let mut owner_uids: HashSet<String> = HashSet::new();
    for kind in [Kind::Deployment, Kind::ReplicaSet, Kind::DaemonSet] {
        for o in store.list(kind, None).0 {
            if let Some(uid) = o["metadata"]["uid"].as_str() {
                owner_uids.insert(uid.to_string());
            }
        }
    }
    let owned_kinds = ["Deployment", "ReplicaSet", "DaemonSet"];
    for kind in [Kind::ReplicaSet, Kind::Pod] {
        for o in store.list(kind, None).0 {
            let (ns, name) = id(&o);
            if let Some((owner_kind, _, uid)) = controller_of(&o) {
                if owned_kinds.contains(&owner_kind) && !owner_uids.contains(uid) {
                    tracing::debug!(
                        kind = kind.info().kind_name,
                        namespace = ns,
                        name,
                        "owner is gone: deleting"
                    );
                    log_err("delete orphan", store.delete(kind, ns, name));
                    continue;
                }
            }
            if kind == Kind::Pod {
                if let Some(n) = o["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                    if !node_names.contains(n) {
                        tracing::info!(
                            pod = name,
                            namespace = ns,
                            node = n,
                            "node is gone: deleting its pod"
                        );
                        log_err("delete pod of deleted node", store.delete(kind, ns, name));
                    }
                }
            }
        }
    }
}
