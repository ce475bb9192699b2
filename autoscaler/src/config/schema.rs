//! The configuration's shape: the serde structs and their defaults. The decision core's knobs take their
//! defaults from `handlers::policy`, so those are written once.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::serde_helpers::{duration, expander, optional_quantity, quantity};

/// The handlers the runtime knows (each is a consumer group of that name), plus AlertManager.
pub const HANDLER_NAMES: &[&str] = &[
    "MetricsListener",
    "ScalingDecisionEngine",
    "NodeManager",
    "MinimumNodeEnforcer",
    "StateSynchronizer",
    "AlertManager",
];

/// The whole file: everything lives under `autoscaler:`.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub autoscaler: AutoscalerConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AutoscalerConfig {
    pub limits: Limits,
    #[serde(default)]
    pub enforcement: Enforcement,
    pub events: EventsConfig,
    /// Names this cluster in every event's metadata.
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Publish decisions marked `dry_run` and change nothing in Docker or Kubernetes.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub thresholds: Thresholds,
    #[serde(default)]
    pub scaling: Scaling,
    #[serde(default)]
    pub workers: Workers,
    /// Node pools; empty: one pool `default` built from `workers`, bounded by `limits`.
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// Scheduled minimums of the cluster: windows that raise `limits.min_nodes`.
    #[serde(default)]
    pub schedules: Vec<ScheduleConfig>,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub docker: DockerSettings,
    #[serde(default)]
    pub kubernetes: KubernetesSettings,
    #[serde(default)]
    pub leader: Leader,
    #[serde(default)]
    pub http: Http,
    #[serde(default)]
    pub alerts: Alerts,
}

fn default_cluster_id() -> String {
    "k3s-lab".into()
}
fn default_region() -> String {
    "local".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct Limits {
    pub min_nodes: u32,
    pub max_nodes: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Enforcement {
    /// Scale up to the minimum by itself when below it.
    pub auto_scale_to_min: bool,
    #[serde(deserialize_with = "duration")]
    pub min_violation_check_interval: Duration,
    /// This many workers lost together trigger `EmergencyScaleUp`.
    pub emergency_scale_threshold: u32,
}

// The defaults of the knobs the decision core reads are the core's own (`handlers::Policy`), so they
// are written once.
impl Default for Enforcement {
    fn default() -> Self {
        let p = handlers::policy::Enforcement::default();
        Self {
            auto_scale_to_min: p.auto_scale_to_min,
            min_violation_check_interval: p.min_violation_check_interval,
            emergency_scale_threshold: p.emergency_scale_threshold,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventsConfig {
    pub event_bus: EventBus,
    pub handlers: Vec<String>,
    /// Where the leader archives the stream (`autoscaler/src/archive.rs`).
    #[serde(default)]
    pub archive: ArchiveConfig,
}

/// The event archive: gzip JSON Lines by day, written by the leader before the stream trims them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ArchiveConfig {
    /// The directory; empty: no archive (history is what the stream holds).
    #[serde(default)]
    pub dir: String,
}

impl ArchiveConfig {
    /// The directory, when archiving is on.
    pub fn path(&self) -> Option<std::path::PathBuf> {
        (!self.dir.trim().is_empty()).then(|| std::path::PathBuf::from(self.dir.trim()))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventBus {
    #[serde(rename = "type")]
    pub kind: String,
    pub stream_name: String,
    pub max_stream_length: u64,
    #[serde(default = "default_redis_url")]
    pub url: String,
    #[serde(default = "secs::<30>", deserialize_with = "duration")]
    pub claim_idle: Duration,
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: u32,
    #[serde(default = "secs::<2>", deserialize_with = "duration")]
    pub block: Duration,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "secs::<600>", deserialize_with = "duration")]
    pub idempotency_ttl: Duration,
    /// The ACL user; empty: the URL's, else `default`.
    #[serde(default)]
    pub username: String,
    /// A file holding the password; empty: the URL's, if it has one.
    #[serde(default)]
    pub password_file: String,
    /// TLS files for a `rediss://` URL.
    #[serde(default)]
    pub tls: super::access::TlsFiles,
    /// `single` (one Redis at `url`), `sentinel` (the master `sentinel_master` that `sentinels` name)
    /// or `cluster` (a Redis Cluster reached through `url` and `cluster_nodes`): `docs/TOPOLOGY.md`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// `sentinel`: the sentinels, `host:port` each.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// `sentinel`: the master's name (`sentinel monitor <name> …`).
    #[serde(default)]
    pub sentinel_master: String,
    /// `sentinel`: the ACL user the sentinels are asked as; empty: `default`.
    #[serde(default)]
    pub sentinel_username: String,
    /// `sentinel`: a file holding the sentinels' own password (their `requirepass`); empty: none.
    /// Over TLS when `url` is `rediss://`, with the same `tls` files.
    #[serde(default)]
    pub sentinel_password_file: String,
    /// `cluster`: seed nodes beyond the URL's, `host:port` each.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
}

impl EventBus {
    /// The bus topology `mode` names; `None` for an unknown mode.
    pub fn topology(&self) -> Option<bus::Topology> {
        match self.mode.as_str() {
            "single" => Some(bus::Topology::Single),
            "sentinel" => Some(bus::Topology::Sentinel {
                sentinels: self.sentinels.clone(),
                master: self.sentinel_master.clone(),
            }),
            "cluster" => Some(bus::Topology::Cluster {
                seeds: self.cluster_nodes.clone(),
            }),
            _ => None,
        }
    }
}

fn default_mode() -> String {
    "single".into()
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379".into()
}
fn default_max_deliveries() -> u32 {
    5
}
fn default_batch_size() -> usize {
    64
}
fn default_concurrency() -> usize {
    16
}
fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
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
        let p = handlers::policy::Thresholds::default();
        Self {
            cpu_high: p.cpu_high,
            memory_high: p.memory_high,
            cpu_low: p.cpu_low,
            memory_low: p.memory_low,
            consecutive_periods: p.consecutive_periods,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Scaling {
    pub scale_up_step: u32,
    #[serde(deserialize_with = "duration")]
    pub underutilized_for: Duration,
    #[serde(deserialize_with = "duration")]
    pub scale_up_cooldown: Duration,
    #[serde(deserialize_with = "duration")]
    pub scale_down_cooldown: Duration,
    pub max_unhealthy_fraction: f64,
    #[serde(deserialize_with = "duration")]
    pub max_node_provision_time: Duration,
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// A pool whose create failed backs off this long, doubled per failure in a row.
    #[serde(deserialize_with = "duration")]
    pub provision_retry_backoff: Duration,
    /// The longest pool backoff.
    #[serde(deserialize_with = "duration")]
    pub provision_retry_backoff_max: Duration,
    /// How the pool of new workers for pending pods is picked: `least-waste` or `priority`.
    #[serde(deserialize_with = "expander")]
    pub expander: handlers::policy::Expander,
}

impl Default for Scaling {
    fn default() -> Self {
        let p = handlers::policy::Scaling::default();
        Self {
            scale_up_step: p.scale_up_step,
            underutilized_for: p.underutilized_for,
            scale_up_cooldown: p.scale_up_cooldown,
            scale_down_cooldown: p.scale_down_cooldown,
            max_unhealthy_fraction: p.max_unhealthy_fraction,
            max_node_provision_time: p.max_node_provision_time,
            drain_timeout: p.drain_timeout,
            provision_retry_backoff: p.provision_retry_backoff,
            provision_retry_backoff_max: p.provision_retry_backoff_max,
            expander: handlers::policy::Expander::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Workers {
    pub name_prefix: String,
    pub image: String,
    pub args: Vec<String>,
    pub k3s_url: String,
    /// K3S_TOKEN comes from the environment, else from this file.
    pub token_file: String,
    pub network: String,
    pub restart_policy: String,
    pub pool: String,
    /// CPUs of the worker template (container limit and node allocatable).
    pub cpu: f64,
    /// Memory of the worker template, as a Kubernetes quantity (`2Gi`) or bytes.
    #[serde(deserialize_with = "quantity")]
    pub memory: u64,
    pub max_pods: u32,
    /// Privileged containers, as k3s agents need (the lab's node agent does not).
    pub privileged: bool,
    pub warm_pool: u32,
    /// Spare capacity kept ready in the default pool (and in pools that set none).
    pub buffer: BufferConfig,
    /// Workers never removed by a scale-down.
    pub protected: Vec<String>,
}

impl Default for Workers {
    fn default() -> Self {
        Self {
            name_prefix: "k3s-worker-".into(),
            image: "rancher/k3s:v1.33.5-k3s1".into(),
            args: Vec::new(),
            k3s_url: "https://k3s-server:6443".into(),
            token_file: String::new(),
            network: "k3s-lab".into(),
            restart_policy: "unless-stopped".into(),
            pool: "default".into(),
            cpu: 2.0,
            memory: 2 * 1024 * 1024 * 1024,
            max_pods: 110,
            privileged: true,
            warm_pool: 0,
            buffer: BufferConfig::default(),
            protected: Vec::new(),
        }
    }
}

/// One of `autoscaler.pools`: a group of workers with its own template, labels, taints and bounds.
/// What it leaves out comes from `workers` (and `max_nodes` from `limits`).
#[derive(Debug, Clone, Deserialize)]
pub struct Pool {
    /// A DNS label; its workers are `<workers.name_prefix><name>-<n>` and carry the node label
    /// `k3s-autoscaler/pool=<name>`.
    pub name: String,
    /// Scale-down never leaves the pool with fewer workers; the enforcer tops it up to this.
    #[serde(default)]
    pub min_nodes: u32,
    /// Default: `limits.max_nodes`.
    #[serde(default)]
    pub max_nodes: Option<u32>,
    /// Default: `workers.cpu`.
    #[serde(default)]
    pub cpu: Option<f64>,
    /// Default: `workers.memory`.
    #[serde(default, deserialize_with = "optional_quantity")]
    pub memory: Option<u64>,
    /// Default: `workers.max_pods`.
    #[serde(default)]
    pub max_pods: Option<u32>,
    /// Node labels (`--node-label k=v`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Node taints as k3s writes them, `key=value:Effect` (`--node-taint`).
    #[serde(default)]
    pub taints: Vec<String>,
    /// For the `priority` expander: higher goes first.
    #[serde(default)]
    pub priority: i32,
    /// Default: `workers.image`.
    #[serde(default)]
    pub image: Option<String>,
    /// Default: `workers.args`.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Removed workers kept stopped for the pool's next scale-ups. Default: `workers.warm_pool`.
    #[serde(default)]
    pub warm_pool: Option<u32>,
    /// Spare capacity kept ready in the pool. Default: `workers.buffer`.
    #[serde(default)]
    pub buffer: Option<BufferConfig>,
    /// Windows that raise the pool's `min_nodes`.
    #[serde(default)]
    pub schedules: Vec<ScheduleConfig>,
    /// The engine its workers run on: the name of one of `docker.hosts`. Default: `docker.host`.
    #[serde(default)]
    pub docker_host: Option<String>,
}

/// `buffer`: spare workers and/or free CPU and memory kept above what pods request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Spare workers: Ready, with no pod placed on them.
    #[serde(default)]
    pub nodes: u32,
    /// Free CPUs over the pool's workers.
    #[serde(default)]
    pub cpu: f64,
    /// Free memory over the pool's workers, as a quantity (`2Gi`) or bytes.
    #[serde(default, deserialize_with = "quantity")]
    pub memory: u64,
}

/// One of `schedules`: from each occurrence of `cron` (UTC) for `duration`, the minimum is at
/// least `min_nodes`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub cron: String,
    #[serde(deserialize_with = "duration")]
    pub duration: Duration,
    pub min_nodes: u32,
}

impl Pool {
    pub fn warm_pool(&self, workers: &Workers) -> u32 {
        self.warm_pool.unwrap_or(workers.warm_pool)
    }
    pub fn buffer(&self, workers: &Workers) -> BufferConfig {
        self.buffer.unwrap_or(workers.buffer)
    }
    pub fn max_nodes(&self, limits: &Limits) -> u32 {
        self.max_nodes.unwrap_or(limits.max_nodes)
    }
    pub fn cpu(&self, workers: &Workers) -> f64 {
        self.cpu.unwrap_or(workers.cpu)
    }
    pub fn memory(&self, workers: &Workers) -> u64 {
        self.memory.unwrap_or(workers.memory)
    }
    pub fn max_pods(&self, workers: &Workers) -> u32 {
        self.max_pods.unwrap_or(workers.max_pods)
    }
    pub fn image<'a>(&'a self, workers: &'a Workers) -> &'a str {
        self.image.as_deref().unwrap_or(&workers.image)
    }
    pub fn args<'a>(&'a self, workers: &'a Workers) -> &'a [String] {
        self.args.as_deref().unwrap_or(&workers.args)
    }
    /// The name of the engine its workers run on: `docker_host`, else the default engine's.
    pub fn docker_host(&self) -> &str {
        self.docker_host
            .as_deref()
            .unwrap_or(DEFAULT_DOCKER_HOST_NAME)
    }
    /// The taints that parse (validation reports the others).
    pub fn parsed_taints(&self) -> Vec<bus::scheduling::Taint> {
        self.taints.iter().filter_map(|t| t.parse().ok()).collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Metrics {
    /// `docker_stats`, `metrics_api` or `pod_requests`.
    pub source: String,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            source: "pod_requests".into(),
            interval: Duration::from_secs(15),
        }
    }
}

pub const METRICS_SOURCES: &[&str] = &["docker_stats", "metrics_api", "pod_requests"];

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DockerSettings {
    /// The default engine (the default pool's, and any pool's without `docker_host`). Empty:
    /// `DOCKER_HOST` or the local socket.
    pub host: String,
    /// For a `tcp://` `host` whose engine runs with `--tlsverify`: its CA, our certificate and key.
    pub tls: super::access::TlsFiles,
    /// For an `ssh://` `host`: the private key to log in with; empty: ssh's own (`~/.ssh`).
    pub ssh_key_file: String,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    pub circuit_breaker_failures: u32,
    /// More engines, by name, for pools that name one in `docker_host` (docs/TOPOLOGY.md).
    pub hosts: Vec<DockerHost>,
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            host: String::new(),
            tls: Default::default(),
            ssh_key_file: String::new(),
            timeout: Duration::from_secs(30),
            circuit_breaker_failures: 5,
            hosts: Vec::new(),
        }
    }
}

/// The name `pools[].docker_host` gives the default engine (`docker.host`).
pub const DEFAULT_DOCKER_HOST_NAME: &str = "default";

/// One of `docker.hosts`: an engine that pools can run their workers on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerHost {
    /// What pools name in `docker_host` (a DNS label, not `default`).
    pub name: String,
    /// The engine's address: `unix:///path`, `tcp://host:port` (plain, or TLS with `tls`) or
    /// `ssh://[user@]host` (its `docker system dial-stdio`; a port goes in `~/.ssh/config`).
    pub host: String,
    /// As `docker.tls`, for this engine.
    #[serde(default)]
    pub tls: super::access::TlsFiles,
    /// As `docker.ssh_key_file`, for this engine.
    #[serde(default)]
    pub ssh_key_file: String,
    /// The Docker network its workers join there. Default: `workers.network`; `host` for the
    /// host's own network.
    #[serde(default)]
    pub network: Option<String>,
    /// The k3s server as workers on that host reach it. Default: `workers.k3s_url`.
    #[serde(default)]
    pub k3s_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct KubernetesSettings {
    /// Empty: `KUBECONFIG`, in-cluster, or `~/.kube/config`.
    pub kubeconfig: String,
    /// Replaces the kubeconfig's server URL (k3s writes 127.0.0.1; a container reaches `k3s-server`).
    pub server: String,
    #[serde(deserialize_with = "duration")]
    pub pending_batch_idle: Duration,
    #[serde(deserialize_with = "duration")]
    pub pending_batch_max: Duration,
    /// How often what changed in where pods run is published (`PlacementChanged`).
    #[serde(deserialize_with = "duration")]
    pub placement_interval: Duration,
    /// How often the whole placement is published again (`PlacementSnapshot`), so a trimmed
    /// history still holds one.
    #[serde(deserialize_with = "duration")]
    pub placement_snapshot_interval: Duration,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        Self {
            kubeconfig: String::new(),
            server: String::new(),
            pending_batch_idle: Duration::from_secs(1),
            pending_batch_max: Duration::from_secs(10),
            placement_interval: Duration::from_secs(5),
            placement_snapshot_interval: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Leader {
    #[serde(deserialize_with = "duration")]
    pub lease_ttl: Duration,
}

impl Default for Leader {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Http {
    pub listen: String,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Alerts {
    #[serde(deserialize_with = "duration")]
    pub dedup_window: Duration,
    pub webhooks: Vec<Webhook>,
}

impl Default for Alerts {
    fn default() -> Self {
        Self {
            dedup_window: Duration::from_secs(300),
            webhooks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Webhook {
    pub url: String,
    /// `json` (generic) or `slack`.
    #[serde(default = "default_webhook_format")]
    pub format: String,
    /// Request headers (authentication), each value from the environment or a file.
    #[serde(default)]
    pub headers: Vec<super::access::WebhookHeader>,
}

fn default_webhook_format() -> String {
    "json".into()
}
