//! The I/O boundary: small async traits that `autoscaler` implements (Docker, Kubernetes, webhooks),
//! plus `Fake*` / `Recording*` doubles for tests. Std futures only: no runtime is assumed.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use crate::alerts::Alert;

/// Why an effect failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// Already free of secrets (adapters redact before building it).
    pub message: String,
    pub retryable: bool,
}

impl ActionError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// What [`WorkerPool::remove_worker`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// The container is gone (or was not there).
    Removed,
    /// Asked to keep it warm: the container is stopped and kept.
    KeptWarm,
}

/// Worker containers (`DockerWorkerPool`).
pub trait WorkerPool: Send + Sync {
    /// Creates and starts worker `name` of node pool `pool` (`default` when no pools are
    /// configured); an existing worker of that name is success (409). Returns the container id.
    fn create_worker(
        &self,
        name: &str,
        pool: &str,
    ) -> impl Future<Output = Result<String, ActionError>> + Send;
    /// Stops and removes the container with its volumes; a missing one is success. With
    /// `keep_warm`, stops it and keeps it (a missing one is [`Removal::Removed`]).
    fn remove_worker(
        &self,
        name: &str,
        keep_warm: bool,
    ) -> impl Future<Output = Result<Removal, ActionError>> + Send;
}

/// Node operations (`KubeNodeOps`).
pub trait NodeOps: Send + Sync {
    fn cordon_and_taint(&self, node: &str) -> impl Future<Output = Result<(), ActionError>> + Send;
    fn uncordon(&self, node: &str) -> impl Future<Output = Result<(), ActionError>> + Send;
    /// Evicts the node's pods (PDB-aware) within `timeout`; returns how many were evicted.
    fn drain(
        &self,
        node: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<u32, ActionError>> + Send;
    /// Deletes the Node object and `<node>.node-password.k3s`; a missing one is success.
    fn delete_node(&self, node: &str) -> impl Future<Output = Result<(), ActionError>> + Send;
    fn annotate(
        &self,
        node: &str,
        text: &str,
    ) -> impl Future<Output = Result<(), ActionError>> + Send;
}

/// Alert delivery (webhooks, with retries and backoff inside).
pub trait Notifier: Send + Sync {
    fn notify(&self, alert: &Alert) -> impl Future<Output = Result<(), ActionError>> + Send;
}

/// A worker pool that records calls and fails the names it is told to.
#[derive(Debug, Default)]
pub struct FakeWorkerPool {
    pub calls: Mutex<Vec<String>>,
    pub fail_create: Mutex<Vec<(String, ActionError)>>,
}

impl FakeWorkerPool {
    fn record(&self, call: String) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call);
        }
    }

    /// The calls so far, e.g. `create k3s-worker-3`, `create k3s-worker-highmem-1 pool=highmem`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl WorkerPool for FakeWorkerPool {
    async fn create_worker(&self, name: &str, pool: &str) -> Result<String, ActionError> {
        // The default pool's calls read as they did before pools.
        if pool == crate::policy::DEFAULT_POOL {
            self.record(format!("create {name}"));
        } else {
            self.record(format!("create {name} pool={pool}"));
        }
        let fail = self
            .fail_create
            .lock()
            .ok()
            .and_then(|f| f.iter().find(|(n, _)| n == name).map(|(_, e)| e.clone()));
        match fail {
            Some(e) => Err(e),
            None => Ok(format!("container-{name}")),
        }
    }

    async fn remove_worker(&self, name: &str, keep_warm: bool) -> Result<Removal, ActionError> {
        if keep_warm {
            self.record(format!("stop {name} (warm)"));
            Ok(Removal::KeptWarm)
        } else {
            self.record(format!("remove {name}"));
            Ok(Removal::Removed)
        }
    }
}

/// Node operations that record calls and always succeed (`drain` evicts `evicted` pods).
#[derive(Debug, Default)]
pub struct FakeNodeOps {
    pub calls: Mutex<Vec<String>>,
    pub evicted: u32,
}

impl FakeNodeOps {
    fn record(&self, call: String) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call);
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl NodeOps for FakeNodeOps {
    async fn cordon_and_taint(&self, node: &str) -> Result<(), ActionError> {
        self.record(format!("cordon {node}"));
        Ok(())
    }
    async fn uncordon(&self, node: &str) -> Result<(), ActionError> {
        self.record(format!("uncordon {node}"));
        Ok(())
    }
    async fn drain(&self, node: &str, _timeout: Duration) -> Result<u32, ActionError> {
        self.record(format!("drain {node}"));
        Ok(self.evicted)
    }
    async fn delete_node(&self, node: &str) -> Result<(), ActionError> {
        self.record(format!("delete {node}"));
        Ok(())
    }
    async fn annotate(&self, node: &str, _text: &str) -> Result<(), ActionError> {
        self.record(format!("annotate {node}"));
        Ok(())
    }
}

/// A notifier that keeps every alert.
#[derive(Debug, Default)]
pub struct RecordingNotifier {
    pub alerts: Mutex<Vec<Alert>>,
}

impl RecordingNotifier {
    pub fn alerts(&self) -> Vec<Alert> {
        self.alerts.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

impl Notifier for RecordingNotifier {
    async fn notify(&self, alert: &Alert) -> Result<(), ActionError> {
        if let Ok(mut a) = self.alerts.lock() {
            a.push(alert.clone());
        }
        Ok(())
    }
}
