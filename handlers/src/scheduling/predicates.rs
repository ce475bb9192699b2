//! The scheduling predicates, each a small pure function, and [`Predicate`], the stable code of the
//! one that failed.
//!
//! [`check`] runs them in kube-scheduler's order (node selector, node affinity, taints, resources,
//! anti-affinity) and reports the first that fails, so a pod no pool can run names the constraint a
//! user would look at first.

use std::fmt;

use bus::scheduling::{NodeSpec, PodSpec, Resources, Taint};
use serde::{Deserialize, Serialize};

/// A scheduling predicate, by its stable code (`resources`, `node_selector`, `node_affinity`,
/// `taints`, `anti_affinity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Predicate {
    /// CPU, memory or pod slots.
    Resources,
    NodeSelector,
    /// Required node affinity.
    NodeAffinity,
    /// An untolerated `NoSchedule` or `NoExecute` taint.
    Taints,
    /// Required pod anti-affinity on `kubernetes.io/hostname`.
    AntiAffinity,
}

impl Predicate {
    /// The code on the stream.
    pub fn code(self) -> &'static str {
        match self {
            Predicate::Resources => "resources",
            Predicate::NodeSelector => "node_selector",
            Predicate::NodeAffinity => "node_affinity",
            Predicate::Taints => "taints",
            Predicate::AntiAffinity => "anti_affinity",
        }
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Whether `request` fits into `free` (pod slots included).
pub fn resources_fit(request: &Resources, free: &Resources) -> bool {
    request.fits_in(free)
}

/// Whether the node's labels carry every `nodeSelector` pair.
pub fn node_selector_matches(pod: &PodSpec, node: &NodeSpec) -> bool {
    pod.node_selector
        .iter()
        .all(|(k, v)| node.label(k) == Some(v.as_str()))
}

/// Whether the node satisfies one of the pod's required node-affinity terms (or it has none).
pub fn node_affinity_matches(pod: &PodSpec, node: &NodeSpec) -> bool {
    pod.required_affinity.is_empty()
        || pod
            .required_affinity
            .iter()
            .any(|term| term.matches(|k| node.label(k)))
}

/// Whether the pod tolerates every taint that blocks scheduling (`NoSchedule`, `NoExecute`);
/// `PreferNoSchedule` never blocks.
pub fn taints_tolerated(pod: &PodSpec, taints: &[Taint]) -> bool {
    taints
        .iter()
        .filter(|t| t.effect.blocks_scheduling())
        .all(|t| pod.tolerations.iter().any(|tol| tol.tolerates(t)))
}

/// Whether `a` and `b` may not share a node: one's required anti-affinity selects the other, in
/// the same namespace (the selectors apply to the pod's own namespace, as Kubernetes' default).
pub fn anti_affinity_conflict(a: &PodSpec, b: &PodSpec) -> bool {
    a.namespace == b.namespace
        && (a.anti_affinity.iter().any(|s| s.matches(&b.labels))
            || b.anti_affinity.iter().any(|s| s.matches(&a.labels)))
}

/// Whether `pod` may join `others` on one node under anti-affinity, both ways.
pub fn anti_affinity_allows<'p>(
    pod: &PodSpec,
    others: impl IntoIterator<Item = &'p PodSpec>,
) -> bool {
    others.into_iter().all(|o| !anti_affinity_conflict(pod, o))
}

/// The predicates that depend only on the node (not on what runs there), in order.
pub fn check_node(pod: &PodSpec, node: &NodeSpec) -> Result<(), Predicate> {
    if !node_selector_matches(pod, node) {
        return Err(Predicate::NodeSelector);
    }
    if !node_affinity_matches(pod, node) {
        return Err(Predicate::NodeAffinity);
    }
    if !taints_tolerated(pod, &node.taints) {
        return Err(Predicate::Taints);
    }
    Ok(())
}

/// Every predicate for `pod` on `node` with `free` left and `pods` running there; the first that
/// fails.
pub fn check<'p>(
    pod: &PodSpec,
    node: &NodeSpec,
    free: &Resources,
    pods: impl IntoIterator<Item = &'p PodSpec>,
) -> Result<(), Predicate> {
    check_node(pod, node)?;
    if !resources_fit(&pod.requests(), free) {
        return Err(Predicate::Resources);
    }
    if !anti_affinity_allows(pod, pods) {
        return Err(Predicate::AntiAffinity);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus::scheduling::{
        LabelSelector, NodeSelectorOperator, NodeSelectorRequirement, NodeSelectorTerm,
        TaintEffect, Toleration, HOSTNAME_LABEL,
    };

    fn node() -> NodeSpec {
        NodeSpec {
            name: "w1".into(),
            pool: Some("general".into()),
            allocatable: Resources::new(1000, 1 << 30, 10),
            labels: [("disktype".to_string(), "ssd".to_string())].into(),
            taints: Vec::new(),
            cordoned: false,
            ready: true,
        }
    }

    fn pod() -> PodSpec {
        let mut p = PodSpec::new("default", "p");
        p.cpu_millis = 100;
        p
    }

    #[test]
    fn resources_count_pod_slots() {
        let free = Resources::new(1000, 1 << 30, 0);
        assert!(!resources_fit(&pod().requests(), &free));
        assert_eq!(check(&pod(), &node(), &free, []), Err(Predicate::Resources));
        let free = Resources::new(100, 0, 1);
        assert!(resources_fit(&pod().requests(), &free));
        let free = Resources::new(99, 0, 1);
        assert!(!resources_fit(&pod().requests(), &free));
    }

    #[test]
    fn node_selector_needs_every_pair() {
        let mut p = pod();
        p.node_selector.insert("disktype".into(), "ssd".into());
        assert!(node_selector_matches(&p, &node()));
        p.node_selector.insert("zone".into(), "a".into());
        assert!(!node_selector_matches(&p, &node()));
        assert_eq!(check_node(&p, &node()), Err(Predicate::NodeSelector));
    }

    #[test]
    fn node_selector_reads_the_hostname_from_the_name() {
        let mut p = pod();
        p.node_selector.insert(HOSTNAME_LABEL.into(), "w1".into());
        assert!(node_selector_matches(&p, &node()));
    }

    #[test]
    fn node_affinity_ors_terms_and_ands_expressions() {
        let req = |k: &str, op, v: &[&str]| NodeSelectorRequirement::new(k, op, v);
        let mut p = pod();
        p.required_affinity = vec![NodeSelectorTerm {
            match_expressions: vec![
                req("disktype", NodeSelectorOperator::In, &["ssd"]),
                req("gpu", NodeSelectorOperator::Exists, &[]),
            ],
        }];
        assert_eq!(check_node(&p, &node()), Err(Predicate::NodeAffinity));
        p.required_affinity.push(NodeSelectorTerm {
            match_expressions: vec![req("gpu", NodeSelectorOperator::DoesNotExist, &[])],
        });
        assert!(node_affinity_matches(&p, &node()));
        p.required_affinity = vec![NodeSelectorTerm {
            match_expressions: vec![req("disktype", NodeSelectorOperator::NotIn, &["ssd"])],
        }];
        assert!(!node_affinity_matches(&p, &node()));
    }

    #[test]
    fn no_schedule_and_no_execute_block_prefer_no_schedule_does_not() {
        let mut n = node();
        n.taints = vec![Taint::new("soft", "", TaintEffect::PreferNoSchedule)];
        assert!(taints_tolerated(&pod(), &n.taints));
        n.taints
            .push(Taint::new("dedicated", "highmem", TaintEffect::NoSchedule));
        assert_eq!(check_node(&pod(), &n), Err(Predicate::Taints));
        let mut p = pod();
        p.tolerations
            .push(Toleration::equal("dedicated", "highmem"));
        assert!(taints_tolerated(&p, &n.taints));
        n.taints
            .push(Taint::new("gone", "", TaintEffect::NoExecute));
        assert!(!taints_tolerated(&p, &n.taints));
        p.tolerations.push(Toleration::everything());
        assert!(taints_tolerated(&p, &n.taints));
    }

    #[test]
    fn anti_affinity_works_both_ways_within_a_namespace() {
        let mut web = pod();
        web.labels.insert("app".into(), "web".into());
        web.anti_affinity = vec![LabelSelector::labels(&[("app", "web")])];
        let mut other = PodSpec::new("default", "web-2");
        other.labels.insert("app".into(), "web".into());
        assert!(anti_affinity_conflict(&web, &other));
        assert!(anti_affinity_conflict(&other, &web));
        assert_eq!(
            check(&web, &node(), &node().allocatable, [&other]),
            Err(Predicate::AntiAffinity)
        );
        other.namespace = "prod".into();
        assert!(anti_affinity_allows(&web, [&other]));
        let plain = PodSpec::new("default", "db");
        assert!(anti_affinity_allows(&web, [&plain]));
    }

    #[test]
    fn codes_are_stable() {
        let all = [
            Predicate::Resources,
            Predicate::NodeSelector,
            Predicate::NodeAffinity,
            Predicate::Taints,
            Predicate::AntiAffinity,
        ];
        let codes: Vec<_> = all.iter().map(|p| p.code()).collect();
        assert_eq!(
            codes,
            [
                "resources",
                "node_selector",
                "node_affinity",
                "taints",
                "anti_affinity"
            ]
        );
        for p in all {
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.code())
            );
        }
    }
}
