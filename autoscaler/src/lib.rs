//! `autoscaler`: everything of k3s-autoscaler that touches the world.
//!
//! - [`config`]: `config.yaml` + environment overrides, validated into typed settings.
//! - [`cli`]: the command tree of the `autoscaler` binary.
//! - [`intents`]: what this process is doing to workers, so watchers tell our actions from others'.
//! - [`telemetry`], [`shutdown`]: logging and signals.

pub mod cli;
pub mod config;
pub mod intents;
pub mod shutdown;
pub mod telemetry;
