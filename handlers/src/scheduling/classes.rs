//! Equivalence classes of pods: pods with the same namespace, requests and constraints (the pods of
//! one Deployment, typically) pass and fail the same predicates on the same node, so the
//! simulation checks a class once per node or pool instead of each pod.

use std::collections::{BTreeMap, HashMap};

use bus::scheduling::{LabelSelector, NodeSelectorTerm, PodSpec, Resources, Toleration};

use super::predicates::anti_affinity_conflict;

/// What makes two pods interchangeable for the predicates. Labels only count when some pod has
/// anti-affinity (only then can they change an answer); otherwise a StatefulSet's per-pod labels
/// would make a class of each pod.
#[derive(PartialEq, Eq, Hash)]
struct Key<'a> {
    namespace: &'a str,
    cpu_millis: u64,
    memory_bytes: u64,
    daemon_set: bool,
    labels: Option<&'a BTreeMap<String, String>>,
    node_selector: &'a BTreeMap<String, String>,
    required_affinity: &'a [NodeSelectorTerm],
    tolerations: &'a [Toleration],
    anti_affinity: &'a [LabelSelector],
}

/// One class: its members sorted by `namespace/name`; the first stands for all.
#[derive(Debug, Clone)]
pub(crate) struct Class<'a> {
    pub members: Vec<&'a PodSpec>,
    pub requests: Resources,
    /// Its anti-affinity selects its own pods: at most one of them per node.
    pub self_anti: bool,
}

impl<'a> Class<'a> {
    pub fn rep(&self) -> &'a PodSpec {
        self.members[0]
    }
}

/// The classes of a set of pods, ids in the order of their first member's name, so the same pods
/// in any order give the same ids.
#[derive(Debug, Default)]
pub(crate) struct Classes<'a> {
    pub list: Vec<Class<'a>>,
    /// Whether any member has anti-affinity: when none has, no two classes conflict.
    any_anti: bool,
    conflicts: HashMap<(u32, u32), bool>,
}

impl<'a> Classes<'a> {
    /// Groups `pods`; `with_labels` tells whether labels take part in the key (pass whether any pod
    /// that may share a node with them has anti-affinity). Also returns each pod's class, in the
    /// order of `pods`.
    pub fn group(pods: &[&'a PodSpec], with_labels: bool) -> (Self, Vec<u32>) {
        let mut sorted: Vec<u32> = (0..pods.len() as u32).collect();
        sorted.sort_unstable_by(|&a, &b| {
            let (a, b) = (pods[a as usize], pods[b as usize]);
            (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
        });
        let mut index: HashMap<Key<'a>, usize> = HashMap::new();
        let mut list: Vec<Class<'a>> = Vec::new();
        let mut assignment = vec![0u32; pods.len()];
        let mut any_anti = false;
        for i in sorted {
            let p = pods[i as usize];
            let key = Key {
                namespace: &p.namespace,
                cpu_millis: p.cpu_millis,
                memory_bytes: p.memory_bytes,
                daemon_set: p.is_daemon_set(),
                labels: with_labels.then_some(&p.labels),
                node_selector: &p.node_selector,
                required_affinity: &p.required_affinity,
                tolerations: &p.tolerations,
                anti_affinity: &p.anti_affinity,
            };
            match index.get(&key) {
                Some(&c) => {
                    list[c].members.push(p);
                    assignment[i as usize] = c as u32;
                }
                None => {
                    assignment[i as usize] = list.len() as u32;
                    any_anti |= !p.anti_affinity.is_empty();
                    index.insert(key, list.len());
                    list.push(Class {
                        members: vec![p],
                        requests: p.requests(),
                        self_anti: anti_affinity_conflict(p, p),
                    });
                }
            }
        }
        let classes = Classes {
            list,
            any_anti,
            conflicts: HashMap::new(),
        };
        (classes, assignment)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether pods of classes `a` and `b` may not share a node (`a == b`: two of one class).
    pub fn conflict(&mut self, a: u32, b: u32) -> bool {
        if !self.any_anti {
            return false;
        }
        let (ra, rb) = (self.list[a as usize].rep(), self.list[b as usize].rep());
        if ra.anti_affinity.is_empty() && rb.anti_affinity.is_empty() {
            return false;
        }
        let key = (a.min(b), a.max(b));
        *self
            .conflicts
            .entry(key)
            .or_insert_with(|| anti_affinity_conflict(ra, rb))
    }

    /// Whether class `k` conflicts with any class in `present`.
    pub fn conflicts_with_any(&mut self, k: u32, present: impl IntoIterator<Item = u32>) -> bool {
        self.any_anti && present.into_iter().any(|c| self.conflict(k, c))
    }
}
