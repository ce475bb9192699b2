//! The scheduler: binds pending pods to nodes as kube-scheduler's filters would allow — Ready,
//! not cordoned, NoSchedule/NoExecute taints tolerated, `nodeSelector` and required node affinity
//! matched, free allocatable covering the requests (pod slots included), and required pod
//! anti-affinity on `kubernetes.io/hostname` respected both ways (the pod's own terms, and the terms
//! of the pods already on the node). Among the nodes left it picks the least allocated. The rest are
//! marked `PodScheduled=False`, reason `Unschedulable`, with kube-scheduler's message
//! (`0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient cpu.`).
//!
//! Anti-affinity terms with another topology key are ignored (the lab has no zones or regions), and
//! the topology domain is the node itself.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{json, Value};

use super::{events, id, log_err};
use crate::objects::{
    node_allocatable, node_is_ready, pod_is_terminal, pod_requests, set_condition, tolerates,
    HOSTNAME_LABEL,
};
use crate::resources::Kind;
use crate::selectors::{LabelSelector, NodeSelector};
use crate::store::Store;

/// The event source.
const COMPONENT: &str = "default-scheduler";

/// What is already bound to a node.
#[derive(Default, Clone, Copy)]
struct Used {
    cpu: u64,
    mem: u64,
    pods: u64,
}

/// Which namespaces a pod affinity term looks at.
#[derive(Debug, Clone, PartialEq)]
enum Namespaces {
    /// An empty `namespaceSelector` (`{}`).
    All,
    /// `namespaces`, those `namespaceSelector` selects, or else the pod's own.
    Listed(BTreeSet<String>),
}

/// A required pod anti-affinity term on [`HOSTNAME_LABEL`]: no pod it selects may share the node.
#[derive(Debug, Clone)]
struct AntiAffinityTerm {
    selector: LabelSelector,
    namespaces: Namespaces,
}

impl AntiAffinityTerm {
    fn selects(&self, pod: &Value) -> bool {
        let in_scope = match &self.namespaces {
            Namespaces::All => true,
            Namespaces::Listed(names) => pod["metadata"]["namespace"]
                .as_str()
                .is_some_and(|ns| names.contains(ns)),
        };
        in_scope && self.selector.matches(pod)
    }
}

/// A pod's required anti-affinity terms on [`HOSTNAME_LABEL`], with the namespace scope resolved
/// against the namespaces that exist now.
fn anti_affinity_terms(pod: &Value, namespaces: &[Arc<Value>]) -> Vec<AntiAffinityTerm> {
    let own = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
        // A null labelSelector selects no pod, so such a term constrains nothing.
        .filter(|t| t["topologyKey"] == HOSTNAME_LABEL && t["labelSelector"].is_object())
        .map(|t| AntiAffinityTerm {
            selector: LabelSelector::from_object(&t["labelSelector"]),
            namespaces: term_namespaces(t, own, namespaces),
        })
        .collect()
}

/// kube's rule: the union of `namespaces` and what `namespaceSelector` selects (`{}`: all); with
/// neither, the pod's own namespace.
fn term_namespaces(term: &Value, own: &str, namespaces: &[Arc<Value>]) -> Namespaces {
    let mut names: BTreeSet<String> = term["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(String::from))
        .collect();
    let ns_selector = &term["namespaceSelector"];
    if ns_selector.is_object() {
        let selector = LabelSelector::from_object(ns_selector);
        if selector.is_empty() {
            return Namespaces::All;
        }
        for ns in namespaces {
            let name = ns["metadata"]["name"].as_str().unwrap_or("");
            // The label the API server puts on every namespace.
            let mut labels = ns["metadata"]["labels"].clone();
            if !labels.is_object() {
                labels = json!({});
            }
            labels["kubernetes.io/metadata.name"] = json!(name);
            if selector.matches(&json!({"metadata": {"labels": labels}})) {
                names.insert(name.to_string());
            }
        }
    } else if names.is_empty() {
        names.insert(own.to_string());
    }
    Namespaces::Listed(names)
}

/// A pod bound to a node (before or during this pass), as the anti-affinity checks see it.
struct Placed {
    pod: Arc<Value>,
    /// Its own anti-affinity terms, which keep later pods they select off its node.
    terms: Vec<AntiAffinityTerm>,
}

/// The pending pod's constraints, read once per pass rather than once per node.
struct Constraints {
    node_affinity: Option<NodeSelector>,
    anti_affinity: Vec<AntiAffinityTerm>,
}

impl Constraints {
    fn of(pod: &Value, namespaces: &[Arc<Value>]) -> Self {
        let required = &pod["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"];
        Constraints {
            node_affinity: required
                .is_object()
                .then(|| NodeSelector::from_object(required)),
            anti_affinity: anti_affinity_terms(pod, namespaces),
        }
    }
}

/// Why a node cannot take a pod, in the words of kube-scheduler's messages: empty when it can.
/// As kube-scheduler's filters run, the first failing check decides, except that every short
/// resource is named.
fn misfits(
    node: &Value,
    used: Used,
    placed: &[Placed],
    pod: &Value,
    constraints: &Constraints,
) -> Vec<String> {
    if !node_is_ready(node) {
        return vec!["node(s) were not ready".into()];
    }
    if node["spec"]["unschedulable"].as_bool().unwrap_or(false) {
        return vec!["node(s) were unschedulable".into()];
    }
    for t in node["spec"]["taints"].as_array().into_iter().flatten() {
        let effect = t["effect"].as_str().unwrap_or("");
        if (effect == "NoSchedule" || effect == "NoExecute") && !tolerates(pod, t) {
            return vec![format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t["key"].as_str().unwrap_or(""),
                t["value"].as_str().unwrap_or("")
            )];
        }
    }
    let labels = &node["metadata"]["labels"];
    let selector_fails = pod["spec"]["nodeSelector"]
        .as_object()
        .is_some_and(|sel| sel.iter().any(|(k, v)| labels.get(k) != Some(v)));
    let affinity_fails = constraints
        .node_affinity
        .as_ref()
        .is_some_and(|a| !a.matches(node));
    if selector_fails || affinity_fails {
        return vec!["node(s) didn't match Pod's node affinity/selector".into()];
    }
    let (cpu, mem, max_pods) = node_allocatable(node);
    let (req_cpu, req_mem) = pod_requests(pod);
    let mut short = Vec::new();
    if used.pods + 1 > max_pods {
        short.push("Too many pods".to_string());
    }
    if used.cpu + req_cpu > cpu {
        short.push("Insufficient cpu".to_string());
    }
    if used.mem + req_mem > mem {
        short.push("Insufficient memory".to_string());
    }
    if !short.is_empty() {
        return short;
    }
    let selected = |terms: &[AntiAffinityTerm], p: &Value| terms.iter().any(|t| t.selects(p));
    if placed
        .iter()
        .any(|p| selected(&constraints.anti_affinity, &p.pod))
    {
        return vec!["node(s) didn't match pod anti-affinity rules".into()];
    }
    if placed.iter().any(|p| selected(&p.terms, pod)) {
        return vec!["node(s) didn't satisfy existing pods anti-affinity rules".into()];
    }
    Vec::new()
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

/// kube-scheduler's FitError message: each reason with its node count, sorted as strings.
fn unschedulable_message(node_count: usize, reasons: &HashMap<String, usize>) -> String {
    if node_count == 0 {
        return "no nodes available to schedule pods".to_string();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{node_count} nodes are available: {}.", parts.join(", "))
}

/// What is on each node: the requests bound there and the pods themselves.
#[derive(Default)]
struct Bound {
    used: HashMap<String, Used>,
    placed: HashMap<String, Vec<Placed>>,
}

impl Bound {
    fn add(&mut self, node: &str, pod: Arc<Value>, terms: Vec<AntiAffinityTerm>) {
        let (c, m) = pod_requests(&pod);
        let u = self.used.entry(node.to_string()).or_default();
        u.cpu += c;
        u.mem += m;
        u.pods += 1;
        self.placed
            .entry(node.to_string())
            .or_default()
            .push(Placed { pod, terms });
    }
}

/// One scheduling pass.
pub fn reconcile(store: &Store) {
    let (nodes, _) = store.list(Kind::Node, None);
    let (mut pods, _) = store.list(Kind::Pod, None);
    let (namespaces, _) = store.list(Kind::Namespace, None);
    let mut bound = Bound::default();
    for p in &pods {
        if let Some(n) = p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            if !pod_is_terminal(p) {
                bound.add(n, p.clone(), anti_affinity_terms(p, &namespaces));
            }
        }
    }
    pods.sort_by(|a, b| {
        a["metadata"]["creationTimestamp"]
            .as_str()
            .cmp(&b["metadata"]["creationTimestamp"].as_str())
    });
    for pod in pods.iter().filter(|p| needs_scheduling(p)) {
        let constraints = Constraints::of(pod, &namespaces);
        let mut reasons: HashMap<String, usize> = HashMap::new();
        let mut best: Option<(&Arc<Value>, f64)> = None;
        for node in &nodes {
            let name = node["metadata"]["name"].as_str().unwrap_or("");
            let u = bound.used.get(name).copied().unwrap_or_default();
            let placed = bound.placed.get(name).map_or(&[][..], Vec::as_slice);
            let why = misfits(node, u, placed, pod, &constraints);
            if why.is_empty() {
                let s = score(node, u, pod);
                if best.is_none_or(|(_, b)| s < b) {
                    best = Some((node, s));
                }
            }
            for r in why {
                *reasons.entry(r).or_default() += 1;
            }
        }
        let (ns, pod_name) = id(pod);
        match best {
            Some((node, _)) => {
                let node_name = node["metadata"]["name"].as_str().unwrap_or("").to_string();
                let done = log_err(
                    "bind pod",
                    store.update(Kind::Pod, ns, pod_name, None, |old| {
                        let mut p = old.clone();
                        p["spec"]["nodeName"] = json!(node_name);
                        set_condition(&mut p, "PodScheduled", "True", "", "", json!({}));
                        Ok(p)
                    }),
                );
                if let Some(done) = done {
                    tracing::debug!(pod = pod_name, namespace = ns, node = %node_name, "bound");
                    let message = format!("Successfully assigned {ns}/{pod_name} to {node_name}");
                    events::record(store, &done, false, "Scheduled", &message, COMPONENT);
                    bound.add(&node_name, done, constraints.anti_affinity);
                }
            }
            None => mark_unschedulable(store, pod, &unschedulable_message(nodes.len(), &reasons)),
        }
    }
}

/// Sets `PodScheduled=False`/`Unschedulable` with `message`, and records a FailedScheduling Event
/// when the message is new (one per change of reason, not one per pass).
fn mark_unschedulable(store: &Store, pod: &Value, message: &str) {
    let (ns, pod_name) = id(pod);
    let already = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "PodScheduled" && c["status"] == "False" && c["message"] == message);
    if !already {
        events::record(store, pod, true, "FailedScheduling", message, COMPONENT);
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
                message,
                json!({}),
            );
            Ok(p)
        }),
    );
}

fn needs_scheduling(pod: &Value) -> bool {
    pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
        && pod["metadata"]["deletionTimestamp"].is_null()
        && !pod_is_terminal(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn pod(name: &str, cpu: &str, labels: Value, spec: Value) -> Value {
        let mut p = json!({"metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}});
        if let (Some(s), Some(extra)) = (p["spec"].as_object_mut(), spec.as_object()) {
            s.extend(extra.clone());
        }
        p
    }

    fn store_with(nodes: &[Value], pods: &[Value]) -> Arc<Store> {
        let store = Store::new(1000);
        for ns in ["default", "other"] {
            store
                .create(Kind::Namespace, "", json!({"metadata": {"name": ns}}))
                .unwrap();
        }
        for n in nodes {
            store.create(Kind::Node, "", n.clone()).unwrap();
        }
        for p in pods {
            let ns = p["metadata"]["namespace"].as_str().unwrap_or("default");
            store.create(Kind::Pod, ns, p.clone()).unwrap();
        }
        store
    }

    fn placement(store: &Store, ns: &str, name: &str) -> Result<String, String> {
        let p = store.get(Kind::Pod, ns, name).unwrap();
        match p["spec"]["nodeName"].as_str() {
            Some(n) => Ok(n.to_string()),
            None => {
                let c = p["status"]["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"))
                    .cloned()
                    .unwrap_or_default();
                assert_eq!(c["reason"], "Unschedulable");
                Err(c["message"].as_str().unwrap_or("").to_string())
            }
        }
    }

    fn affinity(terms: Value) -> Value {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": terms}}}})
    }

    fn anti_affinity(app: &str, extra: Value) -> Value {
        let mut term = json!({"topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app": app}}});
        if let (Some(t), Some(e)) = (term.as_object_mut(), extra.as_object()) {
            t.extend(e.clone());
        }
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}})
    }

    #[test]
    fn the_message_counts_each_reason_sorted_as_kube_scheduler_sorts_them() {
        let ssd = json!({"disktype": "ssd"});
        let nodes = [
            node("a", "1", ssd.clone()),
            node("b", "1", ssd),
            node("c", "8", json!({})),
        ];
        let wants_ssd = affinity(json!([{"matchExpressions":
            [{"key": "disktype", "operator": "In", "values": ["ssd"]}]}]));
        let store = store_with(&nodes, &[pod("p", "2", json!({}), wants_ssd)]);
        reconcile(&store);
        assert_eq!(
            placement(&store, "default", "p"),
            Err("0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient cpu.".into())
        );
    }

    #[test]
    fn every_short_resource_of_a_node_is_named() {
        let mut p = pod("p", "2", json!({}), json!({}));
        p["spec"]["containers"][0]["resources"]["requests"]["memory"] = json!("8Gi");
        let store = store_with(&[node("a", "1", json!({}))], &[p]);
        reconcile(&store);
        assert_eq!(
            placement(&store, "default", "p"),
            Err("0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory.".into())
        );
    }

    #[test]
    fn required_node_affinity_picks_among_the_matching_nodes_only() {
        let nodes = [
            node("big", "8", json!({"tier": "web"})),
            node("small", "1", json!({"tier": "db", "gen": "3"})),
        ];
        let db = affinity(json!([
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]},
                {"key": "gen", "operator": "Gt", "values": ["2"]}]},
        ]));
        let by_name = affinity(json!([{"matchFields":
            [{"key": "metadata.name", "operator": "In", "values": ["small"]}]}]));
        let nowhere = affinity(json!([{"matchExpressions":
            [{"key": "gpu", "operator": "Exists"}]}]));
        let store = store_with(
            &nodes,
            &[
                pod("db", "100m", json!({}), db),
                pod("named", "100m", json!({}), by_name),
                pod("gpu", "100m", json!({}), nowhere),
            ],
        );
        reconcile(&store);
        assert_eq!(placement(&store, "default", "db"), Ok("small".into()));
        assert_eq!(placement(&store, "default", "named"), Ok("small".into()));
        assert_eq!(
            placement(&store, "default", "gpu"),
            Err(
                "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
                    .into()
            )
        );
    }

    #[test]
    fn hostname_anti_affinity_spreads_replicas_including_those_placed_in_the_same_pass() {
        let nodes = [node("a", "4", json!({})), node("b", "4", json!({}))];
        let web = |n: &str| {
            pod(
                n,
                "100m",
                json!({"app": "web"}),
                anti_affinity("web", json!({})),
            )
        };
        let store = store_with(&nodes, &[web("web-1"), web("web-2"), web("web-3")]);
        reconcile(&store);
        let mut placed = [
            placement(&store, "default", "web-1").unwrap(),
            placement(&store, "default", "web-2").unwrap(),
        ];
        placed.sort();
        assert_eq!(placed, ["a".to_string(), "b".to_string()]);
        assert_eq!(
            placement(&store, "default", "web-3"),
            Err("0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules.".into())
        );
    }

    #[test]
    fn an_existing_pods_anti_affinity_keeps_the_pods_it_selects_off_its_node() {
        let mut loner = pod("loner", "100m", json!({}), anti_affinity("web", json!({})));
        loner["spec"]["nodeName"] = json!("a");
        let store = store_with(
            &[node("a", "4", json!({})), node("b", "4", json!({}))],
            &[loner, pod("web", "100m", json!({"app": "web"}), json!({}))],
        );
        // Remove b's capacity so only a is left on resources: the web pod must still stay off a.
        store
            .update(Kind::Node, "", "b", None, |n| {
                let mut n = n.clone();
                n["spec"]["unschedulable"] = json!(true);
                Ok(n)
            })
            .unwrap();
        reconcile(&store);
        assert_eq!(
            placement(&store, "default", "web"),
            Err("0/2 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules, 1 node(s) were unschedulable.".into())
        );
    }

    #[test]
    fn anti_affinity_looks_at_the_pods_own_namespace_unless_told_otherwise() {
        let mut other = pod("other-web", "100m", json!({"app": "web"}), json!({}));
        other["metadata"]["namespace"] = json!("other");
        other["spec"]["nodeName"] = json!("a");
        let one = [node("a", "4", json!({}))];
        let store = store_with(
            &one,
            &[
                other.clone(),
                pod("own", "100m", json!({}), anti_affinity("web", json!({}))),
                pod(
                    "listed",
                    "100m",
                    json!({}),
                    anti_affinity("web", json!({"namespaces": ["other"]})),
                ),
                pod(
                    "all",
                    "100m",
                    json!({}),
                    anti_affinity("web", json!({"namespaceSelector": {}})),
                ),
                pod(
                    "by-label",
                    "100m",
                    json!({}),
                    anti_affinity(
                        "web",
                        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}}}),
                    ),
                ),
                pod(
                    "zone",
                    "100m",
                    json!({}),
                    json!({"affinity": {"podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "topology.kubernetes.io/zone",
                        "namespaces": ["other"], "labelSelector": {"matchLabels": {"app": "web"}}}]}}}),
                ),
            ],
        );
        reconcile(&store);
        assert_eq!(placement(&store, "default", "own"), Ok("a".into()));
        assert_eq!(
            placement(&store, "default", "zone"),
            Ok("a".into()),
            "other topology keys are ignored"
        );
        for name in ["listed", "all", "by-label"] {
            assert!(placement(&store, "default", name).is_err(), "{name}");
        }
    }
}
