//! The decision core's I/O traits (`handlers::traits`) implemented on the real adapters: Docker for
//! workers, Kubernetes for nodes, webhooks ([`crate::webhooks`]) for alerts.

use std::sync::Arc;
use std::time::Duration;

use handlers::traits::{ActionError, NodeOps, Removal, WorkerPool};

use crate::docker::DockerHosts;
use crate::intents::RemovalIntents;
use crate::kube::KubeNodeOps;
use crate::webhooks::Webhooks;

/// How long our own removal of a node silences the watchers (drain + stop + delete).
const REMOVAL_INTENT: Duration = Duration::from_secs(600);

/// Workers through the Docker engines (each pool on its own, warm-pool aware), recording our
/// removals so the watchers do not report them.
pub struct DockerWorkers {
    pub pool: Arc<DockerHosts>,
    pub intents: RemovalIntents,
}

impl WorkerPool for DockerWorkers {
    async fn create_worker(&self, name: &str, pool: &str) -> Result<String, ActionError> {
        WorkerPool::create_worker(self.pool.as_ref(), name, pool).await
    }

    async fn remove_worker(&self, name: &str, keep_warm: bool) -> Result<Removal, ActionError> {
        self.intents.removing(name, REMOVAL_INTENT);
        WorkerPool::remove_worker(self.pool.as_ref(), name, keep_warm).await
    }
}

/// Nodes through the Kubernetes API.
pub struct KubeNodes {
    pub ops: KubeNodeOps,
    pub intents: RemovalIntents,
}

fn kube_err(e: crate::kube::KubeError) -> ActionError {
    // The stable code first (`pdb`, `drain_timeout`, …), so the failure event says why at a glance.
    let message = format!("{}: {e}", e.code());
    if e.retryable() {
        ActionError::retryable(message)
    } else {
        ActionError::permanent(message)
    }
}

impl NodeOps for KubeNodes {
    async fn cordon_and_taint(&self, node: &str) -> Result<(), ActionError> {
        self.intents.removing(node, REMOVAL_INTENT);
        self.ops.cordon(node).await.map_err(kube_err)
    }

    async fn uncordon(&self, node: &str) -> Result<(), ActionError> {
        self.intents.done(node);
        self.ops.uncordon(node).await.map_err(kube_err)
    }

    async fn drain(&self, node: &str, timeout: Duration) -> Result<u32, ActionError> {
        self.intents.removing(node, REMOVAL_INTENT);
        let report = self
            .ops
            .drain_within(node, timeout)
            .await
            .map_err(kube_err)?;
        Ok(u32::try_from(report.evicted.len()).unwrap_or(u32::MAX))
    }

    async fn delete_node(&self, node: &str) -> Result<(), ActionError> {
        self.intents.removing(node, REMOVAL_INTENT);
        self.ops.delete(node).await.map(|_| ()).map_err(kube_err)
    }

    async fn annotate(&self, node: &str, text: &str) -> Result<(), ActionError> {
        self.ops
            .annotate_decision(node, text)
            .await
            .map_err(kube_err)
    }
}

/// The real adapters the executor acts through. In a dry run there are none: decisions are published,
/// nothing is done.
pub struct Adapters {
    pub workers: DockerWorkers,
    pub nodes: KubeNodes,
    pub alerts: Webhooks,
}
