//! Configuration: `config.yaml` plus `AUTOSCALER__…` environment overrides and `REDIS_URL`.
//!
//! Loading is two steps: the `config` crate merges the sources into one tree, then serde reads it into
//! [`Settings`] while collecting every key it does not know, and [`Settings::validate`] checks the values.
//! All problems are reported together, each naming its field, so one `autoscaler config check` run shows
//! everything that is wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The handler names of seed 001 (each is a consumer group of that name), plus AlertManager.
pub const HANDLER_NAMES: &[&str] = &[
    "MetricsListener",
    "ScalingDecisionEngine",
    "NodeManager",
    "MinimumNodeEnforcer",
    "StateSynchronizer",
    "AlertManager",
];

/// One thing wrong with a configuration, named by its dotted path (`autoscaler.limits.max_nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem, one per line, for `config check`.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Read { path, reason } => vec![Problem {
                field: path.clone(),
                message: reason.clone(),
            }],
            ConfigError::Invalid(p) => p.clone(),
        }
    }
}

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
            protected: Vec::new(),
        }
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
    /// Empty: `DOCKER_HOST` or the local socket.
    pub host: String,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    pub circuit_breaker_failures: u32,
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            host: String::new(),
            timeout: Duration::from_secs(30),
            circuit_breaker_failures: 5,
        }
    }
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
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        Self {
            kubeconfig: String::new(),
            server: String::new(),
            pending_batch_idle: Duration::from_secs(1),
            pending_batch_max: Duration::from_secs(10),
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
}

fn default_webhook_format() -> String {
    "json".into()
}

impl Settings {
    /// Loads `path`, applies `AUTOSCALER__…` and `REDIS_URL` from the process environment, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given (tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_yaml_with_env(&text, env)
    }

    /// Parses YAML text with the given environment.
    pub fn from_yaml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut overrides = config::Map::new();
        let mut redis_url = None;
        for (key, value) in env {
            if key == "REDIS_URL" {
                redis_url = Some(value);
            } else if key.starts_with("AUTOSCALER__") {
                overrides.insert(key, value);
            }
        }
        let problem = |field: &str, message: String| {
            ConfigError::Invalid(vec![Problem {
                field: field.to_string(),
                message,
            }])
        };
        let merged = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Yaml))
            .add_source(
                config::Environment::default()
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("autoscaler.events.handlers")
                    .with_list_parse_key("autoscaler.workers.args")
                    .with_list_parse_key("autoscaler.workers.protected")
                    .source(Some(overrides)),
            )
            .set_override_option("autoscaler.events.event_bus.url", redis_url)
            .map_err(|e| problem("REDIS_URL", e.to_string()))?
            .build()
            .map_err(|e| problem("config", e.to_string()))?;

        let mut unknown = Vec::new();
        let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let de = serde_ignored::Deserializer::new(merged, &mut on_unknown);
        let parsed: Result<Settings, _> = serde_path_to_error::deserialize(de);
        let mut problems: Vec<Problem> = unknown
            .into_iter()
            .map(|field| Problem {
                field,
                message: "unknown key".into(),
            })
            .collect();
        match parsed {
            Ok(settings) => {
                problems.extend(settings.problems());
                if problems.is_empty() {
                    Ok(settings)
                } else {
                    Err(ConfigError::Invalid(problems))
                }
            }
            Err(e) => {
                let field = match e.path().to_string() {
                    p if p == "." => "autoscaler".to_string(),
                    p => p,
                };
                problems.push(Problem {
                    field,
                    message: e.into_inner().to_string(),
                });
                Err(ConfigError::Invalid(problems))
            }
        }
    }

    /// Every semantic problem of a well-formed configuration.
    pub fn problems(&self) -> Vec<Problem> {
        let a = &self.autoscaler;
        let mut out = Vec::new();
        let mut bad = |field: &str, message: String| {
            out.push(Problem {
                field: format!("autoscaler.{field}"),
                message,
            })
        };
        if a.limits.max_nodes == 0 {
            bad("limits.max_nodes", "must be at least 1".into());
        }
        if a.limits.min_nodes > a.limits.max_nodes {
            bad(
                "limits.min_nodes",
                format!(
                    "min_nodes ({}) is greater than max_nodes ({})",
                    a.limits.min_nodes, a.limits.max_nodes
                ),
            );
        }
        if a.enforcement.emergency_scale_threshold == 0 {
            bad(
                "enforcement.emergency_scale_threshold",
                "must be at least 1".into(),
            );
        }
        if a.enforcement.min_violation_check_interval.is_zero() {
            bad(
                "enforcement.min_violation_check_interval",
                "must be positive".into(),
            );
        }
        let bus = &a.events.event_bus;
        if bus.kind != "redis_streams" {
            bad(
                "events.event_bus.type",
                format!("unsupported bus type `{}` (only `redis_streams`)", bus.kind),
            );
        }
        if bus.stream_name.is_empty() {
            bad("events.event_bus.stream_name", "must not be empty".into());
        }
        if bus.max_stream_length == 0 {
            bad(
                "events.event_bus.max_stream_length",
                "must be at least 1".into(),
            );
        }
        match url::Url::parse(&bus.url) {
            Ok(u) if matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix") => {}
            Ok(u) => bad(
                "events.event_bus.url",
                format!(
                    "scheme `{}` is not redis://, rediss:// or unix://",
                    u.scheme()
                ),
            ),
            // The URL may carry a password: name the field, never echo the value.
            Err(e) => bad("events.event_bus.url", format!("not a valid URL ({e})")),
        }
        if bus.max_deliveries == 0 {
            bad(
                "events.event_bus.max_deliveries",
                "must be at least 1".into(),
            );
        }
        if bus.batch_size == 0 {
            bad("events.event_bus.batch_size", "must be at least 1".into());
        }
        if bus.concurrency == 0 {
            bad("events.event_bus.concurrency", "must be at least 1".into());
        }
        if bus.block.is_zero() {
            bad("events.event_bus.block", "must be positive".into());
        }
        let mut seen = BTreeMap::new();
        for (i, h) in a.events.handlers.iter().enumerate() {
            if !HANDLER_NAMES.contains(&h.as_str()) {
                bad(
                    &format!("events.handlers[{i}]"),
                    format!(
                        "unknown handler `{h}` (known: {})",
                        HANDLER_NAMES.join(", ")
                    ),
                );
            } else if seen.insert(h.clone(), i).is_some() {
                bad(
                    &format!("events.handlers[{i}]"),
                    format!("`{h}` listed twice"),
                );
            }
        }
        let t = &a.thresholds;
        for (name, v) in [
            ("cpu_high", t.cpu_high),
            ("memory_high", t.memory_high),
            ("cpu_low", t.cpu_low),
            ("memory_low", t.memory_low),
        ] {
            if !(0.0..=100.0).contains(&v) {
                bad(
                    &format!("thresholds.{name}"),
                    format!("{v} is not a percentage in [0, 100]"),
                );
            }
        }
        if t.cpu_low >= t.cpu_high {
            bad("thresholds.cpu_low", "must be below cpu_high".into());
        }
        if t.memory_low >= t.memory_high {
            bad("thresholds.memory_low", "must be below memory_high".into());
        }
        if t.consecutive_periods == 0 {
            bad(
                "thresholds.consecutive_periods",
                "must be at least 1".into(),
            );
        }
        let s = &a.scaling;
        if s.scale_up_step == 0 {
            bad("scaling.scale_up_step", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&s.max_unhealthy_fraction) {
            bad("scaling.max_unhealthy_fraction", "must be in [0, 1]".into());
        }
        let w = &a.workers;
        if w.name_prefix.is_empty() {
            bad("workers.name_prefix", "must not be empty".into());
        }
        if w.image.is_empty() {
            bad("workers.image", "must not be empty".into());
        }
        if w.cpu <= 0.0 {
            bad("workers.cpu", "must be positive".into());
        }
        if w.memory == 0 {
            bad("workers.memory", "must be positive".into());
        }
        if !matches!(
            w.restart_policy.as_str(),
            "no" | "always" | "unless-stopped" | "on-failure"
        ) {
            bad(
                "workers.restart_policy",
                format!(
                    "`{}` is not one of no, always, unless-stopped, on-failure",
                    w.restart_policy
                ),
            );
        }
        if !METRICS_SOURCES.contains(&a.metrics.source.as_str()) {
            bad(
                "metrics.source",
                format!(
                    "`{}` is not one of {}",
                    a.metrics.source,
                    METRICS_SOURCES.join(", ")
                ),
            );
        }
        if a.metrics.interval.is_zero() {
            bad("metrics.interval", "must be positive".into());
        }
        if a.http.listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "http.listen",
                format!("`{}` is not an address like 127.0.0.1:9090", a.http.listen),
            );
        }
        for (i, hook) in a.alerts.webhooks.iter().enumerate() {
            match url::Url::parse(&hook.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => bad(
                    &format!("alerts.webhooks[{i}].url"),
                    "not an http(s) URL".into(),
                ),
            }
            if !matches!(hook.format.as_str(), "json" | "slack") {
                bad(
                    &format!("alerts.webhooks[{i}].format"),
                    format!("`{}` is not json or slack", hook.format),
                );
            }
        }
        out
    }
}

/// Reads a duration from integer (or fractional) seconds or a humantime string (`90s`, `5m`).
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("seconds (e.g. 90) or a duration string (e.g. \"90s\", \"5m\")")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("{v} is negative")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|_| E::custom(format!("{v} is not a duration")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            let v = v.trim();
            if let Ok(n) = v.parse::<u64>() {
                return Ok(Duration::from_secs(n));
            }
            humantime::parse_duration(v).map_err(|e| E::custom(format!("`{v}`: {e}")))
        }
    }
    d.deserialize_any(V)
}

/// Reads a byte quantity: a number of bytes or a Kubernetes quantity (`512Mi`, `2Gi`, `1G`).
pub fn quantity<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes or a quantity such as \"2Gi\"")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            primitives::memory_bytes(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_BLOCK: &str = r#"
autoscaler:
  limits:
    min_nodes: 2
    max_nodes: 6
  enforcement:
    auto_scale_to_min: true
    min_violation_check_interval: 10  # seconds
    emergency_scale_threshold: 2  # scale up 2x if this many lost
  events:
    event_bus:
      type: "redis_streams"
      stream_name: "autoscaler_events"
      max_stream_length: 10000
    handlers:
      - "MetricsListener"
      - "ScalingDecisionEngine"
      - "NodeManager"
      - "MinimumNodeEnforcer"
      - "StateSynchronizer"
"#;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn fields(err: ConfigError) -> Vec<String> {
        err.problems().into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn the_seed_block_loads_unchanged() {
        let s = Settings::from_yaml_with_env(SEED_BLOCK, no_env()).expect("seed block is valid");
        assert_eq!(s.autoscaler.limits.min_nodes, 2);
        assert_eq!(s.autoscaler.limits.max_nodes, 6);
        assert_eq!(
            s.autoscaler.enforcement.min_violation_check_interval,
            Duration::from_secs(10)
        );
        assert_eq!(
            s.autoscaler.events.event_bus.stream_name,
            "autoscaler_events"
        );
        assert_eq!(s.autoscaler.events.handlers.len(), 5);
    }

    #[test]
    fn the_shipped_config_yaml_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.yaml");
        let s = Settings::load_with_env(&path, no_env()).expect("config.yaml is valid");
        assert_eq!(
            s.autoscaler.scaling.underutilized_for,
            Duration::from_secs(300)
        );
        assert_eq!(s.autoscaler.workers.memory, 2 * 1024 * 1024 * 1024);
    }

    #[test]
    fn environment_overrides_apply_and_redis_url_wins() {
        let env = vec![
            ("AUTOSCALER__LIMITS__MAX_NODES".to_string(), "8".to_string()),
            (
                "AUTOSCALER__SCALING__UNDERUTILIZED_FOR".to_string(),
                "90s".to_string(),
            ),
            (
                "REDIS_URL".to_string(),
                "redis://10.0.0.1:6380/0".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let s = Settings::from_yaml_with_env(SEED_BLOCK, env).expect("valid");
        assert_eq!(s.autoscaler.limits.max_nodes, 8);
        assert_eq!(
            s.autoscaler.scaling.underutilized_for,
            Duration::from_secs(90)
        );
        assert_eq!(s.autoscaler.events.event_bus.url, "redis://10.0.0.1:6380/0");
    }

    #[test]
    fn durations_accept_seconds_and_humantime() {
        let yaml = SEED_BLOCK.replace(
            "min_violation_check_interval: 10",
            "min_violation_check_interval: \"1m 30s\"",
        );
        let s = Settings::from_yaml_with_env(&yaml, no_env()).expect("valid");
        assert_eq!(
            s.autoscaler.enforcement.min_violation_check_interval,
            Duration::from_secs(90)
        );
        let bad = SEED_BLOCK.replace(
            "min_violation_check_interval: 10",
            "min_violation_check_interval: soon",
        );
        let err = Settings::from_yaml_with_env(&bad, no_env()).unwrap_err();
        assert_eq!(
            fields(err),
            vec!["autoscaler.enforcement.min_violation_check_interval"]
        );
    }

    #[test]
    fn every_bad_field_is_reported_by_name() {
        let yaml = SEED_BLOCK
            .replace("min_nodes: 2", "min_nodes: 9")
            .replace("\"MetricsListener\"", "\"MetricListener\"")
            .replace(
                "max_stream_length: 10000",
                "max_stream_length: 10000\n      url: \"not a url\"",
            )
            .replace(
                "auto_scale_to_min: true",
                "auto_scale_to_min: true\n    surprise: 1",
            );
        let err = Settings::from_yaml_with_env(&yaml, no_env()).unwrap_err();
        let f = fields(err);
        assert!(
            f.contains(&"autoscaler.enforcement.surprise".to_string()),
            "{f:?}"
        );
        assert!(
            f.contains(&"autoscaler.limits.min_nodes".to_string()),
            "{f:?}"
        );
        assert!(
            f.contains(&"autoscaler.events.handlers[0]".to_string()),
            "{f:?}"
        );
        assert!(
            f.contains(&"autoscaler.events.event_bus.url".to_string()),
            "{f:?}"
        );
    }

    #[test]
    fn max_nodes_zero_is_rejected() {
        let yaml = SEED_BLOCK
            .replace("min_nodes: 2", "min_nodes: 0")
            .replace("max_nodes: 6", "max_nodes: 0");
        let err = Settings::from_yaml_with_env(&yaml, no_env()).unwrap_err();
        assert_eq!(fields(err), vec!["autoscaler.limits.max_nodes"]);
    }
}
