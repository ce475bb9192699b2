//! [`Policy`]: the knobs the rules read, as plain values with the defaults of `config.yaml`.
//!
//! The `autoscaler` crate maps its validated `Settings` onto this; the decision core never parses
//! configuration itself, so a what-if replay can run the same rules under another policy.

use std::borrow::Cow;
use std::time::Duration;

use bus::scheduling::Resources;
use serde::{Deserialize, Serialize};

pub use crate::buffer::Buffer;
pub use crate::schedule::Schedule;
pub use crate::scheduling::{Expander, PoolTemplate};

/// The pool a configuration without `pools` has, built from `workers`; also the pool of workers the
/// stream names no pool for. Its workers keep the names `<name_prefix><n>`, and events about it
/// carry no `pool`.
pub const DEFAULT_POOL: &str = "default";

/// The pool an event's `pool` field names (absent: the default pool).
pub fn pool_name(pool: Option<&str>) -> &str {
    pool.unwrap_or(DEFAULT_POOL)
}

/// The pool and sequence number a worker name says: `<prefix><n>` is `(default, n)`,
/// `<prefix><pool>-<n>` is `(pool, n)`; `None` for other names.
pub fn parse_worker_name<'n>(prefix: &str, name: &'n str) -> Option<(&'n str, u64)> {
    let rest = name.strip_prefix(prefix)?;
    if let Ok(n) = rest.parse::<u64>() {
        return Some((DEFAULT_POOL, n));
    }
    let (pool, n) = rest.rsplit_once('-')?;
    let n = n.parse::<u64>().ok()?;
    (!pool.is_empty()).then_some((pool, n))
}

/// The `pool` field of an event about `pool`: absent for the default pool, so its entries look as
/// they did before pools.
pub fn pool_field(pool: &str) -> Option<String> {
    (pool != DEFAULT_POOL).then(|| pool.to_string())
}

/// Everything the handlers need to decide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Policy {
    pub limits: Limits,
    pub enforcement: Enforcement,
    pub thresholds: Thresholds,
    pub scaling: Scaling,
    pub workers: WorkerTemplate,
    pub alerts: AlertPolicy,
    pub sync: SyncPolicy,
    /// `autoscaler.pools`; empty means one pool `default` built from `workers` (see
    /// [`Policy::node_pools`]).
    #[serde(default)]
    pub pools: Vec<PoolTemplate>,
    /// How the pool of new workers for pending pods is picked.
    #[serde(default)]
    pub expander: Expander,
    /// `autoscaler.schedules`: windows that raise `limits.min_nodes` (see [`crate::schedule`]).
    #[serde(default)]
    pub schedules: Vec<Schedule>,
}

impl Policy {
    /// The pools the rules use: `pools`, or when it is empty one pool `default` with the
    /// `workers` template and the cluster `limits` as its bounds (no labels, no taints).
    pub fn node_pools(&self) -> Cow<'_, [PoolTemplate]> {
        if self.pools.is_empty() {
            let mut pool = PoolTemplate::new(
                DEFAULT_POOL,
                self.limits.min_nodes,
                self.limits.max_nodes,
                Resources::new(
                    self.workers.cpu_millis,
                    self.workers.memory_bytes,
                    self.workers.max_pods,
                ),
            );
            pool.warm_pool = self.workers.warm_pool;
            pool.buffer = self.workers.buffer;
            Cow::Owned(vec![pool])
        } else {
            Cow::Borrowed(&self.pools)
        }
    }

    /// The pool named `name`, if the rules know it.
    pub fn pool(&self, name: &str) -> Option<PoolTemplate> {
        self.node_pools().iter().find(|p| p.name == name).cloned()
    }

    /// How many removed workers `pool` keeps stopped for its next scale-ups.
    pub fn warm_pool(&self, pool: &str) -> u32 {
        self.pool(pool).map_or(0, |p| p.warm_pool)
    }

    /// Whether any pool keeps a capacity buffer.
    pub fn has_buffers(&self) -> bool {
        self.node_pools().iter().any(|p| !p.buffer.is_empty())
    }

    /// The pool that grows when no pod says which (resource pressure, the minimum, manual
    /// scaling): `default` when there is one, else the highest priority, then the smallest name.
    pub fn primary_pool(&self) -> String {
        let pools = self.node_pools();
        if let Some(p) = pools.iter().find(|p| p.name == DEFAULT_POOL) {
            return p.name.clone();
        }
        pools
            .iter()
            .min_by(|a, b| {
                b.priority
                    .cmp(&a.priority)
                    .then_with(|| a.name.cmp(&b.name))
            })
            .map_or_else(|| DEFAULT_POOL.to_string(), |p| p.name.clone())
    }
}

/// `autoscaler.limits`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub min_nodes: u32,
    pub max_nodes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            min_nodes: 2,
            max_nodes: 6,
        }
    }
}

/// `autoscaler.enforcement`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enforcement {
    /// Scale up to the minimum by itself when below it.
    pub auto_scale_to_min: bool,
    /// How often the leader re-checks the minimum without any event.
    pub min_violation_check_interval: Duration,
    /// This many workers lost within [`Enforcement::emergency_window`] trigger `EmergencyScaleUp`.
    pub emergency_scale_threshold: u32,
    /// What "lost together" means (not in `config.yaml`; 60 s).
    pub emergency_window: Duration,
}

impl Default for Enforcement {
    fn default() -> Self {
        Self {
            auto_scale_to_min: true,
            min_violation_check_interval: Duration::from_secs(10),
            emergency_scale_threshold: 2,
            emergency_window: Duration::from_secs(60),
        }
    }
}

/// `autoscaler.thresholds` (percentages as plain numbers: `80.0` is 80 %).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub cpu_high: f64,
    pub memory_high: f64,
    pub cpu_low: f64,
    pub memory_low: f64,
    /// Samples a threshold must hold before its event (hysteresis).
    pub consecutive_periods: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            cpu_high: 80.0,
            memory_high: 85.0,
            cpu_low: 30.0,
            memory_low: 40.0,
            consecutive_periods: 3,
        }
    }
}

/// `autoscaler.scaling`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    /// Workers added on `ResourcePressureAlert`.
    pub scale_up_step: u32,
    /// Underutilisation must last this long before a scale-down.
    pub underutilized_for: Duration,
    /// No scale-down, and no pressure-driven scale-up, this long after a scale-up started.
    pub scale_up_cooldown: Duration,
    /// No scale-down this long after a scale-down started.
    pub scale_down_cooldown: Duration,
    /// Storm guard: no scale-down when more than this fraction of workers is NotReady.
    pub max_unhealthy_fraction: f64,
    /// A worker not Ready by then has failed.
    pub max_node_provision_time: Duration,
    pub drain_timeout: Duration,
    /// After a worker of a pool failed to provision, the pool backs off this long before the next
    /// create (the failed worker's replacement, or a new decision's); doubles per failure in a row,
    /// up to `provision_retry_backoff_max` (`scaling.provision_retry_backoff`, 30 s).
    pub provision_retry_backoff: Duration,
    /// The longest pool backoff (`scaling.provision_retry_backoff_max`, 5 min).
    pub provision_retry_backoff_max: Duration,
    /// Failed provisions in a row after which the NodeManager stops retrying (not in config.yaml; 3).
    pub max_provision_retries: u32,
    /// Pending pods not reported again for this long are assumed scheduled (not in config.yaml; 10 min).
    pub pending_pods_ttl: Duration,
    /// A worker Ready for less than this still counts as capacity on its way for the pods a scale-up
    /// made it for: the scheduler binds them a moment after Ready (once the not-ready taint is gone),
    /// and a report in between must not buy a second worker for them (not in config.yaml; 15 s).
    pub new_worker_grace: Duration,
    /// The same `ScaleDownBlocked` (reason, node, pool) is said again only after this long, as a
    /// reminder; a change of reason is said at once (not in config.yaml; 5 min).
    pub blocked_reminder: Duration,
}

impl Scaling {
    /// The pools' backoff after failed creates (the one primitive, without jitter: a replay
    /// computes the same delays).
    pub fn provision_backoff(&self) -> primitives::backoff::Backoff {
        primitives::backoff::Backoff::new(
            self.provision_retry_backoff,
            self.provision_retry_backoff_max,
        )
    }
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            scale_up_step: 1,
            underutilized_for: Duration::from_secs(300),
            scale_up_cooldown: Duration::from_secs(60),
            scale_down_cooldown: Duration::from_secs(300),
            max_unhealthy_fraction: 0.45,
            max_node_provision_time: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(120),
            provision_retry_backoff: Duration::from_secs(30),
            provision_retry_backoff_max: Duration::from_secs(300),
            max_provision_retries: 3,
            pending_pods_ttl: Duration::from_secs(600),
            new_worker_grace: Duration::from_secs(15),
            blocked_reminder: Duration::from_secs(300),
        }
    }
}

/// The worker template (`autoscaler.workers`): what one new worker offers, and who is never removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerTemplate {
    /// New workers are named `<name_prefix><n>`.
    pub name_prefix: String,
    /// Allocatable CPU of one worker, in millicores (`workers.cpu` × 1000).
    pub cpu_millis: u64,
    /// Allocatable memory of one worker, in bytes.
    pub memory_bytes: u64,
    pub max_pods: u32,
    /// Names never removed by a scale-down.
    pub protected: Vec<String>,
    /// Removed workers of the default pool kept stopped for its next scale-ups (0: none).
    #[serde(default)]
    pub warm_pool: u32,
    /// The default pool's capacity buffer (see [`crate::buffer`]).
    #[serde(default)]
    pub buffer: Buffer,
}

impl Default for WorkerTemplate {
    fn default() -> Self {
        Self {
            name_prefix: "k3s-worker-".into(),
            cpu_millis: 2000,
            memory_bytes: 2 * 1024 * 1024 * 1024,
            max_pods: 110,
            protected: Vec::new(),
            warm_pool: 0,
            buffer: Buffer::default(),
        }
    }
}

/// `autoscaler.alerts` (the webhook URLs stay in `autoscaler`: the core never sees them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertPolicy {
    /// The same alert (type + node) is sent at most once within this window.
    pub dedup_window: Duration,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        Self {
            dedup_window: Duration::from_secs(300),
        }
    }
}

/// The StateSynchronizer's timing (not in config.yaml yet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncPolicy {
    /// A periodic observation at least this often, even with no trigger.
    pub interval: Duration,
    /// Triggers closer together than this collapse into one observation, so a burst of triggers
    /// costs one observation of Kubernetes and Docker.
    pub min_gap: Duration,
    /// `ClusterStateSynced` is repeated at least this often while nothing changes.
    pub report_every: Duration,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            min_gap: Duration::from_secs(5),
            report_every: Duration::from_secs(300),
        }
    }
}

/// A std duration as a chrono one (saturating: config durations are far below the limit).
pub(crate) fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
