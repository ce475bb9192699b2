//! `autoscaler`: everything of k3s-autoscaler that touches the world (the decision core is the pure
//! `handlers` crate; `docs/ARCHITECTURE.md` is the map of the whole workspace).
//!
//! - [`config`]: `config.yaml` + environment overrides, validated into typed settings.
//! - [`cli`]: the command tree of the `autoscaler` binary (`main.rs` only calls it).
//! - [`runtime`]: `autoscaler run` — the handlers mounted on their consumer groups, the leader's
//!   observers, tracked tasks and a bounded shutdown.
//! - [`docker`]: the Docker worker pool (create, start, stop, remove, warm pool, circuit breaker), the
//!   engine's events watcher and container stats.
//! - [`kube`]: the Kubernetes client, the node and pending-pods watchers, cordon/drain/delete, utilisation.
//! - [`webhooks`]: alerts posted to webhooks (JSON or Slack), retried with backoff, URLs redacted.
//! - [`intents`]: what this process is removing, so watchers tell our actions from others'.
//! - [`leader`]: the Redis lease that makes one replica the observer, with a fencing token.
//! - [`metrics`], [`http`], [`readiness`]: Prometheus metrics and the /metrics, /healthz, /readyz,
//!   /status port; readiness follows Redis and the Docker engine.
//! - [`status`]: `autoscaler status` — workers as Kubernetes, Docker and the record see them.
//! - [`labenv`], [`redis_local`]: `autoscaler lab` — the lab cluster, a local `redis-server`, the image.
//! - [`telemetry`], [`shutdown`]: logging and signals.

pub mod archive;
pub mod cli;
pub mod config;
pub mod docker;
pub mod http;
pub mod intents;
pub mod kube;
pub mod labenv;
pub mod leader;
pub mod metrics;
pub mod readiness;
pub mod redis_local;
pub mod runtime;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod webhooks;
