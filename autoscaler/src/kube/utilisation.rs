//! Per-worker utilisation as cluster-autoscaler sees it — requests of the pods on a node vs its
//! allocatable — and, where `metrics.k8s.io` is served, actual usage vs allocatable.
//!
//! Workers are the nodes whose name starts with `workers.name_prefix`; every such node counts, Ready or
//! not (a NotReady worker still holds its pods' requests until they are evicted). Averages are plain
//! means over the workers; with no worker they are 0. Percentages are plain numbers (`85.0` is 85 %).

use std::collections::HashMap;

use bus::event::{MetricsSampled, NodeUsage};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};

use super::error::{api_status, KubeError, Result};
use super::pod_spec::pod_requests;
use primitives::quantity;

/// Utilisation of the workers in one sample.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Utilisation {
    /// Per worker, sorted by name.
    pub nodes: Vec<NodeUsage>,
    /// Mean CPU % over the workers.
    pub cpu_avg: f64,
    /// Mean memory % over the workers.
    pub memory_avg: f64,
}

impl Utilisation {
    /// As the MetricsCollector's raw sample; `source` is `pod_requests` or `metrics_api`.
    pub fn into_sample(self, source: &str) -> MetricsSampled {
        MetricsSampled {
            workers: u32::try_from(self.nodes.len()).unwrap_or(u32::MAX),
            cpu_avg: self.cpu_avg,
            memory_avg: self.memory_avg,
            source: source.to_string(),
            nodes: self.nodes,
        }
    }

    fn from_nodes(mut nodes: Vec<NodeUsage>) -> Self {
        nodes.sort_by(|a, b| a.node_name.cmp(&b.node_name));
        let (cpu_avg, memory_avg) = bus::event::mean_usage(&nodes);
        Self {
            nodes,
            cpu_avg,
            memory_avg,
        }
    }
}

/// A node's allocatable (cpu millicores, memory bytes), falling back to its capacity.
pub fn allocatable(node: &Node) -> Result<(u64, u64)> {
    let status = node.status.as_ref();
    super::cpu_and_memory(
        status.and_then(|s| s.allocatable.as_ref()),
        status.and_then(|s| s.capacity.as_ref()),
    )
}

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    }
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

/// Requests of the non-terminated pods bound to each worker vs its allocatable. Pure.
pub fn from_requests<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    pods: impl IntoIterator<Item = &'a Pod>,
    is_worker: impl Fn(&str) -> bool,
) -> Result<Utilisation> {
    let mut requested: HashMap<&str, (u64, u64)> = HashMap::new();
    for pod in pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let (cpu, mem) = pod_requests(pod)?;
        let e = requested.entry(node).or_default();
        e.0 = e.0.saturating_add(cpu);
        e.1 = e.1.saturating_add(mem);
    }
    let mut usage = Vec::new();
    for node in nodes {
        let name = node_name(node);
        if !is_worker(name) {
            continue;
        }
        let (cpu, mem) = allocatable(node)?;
        let (rc, rm) = requested.get(name).copied().unwrap_or_default();
        usage.push(NodeUsage {
            node_name: name.to_string(),
            cpu: percent(rc, cpu),
            memory: percent(rm, mem),
        });
    }
    Ok(Utilisation::from_nodes(usage))
}

/// [`from_requests`] over the cluster's current Nodes and Pods, for nodes named `name_prefix…`.
pub async fn requests_utilisation(client: &Client, name_prefix: &str) -> Result<Utilisation> {
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes = nodes
        .list(&ListParams::default())
        .await
        .map_err(KubeError::api("list nodes"))?;
    let pods = pods
        .list(&ListParams::default())
        .await
        .map_err(KubeError::api("list pods"))?;
    from_requests(&nodes.items, &pods.items, |n| n.starts_with(name_prefix))
}

/// The `metrics.k8s.io/v1beta1` NodeMetrics resource.
pub fn node_metrics_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "NodeMetrics"),
        "nodes",
    )
}

/// Usage (cpu millicores, memory bytes) by node name, from NodeMetrics objects. Pure.
pub fn usage_by_node(metrics: &[DynamicObject]) -> Result<HashMap<String, (u64, u64)>> {
    let mut out = HashMap::new();
    for m in metrics {
        let Some(name) = m.metadata.name.clone() else {
            continue;
        };
        let usage = &m.data["usage"];
        let cpu = usage["cpu"]
            .as_str()
            .map(quantity::cpu_millis)
            .transpose()?;
        let mem = usage["memory"]
            .as_str()
            .map(quantity::memory_bytes)
            .transpose()?;
        out.insert(name, (cpu.unwrap_or(0), mem.unwrap_or(0)));
    }
    Ok(out)
}

/// Actual usage vs allocatable from `metrics.k8s.io`, for nodes named `name_prefix…` that have metrics.
/// [`KubeError::MetricsNotServed`] when the group is not served (404, or 503 from an unavailable
/// APIService), so the caller can fall back to [`requests_utilisation`].
pub async fn metrics_utilisation(client: &Client, name_prefix: &str) -> Result<Utilisation> {
    let metrics: Api<DynamicObject> = Api::all_with(client.clone(), &node_metrics_resource());
    let listed = match metrics.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) => {
            return Err(match api_status(&e) {
                Some(status @ (404 | 503)) => KubeError::MetricsNotServed { status },
                _ => KubeError::api("list node metrics")(e),
            })
        }
    };
    let used = usage_by_node(&listed.items)?;
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = nodes
        .list(&ListParams::default())
        .await
        .map_err(KubeError::api("list nodes"))?;
    let mut usage = Vec::new();
    for node in &nodes.items {
        let name = node_name(node);
        let Some((uc, um)) = used.get(name) else {
            continue;
        };
        if !name.starts_with(name_prefix) {
            continue;
        }
        let (cpu, mem) = allocatable(node)?;
        usage.push(NodeUsage {
            node_name: name.to_string(),
            cpu: percent(*uc, cpu),
            memory: percent(*um, mem),
        });
    }
    Ok(Utilisation::from_nodes(usage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, NodeStatus, PodSpec, PodStatus, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn res(cpu: &str, mem: &str) -> BTreeMap<String, Quantity> {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(mem.into())),
        ])
    }

    fn node(name: &str, cpu: &str, mem: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                allocatable: Some(res(cpu, mem)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(node: &str, cpu: &str, mem: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(res(cpu, mem)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn requests_over_allocatable_averaged_over_workers() {
        let nodes = [
            node("w-1", "2", "4Gi"),
            node("w-2", "1", "2Gi"),
            node("server", "4", "8Gi"),
        ];
        let pods = [
            pod("w-1", "1", "1Gi", "Running"),
            pod("w-1", "500m", "1Gi", "Pending"),
            pod("w-1", "2", "2Gi", "Succeeded"),
            pod("server", "4", "8Gi", "Running"),
        ];
        let u = from_requests(&nodes, &pods, |n| n.starts_with("w-")).unwrap();
        assert_eq!(u.nodes.len(), 2);
        assert_eq!(u.nodes[0].node_name, "w-1");
        assert_eq!(u.nodes[0].cpu, 75.0);
        assert_eq!(u.nodes[0].memory, 50.0);
        assert_eq!(u.nodes[1].cpu, 0.0);
        assert_eq!(u.cpu_avg, 37.5);
        assert_eq!(u.memory_avg, 25.0);
        let sample = u.into_sample("pod_requests");
        assert_eq!(sample.workers, 2);
        assert_eq!(sample.source, "pod_requests");
    }

    #[test]
    fn no_workers_means_zero_averages() {
        let u = from_requests(&[], &[], |_| true).unwrap();
        assert_eq!(u, Utilisation::default());
    }

    #[test]
    fn node_metrics_usage_is_read_from_the_dynamic_object() {
        let mut m = DynamicObject::new("w-1", &node_metrics_resource());
        m.data = serde_json::json!({"usage": {"cpu": "250000000n", "memory": "1024Ki"}});
        let u = usage_by_node(&[m]).unwrap();
        assert_eq!(u["w-1"], (250, 1024 * 1024));
    }
}
