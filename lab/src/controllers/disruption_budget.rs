//! The PodDisruptionBudget status controller: keeps `status` (currentHealthy, desiredHealthy,
//! disruptionsAllowed, expectedPods) in step with the pods, as `kubectl get pdb` shows it.

use serde_json::json;

use super::{id, log_err};
use crate::disruption::evaluate;
use crate::objects::set_condition;
use crate::resources::Kind;
use crate::store::Store;

/// One pass over every PDB.
pub fn reconcile(store: &Store) {
    let (pdbs, _) = store.list(Kind::PodDisruptionBudget, None);
    if pdbs.is_empty() {
        return;
    }
    let (pods, _) = store.list(Kind::Pod, None);
    for pdb in &pdbs {
        let (ns, name) = id(pdb);
        let b = evaluate(pdb, &pods);
        let generation = pdb["metadata"]["generation"].clone();
        log_err(
            "update pdb status",
            store.update(Kind::PodDisruptionBudget, ns, name, None, |old| {
                let mut o = old.clone();
                let conditions = old["status"]["conditions"].clone();
                o["status"] = json!({
                    "observedGeneration": generation,
                    "currentHealthy": b.current_healthy,
                    "desiredHealthy": b.desired_healthy,
                    "disruptionsAllowed": b.disruptions_allowed,
                    "expectedPods": b.expected,
                    "conditions": if conditions.is_array() { conditions } else { json!([]) },
                });
                let (status, reason) = if b.disruptions_allowed > 0 {
                    ("True", "SufficientPods")
                } else {
                    ("False", "InsufficientPods")
                };
                set_condition(&mut o, "DisruptionAllowed", status, reason, "", json!({}));
                Ok(o)
            }),
        );
    }
}
