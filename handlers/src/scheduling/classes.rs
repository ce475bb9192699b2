//! Equivalence classes of pods: pods with the same namespace, requests and constraints (the pods of
//! one Deployment, typically) pass and fail the same predicates on the same node, so the
//! simulation checks a class once per node or pool instead of each pod.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use bus::scheduling::{LabelSelector, NodeSelectorTerm, PodSpec, Resources, Toleration};
use foldhash::fast::FixedState;

use super::predicates::anti_affinity_conflict;

type HashMap<K, V> = std::collections::HashMap<K, V, FixedState>;

/// What makes two pods interchangeable for the predicates. Of the labels only those some
/// anti-affinity selector reads count (only they can change an answer): otherwise a ReplicaSet's
/// `pod-template-hash` or a StatefulSet's per-pod labels would split classes for nothing.
struct Key<'a, 'k> {
    namespace: &'a str,
    cpu_millis: u64,
    memory_bytes: u64,
    daemon_set: bool,
    labels: &'a BTreeMap<String, String>,
    /// The label keys that count, shared by all keys of one grouping.
    relevant: &'k [&'a str],
    node_selector: &'a BTreeMap<String, String>,
    required_affinity: &'a [NodeSelectorTerm],
    tolerations: &'a [Toleration],
    anti_affinity: &'a [LabelSelector],
}

impl Key<'_, '_> {
    fn relevant_labels(&self) -> impl Iterator<Item = Option<&String>> {
        self.relevant.iter().map(|k| self.labels.get(*k))
    }
}

impl PartialEq for Key<'_, '_> {
    fn eq(&self, o: &Self) -> bool {
        self.cpu_millis == o.cpu_millis
            && self.memory_bytes == o.memory_bytes
            && self.daemon_set == o.daemon_set
            && self.namespace == o.namespace
            && self.relevant_labels().eq(o.relevant_labels())
            && self.node_selector == o.node_selector
            && self.required_affinity == o.required_affinity
            && self.tolerations == o.tolerations
            && self.anti_affinity == o.anti_affinity
    }
}

impl Eq for Key<'_, '_> {}

impl Hash for Key<'_, '_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // The cheap fields spread pods of different Deployments already; the constraints are
        // compared by `eq` on the rare collision.
        self.namespace.hash(h);
        self.cpu_millis.hash(h);
        self.memory_bytes.hash(h);
        self.daemon_set.hash(h);
        for l in self.relevant_labels() {
            l.hash(h);
        }
        self.node_selector.len().hash(h);
        self.tolerations.len().hash(h);
        self.anti_affinity.len().hash(h);
    }
}

/// One class: its members sorted by `namespace/name`; the first stands for all.
#[derive(Debug, Clone)]
pub(crate) struct Class<'a> {
    pub members: Vec<&'a PodSpec>,
    pub requests: Resources,
    /// Its pods have required anti-affinity.
    pub anti: bool,
    /// Its anti-affinity selects its own pods: at most one of them per node.
    pub self_anti: bool,
}

impl<'a> Class<'a> {
    pub fn rep(&self) -> &'a PodSpec {
        self.members[0]
    }
}

/// Up to this many classes, conflicts are cached in a dense matrix; beyond, in a hash map.
const DENSE_CLASSES: usize = 2048;

/// The classes of a set of pods, ids in the order of their first member's name, so the same pods
/// in any order give the same ids.
#[derive(Debug, Default)]
pub(crate) struct Classes<'a> {
    pub list: Vec<Class<'a>>,
    /// Whether any class has anti-affinity: when none has, no two classes conflict.
    any_anti: bool,
    /// Row-major `len × len`: 0 not computed, 1 conflict, 2 none.
    dense: Vec<u8>,
    sparse: HashMap<(u32, u32), bool>,
}

impl<'a> Classes<'a> {
    /// Groups `pods`; also returns each pod's class, in the order of `pods`. Members are sorted by
    /// name when `sort_members` (the caller hands them out in order); otherwise only the first is
    /// the smallest name, which is all a representative needs, and is cheaper at 30,000 pods.
    pub fn group(pods: &[&'a PodSpec], sort_members: bool) -> (Self, Vec<u32>) {
        let relevant: Vec<&'a str> = pods
            .iter()
            .flat_map(|p| &p.anti_affinity)
            .flat_map(|s| {
                s.match_labels
                    .keys()
                    .chain(s.match_expressions.iter().map(|e| &e.key))
            })
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut index: HashMap<Key<'a, '_>, u32> = HashMap::default();
        let mut list: Vec<Class<'a>> = Vec::new();
        let mut assignment = Vec::with_capacity(pods.len());
        for &p in pods {
            let key = Key {
                namespace: &p.namespace,
                cpu_millis: p.cpu_millis,
                memory_bytes: p.memory_bytes,
                daemon_set: p.is_daemon_set(),
                labels: &p.labels,
                relevant: &relevant,
                node_selector: &p.node_selector,
                required_affinity: &p.required_affinity,
                tolerations: &p.tolerations,
                anti_affinity: &p.anti_affinity,
            };
            let next = list.len() as u32;
            let c = *index.entry(key).or_insert(next);
            if c == next {
                list.push(Class {
                    members: Vec::new(),
                    requests: p.requests(),
                    anti: !p.anti_affinity.is_empty(),
                    self_anti: anti_affinity_conflict(p, p),
                });
            }
            list[c as usize].members.push(p);
            assignment.push(c);
        }
        drop(index);
        let by_name =
            |a: &&PodSpec, b: &&PodSpec| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name));
        for c in &mut list {
            if sort_members {
                c.members.sort_unstable_by(by_name);
            } else if let Some(min) =
                (0..c.members.len()).min_by(|&a, &b| by_name(&c.members[a], &c.members[b]))
            {
                c.members.swap(0, min);
            }
        }
        // Ids in the order of the classes' first names, whatever the order of `pods`.
        let mut order: Vec<u32> = (0..list.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| by_name(&list[a as usize].rep(), &list[b as usize].rep()));
        let mut renumber = vec![0u32; list.len()];
        for (new, &old) in order.iter().enumerate() {
            renumber[old as usize] = new as u32;
        }
        let mut slots: Vec<Option<Class<'a>>> = list.into_iter().map(Some).collect();
        let list: Vec<Class<'a>> = order
            .iter()
            .filter_map(|&old| slots[old as usize].take())
            .collect();
        for c in &mut assignment {
            *c = renumber[*c as usize];
        }
        let any_anti = list.iter().any(|c| c.anti);
        let dense = if any_anti && list.len() <= DENSE_CLASSES {
            vec![0; list.len() * list.len()]
        } else {
            Vec::new()
        };
        let classes = Classes {
            list,
            any_anti,
            dense,
            sparse: HashMap::default(),
        };
        (classes, assignment)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether pods of classes `a` and `b` may not share a node (`a == b`: two of one class).
    pub fn conflict(&mut self, a: u32, b: u32) -> bool {
        let (ca, cb) = (&self.list[a as usize], &self.list[b as usize]);
        if !ca.anti && !cb.anti {
            return false;
        }
        let compute = || anti_affinity_conflict(ca.rep(), cb.rep());
        if self.dense.is_empty() {
            *self
                .sparse
                .entry((a.min(b), a.max(b)))
                .or_insert_with(compute)
        } else {
            let cell = &mut self.dense[a as usize * self.list.len() + b as usize];
            if *cell == 0 {
                *cell = if compute() { 1 } else { 2 };
            }
            *cell == 1
        }
    }

    /// Whether class `k` conflicts with any class in `present`.
    pub fn conflicts_with_any(&mut self, k: u32, present: impl IntoIterator<Item = u32>) -> bool {
        self.any_anti && present.into_iter().any(|c| self.conflict(k, c))
    }
}
