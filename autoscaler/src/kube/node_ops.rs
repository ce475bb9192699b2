//! `KubeNodeOps`: what the NodeManager does to a worker's Node — cordon + taint, drain, delete, annotate.
//!
//! Removal follows cluster-autoscaler: first [`KubeNodeOps::cordon`] (`spec.unschedulable` plus our own
//! `NoSchedule` taint [`TO_BE_DELETED_TAINT`], like `ToBeDeletedByClusterAutoscaler`, so nothing new lands
//! there), then [`KubeNodeOps::drain`] through the Eviction API (`policy/v1`), then
//! [`KubeNodeOps::delete`] (the Node and k3s's `<node>.node-password.k3s` secret, so the name can join
//! again). `drain` does not cordon by itself: call `cordon` first, or evicted pods may come back.
//!
//! The drain refuses nodes annotated `cluster-autoscaler.kubernetes.io/scale-down-disabled: "true"` and
//! pods annotated `cluster-autoscaler.kubernetes.io/safe-to-evict: "false"` before evicting anything; skips
//! DaemonSet pods, mirror (static) pods and finished pods; retries evictions a PodDisruptionBudget refuses
//! (HTTP 429) with backoff until the drain deadline; and waits until the evicted pods are gone from the node.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Secret, Taint};
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use primitives::Backoff;
use serde_json::json;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::error::{api_status, is_not_found, KubeError, Result};

/// Our NoSchedule taint on a node being removed.
pub const TO_BE_DELETED_TAINT: &str = "k3s-autoscaler/to-be-deleted";
/// Annotation with the last scaling decision or blocked reason about a node (kubernetes/autoscaler#8710).
pub const LAST_DECISION_ANNOTATION: &str = "k3s-autoscaler/last-decision";
/// Node annotation that forbids scaling the node down.
pub const SCALE_DOWN_DISABLED_ANNOTATION: &str =
    "cluster-autoscaler.kubernetes.io/scale-down-disabled";
/// Pod annotation that, set to `"false"`, forbids evicting the pod.
pub const SAFE_TO_EVICT_ANNOTATION: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
/// Set on mirror pods (static pods the kubelet mirrors into the API): they cannot be evicted.
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Longest annotation value we write; a decision summary, not a log.
const MAX_ANNOTATION_LEN: usize = 256;
/// Attempts of a read-modify-write of the node against concurrent writers (409 Conflict).
const CONFLICT_RETRIES: u32 = 5;

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// `namespace/name` of the pods evicted and gone from the node.
    pub evicted: Vec<String>,
    /// `namespace/name` of the pods left in place (DaemonSet, mirror, finished).
    pub skipped: Vec<String>,
}

/// What [`KubeNodeOps::delete`] removed (`false`: it was already gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub node: bool,
    pub password_secret: bool,
}

/// The Kubernetes side of adding and removing workers.
#[derive(Clone)]
pub struct KubeNodeOps {
    client: Client,
    /// Bound of a whole drain (`scaling.drain_timeout`).
    drain_timeout: Duration,
    /// First and longest pause between eviction rounds refused by a PDB.
    eviction_backoff: (Duration, Duration),
    /// How often the node's pods are re-listed while waiting for evicted pods to go.
    poll_interval: Duration,
    /// Grace period passed with evictions (`None`: the pod's own).
    grace_period: Option<u32>,
}

impl KubeNodeOps {
    /// Node operations with drains bounded by `drain_timeout`.
    pub fn new(client: Client, drain_timeout: Duration) -> Self {
        Self {
            client,
            drain_timeout,
            eviction_backoff: (Duration::from_millis(500), Duration::from_secs(5)),
            poll_interval: Duration::from_millis(500),
            grace_period: None,
        }
    }

    /// Sets the pause between eviction retries (tests shorten it).
    pub fn with_eviction_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.eviction_backoff = (initial, max);
        self
    }

    /// Sets how often the node's pods are checked while waiting for them to go.
    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// Passes this termination grace period with each eviction.
    pub fn with_grace_period(mut self, seconds: Option<u32>) -> Self {
        self.grace_period = seconds;
        self
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    async fn get_node(&self, node: &str) -> Result<Node> {
        self.nodes()
            .get_opt(node)
            .await
            .map_err(KubeError::api("get node"))?
            .ok_or_else(|| KubeError::NodeNotFound(node.to_string()))
    }

    /// Marks `node` unschedulable and adds our `NoSchedule` taint. Idempotent.
    pub async fn cordon(&self, node: &str) -> Result<()> {
        let value = chrono::Utc::now().timestamp().to_string();
        self.update_scheduling(node, true, |taints| {
            if !taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT) {
                taints.push(Taint {
                    key: TO_BE_DELETED_TAINT.to_string(),
                    value: Some(value.clone()),
                    effect: "NoSchedule".to_string(),
                    time_added: None,
                });
            }
        })
        .await?;
        info!(node, "cordoned and tainted");
        Ok(())
    }

    /// Undoes [`KubeNodeOps::cordon`]: schedulable again, our taint removed. Idempotent.
    pub async fn uncordon(&self, node: &str) -> Result<()> {
        self.update_scheduling(node, false, |taints| {
            taints.retain(|t| t.key != TO_BE_DELETED_TAINT)
        })
        .await?;
        info!(node, "uncordoned");
        Ok(())
    }

    /// Read-modify-write of `spec.unschedulable` and `spec.taints`. A merge patch replaces the taint
    /// list whole, so the patch carries the resourceVersion it was computed from and a 409 starts over.
    async fn update_scheduling(
        &self,
        node: &str,
        unschedulable: bool,
        edit: impl Fn(&mut Vec<Taint>),
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.get_node(node).await?;
            let spec = current.spec.unwrap_or_default();
            let old_taints = spec.taints.unwrap_or_default();
            let mut taints = old_taints.clone();
            edit(&mut taints);
            if spec.unschedulable.unwrap_or(false) == unschedulable && taints == old_taints {
                return Ok(());
            }
            let patch = json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "spec": {
                    "unschedulable": if unschedulable { json!(true) } else { json!(null) },
                    "taints": taints,
                },
            });
            match self
                .nodes()
                .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if api_status(&e) == Some(409) && attempt < CONFLICT_RETRIES => {
                    debug!(node, attempt, "node changed meanwhile; retrying");
                }
                Err(e) if is_not_found(&e) => return Err(KubeError::NodeNotFound(node.into())),
                Err(e) => return Err(KubeError::api("patch node")(e)),
            }
        }
    }

    /// Sets annotation `key` to `value` on `node` (values longer than 256 bytes are cut).
    pub async fn annotate(&self, node: &str, key: &str, value: &str) -> Result<()> {
        let mut value = value.to_string();
        if value.len() > MAX_ANNOTATION_LEN {
            let mut cut = MAX_ANNOTATION_LEN;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
        }
        let patch = json!({"metadata": {"annotations": {key: value}}});
        match self
            .nodes()
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(KubeError::NodeNotFound(node.into())),
            Err(e) => Err(KubeError::api("annotate node")(e)),
        }
    }

    /// Writes the last decision or blocked reason about `node` ([`LAST_DECISION_ANNOTATION`]).
    pub async fn annotate_decision(&self, node: &str, text: &str) -> Result<()> {
        self.annotate(node, LAST_DECISION_ANNOTATION, text).await
    }

    /// Evicts the pods of `node`; see the module doc. Bounded by the drain timeout.
    pub async fn drain(&self, node: &str) -> Result<DrainReport> {
        self.drain_within(node, self.drain_timeout).await
    }

    /// As [`KubeNodeOps::drain`], bounded by `timeout` instead of the configured drain timeout.
    pub async fn drain_within(&self, node: &str, timeout: Duration) -> Result<DrainReport> {
        let deadline = Instant::now() + timeout;
        let n = self.get_node(node).await?;
        if annotation(
            n.metadata.annotations.as_ref(),
            SCALE_DOWN_DISABLED_ANNOTATION,
        ) == Some("true")
        {
            return Err(KubeError::ScaleDownDisabled { node: node.into() });
        }
        let pods = self.pods_on(node).await?;
        let mut report = DrainReport::default();
        let mut to_evict = Vec::new();
        for pod in pods {
            let id = pod_id(&pod);
            if !needs_eviction(&pod) {
                report.skipped.push(id);
                continue;
            }
            if annotation(pod.metadata.annotations.as_ref(), SAFE_TO_EVICT_ANNOTATION)
                == Some("false")
            {
                return Err(KubeError::SafeToEvictFalse {
                    node: node.into(),
                    pod: id,
                });
            }
            to_evict.push(pod);
        }

        // Evict in rounds; a round's refusals (PDB) wait for the next round.
        let mut remaining = to_evict.clone();
        let mut backoff = Backoff::new(self.eviction_backoff.0, self.eviction_backoff.1);
        loop {
            let mut refused = Vec::new();
            for pod in remaining {
                match self.evict(&pod, deadline, timeout).await? {
                    Eviction::Done => debug!(node, pod = %pod_id(&pod), "evicted"),
                    Eviction::Refused => refused.push(pod),
                }
            }
            if refused.is_empty() {
                break;
            }
            let names: Vec<String> = refused.iter().map(pod_id).collect();
            // The pause this round would wait, without taking it yet.
            let pause = backoff.delay_for(backoff.attempts() + 1);
            if Instant::now() + pause >= deadline {
                warn!(node, pods = ?names, "drain blocked by a PodDisruptionBudget until the deadline");
                return Err(KubeError::PdbBlocked {
                    node: node.into(),
                    pods: names,
                    timeout,
                });
            }
            debug!(node, pods = ?names, ?pause, "evictions refused by a PodDisruptionBudget; retrying");
            tokio::time::sleep(backoff.next_delay()).await;
            remaining = refused;
        }

        // Wait until every evicted pod (by uid: a replacement may reuse a name) has left the node.
        let evicted: HashSet<String> = to_evict
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        loop {
            let still: Vec<String> = self
                .pods_on(node)
                .await?
                .iter()
                .filter(|p| p.metadata.uid.as_ref().is_some_and(|u| evicted.contains(u)))
                .map(pod_id)
                .collect();
            if still.is_empty() {
                break;
            }
            if Instant::now() + self.poll_interval >= deadline {
                return Err(KubeError::DrainTimeout {
                    node: node.into(),
                    pods: still,
                    timeout,
                });
            }
            tokio::time::sleep(self.poll_interval).await;
        }
        report.evicted = to_evict.iter().map(pod_id).collect();
        info!(
            node,
            evicted = report.evicted.len(),
            skipped = report.skipped.len(),
            "drained"
        );
        Ok(report)
    }

    async fn pods_on(&self, node: &str) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
        Ok(pods
            .list(&lp)
            .await
            .map_err(KubeError::api("list pods"))?
            .items
            .into_iter()
            // Guard against a server that ignores the field selector.
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .collect())
    }

    /// One eviction; transient failures are retried here until `deadline`.
    async fn evict(&self, pod: &Pod, deadline: Instant, timeout: Duration) -> Result<Eviction> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        // A full policy/v1 Eviction: kube's `Api::evict` sends `delete_options` (snake case), which the
        // API server ignores, so a grace period would be lost.
        let mut body = json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
        });
        if let Some(g) = self.grace_period {
            body["deleteOptions"] = json!({"gracePeriodSeconds": g});
        }
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let mut backoff = Backoff::new(self.eviction_backoff.0, self.eviction_backoff.1);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let result = match tokio::time::timeout(left, self.post_eviction(ns, name, &body)).await
            {
                Ok(r) => r,
                Err(_) => {
                    return Err(KubeError::DrainTimeout {
                        node: node_of(pod),
                        pods: vec![pod_id(pod)],
                        timeout,
                    })
                }
            };
            match result {
                Ok(_) => return Ok(Eviction::Done),
                Err(e) if is_not_found(&e) => return Ok(Eviction::Done),
                Err(e) if api_status(&e) == Some(429) => return Ok(Eviction::Refused),
                Err(e) => {
                    let err = KubeError::api("evict pod")(e);
                    let pause = backoff.delay_for(backoff.attempts() + 1);
                    if !err.retryable() || Instant::now() + pause >= deadline {
                        return Err(err);
                    }
                    warn!(error = %err, pod = %pod_id(pod), "eviction failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    async fn post_eviction(&self, ns: &str, name: &str, body: &[u8]) -> kube::Result<String> {
        let mut req = kube::core::Request::new(format!("/api/v1/namespaces/{ns}/pods"))
            .evict(name, &EvictParams::default())
            .map_err(kube::Error::BuildRequest)?;
        *req.body_mut() = body.to_vec();
        self.client.request_text(req).await
    }

    /// Deletes the Node object and k3s's `<node>.node-password.k3s` secret in `kube-system`; either being
    /// gone already (404) is success.
    pub async fn delete(&self, node: &str) -> Result<Deleted> {
        let node_deleted = match self.nodes().delete(node, &DeleteParams::default()).await {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(KubeError::api("delete node")(e)),
        };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), "kube-system");
        let secret = password_secret_name(node);
        let secret_deleted = match secrets.delete(&secret, &DeleteParams::default()).await {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(KubeError::api("delete node password secret")(e)),
        };
        info!(node, node_deleted, secret_deleted, "deleted node");
        Ok(Deleted {
            node: node_deleted,
            password_secret: secret_deleted,
        })
    }
}

/// The secret in which k3s keeps a node's password; a node of that name cannot join again while it exists.
pub fn password_secret_name(node: &str) -> String {
    format!("{node}.node-password.k3s")
}

enum Eviction {
    Done,
    /// 429: a PodDisruptionBudget does not allow it now.
    Refused,
}

fn annotation<'a>(
    annotations: Option<&'a std::collections::BTreeMap<String, String>>,
    key: &str,
) -> Option<&'a str> {
    annotations.and_then(|a| a.get(key)).map(String::as_str)
}

fn pod_id(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// Whether a drain must evict `pod`: not finished, not a DaemonSet's, not a mirror pod.
pub fn needs_eviction(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION))
    {
        return false;
    }
    let daemonset = pod
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|os| os.iter().any(|o| o.kind == "DaemonSet"));
    !daemonset
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(owner: Option<&str>, phase: &str, mirror: bool) -> Pod {
        let mut annotations = std::collections::BTreeMap::new();
        if mirror {
            annotations.insert(MIRROR_POD_ANNOTATION.to_string(), "x".to_string());
        }
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                annotations: Some(annotations),
                owner_references: owner.map(|k| {
                    vec![OwnerReference {
                        kind: k.into(),
                        name: "o".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn daemonset_mirror_and_finished_pods_are_not_evicted() {
        assert!(needs_eviction(&pod(Some("ReplicaSet"), "Running", false)));
        assert!(needs_eviction(&pod(None, "Pending", false)));
        assert!(!needs_eviction(&pod(Some("DaemonSet"), "Running", false)));
        assert!(!needs_eviction(&pod(None, "Running", true)));
        assert!(!needs_eviction(&pod(
            Some("ReplicaSet"),
            "Succeeded",
            false
        )));
        assert!(!needs_eviction(&pod(None, "Failed", false)));
    }

    #[test]
    fn the_password_secret_is_named_like_k3s_names_it() {
        assert_eq!(
            password_secret_name("k3s-worker-1"),
            "k3s-worker-1.node-password.k3s"
        );
    }
}
