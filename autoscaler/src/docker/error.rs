//! The one error type of the Docker adapter, classified so callers know what to retry.

use std::time::Duration;

/// What went wrong talking to the Docker engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The socket is missing or the engine does not answer the version handshake.
    #[error("cannot reach the Docker engine at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// A call took longer than the configured timeout.
    #[error("Docker engine call `{operation}` timed out after {timeout:?}")]
    Timeout {
        operation: &'static str,
        timeout: Duration,
    },
    /// Too many consecutive engine failures: calls are refused until the cool-off ends.
    #[error("Docker engine circuit breaker is open after {failures} consecutive failures; next try in {retry_in:?}")]
    CircuitOpen { failures: u32, retry_in: Duration },
    /// The engine answered with an error, or the transport failed.
    #[error("Docker engine call `{operation}` failed: {source}")]
    Engine {
        operation: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    /// A container with the worker's name exists but is not one of ours.
    #[error(
        "container name `{name}` is taken by a container not managed by cluster `{cluster_id}`"
    )]
    NameTaken { name: String, cluster_id: String },
    /// A worker was asked for in a pool the configuration does not have.
    #[error("unknown pool `{pool}` (configured: {})", .known.join(", "))]
    UnknownPool { pool: String, known: Vec<String> },
    /// A running worker of another pool has the name a worker of this pool was asked for.
    #[error("worker `{name}` exists in pool `{has}`, not in pool `{wanted}`")]
    PoolMismatch {
        name: String,
        has: String,
        wanted: String,
    },
    /// The worker is not known to the engine.
    #[error("worker `{0}` not found")]
    NotFound(String),
    /// A setting the engine cannot use (e.g. an unknown restart policy).
    #[error("invalid Docker worker setting: {0}")]
    InvalidConfig(String),
    /// The engine's image build reported an error.
    #[error("building image `{tag}` failed: {message}")]
    ImageBuild { tag: String, message: String },
    /// Preparing the build context (reading the binary, `ldd`, `objcopy`) failed.
    #[error("preparing the image context for `{tag}`: {message}")]
    ImageContext { tag: String, message: String },
}

impl DockerError {
    /// Whether trying the same call again later can succeed (engine outage, timeout, server error),
    /// as opposed to a request the engine rejects for what it is. NodeManager maps this onto
    /// `ScalingActionFailed { retryable }`.
    pub fn retryable(&self) -> bool {
        match self {
            DockerError::Unreachable { .. }
            | DockerError::Timeout { .. }
            | DockerError::CircuitOpen { .. } => true,
            DockerError::Engine { source, .. } => engine_error_is_transient(source),
            DockerError::NameTaken { .. }
            | DockerError::UnknownPool { .. }
            | DockerError::PoolMismatch { .. }
            | DockerError::NotFound(_)
            | DockerError::InvalidConfig(_)
            | DockerError::ImageBuild { .. }
            | DockerError::ImageContext { .. } => false,
        }
    }

    /// Whether the engine did not answer at all (as opposed to answering with an error): the
    /// call may never have reached it.
    pub fn provider_unavailable(&self) -> bool {
        match self {
            DockerError::Unreachable { .. }
            | DockerError::Timeout { .. }
            | DockerError::CircuitOpen { .. } => true,
            DockerError::Engine { source, .. } => engine_did_not_answer(source),
            _ => false,
        }
    }

    /// Whether this failure says something about the engine's health, so it counts for the circuit
    /// breaker. A 404 or 409 is an answer from a healthy engine and does not.
    pub fn counts_as_engine_failure(&self) -> bool {
        match self {
            DockerError::Unreachable { .. } | DockerError::Timeout { .. } => true,
            DockerError::Engine { source, .. } => engine_error_is_transient(source),
            _ => false,
        }
    }

    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DockerError::Unreachable { .. } => "unreachable",
            DockerError::Timeout { .. } => "timeout",
            DockerError::CircuitOpen { .. } => "circuit_open",
            DockerError::Engine { .. } => "engine",
            DockerError::NameTaken { .. } => "name_taken",
            DockerError::UnknownPool { .. } => "unknown_pool",
            DockerError::PoolMismatch { .. } => "pool_mismatch",
            DockerError::NotFound(_) => "not_found",
            DockerError::InvalidConfig(_) => "invalid_config",
            DockerError::ImageBuild { .. } => "image_build",
            DockerError::ImageContext { .. } => "image_context",
        }
    }

    /// The HTTP status the engine answered with, if it answered.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            DockerError::Engine {
                source: bollard::errors::Error::DockerResponseServerError { status_code, .. },
                ..
            } => Some(*status_code),
            _ => None,
        }
    }
}

/// Transport failures: no answer came from the engine (a 5xx is an answer).
fn engine_did_not_answer(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as B;
    matches!(
        e,
        B::RequestTimeoutError
            | B::IOError { .. }
            | B::HyperLegacyError { .. }
            | B::SocketNotFoundError(_)
    )
}

/// Transport failures and 5xx answers are transient; 4xx answers are not.
fn engine_error_is_transient(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as B;
    match e {
        B::DockerResponseServerError { status_code, .. } => *status_code >= 500,
        B::RequestTimeoutError
        | B::IOError { .. }
        | B::HyperResponseError { .. }
        | B::HyperLegacyError { .. }
        | B::SocketNotFoundError(_)
        | B::DockerStreamError { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(status_code: u16) -> DockerError {
        DockerError::Engine {
            operation: "create_container",
            source: bollard::errors::Error::DockerResponseServerError {
                status_code,
                message: "x".into(),
            },
        }
    }

    #[test]
    fn docker_server_errors_are_retryable_and_client_errors_are_not() {
        assert!(engine(500).retryable());
        assert!(engine(503).counts_as_engine_failure());
        assert!(!engine(400).retryable());
        assert!(!engine(404).counts_as_engine_failure());
        assert_eq!(engine(409).status_code(), Some(409));
    }

    #[test]
    fn only_a_missing_answer_is_the_provider_being_unavailable() {
        assert!(!engine(500).provider_unavailable());
        assert!(!engine(409).provider_unavailable());
        let gone = DockerError::Engine {
            operation: "create_container",
            source: bollard::errors::Error::SocketNotFoundError("/x.sock".into()),
        };
        assert!(gone.provider_unavailable());
        let open = DockerError::CircuitOpen {
            failures: 3,
            retry_in: Duration::from_secs(30),
        };
        assert!(open.provider_unavailable());
        let message = super::super::pool::action_error(open).message;
        assert!(message.starts_with("provider_unavailable: "), "{message}");
    }

    #[test]
    fn docker_unreachable_error_names_the_address() {
        let e = DockerError::Unreachable {
            address: "unix:///nonexistent.sock".into(),
            reason: "socket not found".into(),
        };
        assert!(e.retryable());
        assert_eq!(
            e.to_string(),
            "cannot reach the Docker engine at unix:///nonexistent.sock: socket not found"
        );
    }
}
