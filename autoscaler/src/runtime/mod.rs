//! `autoscaler run`: the bus, the handlers in their consumer groups, and (on the leader) the watchers
//! and pollers, wired together. Its parts:
//!
//! - [`run`]: the process's steps in order (connect, build the adapters, start the consumer groups,
//!   the leader's work and the HTTP port) and its bounded graceful shutdown;
//! - [`tasks`]: every task `run` starts, tracked by name, so shutdown waits for in-flight work;
//! - [`group_runner`]: one decision-core handler as the handler of its consumer group;
//! - [`adapters`]: the decision core's I/O traits on Docker, Kubernetes and the webhooks;
//! - [`observers`]: what the leader runs: watchers, the metrics collector, the cluster observation,
//!   the handlers' timers;
//! - [`projection`]: a handler's view of history, folded from the stream;
//! - [`sink`]: the channel the observers publish through;
//! - [`settings`]: the configuration mapped onto the bus, the pool and the decision core's policy.
//!
//! How these fit the rest of the system: `docs/ARCHITECTURE.md`.

pub mod adapters;
pub mod group_runner;
pub mod observers;
pub mod projection;
pub mod run;
pub mod settings;
pub mod sink;
pub mod tasks;

pub use run::run;
pub use settings::{bus_config, host_configs, k3s_token, metadata, policy, pool_config};
