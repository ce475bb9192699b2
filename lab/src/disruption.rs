//! PodDisruptionBudget arithmetic, shared by the Eviction API and the PDB status controller.

use std::sync::Arc;

use serde_json::Value;

use crate::objects::{pod_is_ready, pod_is_terminal};
use crate::selectors::LabelSelector;

/// A budget's state over the pods it selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Pods the budget selects (not finished).
    pub expected: i64,
    /// How many must stay Ready.
    pub desired_healthy: i64,
    /// How many are Ready now.
    pub current_healthy: i64,
    /// How many Ready pods may go now.
    pub disruptions_allowed: i64,
}

fn amount(v: &Value, of: i64) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => match s.strip_suffix('%') {
            Some(p) => p.parse::<i64>().ok().map(|p| (of * p + 99) / 100),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

/// Whether the PDB selects this pod (same namespace, matching selector).
pub fn selects(pdb: &Value, pod: &Value) -> bool {
    pdb["metadata"]["namespace"] == pod["metadata"]["namespace"]
        && pdb["spec"]["selector"].is_object()
        && LabelSelector::from_object(&pdb["spec"]["selector"]).matches(pod)
}

/// Evaluates a PDB over the pods of its namespace.
pub fn evaluate(pdb: &Value, pods: &[Arc<Value>]) -> Budget {
    let selected: Vec<&Arc<Value>> = pods
        .iter()
        .filter(|p| selects(pdb, p) && !pod_is_terminal(p))
        .collect();
    let expected = selected.len() as i64;
    let current_healthy = selected.iter().filter(|p| pod_is_ready(p)).count() as i64;
    let spec = &pdb["spec"];
    let desired_healthy = if let Some(min) = amount(&spec["minAvailable"], expected) {
        min
    } else if let Some(max) = amount(&spec["maxUnavailable"], expected) {
        (expected - max).max(0)
    } else {
        // Neither set: the API defaults minAvailable to 1.
        1
    };
    Budget {
        expected,
        desired_healthy,
        current_healthy,
        disruptions_allowed: (current_healthy - desired_healthy).max(0),
    }
}

/// Whether evicting `pod` is allowed under `budget`: a Ready pod needs a disruption to spare; an
/// unready one may go while the budget is met (the `IfHealthyBudget` policy).
pub fn allows(budget: &Budget, pod: &Value) -> bool {
    if pod_is_ready(pod) {
        budget.disruptions_allowed > 0
    } else {
        budget.current_healthy >= budget.desired_healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ready: bool) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}),
        )
    }

    #[test]
    fn max_unavailable_one_allows_one_disruption_only_when_all_are_ready() {
        let pdb = json!({"metadata": {"namespace": "default"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}});
        let both = evaluate(&pdb, &[pod("a", true), pod("b", true)]);
        assert_eq!(both.disruptions_allowed, 1);
        let one = evaluate(&pdb, &[pod("a", true), pod("b", false)]);
        assert_eq!(one.disruptions_allowed, 0);
        assert!(!allows(&one, &pod("a", true)));
        assert!(allows(&one, &pod("b", false)));
    }

    #[test]
    fn min_available_percentages_round_up() {
        let pdb = json!({"metadata": {"namespace": "default"},
            "spec": {"minAvailable": "50%", "selector": {"matchLabels": {"app": "web"}}}});
        let b = evaluate(&pdb, &[pod("a", true), pod("b", true), pod("c", true)]);
        assert_eq!(b.desired_healthy, 2);
        assert_eq!(b.disruptions_allowed, 1);
    }
}
