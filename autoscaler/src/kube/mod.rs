//! The Kubernetes adapters (kube-rs).
//!
//! - [`client`]: the client from the `kubernetes:` config block.
//! - [`node_watcher`]: [`NodeWatcher`] → `NodeReady`, `NodeHealthDegraded`, `NodeUnexpectedlyLost`, and
//!   the reflector store of Nodes others read.
//! - [`pending_pods`]: [`PendingPodsWatcher`] → batched `PendingPodsDetected`.
//! - [`placement`]: [`PlacementObserver`] → `PlacementSnapshot` parts and `PlacementChanged` deltas
//!   (where pods run, for the scale-down simulation).
//! - [`pod_spec`]: a `Pod` as the scheduling simulation reads it (requests and constraints).
//! - [`node_ops`]: [`KubeNodeOps`] — cordon + taint, drain by eviction, delete, annotate.
//! - [`utilisation`]: pod requests (and `metrics.k8s.io` usage) vs allocatable per worker.
//! - [`error`]: [`KubeError`], with `retryable()` and a stable `code()`.

pub mod client;
pub mod error;
pub mod node_ops;
pub mod node_watcher;
pub mod pending_pods;
pub mod placement;
pub mod pod_spec;
pub mod utilisation;

pub use client::{connect, connect_kubeconfig};
pub use error::{KubeError, Result};
pub use node_ops::{Deleted, DrainReport, KubeNodeOps};
pub use node_watcher::NodeWatcher;
pub use pending_pods::{BatchWindows, PendingPodsWatcher};
pub use placement::PlacementObserver;
pub use pod_spec::pod_spec;
pub use utilisation::Utilisation;

/// `cpu` (millicores) and `memory` (bytes) from a resource list, each taken from `fallback` where
/// `primary` lacks it: requests falling back to limits, allocatable falling back to capacity.
pub(crate) fn cpu_and_memory(
    primary: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
    fallback: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
) -> Result<(u64, u64)> {
    let get = |name: &str| {
        primary
            .and_then(|m| m.get(name))
            .or_else(|| fallback.and_then(|m| m.get(name)))
    };
    let cpu = get("cpu")
        .map(|q| primitives::quantity::cpu_millis(&q.0))
        .transpose()?;
    let mem = get("memory")
        .map(|q| primitives::quantity::memory_bytes(&q.0))
        .transpose()?;
    Ok((cpu.unwrap_or(0), mem.unwrap_or(0)))
}

/// A Kubernetes timestamp (k8s-openapi's `jiff`) as the `chrono` time the event catalogue uses.
pub(crate) fn to_chrono(t: &k8s_openapi::jiff::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(t.as_millisecond())
}
