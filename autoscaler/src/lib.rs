//! `autoscaler`: everything of k3s-autoscaler that touches the world.
//!
//! - [`config`]: `config.yaml` + environment overrides, validated into typed settings.
//! - [`cli`]: the command tree of the `autoscaler` binary.
//! - [`telemetry`], [`shutdown`]: logging and signals.

pub mod cli;
pub mod config;
pub mod shutdown;
pub mod telemetry;
