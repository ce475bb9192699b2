//! A Kubernetes `Pod` as the scheduling simulation reads it: [`pod_spec`] turns k8s-openapi's object
//! into the wire type `bus::scheduling::PodSpec` (requests, labels, nodeSelector, required node
//! affinity, tolerations, required hostname anti-affinity, controller kind, `nodeName`).
//!
//! Constraints are read with kube-scheduler's semantics, so a constraint the scheduler would never
//! satisfy stays unsatisfiable here: a node selector term with an unknown operator, a malformed
//! requirement or an unsupported `matchFields` key becomes a term that matches no node, and a
//! toleration with an unknown operator or effect, which tolerates nothing, is left out.

use bus::scheduling::{
    LabelSelector, LabelSelectorOperator, LabelSelectorRequirement, NodeSelectorOperator,
    NodeSelectorRequirement, NodeSelectorTerm, PodSpec, TaintEffect, Toleration,
    TolerationOperator, HOSTNAME_LABEL,
};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use primitives::quantity;

use super::error::Result;

/// The pod as the scheduling simulation sees it. Fails only on a resource quantity that cannot be
/// read (the API server accepts none such).
pub fn pod_spec(pod: &core::Pod) -> Result<PodSpec> {
    let (cpu_millis, memory_bytes) = pod_requests(pod)?;
    let mut out = PodSpec::new(
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    out.cpu_millis = cpu_millis;
    out.memory_bytes = memory_bytes;
    out.labels = pod.metadata.labels.clone().unwrap_or_default();
    out.owner_kind = controller_kind(&pod.metadata);
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(out);
    };
    out.node_selector = spec.node_selector.clone().unwrap_or_default();
    out.node_name = spec.node_name.clone().filter(|n| !n.is_empty());
    out.tolerations = spec
        .tolerations
        .iter()
        .flatten()
        .filter_map(toleration)
        .collect();
    let affinity = spec.affinity.as_ref();
    out.required_affinity = affinity
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|s| {
            s.node_selector_terms
                .iter()
                .map(node_selector_term)
                .collect()
        })
        .unwrap_or_default();
    out.anti_affinity = affinity
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|terms| terms.iter().filter_map(hostname_anti_affinity).collect())
        .unwrap_or_default();
    Ok(out)
}

/// The scheduler's view of a pod's requests, (cpu millicores, memory bytes): the sum over its
/// containers, or the largest init container if that is more (init containers run one at a time,
/// before the others), plus overhead.
pub fn pod_requests(pod: &core::Pod) -> Result<(u64, u64)> {
    let mut cpu = 0u64;
    let mut mem = 0u64;
    let Some(spec) = pod.spec.as_ref() else {
        return Ok((0, 0));
    };
    for c in &spec.containers {
        let (c_cpu, c_mem) = container_request(c)?;
        cpu = cpu.saturating_add(c_cpu);
        mem = mem.saturating_add(c_mem);
    }
    for c in spec.init_containers.iter().flatten() {
        let (c_cpu, c_mem) = container_request(c)?;
        cpu = cpu.max(c_cpu);
        mem = mem.max(c_mem);
    }
    if let Some(overhead) = spec.overhead.as_ref() {
        if let Some(q) = overhead.get("cpu") {
            cpu = cpu.saturating_add(quantity::cpu_millis(&q.0)?);
        }
        if let Some(q) = overhead.get("memory") {
            mem = mem.saturating_add(quantity::memory_bytes(&q.0)?);
        }
    }
    Ok((cpu, mem))
}

/// The (cpu millicores, memory bytes) one container asks for: its requests, or its limits where a
/// request is missing (the API server defaults requests to limits).
fn container_request(c: &core::Container) -> Result<(u64, u64)> {
    let res = c.resources.as_ref();
    super::cpu_and_memory(
        res.and_then(|r| r.requests.as_ref()),
        res.and_then(|r| r.limits.as_ref()),
    )
}

/// The kind of the owner marked `controller: true` (`metav1.GetControllerOf`).
fn controller_kind(meta: &meta::ObjectMeta) -> Option<String> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.kind.clone())
}

/// A toleration, or `None` for one that tolerates nothing (an unknown operator or effect).
fn toleration(t: &core::Toleration) -> Option<Toleration> {
    let operator = match t.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => TolerationOperator::Equal,
        "Exists" => TolerationOperator::Exists,
        _ => return None,
    };
    let effect = match t.effect.as_deref().unwrap_or_default() {
        "" => None,
        e => Some(e.parse::<TaintEffect>().ok()?),
    };
    Some(Toleration {
        // An empty key matches every key, as no key does.
        key: t.key.clone().filter(|k| !k.is_empty()),
        operator,
        value: t.value.clone().unwrap_or_default(),
        effect,
    })
}

/// One required node affinity term, or a term matching no node when kube-scheduler could not parse
/// it (it then never matches).
fn node_selector_term(term: &core::NodeSelectorTerm) -> NodeSelectorTerm {
    let expressions = term.match_expressions.iter().flatten().map(requirement);
    // `matchFields` supports only `metadata.name`, which the hostname label carries.
    let fields = term.match_fields.iter().flatten().map(|r| {
        (r.key == "metadata.name" && matches!(r.operator.as_str(), "In" | "NotIn"))
            .then(|| requirement(r))
            .flatten()
            .map(|mut r| {
                r.key = HOSTNAME_LABEL.to_string();
                r
            })
    });
    match expressions.chain(fields).collect::<Option<Vec<_>>>() {
        Some(match_expressions) => NodeSelectorTerm { match_expressions },
        None => NodeSelectorTerm::default(),
    }
}

/// One node selector requirement, `None` when kube's `labels.NewRequirement` rejects it: an unknown
/// operator, `In`/`NotIn` without values, `Exists`/`DoesNotExist` with values. `Gt`/`Lt` with a bad
/// value are kept: they match no node anyway.
fn requirement(r: &core::NodeSelectorRequirement) -> Option<NodeSelectorRequirement> {
    let values = r.values.clone().unwrap_or_default();
    let operator = match r.operator.as_str() {
        "In" => NodeSelectorOperator::In,
        "NotIn" => NodeSelectorOperator::NotIn,
        "Exists" => NodeSelectorOperator::Exists,
        "DoesNotExist" => NodeSelectorOperator::DoesNotExist,
        "Gt" => NodeSelectorOperator::Gt,
        "Lt" => NodeSelectorOperator::Lt,
        _ => return None,
    };
    let valid = match operator {
        NodeSelectorOperator::In | NodeSelectorOperator::NotIn => !values.is_empty(),
        NodeSelectorOperator::Exists | NodeSelectorOperator::DoesNotExist => values.is_empty(),
        NodeSelectorOperator::Gt | NodeSelectorOperator::Lt => true,
    };
    valid.then(|| NodeSelectorRequirement {
        key: r.key.clone(),
        operator,
        values,
    })
}

/// The label selector of a required anti-affinity term on `kubernetes.io/hostname`; `None` for other
/// topologies (the simulation models nodes only), for a term without a selector (it selects no pod)
/// and for a selector that cannot select anything (an unknown operator). `namespaces` and
/// `namespaceSelector` are not carried: the simulation reads the term for the pod's own namespace.
fn hostname_anti_affinity(term: &core::PodAffinityTerm) -> Option<LabelSelector> {
    if term.topology_key != HOSTNAME_LABEL {
        return None;
    }
    label_selector(term.label_selector.as_ref()?)
}

/// A label selector in the simulation's terms; `None` for one with an operator Kubernetes does
/// not define (such a selector matches nothing in kube-scheduler either).
pub fn label_selector(selector: &meta::LabelSelector) -> Option<LabelSelector> {
    let match_expressions = selector
        .match_expressions
        .iter()
        .flatten()
        .map(label_requirement)
        .collect::<Option<Vec<_>>>()?;
    Some(LabelSelector {
        match_labels: selector.match_labels.clone().unwrap_or_default(),
        match_expressions,
    })
}

fn label_requirement(r: &meta::LabelSelectorRequirement) -> Option<LabelSelectorRequirement> {
    let operator = match r.operator.as_str() {
        "In" => LabelSelectorOperator::In,
        "NotIn" => LabelSelectorOperator::NotIn,
        "Exists" => LabelSelectorOperator::Exists,
        "DoesNotExist" => LabelSelectorOperator::DoesNotExist,
        _ => return None,
    };
    Some(LabelSelectorRequirement {
        key: r.key.clone(),
        operator,
        values: r.values.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus::scheduling::{Taint, DAEMON_SET};
    use std::collections::BTreeMap;

    /// A pod from its JSON manifest, as the API server would serve it.
    fn pod(manifest: serde_json::Value) -> core::Pod {
        serde_json::from_value(manifest).expect("a valid Pod")
    }

    fn web() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-5d9f8c7b6-abcde",
                "namespace": "shop",
                "uid": "u1",
                "labels": {"app": "web", "pod-template-hash": "5d9f8c7b6"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "c"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9f8c7b6",
                     "uid": "rs", "controller": true}
                ]
            },
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "128Mi"}}}
                ]
            }
        })
    }

    #[test]
    fn a_plain_pod_carries_its_requests_labels_and_controller() {
        let p = pod_spec(&pod(web())).unwrap();
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("shop", "web-5d9f8c7b6-abcde")
        );
        assert_eq!(p.cpu_millis, 1250);
        assert_eq!(p.memory_bytes, 192 << 20);
        assert_eq!(p.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(p.owner_kind.as_deref(), Some("ReplicaSet"));
        assert!(p.node_selector.is_empty() && p.required_affinity.is_empty());
        assert!(p.tolerations.is_empty() && p.anti_affinity.is_empty());
        assert_eq!(p.node_name, None);
        assert!(!p.pdb_blocked);
    }

    #[test]
    fn init_containers_and_overhead_count_as_the_scheduler_counts_them() {
        let mut m = web();
        m["spec"]["initContainers"] = serde_json::json!([
            {"name": "migrate", "resources": {"requests": {"cpu": "2", "memory": "32Mi"}}}
        ]);
        m["spec"]["overhead"] = serde_json::json!({"cpu": "100m", "memory": "1Mi"});
        let p = pod_spec(&pod(m)).unwrap();
        assert_eq!(p.cpu_millis, 2100);
        assert_eq!(p.memory_bytes, (192 << 20) + (1 << 20));
    }

    #[test]
    fn an_unreadable_quantity_is_an_error() {
        let mut m = web();
        m["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "lots".into();
        let e = pod_spec(&pod(m)).unwrap_err();
        assert_eq!(e.code(), "bad_quantity");
    }

    #[test]
    fn node_selector_and_node_name_are_carried() {
        let mut m = web();
        m["spec"]["nodeSelector"] = serde_json::json!({"disktype": "ssd"});
        m["spec"]["nodeName"] = "k3s-worker-1".into();
        let p = pod_spec(&pod(m)).unwrap();
        assert_eq!(
            p.node_selector,
            BTreeMap::from([("disktype".to_string(), "ssd".to_string())])
        );
        assert_eq!(p.node_name.as_deref(), Some("k3s-worker-1"));
    }

    #[test]
    fn required_node_affinity_keeps_every_operator_and_ors_its_terms() {
        let mut m = web();
        m["spec"]["affinity"] = serde_json::json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["a", "b"]},
                    {"key": "gpu", "operator": "DoesNotExist"},
                    {"key": "cores", "operator": "Gt", "values": ["3"]}
                ]},
                {"matchExpressions": [
                    {"key": "pool", "operator": "NotIn", "values": ["spot"]},
                    {"key": "ssd", "operator": "Exists"},
                    {"key": "cores", "operator": "Lt", "values": ["64"]}
                ]}
            ]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["c"]}
                ]}}
            ]
        }});
        let p = pod_spec(&pod(m)).unwrap();
        use NodeSelectorOperator::*;
        let r = NodeSelectorRequirement::new;
        assert_eq!(
            p.required_affinity,
            [
                NodeSelectorTerm {
                    match_expressions: vec![
                        r("zone", In, &["a", "b"]),
                        r("gpu", DoesNotExist, &[]),
                        r("cores", Gt, &["3"]),
                    ]
                },
                NodeSelectorTerm {
                    match_expressions: vec![
                        r("pool", NotIn, &["spot"]),
                        r("ssd", Exists, &[]),
                        r("cores", Lt, &["64"]),
                    ]
                },
            ]
        );
        let labels = BTreeMap::from([("zone", "b"), ("cores", "8")]);
        assert!(p.required_affinity[0].matches(|k| labels.get(k).copied()));
        assert!(!p.required_affinity[1].matches(|k| labels.get(k).copied()));
    }

    #[test]
    fn a_term_kube_cannot_parse_matches_no_node_and_metadata_name_is_the_hostname() {
        let mut m = web();
        m["spec"]["affinity"] = serde_json::json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["a"]},
                    {"key": "zone", "operator": "Near", "values": ["a"]}
                ]},
                {"matchExpressions": [{"key": "zone", "operator": "Exists", "values": ["a"]}]},
                {"matchFields": [{"key": "spec.unschedulable", "operator": "In", "values": ["false"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["w1"]}]}
            ]}
        }});
        let p = pod_spec(&pod(m)).unwrap();
        assert_eq!(p.required_affinity.len(), 4);
        let anything = |_: &str| Some("a");
        for t in &p.required_affinity[..3] {
            assert_eq!(*t, NodeSelectorTerm::default());
            assert!(!t.matches(anything));
        }
        assert_eq!(
            p.required_affinity[3].match_expressions,
            [NodeSelectorRequirement::new(
                HOSTNAME_LABEL,
                NodeSelectorOperator::In,
                &["w1"]
            )]
        );
    }

    #[test]
    fn tolerations_follow_kubernetes_and_those_tolerating_nothing_are_dropped() {
        let mut m = web();
        m["spec"]["tolerations"] = serde_json::json!([
            {"key": "dedicated", "operator": "Equal", "value": "highmem", "effect": "NoSchedule"},
            {"key": "gpu", "operator": "Exists"},
            {"key": "legacy", "value": "x"},
            {"operator": "Exists"},
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
             "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "a", "operator": "Gt", "value": "1"},
            {"key": "b", "operator": "Exists", "effect": "Sometimes"}
        ]);
        let p = pod_spec(&pod(m)).unwrap();
        assert_eq!(
            p.tolerations,
            [
                Toleration::equal("dedicated", "highmem").with_effect(TaintEffect::NoSchedule),
                Toleration::exists("gpu"),
                Toleration::equal("legacy", "x"),
                Toleration::everything(),
                Toleration::exists("node.kubernetes.io/not-ready")
                    .with_effect(TaintEffect::NoExecute),
            ]
        );
        let highmem: Taint = "dedicated=highmem:NoSchedule".parse().unwrap();
        assert!(p.tolerations[0].tolerates(&highmem));
    }

    #[test]
    fn only_required_hostname_anti_affinity_is_carried() {
        let mut m = web();
        m["spec"]["affinity"] = serde_json::json!({"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "kubernetes.io/hostname",
                 "labelSelector": {
                     "matchLabels": {"app": "web"},
                     "matchExpressions": [
                         {"key": "tier", "operator": "In", "values": ["front"]},
                         {"key": "canary", "operator": "DoesNotExist"}
                     ]}},
                {"topologyKey": "topology.kubernetes.io/zone",
                 "labelSelector": {"matchLabels": {"app": "web"}}},
                {"topologyKey": "kubernetes.io/hostname"},
                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {}}
            ],
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                 "labelSelector": {"matchLabels": {"app": "db"}}}}
            ]
        }});
        let p = pod_spec(&pod(m)).unwrap();
        let mut first = LabelSelector::labels(&[("app", "web")]);
        first.match_expressions = vec![
            LabelSelectorRequirement {
                key: "tier".into(),
                operator: LabelSelectorOperator::In,
                values: vec!["front".into()],
            },
            LabelSelectorRequirement {
                key: "canary".into(),
                operator: LabelSelectorOperator::DoesNotExist,
                values: vec![],
            },
        ];
        // The empty selector selects every pod of the namespace, as in Kubernetes.
        assert_eq!(p.anti_affinity, [first, LabelSelector::default()]);
    }

    #[test]
    fn a_daemon_set_pod_is_known_by_its_controller() {
        let p = pod_spec(&pod(serde_json::json!({
            "metadata": {"name": "agent-x", "namespace": "kube-system",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                    "name": "agent", "uid": "d", "controller": true}]},
            "spec": {"containers": [{"name": "agent"}]}
        })))
        .unwrap();
        assert_eq!(p.owner_kind.as_deref(), Some(DAEMON_SET));
        assert!(p.is_daemon_set());
        let bare = pod_spec(&pod(serde_json::json!({
            "metadata": {"name": "bare", "namespace": "default",
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                    "name": "c", "uid": "c"}]}
        })))
        .unwrap();
        assert_eq!(bare.owner_kind, None);
        assert_eq!((bare.cpu_millis, bare.memory_bytes), (0, 0));
    }

    #[test]
    fn a_deployment_pod_stays_small_on_the_wire() {
        // Tens of thousands of pending pods can ride in one report: a typical Deployment pod with a
        // toleration and a hostname anti-affinity stays well under 400 bytes of JSON.
        let mut m = web();
        m["spec"]["tolerations"] = serde_json::json!([
            {"key": "dedicated", "operator": "Equal", "value": "highmem", "effect": "NoSchedule"}
        ]);
        m["spec"]["nodeSelector"] = serde_json::json!({"k3s-autoscaler/pool": "highmem"});
        m["spec"]["affinity"] = serde_json::json!({"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname",
             "labelSelector": {"matchLabels": {"app": "web"}}}
        ]}});
        let json = serde_json::to_string(&pod_spec(&pod(m)).unwrap()).unwrap();
        assert!(json.len() < 400, "{} bytes: {json}", json.len());
        let plain = serde_json::to_string(&pod_spec(&pod(web())).unwrap()).unwrap();
        assert!(plain.len() < 200, "{} bytes: {plain}", plain.len());
    }
}
