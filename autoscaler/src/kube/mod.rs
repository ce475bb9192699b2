//! The Kubernetes adapters (kube-rs).
//!
//! - [`client`]: the client from the `kubernetes:` config block.
//! - [`node_watcher`]: [`NodeWatcher`] → `NodeReady`, `NodeHealthDegraded`, `NodeUnexpectedlyLost`, and
//!   the reflector store of Nodes others read.
//! - [`pending_pods`]: [`PendingPodsWatcher`] → batched `PendingPodsDetected`.
//! - [`pod_spec`]: a `Pod` as the scheduling simulation reads it (requests and constraints).
//! - [`node_ops`]: [`KubeNodeOps`] — cordon + taint, drain by eviction, delete, annotate.
//! - [`utilisation`]: pod requests (and `metrics.k8s.io` usage) vs allocatable per worker.
//! - [`error`]: [`KubeError`], with `retryable()` and a stable `code()`.

pub mod client;
pub mod error;
pub mod node_ops;
pub mod node_watcher;
pub mod pending_pods;
pub mod pod_spec;
pub mod utilisation;

pub use client::{connect, connect_kubeconfig};
pub use error::{KubeError, Result};
pub use node_ops::{Deleted, DrainReport, KubeNodeOps};
pub use node_watcher::NodeWatcher;
pub use pending_pods::{BatchWindows, PendingPodsWatcher};
pub use pod_spec::pod_spec;
pub use utilisation::Utilisation;

/// A Kubernetes timestamp (k8s-openapi's `jiff`) as the `chrono` time the event catalogue uses.
pub(crate) fn to_chrono(t: &k8s_openapi::jiff::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(t.as_millisecond())
}
