//! Where pods run, as it rides on the stream: the state the scheduling simulation's scale-down reads
//! (every node with its labels, taints, allocatable and pool, and every pod bound to a node with its
//! requests and constraints), how it is written ([`PlacementTracker`]: a snapshot in parts, then
//! deltas), and how it is folded back ([`Placement`]).
//!
//! Writer and fold live together so that the observer and the decision core cannot disagree: folding
//! the tracker's events from any of its snapshots onward gives exactly the tracker's state (a property
//! test below checks it). The wire form is compact because a large cluster's snapshot is tens of
//! thousands of pods: pods that differ only in name and node (the replicas of one Deployment) ride as
//! one [`PodGroup`], their template written once. `docs/ARCHITECTURE.md` gives the stream budget.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::event::{PlacementChanged, PlacementSnapshot};
use crate::scheduling::{NodeSpec, PodRef, PodSpec};

/// How many nodes, and how many pods, one `PlacementSnapshot` entry holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSize {
    pub nodes: usize,
    pub pods: usize,
}

impl Default for PartSize {
    /// Entries of some tens of kilobytes.
    fn default() -> Self {
        PartSize {
            nodes: 100,
            pods: 1_000,
        }
    }
}

/// Pods identical but for their name and node: the template once, then `[name, node]` per pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodGroup {
    /// The pods' spec with an empty `name` and no `node_name`.
    pub template: PodSpec,
    /// `[name, node]` of each pod.
    pub pods: Vec<(String, String)>,
}

impl PodGroup {
    /// The pods of the group, whole again.
    pub fn expand(&self) -> impl Iterator<Item = PodSpec> + '_ {
        self.pods.iter().map(|(name, node)| {
            let mut p = self.template.clone();
            p.name = name.clone();
            p.node_name = Some(node.clone());
            p
        })
    }

    /// Groups placed pods (those with a `node_name`; others are left out), in the order of their
    /// first member, so the same pods always give the same groups.
    pub fn group<'p>(pods: impl IntoIterator<Item = &'p PodSpec>) -> Vec<PodGroup> {
        let mut index: HashMap<PodSpec, usize> = HashMap::new();
        let mut groups: Vec<PodGroup> = Vec::new();
        for p in pods {
            let Some(node) = p.node_name.clone() else {
                continue;
            };
            let mut template = p.clone();
            template.name = String::new();
            template.node_name = None;
            let at = (p.name.clone(), node);
            match index.get(&template) {
                Some(&i) => groups[i].pods.push(at),
                None => {
                    index.insert(template.clone(), groups.len());
                    groups.push(PodGroup {
                        template,
                        pods: vec![at],
                    });
                }
            }
        }
        groups
    }
}

/// How far the fold has read into the snapshot it is building.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Progress {
    snapshot: String,
    parts: u32,
    seen: u32,
}

/// Nodes and the pods placed on them, folded from `PlacementSnapshot` and `PlacementChanged`.
///
/// It is known ([`Placement::is_known`]) once every part of one snapshot was folded; deltas before
/// that are ignored (a history trimmed in the middle of a snapshot waits for the next one). Its
/// serde form (for debugging a model) is plain lists, since JSON map keys must be strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "PlacementForm", from = "PlacementForm")]
pub struct Placement {
    nodes: BTreeMap<String, NodeSpec>,
    pods: BTreeMap<PodRef, PodSpec>,
    progress: Option<Progress>,
    known: bool,
}

impl Placement {
    pub fn new() -> Self {
        Self::default()
    }

    /// A state built directly (the writer's side, and tests).
    pub fn from_state(
        nodes: BTreeMap<String, NodeSpec>,
        pods: BTreeMap<PodRef, PodSpec>,
    ) -> Placement {
        Placement {
            nodes,
            pods,
            progress: None,
            known: true,
        }
    }

    /// Whether a whole snapshot has been folded: only then does it say where every pod runs.
    pub fn is_known(&self) -> bool {
        self.known
    }

    pub fn nodes(&self) -> &BTreeMap<String, NodeSpec> {
        &self.nodes
    }

    /// Placed pods by name.
    pub fn pods(&self) -> &BTreeMap<PodRef, PodSpec> {
        &self.pods
    }

    /// Folds one part of a snapshot. Part 0 starts afresh; the others must follow in order (a part
    /// out of order, as at the cut of a trimmed history, leaves the state unknown until the next
    /// snapshot).
    pub fn apply_snapshot(&mut self, s: &PlacementSnapshot) {
        if s.part == 0 {
            self.nodes.clear();
            self.pods.clear();
            self.known = false;
            self.progress = Some(Progress {
                snapshot: s.snapshot.clone(),
                parts: s.parts,
                seen: 0,
            });
        }
        let in_order = self
            .progress
            .as_ref()
            .is_some_and(|p| p.snapshot == s.snapshot && p.seen == s.part && s.part < p.parts);
        if !in_order {
            self.progress = None;
            if !self.known {
                self.nodes.clear();
                self.pods.clear();
            }
            return;
        }
        self.insert(&s.nodes, &s.pods);
        if let Some(p) = self.progress.as_mut() {
            p.seen += 1;
            if p.seen == p.parts {
                self.known = true;
                self.progress = None;
            }
        }
    }

    /// Folds a delta (ignored until a snapshot started).
    pub fn apply_change(&mut self, c: &PlacementChanged) {
        if !self.known && self.progress.is_none() {
            return;
        }
        for n in &c.nodes_removed {
            self.nodes.remove(n);
        }
        for p in &c.pods_removed {
            self.pods.remove(p);
        }
        self.insert(&c.nodes, &c.pods);
    }

    fn insert(&mut self, nodes: &[NodeSpec], pods: &[PodGroup]) {
        for n in nodes {
            self.nodes.insert(n.name.clone(), n.clone());
        }
        for g in pods {
            for p in g.expand() {
                self.pods.insert(p.pod_ref(), p);
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
struct PlacementForm {
    known: bool,
    nodes: Vec<NodeSpec>,
    pods: Vec<PodSpec>,
}

impl From<Placement> for PlacementForm {
    fn from(p: Placement) -> Self {
        PlacementForm {
            known: p.known,
            nodes: p.nodes.into_values().collect(),
            pods: p.pods.into_values().collect(),
        }
    }
}

impl From<PlacementForm> for Placement {
    fn from(f: PlacementForm) -> Self {
        Placement {
            nodes: f.nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
            pods: f.pods.into_iter().map(|p| (p.pod_ref(), p)).collect(),
            progress: None,
            known: f.known,
        }
    }
}

/// The writer's side: remembers what it published and turns each newly observed state into a delta,
/// or, when asked, into a snapshot.
#[derive(Debug, Default)]
pub struct PlacementTracker {
    published: Option<Placement>,
}

impl PlacementTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a snapshot was published (deltas need one before them).
    pub fn has_snapshot(&self) -> bool {
        self.published.is_some()
    }

    /// The observed state as a snapshot `id` in parts: first the nodes, `size.nodes` a part, then
    /// the placed pods grouped across the whole cluster (so a Deployment's replicas share one
    /// template however they are spread), `size.pods` a part. Always at least one part, also for
    /// an empty cluster.
    pub fn snapshot(
        &mut self,
        id: &str,
        state: Placement,
        size: PartSize,
    ) -> Vec<PlacementSnapshot> {
        let mut parts: Vec<(Vec<NodeSpec>, Vec<PodGroup>)> = state
            .nodes
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .chunks(size.nodes.max(1))
            .map(|c| (c.to_vec(), Vec::new()))
            .collect();
        let mut room = 0usize;
        for g in PodGroup::group(state.pods.values()) {
            for chunk in g.pods.chunks(size.pods.max(1)) {
                if room < chunk.len() {
                    parts.push((Vec::new(), Vec::new()));
                    room = size.pods.max(1);
                }
                room -= chunk.len();
                if let Some((_, groups)) = parts.last_mut() {
                    groups.push(PodGroup {
                        template: g.template.clone(),
                        pods: chunk.to_vec(),
                    });
                }
            }
        }
        if parts.is_empty() {
            parts.push((Vec::new(), Vec::new()));
        }
        let total = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        let out = parts
            .into_iter()
            .enumerate()
            .map(|(i, (nodes, pods))| PlacementSnapshot {
                snapshot: id.to_string(),
                part: u32::try_from(i).unwrap_or(u32::MAX),
                parts: total,
                nodes,
                pods,
            })
            .collect();
        self.published = Some(state);
        out
    }

    /// What changed since the last snapshot or delta; `None` when nothing did, or when no snapshot
    /// was published yet (call [`PlacementTracker::snapshot`] first).
    pub fn change(&mut self, state: Placement) -> Option<PlacementChanged> {
        let old = self.published.as_ref()?;
        let mut c = PlacementChanged::default();
        for (name, n) in &state.nodes {
            if old.nodes.get(name) != Some(n) {
                c.nodes.push(n.clone());
            }
        }
        c.nodes_removed = old
            .nodes
            .keys()
            .filter(|n| !state.nodes.contains_key(*n))
            .cloned()
            .collect();
        c.pods = PodGroup::group(
            state
                .pods
                .iter()
                .filter(|(r, p)| old.pods.get(*r) != Some(*p))
                .map(|(_, p)| p),
        );
        c.pods_removed = old
            .pods
            .keys()
            .filter(|r| !state.pods.contains_key(*r))
            .cloned()
            .collect();
        self.published = Some(state);
        (!c.is_empty()).then_some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduling::Resources;
    use proptest::prelude::*;

    fn node(name: &str, ready: bool) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            pool: Some("default".into()),
            allocatable: Resources::new(1000, 1 << 30, 110),
            ready,
            ..NodeSpec::default()
        }
    }

    fn pod(name: &str, app: &str, node: &str) -> PodSpec {
        let mut p = PodSpec::new("default", name);
        p.cpu_millis = 100;
        p.labels.insert("app".into(), app.into());
        p.node_name = Some(node.into());
        p
    }

    fn state(nodes: &[NodeSpec], pods: &[PodSpec]) -> Placement {
        Placement::from_state(
            nodes.iter().map(|n| (n.name.clone(), n.clone())).collect(),
            pods.iter().map(|p| (p.pod_ref(), p.clone())).collect(),
        )
    }

    #[test]
    fn replicas_of_one_template_ride_as_one_group() {
        let pods = [
            pod("web-1", "web", "n1"),
            pod("web-2", "web", "n2"),
            pod("db-1", "db", "n1"),
        ];
        let groups = PodGroup::group(&pods);
        assert_eq!(groups.len(), 2);
        assert_eq!(
            groups[0].pods,
            [("web-1".into(), "n1".into()), ("web-2".into(), "n2".into())]
        );
        let back: Vec<PodSpec> = groups.iter().flat_map(PodGroup::expand).collect();
        assert_eq!(back.len(), 3);
        assert!(back.contains(&pods[2]));
        let json = serde_json::to_string(&groups[0]).unwrap();
        assert!(json.contains(r#"["web-1","n1"]"#), "{json}");
    }

    #[test]
    fn a_snapshot_in_parts_folds_back_and_is_known_only_when_whole() {
        let nodes: Vec<NodeSpec> = (0..5).map(|i| node(&format!("n{i}"), true)).collect();
        let pods = [
            pod("a", "web", "n0"),
            pod("b", "web", "n4"),
            pod("c", "web", "gone"),
        ];
        let mut t = PlacementTracker::new();
        let parts = t.snapshot("s1", state(&nodes, &pods), PartSize { nodes: 2, pods: 2 });
        assert_eq!(parts.len(), 5, "3 parts of nodes, 2 of pods");
        let mut folded = Placement::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(!folded.is_known(), "known before part {i}");
            folded.apply_snapshot(p);
        }
        assert!(folded.is_known());
        assert_eq!(folded.nodes(), state(&nodes, &pods).nodes());
        assert_eq!(folded.pods(), state(&nodes, &pods).pods());
    }

    #[test]
    fn a_history_cut_inside_a_snapshot_stays_unknown_until_the_next() {
        let nodes: Vec<NodeSpec> = (0..4).map(|i| node(&format!("n{i}"), true)).collect();
        let mut t = PlacementTracker::new();
        let parts = t.snapshot("s1", state(&nodes, &[]), PartSize { nodes: 2, pods: 2 });
        let mut folded = Placement::new();
        folded.apply_snapshot(&parts[1]);
        let change = t.change(state(&nodes[..3], &[])).unwrap();
        folded.apply_change(&change);
        assert!(!folded.is_known());
        assert!(folded.nodes().is_empty());
    }

    #[test]
    fn an_empty_cluster_is_one_part() {
        let mut t = PlacementTracker::new();
        let parts = t.snapshot("s", Placement::new(), PartSize::default());
        assert_eq!(parts.len(), 1);
        let mut f = Placement::new();
        f.apply_snapshot(&parts[0]);
        assert!(f.is_known());
        assert!(t.change(Placement::new()).is_none());
    }

    fn arb_state() -> impl Strategy<Value = Placement> {
        (
            proptest::collection::btree_map(0u8..6, any::<bool>(), 0..6),
            proptest::collection::btree_map(0u8..12, (0u8..6, 0u8..3), 0..12),
        )
            .prop_map(|(nodes, pods)| {
                let nodes: Vec<NodeSpec> = nodes
                    .into_iter()
                    .map(|(i, ready)| node(&format!("n{i}"), ready))
                    .collect();
                let pods: Vec<PodSpec> = pods
                    .into_iter()
                    .map(|(i, (n, app))| {
                        pod(&format!("p{i}"), &format!("app{app}"), &format!("n{n}"))
                    })
                    .collect();
                state(&nodes, &pods)
            })
    }

    proptest! {
        /// Folding from any snapshot onward, through the deltas after it, gives the writer's state.
        #[test]
        fn the_fold_from_any_snapshot_is_the_observed_state(
            states in proptest::collection::vec(arb_state(), 1..8),
            snapshot_at in proptest::collection::vec(any::<bool>(), 8),
            per in 1usize..4,
        ) {
            let mut t = PlacementTracker::new();
            let mut entries: Vec<Result<PlacementSnapshot, PlacementChanged>> = Vec::new();
            for (i, s) in states.iter().enumerate() {
                if i == 0 || snapshot_at[i] {
                    entries.extend(t.snapshot(&format!("s{i}"), s.clone(), PartSize { nodes: per, pods: per }).into_iter().map(Ok));
                } else if let Some(c) = t.change(s.clone()) {
                    entries.push(Err(c));
                }
            }
            let last = states.last().unwrap();
            for (start, e) in entries.iter().enumerate() {
                if !matches!(e, Ok(s) if s.part == 0) {
                    continue;
                }
                let mut f = Placement::new();
                for e in &entries[start..] {
                    match e {
                        Ok(s) => f.apply_snapshot(s),
                        Err(c) => f.apply_change(c),
                    }
                }
                prop_assert!(f.is_known());
                prop_assert_eq!(f.nodes(), last.nodes());
                prop_assert_eq!(f.pods(), last.pods());
            }
        }
    }
}
