//! The node agent (k3s-agent-like): registers its Node, creates k3s's node-password Secret, heartbeats
//! (Lease renewal plus the Ready condition), marks the pods bound to it Running, and makes its own
//! process use the CPU and memory those pods declare ([`load`]).

pub mod load;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

use crate::controllers::node_lifecycle::NODE_LEASE_NAMESPACE;
use crate::objects::{condition_status, pod_is_terminal, pod_usage, HOSTNAME_LABEL};
use crate::time::{now_micro, now_rfc3339};
use load::LoadGenerator;
use primitives::{quantity, Backoff};

/// The kubelet's own `max-pods`.
pub const DEFAULT_MAX_PODS: u32 = 110;

/// What node the agent makes and how it behaves.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The Node's name.
    pub node_name: String,
    /// CPU capacity (`2`, `1500m`).
    pub cpu: String,
    /// Memory capacity (`2Gi`).
    pub memory: String,
    /// Extra node labels.
    pub labels: BTreeMap<String, String>,
    /// Node taints: `(key, value, effect)`.
    pub taints: Vec<(String, String, String)>,
    /// How often the Lease and the Ready condition are renewed.
    pub heartbeat: Duration,
    /// How often the pods bound here are looked at.
    pub pod_sync: Duration,
    /// Whether the process really uses the CPU and memory of its Running pods.
    pub simulate_load: bool,
    /// Pods the node takes at most (the kubelet's `max-pods`).
    pub max_pods: u32,
}

impl AgentOptions {
    /// Options for a node with this name and capacity, heartbeating every 5 s, with real load.
    pub fn new(node_name: &str, cpu: &str, memory: &str) -> Self {
        AgentOptions {
            node_name: node_name.into(),
            cpu: cpu.into(),
            memory: memory.into(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            heartbeat: Duration::from_secs(5),
            pod_sync: Duration::from_secs(1),
            simulate_load: true,
            max_pods: DEFAULT_MAX_PODS,
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The options do not make a node.
    #[error("invalid agent options: {0}")]
    Invalid(String),
    /// Registering the node failed.
    #[error("registering node {node}: {source}")]
    Register {
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// A taint flag `key=value:Effect` or `key:Effect`.
pub fn parse_taint(s: &str) -> Result<(String, String, String), AgentError> {
    let (kv, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| AgentError::Invalid(format!("taint {s:?} is not key=value:Effect")))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(AgentError::Invalid(format!(
            "taint {s:?} has an unknown effect {effect:?}"
        )));
    }
    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
    Ok((k.to_string(), v.to_string(), effect.to_string()))
}

/// Runs the agent until `shutdown` resolves. The Node is left in place on exit (as a k3s agent
/// leaves it), so it goes NotReady once its heartbeats are missed.
pub async fn run(
    client: Client,
    opts: AgentOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let cpu =
        quantity::cpu_millis(&opts.cpu).map_err(|e| AgentError::Invalid(format!("cpu: {e}")))?;
    let mem = quantity::memory_bytes(&opts.memory)
        .map_err(|e| AgentError::Invalid(format!("memory: {e}")))?;
    let agent = Agent {
        client,
        opts,
        started: now_rfc3339(),
    };
    let load = Arc::new(Mutex::new(LoadGenerator::new()));
    // The work is dropped at any await when shutdown comes: a heartbeat to an unreachable server
    // must not hold up `docker stop`.
    tokio::select! {
        _ = shutdown => {}
        _ = agent.work(&load, (cpu, allocatable_memory(mem))) => {}
    }
    tokio::task::spawn_blocking(move || lock(&load).stop())
        .await
        .ok();
    tracing::info!(node = %agent.opts.node_name, "agent stopped");
    Ok(())
}

fn lock(load: &Mutex<LoadGenerator>) -> std::sync::MutexGuard<'_, LoadGenerator> {
    load.lock().unwrap_or_else(|e| e.into_inner())
}

struct Agent {
    client: Client,
    opts: AgentOptions,
    /// When the agent started, the Ready condition's first transition.
    started: String,
}

impl Agent {
    /// Registers (retrying until the server answers, as a k3s agent waits for its server), then
    /// heartbeats and syncs pods forever.
    async fn work(&self, load: &Arc<Mutex<LoadGenerator>>, capacity: (u64, u64)) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            match self.register().await {
                Ok(()) => break,
                Err(e) => {
                    let pause = backoff.next_delay();
                    tracing::warn!(node = %self.opts.node_name, error = %e, retry_in = ?pause, "registration failed");
                    tokio::time::sleep(pause).await;
                }
            }
        }
        tracing::info!(node = %self.opts.node_name, cpu = %self.opts.cpu, memory = %self.opts.memory, "node registered");
        let mut heartbeat = tokio::time::interval(self.opts.heartbeat);
        let mut pod_sync = tokio::time::interval(self.opts.pod_sync);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = pod_sync.tick() => {
                    let Some((c, m)) = self.sync_pods().await else { continue };
                    if !self.opts.simulate_load {
                        continue;
                    }
                    // Never more than the node can give pods: past that the container would be
                    // OOM-killed, not the pod.
                    let target = (c.min(capacity.0), m.min(capacity.1));
                    if target != lock(load).target() {
                        tracing::info!(cpu_millis = target.0, memory_bytes = target.1, "load target");
                        // Stopping a burner joins its thread (up to one duty cycle): off the async threads.
                        let l = load.clone();
                        tokio::task::spawn_blocking(move || lock(&l).set_target(target.0, target.1)).await.ok();
                    }
                }
            }
        }
    }

    fn node_object(&self) -> Value {
        let name = &self.opts.node_name;
        let mut labels: BTreeMap<String, String> = BTreeMap::from([
            (HOSTNAME_LABEL.to_string(), name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            (
                "kubernetes.io/arch".to_string(),
                std::env::consts::ARCH
                    .replace("x86_64", "amd64")
                    .replace("aarch64", "arm64"),
            ),
            (
                "node.kubernetes.io/instance-type".to_string(),
                "k3s".to_string(),
            ),
        ]);
        labels.extend(self.opts.labels.clone());
        let taints: Vec<Value> = self
            .opts
            .taints
            .iter()
            .map(|(k, v, e)| {
                if v.is_empty() {
                    json!({"key": k, "effect": e})
                } else {
                    json!({"key": k, "value": v, "effect": e})
                }
            })
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels,
                "annotations": {"k3s.io/node-args": "[\"agent\"]", "node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"taints": taints, "providerID": format!("k3s://{name}")},
            "status": self.status(),
        })
    }

    fn status(&self) -> Value {
        let resources = json!({"cpu": self.opts.cpu, "memory": self.opts.memory, "pods": self.opts.max_pods.to_string(), "ephemeral-storage": "10Gi"});
        let mut allocatable = resources.clone();
        let mem = quantity::memory_bytes(&self.opts.memory).unwrap_or(0);
        allocatable["memory"] = json!(format!("{}Ki", allocatable_memory(mem) / 1024));
        let now = now_rfc3339();
        let cond = |t: &str, s: &str, reason: &str, msg: &str| {
            json!({"type": t, "status": s, "reason": reason, "message": msg,
                "lastHeartbeatTime": now, "lastTransitionTime": self.started})
        };
        json!({
            "capacity": resources,
            "allocatable": allocatable,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [{"type": "Hostname", "address": self.opts.node_name}],
            "nodeInfo": {
                "kubeletVersion": "v1.33.0+lab", "kubeProxyVersion": "v1.33.0+lab",
                "containerRuntimeVersion": "lab://1", "operatingSystem": "linux",
                "architecture": std::env::consts::ARCH, "osImage": "k3s-autoscaler lab",
                "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": self.started,
            },
        })
    }

    async fn register(&self) -> Result<(), AgentError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let name = &self.opts.node_name;
        let err = |source| AgentError::Register {
            node: name.clone(),
            source,
        };
        let obj = self.node_object();
        let node: Node = serde_json::from_value(obj.clone())
            .map_err(|e| AgentError::Invalid(format!("node object: {e}")))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // A restart: bring labels and taints up to date.
                let patch = json!({"metadata": {"labels": obj["metadata"]["labels"]}, "spec": {"taints": obj["spec"]["taints"]}});
                nodes
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(err)?;
            }
            Err(e) => return Err(err(e)),
        }
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": self.status()})),
            )
            .await
            .map_err(err)?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), "kube-system");
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}.node-password.k3s"), "namespace": "kube-system",
                "labels": {"k3s.io/node-name": name}},
            "type": "Opaque",
            "stringData": {},
            "data": {"hash": "bGFi"},
        }))
        .map_err(|e| AgentError::Invalid(format!("secret object: {e}")))?;
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(err(e)),
        }
        self.heartbeat().await;
        Ok(())
    }

    /// Renews the Lease and the Ready condition. Failures are logged: the next beat retries, and a
    /// node deleted under a running agent is not re-created (a kubelet does not either).
    async fn heartbeat(&self) {
        let name = &self.opts.node_name;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NODE_LEASE_NAMESPACE);
        let renew = json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()}});
        match leases
            .patch(name, &PatchParams::default(), &Patch::Merge(&renew))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let lease: Result<Lease, _> = serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": NODE_LEASE_NAMESPACE}, "spec": renew["spec"]}));
                if let Ok(lease) = lease {
                    if let Err(e) = leases.create(&PostParams::default(), &lease).await {
                        tracing::warn!(node = %name, error = %e, "creating the node lease failed");
                    }
                }
            }
            Err(e) => tracing::warn!(node = %name, error = %e, "renewing the node lease failed"),
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut status = self.status();
        match nodes.get_opt(name).await {
            Ok(Some(current)) => {
                let current = serde_json::to_value(&current).unwrap_or_default();
                if condition_status(&current, "Ready") != Some("True") {
                    tracing::info!(node = %name, "node is Ready again");
                    let now = now_rfc3339();
                    for c in status["conditions"].as_array_mut().into_iter().flatten() {
                        c["lastTransitionTime"] = json!(now);
                    }
                }
            }
            Ok(None) => {
                tracing::warn!(node = %name, "the node object is gone; not re-registering");
                return;
            }
            Err(e) => {
                tracing::warn!(node = %name, error = %e, "reading the node failed");
                return;
            }
        }
        if let Err(e) = nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
        {
            tracing::warn!(node = %name, error = %e, "posting node status failed");
        }
    }

    /// Marks pods bound here Running and Ready; returns the usage of the Running ones.
    async fn sync_pods(&self) -> Option<(u64, u64)> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", self.opts.node_name));
        let list = match pods.list(&lp).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(node = %self.opts.node_name, error = %e, "listing pods failed");
                return None;
            }
        };
        let (mut cpu, mut mem) = (0, 0);
        for (i, pod) in list.items.iter().enumerate() {
            let v = serde_json::to_value(pod).unwrap_or_default();
            if pod_is_terminal(&v) || !v["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            let (c, m) = pod_usage(&v);
            cpu += c;
            mem += m;
            let running =
                v["status"]["phase"] == "Running" && condition_status(&v, "Ready") == Some("True");
            if running {
                continue;
            }
            let ns = v["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = v["metadata"]["name"].as_str().unwrap_or("");
            let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            if let Err(e) = api
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(&running_status(&v, i)),
                )
                .await
            {
                tracing::warn!(pod = name, namespace = ns, error = %e, "marking pod Running failed");
            } else {
                tracing::debug!(pod = name, namespace = ns, "pod running");
            }
        }
        Some((cpu, mem))
    }
}

/// Memory pods may use: capacity less the kubelet's default hard eviction threshold (100 MiB), which
/// also leaves the agent's own memory room under a container limit of the node's size.
pub fn allocatable_memory(capacity: u64) -> u64 {
    const RESERVE: u64 = 100 << 20;
    if capacity >= 2 * RESERVE {
        capacity - RESERVE
    } else {
        capacity / 2
    }
}

fn running_status(pod: &Value, index: usize) -> Value {
    let now = now_rfc3339();
    let started = pod["status"]["startTime"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| now.clone());
    let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    let containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": true, "started": true,
            "restartCount": 0, "state": {"running": {"startedAt": started}}}))
        .collect();
    // An address that looks like a pod IP (from the uid, so distinct); nothing routes to it.
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    let h = uid.bytes().fold(index as u32, |h, b| {
        h.wrapping_mul(31).wrapping_add(u32::from(b))
    });
    let ip = format!("10.42.{}.{}", (h >> 8) % 256, h % 250 + 2);
    json!({"status": {
        "phase": "Running",
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
        "containerStatuses": containers,
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": started,
        "qosClass": "Burstable",
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocatable_memory_keeps_the_eviction_reserve() {
        assert_eq!(allocatable_memory(2 << 30), (2 << 30) - (100 << 20));
        assert_eq!(allocatable_memory(100 << 20), 50 << 20);
    }

    #[test]
    fn taint_flags_parse_with_and_without_values() {
        assert_eq!(
            parse_taint("a=b:NoSchedule").unwrap(),
            ("a".into(), "b".into(), "NoSchedule".into())
        );
        assert_eq!(
            parse_taint("a:NoExecute").unwrap(),
            ("a".into(), "".into(), "NoExecute".into())
        );
        assert!(parse_taint("a=b").is_err());
        assert!(parse_taint("a=b:Sometimes").is_err());
    }
}
