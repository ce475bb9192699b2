//! The one error type of the Kubernetes adapters, classified so callers know what to retry and which
//! stable reason code (`ScaleDownBlocked.reason`, metric labels) to report.

use std::time::Duration;

/// What went wrong talking to Kubernetes or carrying out a node operation.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable kubeconfig / in-cluster configuration, or a bad server URL.
    #[error("kubernetes client configuration: {0}")]
    Config(String),
    /// The API server answered with an error, or the transport failed.
    #[error("kubernetes call `{operation}` failed: {source}")]
    Api {
        /// What we were doing, e.g. `patch node`, `evict pod`.
        operation: &'static str,
        #[source]
        source: kube::Error,
    },
    /// The node does not exist.
    #[error("node `{0}` not found")]
    NodeNotFound(String),
    /// The node carries `cluster-autoscaler.kubernetes.io/scale-down-disabled: "true"`.
    #[error("node `{node}` is annotated scale-down-disabled")]
    ScaleDownDisabled { node: String },
    /// A pod on the node carries `cluster-autoscaler.kubernetes.io/safe-to-evict: "false"`.
    #[error("pod `{pod}` on node `{node}` is annotated safe-to-evict=false")]
    SafeToEvictFalse { node: String, pod: String },
    /// Evictions were still refused by a PodDisruptionBudget (HTTP 429) when the drain deadline passed.
    #[error("drain of `{node}` blocked by a PodDisruptionBudget for pods {pods:?} until the {timeout:?} deadline")]
    PdbBlocked {
        node: String,
        /// `namespace/name` of the pods whose eviction was refused.
        pods: Vec<String>,
        timeout: Duration,
    },
    /// The evicted pods had not left the node (or evictions kept failing) when the deadline passed.
    #[error("drain of `{node}` did not finish within {timeout:?}; still there: {pods:?}")]
    DrainTimeout {
        node: String,
        /// `namespace/name` of the pods still on the node.
        pods: Vec<String>,
        timeout: Duration,
    },
    /// `metrics.k8s.io` is not served by this cluster (404, or 503 from an unavailable APIService):
    /// fall back to pod requests.
    #[error("metrics.k8s.io/v1beta1 is not served (HTTP {status})")]
    MetricsNotServed { status: u16 },
    /// A resource quantity in an object could not be read.
    #[error(transparent)]
    Quantity(#[from] primitives::QuantityError),
}

/// `Result` with [`KubeError`] as the default error.
pub type Result<T, E = KubeError> = std::result::Result<T, E>;

impl KubeError {
    /// Wraps a client error with the operation it failed.
    pub fn api(operation: &'static str) -> impl FnOnce(kube::Error) -> KubeError {
        move |source| KubeError::Api { operation, source }
    }

    /// A stable, machine-readable code: `pdb`, `safe_to_evict_false`, `scale_down_disabled`,
    /// `drain_timeout` (the `ScaleDownBlocked.reason` codes), else `api_error`, `node_not_found`,
    /// `config`, `metrics_not_served`, `bad_quantity`.
    pub fn code(&self) -> &'static str {
        match self {
            KubeError::Config(_) => "config",
            KubeError::Api { .. } => "api_error",
            KubeError::NodeNotFound(_) => "node_not_found",
            KubeError::ScaleDownDisabled { .. } => "scale_down_disabled",
            KubeError::SafeToEvictFalse { .. } => "safe_to_evict_false",
            KubeError::PdbBlocked { .. } => "pdb",
            KubeError::DrainTimeout { .. } => "drain_timeout",
            KubeError::MetricsNotServed { .. } => "metrics_not_served",
            KubeError::Quantity(_) => "bad_quantity",
        }
    }

    /// Whether the same call can succeed later without anyone changing the objects' intent:
    /// transport failures, 5xx, 429, 409 conflicts, PDB refusals and drain timeouts are; an annotation
    /// that forbids the removal, a missing node, bad configuration are not.
    pub fn retryable(&self) -> bool {
        match self {
            KubeError::Api { source, .. } => client_error_is_transient(source),
            KubeError::PdbBlocked { .. } | KubeError::DrainTimeout { .. } => true,
            KubeError::Config(_)
            | KubeError::NodeNotFound(_)
            | KubeError::ScaleDownDisabled { .. }
            | KubeError::SafeToEvictFalse { .. }
            | KubeError::MetricsNotServed { .. }
            | KubeError::Quantity(_) => false,
        }
    }

    /// The HTTP status of an API error, if the server answered.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            KubeError::Api { source, .. } => api_status(source),
            _ => None,
        }
    }
}

/// The HTTP status code the API server answered with, if it answered.
pub(crate) fn api_status(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Whether the API answered 404 (the object is gone).
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

fn client_error_is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 409 | 429 | 500..=599),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> KubeError {
        KubeError::Api {
            operation: "test",
            source: kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            ),
        }
    }

    #[test]
    fn server_errors_and_conflicts_are_retryable_client_errors_are_not() {
        assert!(api(503).retryable());
        assert!(api(429).retryable());
        assert!(api(409).retryable());
        assert!(!api(403).retryable());
        assert!(!api(422).retryable());
        assert_eq!(api(404).status_code(), Some(404));
    }

    #[test]
    fn blocking_annotations_are_final_and_have_stable_codes() {
        let e = KubeError::SafeToEvictFalse {
            node: "n".into(),
            pod: "p".into(),
        };
        assert_eq!(e.code(), "safe_to_evict_false");
        assert!(!e.retryable());
        let e = KubeError::ScaleDownDisabled { node: "n".into() };
        assert_eq!(e.code(), "scale_down_disabled");
        assert!(!e.retryable());
        let e = KubeError::PdbBlocked {
            node: "n".into(),
            pods: vec![],
            timeout: Duration::from_secs(1),
        };
        assert_eq!(e.code(), "pdb");
        assert!(e.retryable());
    }
}
