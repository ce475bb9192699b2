//! `autoscaler`: everything of k3s-autoscaler that touches the world.
//!
//! - [`config`]: `config.yaml` + environment overrides, validated into typed settings.
//! - [`cli`]: the command tree of the `autoscaler` binary.
//! - [`intents`]: what this process is doing to workers, so watchers tell our actions from others'.
//! - [`leader`]: the Redis lease that makes one replica the observer, with a fencing token.
//! - [`metrics`], [`http`]: Prometheus metrics and the /metrics, /healthz, /readyz, /status port.
//! - [`telemetry`], [`shutdown`]: logging and signals.
//! - [`webhooks`]: alerts posted to webhooks, retried with backoff.

pub mod cli;
pub mod config;
pub mod docker;
pub mod http;
pub mod intents;
pub mod kube;
pub mod labenv;
pub mod leader;
pub mod metrics;
pub mod redis_local;
pub mod runtime;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod webhooks;
