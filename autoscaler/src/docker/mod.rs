//! The worker pool on Docker: k3s agents as containers, created, adopted, watched and measured.
//!
//! - [`hosts`]: [`DockerHosts`]: the engines workers run on (`docker.host`, `docker.hosts`), one
//!   pool each, a pool's workers routed to its engine.
//! - [`pool`]: [`DockerWorkerPool`]: create (idempotent on Docker's 409), list/adopt, inspect, stop,
//!   remove (with the state volume).
//! - [`warm`]: the warm pool of stopped workers: `acquire` starts one before creating, `release` stops
//!   one into it instead of removing.
//! - [`events_watcher`]: [`DockerEventsWatcher`]: the engine's event stream → `NodeCreated`,
//!   `NodeInterruptionNotice`, `NodeUnexpectedlyLost`; reconnects and re-lists.
//! - [`stats`]: CPU % and memory % per worker from one-shot stats, bounded concurrency.
//! - [`image`]: builds the lab's `FROM scratch` image offline from the `autoscaler` binary.
//! - [`breaker`], [`intents`], [`naming`]: the pure parts: circuit breaker and backoff, the pool's
//!   record of its own actions, worker names.
//! - [`error`]: [`DockerError`] with `retryable()`.
//!
//! Every engine call goes through [`Engine::call`]: a timeout, the circuit breaker, and (for
//! idempotent calls) a few retries with exponential backoff.

pub mod breaker;
pub mod error;
pub mod events_watcher;
pub mod hosts;
pub mod image;
pub mod intents;
pub mod naming;
pub mod pool;
pub mod proxy;
pub mod stats;
pub mod warm;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;

pub use breaker::CircuitBreaker;
pub use error::DockerError;
pub use events_watcher::DockerEventsWatcher;
pub use hosts::{DockerHosts, Host, Listing};
pub use intents::{Intent, PoolIntents};
pub use pool::{CreateWorker, DockerWorkerPool, Worker, WorkerState};
pub use stats::UsageSample;
pub use warm::{Acquired, Released};

/// Result of this module.
pub type Result<T, E = DockerError> = std::result::Result<T, E>;

/// Label on every container and volume this autoscaler manages; value [`MANAGED_BY_VALUE`].
pub const LABEL_MANAGED_BY: &str = "k3s-autoscaler/managed-by";
/// The value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "k3s-autoscaler";
/// The cluster a worker belongs to, so two autoscalers on one engine never touch each other's workers.
pub const LABEL_CLUSTER_ID: &str = "k3s-autoscaler/cluster-id";
/// The worker's pool: `workers.pool` for the default pool, else the name of its `pools` entry.
pub const LABEL_POOL: &str = "k3s-autoscaler/pool";
/// The id of the event that asked for the worker.
pub const LABEL_REQUESTED_BY: &str = "k3s-autoscaler/requested-by";

/// Where the engine is when `docker.host` is empty and `DOCKER_HOST` is unset.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// A secret string (the k3s join token): `Debug` and `Display` print `***`, so it cannot leak through a
/// log line or an error message by accident. Read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that must hand it over (the container's environment).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The worker template of one of `autoscaler.pools`, what it leaves out filled in from `workers`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolSpec {
    pub image: String,
    /// Extra arguments after [`PoolConfig::command`], before the pool's node labels and taints.
    pub args: Vec<String>,
    /// CPU limit in cores (NanoCpus); 0 means none.
    pub cpu: f64,
    /// Memory limit in bytes; 0 means none.
    pub memory_bytes: u64,
    /// Node labels, as `--node-label k=v` after `--node-label k3s-autoscaler/pool=<pool>`.
    pub labels: BTreeMap<String, String>,
    /// Node taints as k3s writes them (`key=value:Effect`), as `--node-taint`.
    pub taints: Vec<String>,
    /// Environment on top of [`PoolConfig::extra_env`] (the lab agent's capacity of this pool).
    pub env: BTreeMap<String, String>,
    /// Pods per worker, as `--kubelet-arg max-pods=N` (see [`kubelet_args`]).
    pub max_pods: u32,
}

/// The kubelet's own `max-pods`: a worker that keeps it gets no argument for it.
pub const KUBELET_DEFAULT_MAX_PODS: u32 = 110;

/// `--kubelet-arg max-pods=N` unless `max_pods` is the kubelet's default (or 0, unset): the pod
/// slots the scheduling simulation counts (`workers.max_pods`, `pools[].max_pods`) are then the
/// Node's too.
fn kubelet_args(max_pods: u32) -> Vec<String> {
    if max_pods == 0 || max_pods == KUBELET_DEFAULT_MAX_PODS {
        return Vec::new();
    }
    vec!["--kubelet-arg".into(), format!("max-pods={max_pods}")]
}

/// What one worker container is built from: the pool it belongs to, resolved by
/// [`PoolConfig::template`].
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerTemplate<'a> {
    /// The value of the Docker label [`LABEL_POOL`].
    pub label: &'a str,
    /// Unnamed workers are `<name_prefix><n>` in the default pool, `<name_prefix><pool>-<n>` in
    /// the others, as the decision core names them.
    pub name_prefix: String,
    pub image: &'a str,
    /// `command`, the pool's args, then its node labels and taints.
    pub cmd: Vec<String>,
    pub cpu: f64,
    pub memory_bytes: u64,
    pub env: BTreeMap<&'a str, &'a str>,
}

/// Everything the pool needs, in plain types; the lead maps `workers:` and `docker:` of `config.yaml`
/// into it.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Engine address (`unix://…`, `tcp://…`, `ssh://…`); empty means `DOCKER_HOST` or the local
    /// socket.
    pub host: String,
    /// TLS files for a `tcp://` engine, a key for an `ssh://` one.
    pub access: EngineAccess,
    /// Workers are named `<name_prefix><n>` (default pool) or `<name_prefix><pool>-<n>`.
    pub name_prefix: String,
    /// The worker image (a `rancher/k3s` tag, or the lab image).
    pub image: String,
    /// The container's command before `args`: `["agent"]` for k3s and for the lab's node agent.
    pub command: Vec<String>,
    /// Extra arguments after `command` (node labels, taints).
    pub args: Vec<String>,
    /// `K3S_URL`; left out of the environment when empty.
    pub k3s_url: String,
    /// `K3S_TOKEN`: goes into the container's environment only, never into a label or a log.
    pub token: Option<Secret>,
    /// The Docker network to attach workers to (must exist); empty means the engine's default.
    pub network: String,
    /// `no`, `always`, `unless-stopped` or `on-failure`.
    pub restart_policy: String,
    /// The pool label of the default pool's workers (`workers.pool`).
    pub pool: String,
    /// `autoscaler.pools` by name; empty: one pool, the default, from the fields above.
    pub pools: BTreeMap<String, PoolSpec>,
    /// Cluster id label: only containers with this id are listed, adopted or watched.
    pub cluster_id: String,
    /// CPU limit in cores (NanoCpus); 0 means none.
    pub cpu: f64,
    /// Memory limit in bytes; 0 means none.
    pub memory_bytes: u64,
    /// Pods per worker of the default pool (`workers.max_pods`; 0: the kubelet's default).
    pub max_pods: u32,
    /// More environment variables for the worker.
    pub extra_env: BTreeMap<String, String>,
    /// More labels on every worker (tests add their test label here).
    pub extra_labels: BTreeMap<String, String>,
    /// Privileged containers, as k3s agents need. Engines that refuse privileged containers (some
    /// sandboxes answer "unable to apply caps") need `false`; the lab's node agent runs fine without.
    pub privileged: bool,
    /// Where the agent keeps its state; a named volume `<name>-state` is mounted here.
    pub state_path: String,
    /// Stopped workers kept for a fast start.
    pub warm_pool: u32,
    /// Timeout of every engine call (a stop gets its grace period on top).
    pub timeout: Duration,
    /// Grace period of a stop before the engine kills.
    pub stop_grace: Duration,
    /// Consecutive engine failures that open the circuit breaker (0: never).
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before a probe.
    pub breaker_cool_off: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            access: EngineAccess::default(),
            name_prefix: "k3s-worker-".into(),
            image: "rancher/k3s:v1.33.5-k3s1".into(),
            command: vec!["agent".into()],
            args: Vec::new(),
            k3s_url: String::new(),
            token: None,
            network: String::new(),
            restart_policy: "unless-stopped".into(),
            pool: "default".into(),
            pools: BTreeMap::new(),
            cluster_id: "k3s-lab".into(),
            cpu: 2.0,
            memory_bytes: 2 * 1024 * 1024 * 1024,
            max_pods: 0,
            extra_env: BTreeMap::new(),
            extra_labels: BTreeMap::new(),
            privileged: true,
            state_path: "/var/lib/rancher/k3s".into(),
            warm_pool: 0,
            timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
            breaker_failures: 5,
            breaker_cool_off: Duration::from_secs(30),
        }
    }
}

impl PoolConfig {
    /// The template of a worker of `pool` (`None`: the default pool). Without `pools`, the default
    /// pool is the fields of this config, exactly as before pools; with them, `pool` must be one
    /// of them: an unknown pool is an error, never a silent default.
    pub fn template<'a>(&'a self, pool: Option<&str>) -> Result<WorkerTemplate<'a>> {
        let name = pool.unwrap_or(handlers::policy::DEFAULT_POOL);
        // The pool's own entries win over `extra_env`'s.
        let env = |extra: Option<&'a BTreeMap<String, String>>| {
            self.extra_env
                .iter()
                .chain(extra.into_iter().flatten())
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        };
        if let Some((label, spec)) = self.pools.get_key_value(name) {
            let mut cmd: Vec<String> = self.command.iter().chain(&spec.args).cloned().collect();
            cmd.push("--node-label".into());
            cmd.push(format!("{}={label}", bus::scheduling::POOL_LABEL));
            for (k, v) in &spec.labels {
                cmd.push("--node-label".into());
                cmd.push(format!("{k}={v}"));
            }
            for t in &spec.taints {
                cmd.push("--node-taint".into());
                cmd.push(t.clone());
            }
            cmd.extend(kubelet_args(spec.max_pods));
            let name_prefix = if label == handlers::policy::DEFAULT_POOL {
                self.name_prefix.clone()
            } else {
                format!("{}{label}-", self.name_prefix)
            };
            return Ok(WorkerTemplate {
                label,
                name_prefix,
                image: &spec.image,
                cmd,
                cpu: spec.cpu,
                memory_bytes: spec.memory_bytes,
                env: env(Some(&spec.env)),
            });
        }
        if self.pools.is_empty() && name == handlers::policy::DEFAULT_POOL {
            return Ok(WorkerTemplate {
                label: &self.pool,
                name_prefix: self.name_prefix.clone(),
                image: &self.image,
                cmd: self
                    .command
                    .iter()
                    .chain(&self.args)
                    .cloned()
                    .chain(kubelet_args(self.max_pods))
                    .collect(),
                cpu: self.cpu,
                memory_bytes: self.memory_bytes,
                env: env(None),
            });
        }
        Err(DockerError::UnknownPool {
            pool: name.to_string(),
            known: if self.pools.is_empty() {
                vec![handlers::policy::DEFAULT_POOL.to_string()]
            } else {
                self.pools.keys().cloned().collect()
            },
        })
    }
}

/// The engine address that `host` means: itself, else `DOCKER_HOST`, else the local socket.
pub fn engine_address(host: &str) -> String {
    if !host.is_empty() {
        return host.to_string();
    }
    match std::env::var("DOCKER_HOST") {
        Ok(h) if !h.is_empty() => h,
        _ => DEFAULT_DOCKER_HOST.to_string(),
    }
}

/// How an engine is reached beyond its address (`docker.tls`, `docker.ssh_key_file` and the same
/// keys of `docker.hosts[]`; docs/TOPOLOGY.md "Docker hosts").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineAccess {
    /// A `tcp://` engine started with `--tlsverify`: HTTPS, its certificate checked against `ca`,
    /// ours (`cert`, `key`) shown to it.
    pub tls: Option<EngineTls>,
    /// An `ssh://` engine: the private key to log in with; `None`: ssh's own configuration.
    pub ssh_key: Option<std::path::PathBuf>,
}

/// PEM files of a TLS engine connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineTls {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// bollard's read/write timeout of one HTTP exchange, as `connect_with_host` sets it: our own
/// [`Engine`] timeout is the one that matters, and a stop's grace must fit under this one.
const TRANSPORT_TIMEOUT_SECS: u64 = 120;

/// Connects to the engine at `host` (see [`engine_address`]) and negotiates the API version (the engine
/// here speaks 1.41, older than bollard's default). Fails with [`DockerError::Unreachable`] when the
/// socket is missing or the engine does not answer within `timeout`.
pub async fn connect(host: &str, timeout: Duration) -> Result<Docker> {
    connect_with(host, &EngineAccess::default(), timeout).await
}

/// [`connect`] over TLS (`access.tls`, a `tcp://` host) or SSH (an `ssh://` host: ssh runs
/// `docker system dial-stdio` there, so that host needs the docker CLI and ssh a way in).
pub async fn connect_with(host: &str, access: &EngineAccess, timeout: Duration) -> Result<Docker> {
    let address = engine_address(host);
    let unreachable = |reason: String| DockerError::Unreachable {
        address: address.clone(),
        reason,
    };
    let version = bollard::API_DEFAULT_VERSION;
    let docker = if address.starts_with("ssh://") {
        let key = access.ssh_key.as_ref().map(|k| k.display().to_string());
        Docker::connect_with_ssh(&address, TRANSPORT_TIMEOUT_SECS, version, key)
    } else if let Some(tls) = &access.tls {
        Docker::connect_with_ssl(
            &address,
            &tls.key,
            &tls.cert,
            &tls.ca,
            TRANSPORT_TIMEOUT_SECS,
            version,
        )
    } else {
        Docker::connect_with_host(&address)
    }
    .map_err(|e| unreachable(describe(&e)))?;
    match tokio::time::timeout(timeout, docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => Err(unreachable(describe(&e))),
        Err(_) => Err(unreachable(format!("no answer within {timeout:?}"))),
    }
}

/// An error and its sources on one line (bollard's transport errors hide the cause in the chain).
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

/// The engine client with the resilience every call goes through: timeout, circuit breaker, retries.
#[derive(Clone)]
pub struct Engine {
    /// The bollard client (cheap to clone: shared connection pool).
    docker: Docker,
    /// The address, for error messages.
    address: Arc<str>,
    /// Timeout of one call.
    timeout: Duration,
    /// Shared by every clone, so all the pool's calls open and close it together.
    breaker: Arc<CircuitBreaker>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("address", &self.address)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Retries of an idempotent call after a transient failure.
const RETRY_ATTEMPTS: u32 = 3;

impl Engine {
    /// Wraps a connected client.
    pub fn new(
        docker: Docker,
        address: &str,
        timeout: Duration,
        breaker_failures: u32,
        cool_off: Duration,
    ) -> Self {
        Self {
            docker,
            address: address.into(),
            timeout,
            breaker: Arc::new(CircuitBreaker::new(breaker_failures, cool_off)),
        }
    }

    /// The bollard client, for calls this module does not wrap.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The configured per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The circuit breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Runs one engine call under the breaker and a timeout of the configured timeout plus `extra`
    /// (a stop's grace period). Transport failures become [`DockerError::Unreachable`].
    pub async fn call<T, F>(&self, operation: &'static str, extra: Duration, fut: F) -> Result<T>
    where
        F: Future<Output = Result<T, bollard::errors::Error>>,
    {
        // Held across the await: if this future is dropped mid-call, the permit's drop frees the
        // half-open probe slot.
        let permit = match self.breaker.try_acquire(Instant::now()) {
            Ok(permit) => permit,
            Err(refused) => {
                return Err(DockerError::CircuitOpen {
                    failures: refused.failures,
                    retry_in: refused.retry_in,
                })
            }
        };
        let timeout = self.timeout + extra;
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.classify(operation, e)),
            Err(_) => Err(DockerError::Timeout { operation, timeout }),
        };
        match &result {
            Ok(_) => permit.success(),
            Err(e) if e.counts_as_engine_failure() => permit.failure(Instant::now()),
            Err(_) => permit.neutral(),
        }
        result
    }

    /// As [`Engine::call`], retried with exponential backoff while the failure is transient. Only for
    /// idempotent calls.
    pub async fn call_retrying<T, F, Fut>(
        &self,
        operation: &'static str,
        extra: Duration,
        mut make: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, bollard::errors::Error>>,
    {
        let mut backoff =
            primitives::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut attempt = 1;
        loop {
            match self.call(operation, extra, make()).await {
                Err(e)
                    if e.retryable()
                        && !matches!(e, DockerError::CircuitOpen { .. })
                        && attempt < RETRY_ATTEMPTS =>
                {
                    let delay = backoff.next_delay();
                    tracing::debug!(operation, attempt, error = %e, ?delay, "retrying Docker engine call");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn classify(&self, operation: &'static str, e: bollard::errors::Error) -> DockerError {
        use bollard::errors::Error as B;
        match e {
            B::SocketNotFoundError(_) | B::HyperLegacyError { .. } | B::IOError { .. } => {
                DockerError::Unreachable {
                    address: self.address.to_string(),
                    reason: describe(&e),
                }
            }
            source => DockerError::Engine { operation, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_secret_never_prints_its_value() {
        let s = Secret::new("K10abc::server:hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        let cfg = PoolConfig {
            token: Some(s.clone()),
            ..PoolConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert_eq!(s.expose(), "K10abc::server:hunter2");
    }

    fn unreachable() -> bollard::errors::Error {
        bollard::errors::Error::IOError {
            err: std::io::Error::other("connection refused"),
        }
    }

    /// A probe whose future is dropped mid-call (a `select!` whose other branch won) must not leave
    /// the breaker refusing every later call.
    #[tokio::test]
    async fn docker_breaker_cancelled_probe_lets_the_next_call_through() {
        let docker = Docker::connect_with_host("tcp://127.0.0.1:9").unwrap();
        // One failure opens it; no cool-off, so the next call is the half-open probe.
        let engine = Engine::new(
            docker,
            "tcp://127.0.0.1:9",
            Duration::from_secs(30),
            1,
            Duration::ZERO,
        );
        let first = engine
            .call("version", Duration::ZERO, async {
                Err::<(), _>(unreachable())
            })
            .await;
        assert!(matches!(first, Err(DockerError::Unreachable { .. })));
        assert_eq!(
            engine.breaker().state(Instant::now()),
            breaker::BreakerState::HalfOpen
        );

        // The probe goes out and never answers; the select! drops it when the other branch is ready.
        let probe_started = std::sync::atomic::AtomicBool::new(false);
        tokio::select! {
            biased;
            _ = engine.call("version", Duration::ZERO, async {
                probe_started.store(true, std::sync::atomic::Ordering::SeqCst);
                std::future::pending::<Result<(), bollard::errors::Error>>().await
            }) => panic!("the probe never answers"),
            _ = std::future::ready(()) => {}
        }
        assert!(probe_started.load(std::sync::atomic::Ordering::SeqCst));

        // The next call is let through as the probe and, answering, closes the breaker.
        let next = engine
            .call("version", Duration::ZERO, async {
                Ok::<_, bollard::errors::Error>(7)
            })
            .await;
        assert_eq!(next.unwrap(), 7);
        assert_eq!(
            engine.breaker().state(Instant::now()),
            breaker::BreakerState::Closed
        );
    }

    #[test]
    fn docker_engine_address_prefers_the_configured_host() {
        assert_eq!(
            engine_address("tcp://127.0.0.1:2375"),
            "tcp://127.0.0.1:2375"
        );
    }
}
