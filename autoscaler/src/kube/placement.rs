//! `PlacementObserver`: where pods run → `PlacementSnapshot` parts, then `PlacementChanged` deltas.
//!
//! Watches all Nodes and Pods, keeping only what the scheduling simulation folds (a `NodeSpec` per
//! node, a `PodSpec` per pod bound to a node and not finished), and lists PodDisruptionBudgets each
//! period to mark pods whose budget allows no disruption. Every `placement_interval` it publishes
//! what changed since its last publication; when it starts (it runs on the leader, so on every new
//! tenure) and every `placement_snapshot_interval` it publishes the whole picture instead, so a
//! reader that starts from any snapshot folds the same state (`bus::placement` has the writer and
//! the fold, and the stream budget is in `docs/ARCHITECTURE.md`).
//!
//! Nothing is published until both watches have listed once: a snapshot of half a cluster would
//! make the scale-down simulation see room that is not there.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bus::event::PlacementSnapshot;
use bus::placement::{PartSize, Placement, PlacementTracker};
use bus::scheduling::{LabelSelector, NodeSpec, PodRef, PodSpec, Resources, Taint, POOL_LABEL};
use bus::{Envelope, Metadata};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::error::Result;
use super::node_watcher::{NodeObservation, Readiness};
use super::pod_spec::{label_selector, pod_spec};

/// The `source` of the envelopes this observer emits.
pub const SOURCE: &str = "placement_observer";

/// The pool of the default configuration, for workers whose node has no pool label.
const DEFAULT_POOL: &str = "default";

/// The node as the simulation sees it. A node without the pool label is in the default pool when
/// its name has the workers' prefix, else in none (a server or a foreign node).
pub fn node_spec(node: &Node, name_prefix: &str) -> Option<NodeSpec> {
    let name = node.metadata.name.clone()?;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let pool = labels.get(POOL_LABEL).cloned().or_else(|| {
        (!name_prefix.is_empty() && name.starts_with(name_prefix)).then(|| DEFAULT_POOL.into())
    });
    let (cpu_millis, memory_bytes) = match super::utilisation::allocatable(node) {
        Ok(a) => a,
        Err(error) => {
            // The API server accepts no such quantity; a node we cannot read takes no pods.
            warn!(%error, node = %name, "unreadable allocatable");
            (0, 0)
        }
    };
    let pods = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
        .and_then(|a| a.get("pods"))
        .and_then(|q| q.0.parse::<u32>().ok())
        .unwrap_or(110);
    let spec = node.spec.as_ref();
    let taints = spec
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let k3s_form = match t.value.as_deref() {
                Some(v) if !v.is_empty() => format!("{}={v}:{}", t.key, t.effect),
                _ => format!("{}:{}", t.key, t.effect),
            };
            k3s_form.parse::<Taint>().ok()
        })
        .collect();
    let ready = NodeObservation::from_node(node).is_some_and(|o| o.readiness == Readiness::Ready);
    Some(NodeSpec {
        name,
        pool,
        allocatable: Resources::new(cpu_millis, memory_bytes, pods),
        labels,
        taints,
        cordoned: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        ready,
    })
}

/// The pod as placed: bound to a node and not finished (`None` otherwise).
pub fn placed_pod(pod: &Pod) -> Option<PodSpec> {
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if !bound || matches!(phase, Some("Succeeded") | Some("Failed")) {
        return None;
    }
    match pod_spec(pod) {
        Ok(p) => Some(p),
        Err(error) => {
            warn!(%error, pod = ?pod.metadata.name, "unreadable pod requests");
            None
        }
    }
}

/// A budget that allows no disruption now: the pods of `namespace` it selects cannot be evicted.
#[derive(Debug, Clone, PartialEq)]
pub struct Exhausted {
    pub namespace: String,
    pub selector: LabelSelector,
}

/// The budgets of `pdbs` that allow no disruption now. A budget without a selector or with one the
/// simulation cannot read selects nothing here (the drain still honours it).
pub fn exhausted_budgets(pdbs: &[PodDisruptionBudget]) -> Vec<Exhausted> {
    pdbs.iter()
        .filter(|p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.disruptions_allowed <= 0)
        })
        .filter_map(|p| {
            Some(Exhausted {
                namespace: p.metadata.namespace.clone().unwrap_or_default(),
                selector: label_selector(p.spec.as_ref()?.selector.as_ref()?)?,
            })
        })
        .collect()
}

/// A list or watch mirrored as specs, with re-lists swapped in whole when they complete.
struct Mirror<K, V> {
    items: BTreeMap<K, V>,
    relisting: Option<BTreeMap<K, V>>,
    listed: bool,
}

impl<K: Ord, V> Mirror<K, V> {
    fn new() -> Self {
        Mirror {
            items: BTreeMap::new(),
            relisting: None,
            listed: false,
        }
    }

    /// Applies one watch event; `spec` gives the key and, for objects kept, the spec.
    fn apply<T>(&mut self, event: watcher::Event<T>, spec: impl Fn(&T) -> (Option<K>, Option<V>)) {
        match event {
            watcher::Event::Init => self.relisting = Some(BTreeMap::new()),
            watcher::Event::InitApply(o) => {
                if let ((Some(k), Some(v)), Some(r)) = (spec(&o), self.relisting.as_mut()) {
                    r.insert(k, v);
                }
            }
            watcher::Event::InitDone => {
                if let Some(r) = self.relisting.take() {
                    self.items = r;
                }
                self.listed = true;
            }
            watcher::Event::Apply(o) => match spec(&o) {
                (Some(k), Some(v)) => {
                    self.items.insert(k, v);
                }
                (Some(k), None) => {
                    self.items.remove(&k);
                }
                _ => {}
            },
            watcher::Event::Delete(o) => {
                if let (Some(k), _) = spec(&o) {
                    self.items.remove(&k);
                }
            }
        }
    }
}

/// Publishes where pods run; see the module doc.
pub struct PlacementObserver {
    client: Client,
    metadata: Metadata,
    name_prefix: String,
    interval: Duration,
    snapshot_interval: Duration,
}

impl PlacementObserver {
    /// Deltas every `interval`, a whole snapshot at start and every `snapshot_interval`
    /// (`kubernetes.placement_interval` / `placement_snapshot_interval`).
    pub fn new(
        client: Client,
        metadata: Metadata,
        name_prefix: impl Into<String>,
        interval: Duration,
        snapshot_interval: Duration,
    ) -> Self {
        Self {
            client,
            metadata,
            name_prefix: name_prefix.into(),
            interval,
            snapshot_interval,
        }
    }

    /// Runs until `shutdown` completes or `tx`'s receiver is dropped. API failures are logged and
    /// retried with kube's default backoff, never returned.
    pub async fn run(
        self,
        tx: mpsc::Sender<Envelope>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        let nodes_api: Api<Node> = Api::all(self.client.clone());
        let pods_api: Api<Pod> = Api::all(self.client.clone());
        let node_events = watcher(nodes_api, watcher::Config::default()).default_backoff();
        let pod_events = watcher(pods_api, watcher::Config::default()).default_backoff();
        tokio::pin!(node_events, pod_events);
        let mut nodes: Mirror<String, NodeSpec> = Mirror::new();
        let mut pods: Mirror<PodRef, PodSpec> = Mirror::new();
        let mut budgets: Vec<Exhausted> = Vec::new();
        let mut tracker = PlacementTracker::new();
        let mut last_snapshot = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let prefix = self.name_prefix.clone();
        let node_key = |n: &Node| (n.metadata.name.clone(), node_spec(n, &prefix));
        let pod_key = |p: &Pod| {
            let key = match (&p.metadata.namespace, &p.metadata.name) {
                (Some(namespace), Some(name)) => Some(PodRef {
                    namespace: namespace.clone(),
                    name: name.clone(),
                }),
                _ => None,
            };
            (key, placed_pod(p))
        };
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                item = node_events.next() => match item {
                    Some(Ok(e)) => nodes.apply(e, node_key),
                    Some(Err(error)) => warn!(%error, "placement: node watch failed; retrying with backoff"),
                    None => return Ok(()),
                },
                item = pod_events.next() => match item {
                    Some(Ok(e)) => pods.apply(e, pod_key),
                    Some(Err(error)) => warn!(%error, "placement: pod watch failed; retrying with backoff"),
                    None => return Ok(()),
                },
                _ = tick.tick() => {
                    if !(nodes.listed && pods.listed) {
                        continue;
                    }
                    match self.budgets().await {
                        Ok(b) => budgets = b,
                        Err(error) => warn!(%error, "placement: cannot list PodDisruptionBudgets; keeping the last ones"),
                    }
                    let state = Placement::from_state(nodes.items.clone(), with_budgets(&pods.items, &budgets));
                    let due = !tracker.has_snapshot() || last_snapshot.elapsed() >= self.snapshot_interval;
                    let events: Vec<bus::Event> = if due {
                        last_snapshot = tokio::time::Instant::now();
                        let id = uuid::Uuid::new_v4().simple().to_string();
                        let parts: Vec<PlacementSnapshot> = tracker.snapshot(&id, state, PartSize::default());
                        info!(snapshot = %id, parts = parts.len(), nodes = nodes.items.len(), pods = pods.items.len(), "placement snapshot");
                        parts.into_iter().map(Into::into).collect()
                    } else {
                        tracker.change(state).into_iter().inspect(|c| {
                            debug!(nodes = c.nodes.len(), nodes_removed = c.nodes_removed.len(), pods = c.pods.len(), pods_removed = c.pods_removed.len(), "placement changed");
                        }).map(Into::into).collect()
                    };
                    for e in events {
                        if tx.send(Envelope::root(SOURCE, e, self.metadata.clone())).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    async fn budgets(&self) -> Result<Vec<Exhausted>> {
        let api: Api<PodDisruptionBudget> = Api::all(self.client.clone());
        let list = api
            .list(&Default::default())
            .await
            .map_err(super::error::KubeError::api("list poddisruptionbudgets"))?;
        Ok(exhausted_budgets(&list.items))
    }
}

/// The pods with `pdb_blocked` set where an exhausted budget selects them.
fn with_budgets(
    pods: &BTreeMap<PodRef, PodSpec>,
    budgets: &[Exhausted],
) -> BTreeMap<PodRef, PodSpec> {
    pods.iter()
        .map(|(k, p)| {
            let mut p = p.clone();
            p.pdb_blocked = budgets
                .iter()
                .any(|b| b.namespace == p.namespace && b.selector.matches(&p.labels));
            (k.clone(), p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec as K8sNodeSpec, NodeStatus, Taint as K8sTaint};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn k8s_node(name: &str, labels: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.spec = Some(K8sNodeSpec {
            unschedulable: Some(true),
            taints: Some(vec![K8sTaint {
                key: "dedicated".into(),
                value: Some("highmem".into()),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        n.status = Some(NodeStatus {
            allocatable: Some(
                [("cpu", "2"), ("memory", "4Gi"), ("pods", "30")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.into())))
                    .collect(),
            ),
            ..Default::default()
        });
        n
    }

    #[test]
    fn a_node_carries_pool_allocatable_taints_and_cordon() {
        let n = node_spec(&k8s_node("w-highmem-1", &[(POOL_LABEL, "highmem")]), "w-").unwrap();
        assert_eq!(n.pool.as_deref(), Some("highmem"));
        assert_eq!(n.allocatable, Resources::new(2000, 4 << 30, 30));
        assert_eq!(n.taints[0].to_string(), "dedicated=highmem:NoSchedule");
        assert!(n.cordoned);
        assert!(!n.ready, "no Ready condition");
        let plain = node_spec(&k8s_node("w-3", &[]), "w-").unwrap();
        assert_eq!(plain.pool.as_deref(), Some("default"));
        let server = node_spec(&k8s_node("server", &[]), "w-").unwrap();
        assert_eq!(server.pool, None);
    }

    #[test]
    fn only_bound_unfinished_pods_are_placed() {
        let mut p = Pod::default();
        p.metadata.name = Some("web".into());
        p.metadata.namespace = Some("default".into());
        assert!(placed_pod(&p).is_none(), "not bound");
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some("w-1".into()),
            ..Default::default()
        });
        assert_eq!(placed_pod(&p).unwrap().node_name.as_deref(), Some("w-1"));
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert!(placed_pod(&p).is_none(), "finished");
    }

    #[test]
    fn an_exhausted_budget_marks_the_pods_it_selects() {
        let pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "minAvailable": 1},
            "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}
        }))
        .unwrap();
        let budgets = exhausted_budgets(&[pdb]);
        assert_eq!(budgets.len(), 1);
        let mut web = PodSpec::new("default", "web-1");
        web.labels.insert("app".into(), "web".into());
        let mut other = web.clone();
        other.namespace = "other".into();
        let pods = [web, other].into_iter().map(|p| (p.pod_ref(), p)).collect();
        let marked = with_budgets(&pods, &budgets);
        let blocked: Vec<&str> = marked
            .values()
            .filter(|p| p.pdb_blocked)
            .map(|p| p.namespace.as_str())
            .collect();
        assert_eq!(blocked, ["default"]);
    }
}
