//! [`Snapshot`]: the nodes with the pods placed on them, the pending pods and the nodes on their
//! way, as the simulation reads them; and [`PoolTemplate`], what a new node of a pool looks like.

use std::collections::BTreeMap;

use bus::scheduling::{NodeSpec, PodSpec, Resources, Taint, HOSTNAME_LABEL, POOL_LABEL};

/// What a new node of a pool looks like, and how many the pool may have.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolTemplate {
    pub name: String,
    /// Scale-down never leaves the pool with fewer nodes.
    pub min_nodes: u32,
    /// Scale-up never plans the pool more nodes (existing and on their way included).
    pub max_nodes: u32,
    pub allocatable: Resources,
    /// The labels of its nodes; [`PoolTemplate::node`] adds `k3s-autoscaler/pool=<name>` when
    /// missing, and `kubernetes.io/hostname` is each node's own.
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// For the `priority` expander: higher goes first.
    pub priority: i32,
    /// Removed workers of the pool kept stopped for its next scale-ups (0: none).
    #[serde(default)]
    pub warm_pool: u32,
    /// Spare capacity kept ready ahead of demand (see [`crate::buffer`]).
    #[serde(default)]
    pub buffer: crate::buffer::Buffer,
    /// Windows that raise `min_nodes` (see [`crate::schedule`]).
    #[serde(default)]
    pub schedules: Vec<crate::schedule::Schedule>,
}

impl PoolTemplate {
    /// A pool without labels, taints or priority.
    pub fn new(
        name: impl Into<String>,
        min_nodes: u32,
        max_nodes: u32,
        allocatable: Resources,
    ) -> Self {
        PoolTemplate {
            name: name.into(),
            min_nodes,
            max_nodes,
            allocatable,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            priority: 0,
            warm_pool: 0,
            buffer: crate::buffer::Buffer::default(),
            schedules: Vec::new(),
        }
    }

    /// The node this template makes, named `name` (its hostname): Ready, uncordoned, empty.
    pub fn node(&self, name: impl Into<String>) -> NodeSpec {
        let mut labels = self.labels.clone();
        labels
            .entry(POOL_LABEL.to_string())
            .or_insert_with(|| self.name.clone());
        labels.remove(HOSTNAME_LABEL);
        NodeSpec {
            name: name.into(),
            pool: Some(self.name.clone()),
            allocatable: self.allocatable,
            labels,
            taints: self.taints.clone(),
            cordoned: false,
            ready: true,
        }
    }

    /// The node the predicates check for "a new node of this pool": its hostname is no existing
    /// node's (`new:` is not a valid node name), so a pod bound by hostname to a node that exists
    /// never fits it.
    pub(crate) fn template_node(&self) -> NodeSpec {
        self.node(format!("new:{}", self.name))
    }
}

/// Why a pod could not be placed into the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("pod {namespace}/{name} has no node_name")]
    NotBound { namespace: String, name: String },
    #[error("pod {namespace}/{name} is on node {node}, which the snapshot does not have")]
    UnknownNode {
        namespace: String,
        name: String,
        node: String,
    },
}

/// One node and the pods placed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub spec: NodeSpec,
    pods: Vec<PodSpec>,
    /// The sum of the pods' requests (a pod slot each), kept so free capacity costs nothing.
    requested: Resources,
}

impl NodeState {
    fn new(spec: NodeSpec) -> Self {
        NodeState {
            spec,
            pods: Vec::new(),
            requested: Resources::ZERO,
        }
    }

    /// The pods placed on it (DaemonSet pods included), in the order they were placed.
    pub fn pods(&self) -> &[PodSpec] {
        &self.pods
    }

    /// What its pods request, a pod slot each.
    pub fn requested(&self) -> Resources {
        self.requested
    }

    /// Allocatable minus requested.
    pub fn free(&self) -> Resources {
        self.spec.allocatable.saturating_sub(self.requested)
    }

    /// The larger of its requested CPU and memory fractions (0 for a dimension it has none of):
    /// cluster-autoscaler's node utilisation, the order of scale-down candidates.
    pub fn utilization(&self) -> f64 {
        let frac = |used: u64, total: u64| {
            if total == 0 {
                0.0
            } else {
                used as f64 / total as f64
            }
        };
        frac(self.requested.cpu_millis, self.spec.allocatable.cpu_millis).max(frac(
            self.requested.memory_bytes,
            self.spec.allocatable.memory_bytes,
        ))
    }
}

/// The cluster as the simulation sees it. Pods are identified by `namespace/name`, which the caller
/// keeps unique.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    nodes: BTreeMap<String, NodeState>,
    pending: Vec<PodSpec>,
    /// Nodes on their way (created, not yet Ready), per pool: each has its pool template's shape.
    provisioning: BTreeMap<String, u32>,
    /// Pools that get no new node for now, and why (see [`Unavailable`]).
    unavailable: BTreeMap<String, Unavailable>,
}

/// Why a pool gets no new node for now, though pods fit it: its creates failed and it backs off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unavailable {
    /// Creates failed for another reason than the provider not answering (`pool_backoff`).
    Backoff,
    /// The provider (the Docker engine) did not answer (`provider_unavailable`).
    Provider,
}

impl Snapshot {
    pub fn new() -> Self {
        Snapshot::default()
    }

    /// A snapshot of `nodes`, `placed` pods (each on its `node_name`; pods on a node the snapshot
    /// does not have are left out, the caller learns of them from [`Snapshot::place`] when it
    /// cares), `pending` pods and nodes on their way per pool.
    pub fn from_parts(
        nodes: impl IntoIterator<Item = NodeSpec>,
        placed: impl IntoIterator<Item = PodSpec>,
        pending: impl IntoIterator<Item = PodSpec>,
        provisioning: BTreeMap<String, u32>,
    ) -> Self {
        let mut s = Snapshot::new();
        for n in nodes {
            s.upsert_node(n);
        }
        for p in placed {
            // Dropped on purpose: see the doc.
            let _ = s.place(p);
        }
        s.pending = pending.into_iter().collect();
        s.provisioning = provisioning;
        s
    }

    /// Adds a node, or updates its spec keeping its pods.
    pub fn upsert_node(&mut self, spec: NodeSpec) {
        match self.nodes.get_mut(&spec.name) {
            Some(n) => n.spec = spec,
            None => {
                self.nodes.insert(spec.name.clone(), NodeState::new(spec));
            }
        }
    }

    /// Removes a node with its pods.
    pub fn remove_node(&mut self, name: &str) -> Option<NodeState> {
        self.nodes.remove(name)
    }

    /// Places `pod` on its `node_name`.
    pub fn place(&mut self, pod: PodSpec) -> Result<(), SnapshotError> {
        let Some(node) = pod.node_name.as_deref() else {
            return Err(SnapshotError::NotBound {
                namespace: pod.namespace,
                name: pod.name,
            });
        };
        let Some(n) = self.nodes.get_mut(node) else {
            return Err(SnapshotError::UnknownNode {
                node: node.to_string(),
                namespace: pod.namespace,
                name: pod.name,
            });
        };
        n.requested = n.requested.saturating_add(pod.requests());
        n.pods.push(pod);
        Ok(())
    }

    /// Takes pod `namespace/name` off `node`.
    pub fn unplace(&mut self, node: &str, namespace: &str, name: &str) -> Option<PodSpec> {
        let n = self.nodes.get_mut(node)?;
        let i = n
            .pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)?;
        let pod = n.pods.swap_remove(i);
        n.requested = n.requested.saturating_sub(pod.requests());
        Some(pod)
    }

    pub fn set_pending(&mut self, pods: Vec<PodSpec>) {
        self.pending = pods;
    }

    /// `count` nodes of `pool` on their way (0 removes the entry).
    pub fn set_provisioning(&mut self, pool: &str, count: u32) {
        if count == 0 {
            self.provisioning.remove(pool);
        } else {
            self.provisioning.insert(pool.to_string(), count);
        }
    }

    pub fn nodes(&self) -> &BTreeMap<String, NodeState> {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.get(name)
    }

    pub fn pending(&self) -> &[PodSpec] {
        &self.pending
    }

    pub fn provisioning(&self) -> &BTreeMap<String, u32> {
        &self.provisioning
    }

    /// `pool` gets no new node for now (`None`: it may again).
    pub fn set_unavailable(&mut self, pool: &str, why: Option<Unavailable>) {
        match why {
            Some(w) => {
                self.unavailable.insert(pool.to_string(), w);
            }
            None => {
                self.unavailable.remove(pool);
            }
        }
    }

    /// Why `pool` gets no new node for now, if it does not.
    pub fn unavailable(&self, pool: &str) -> Option<Unavailable> {
        self.unavailable.get(pool).copied()
    }

    /// Nodes of `pool` in the snapshot (any state), not counting those on their way.
    pub fn pool_nodes(&self, pool: &str) -> u32 {
        let n = self
            .nodes
            .values()
            .filter(|n| n.spec.pool.as_deref() == Some(pool))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placing_and_unplacing_keeps_free_capacity() {
        let pool = PoolTemplate::new("general", 0, 3, Resources::new(1000, 1000, 10));
        let mut s = Snapshot::new();
        s.upsert_node(pool.node("w1"));
        let mut p = PodSpec::new("default", "a");
        p.cpu_millis = 300;
        p.memory_bytes = 100;
        p.node_name = Some("w1".into());
        s.place(p.clone()).unwrap();
        assert_eq!(s.node("w1").unwrap().free(), Resources::new(700, 900, 9));
        assert!((s.node("w1").unwrap().utilization() - 0.3).abs() < 1e-9);
        let mut q = p.clone();
        q.node_name = Some("w9".into());
        assert!(matches!(s.place(q), Err(SnapshotError::UnknownNode { .. })));
        assert_eq!(s.unplace("w1", "default", "a"), Some(p));
        assert_eq!(s.node("w1").unwrap().free(), Resources::new(1000, 1000, 10));
    }

    #[test]
    fn a_template_node_carries_its_pool_label() {
        let pool = PoolTemplate::new("highmem", 0, 3, Resources::new(1000, 1000, 10));
        let n = pool.node("w1");
        assert_eq!(
            n.labels.get(POOL_LABEL).map(String::as_str),
            Some("highmem")
        );
        assert_eq!(n.label(HOSTNAME_LABEL), Some("w1"));
        assert!(n.schedulable());
    }
}
