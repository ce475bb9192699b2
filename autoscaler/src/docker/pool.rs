//! [`DockerWorkerPool`]: k3s agents as Docker containers, created the way k3d creates an agent.
//!
//! A worker is a container named `<name_prefix><n>` (hostname and `K3S_NODE_NAME` the same), with its
//! agent state in the named volume `<name>-state` that removal deletes, so nothing is left behind.
//! A worker of a configured pool (`autoscaler.pools`) is `<name_prefix><pool>-<n>`, built from its
//! pool's template ([`PoolConfig::template`]): the pool's image, limits and environment, and the pool,
//! its labels and taints as k3s's `--node-label` / `--node-taint`.
//! Docker's 409 for an existing name means another replica created that worker already: the pool
//! answers with the existing container (idempotent success) when it carries our cluster id.
//!
//! The warm pool of stopped workers (`acquire`, `release`) is in [`super::warm`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, HostConfig, Mount, MountType,
    RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
    RemoveVolumeOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use chrono::{DateTime, Datelike, Utc};
use futures::{StreamExt, TryStreamExt};
use handlers::traits::{ActionError, Removal};
use tracing::{debug, info, warn};

use super::intents::{Intent, PoolIntents};
use super::naming;
use super::{
    connect_with, engine_address, DockerError, Engine, PoolConfig, Result, LABEL_CLUSTER_ID,
    LABEL_MANAGED_BY, LABEL_POOL, LABEL_REQUESTED_BY, MANAGED_BY_VALUE,
};

/// How long the pool's own actions mask the engine's events about them.
const INTENT_TTL: Duration = Duration::from_secs(120);

/// Inspects run at once while adopting.
const ADOPT_CONCURRENCY: usize = 8;

/// A request for one worker.
#[derive(Debug, Clone, Default)]
pub struct CreateWorker {
    /// An explicit name; `None` takes the next free `<name_prefix><n>`.
    pub name: Option<String>,
    /// The id of the event that asked for the worker (label `k3s-autoscaler/requested-by`).
    pub requested_by: String,
    /// More labels for this worker only.
    pub extra_labels: BTreeMap<String, String>,
    /// Its pool; `None`: the default pool.
    pub pool: Option<String>,
}

/// A container's state as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    /// A state this code does not know (newer engines).
    Other(String),
}

impl WorkerState {
    /// From the engine's state string (`running`, `exited`, …).
    pub fn parse(s: &str) -> Self {
        match s {
            "created" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "restarting" => Self::Restarting,
            "removing" => Self::Removing,
            "exited" => Self::Exited,
            "dead" => Self::Dead,
            other => Self::Other(other.to_string()),
        }
    }

    /// Running (or about to run again under the restart policy).
    pub fn is_running(&self) -> bool {
        matches!(self, Self::Running | Self::Restarting)
    }

    /// Stopped in a way `docker start` can resume.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Self::Created | Self::Exited)
    }
}

/// One managed worker container.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    /// Container name = hostname = node name.
    pub name: String,
    /// Container id.
    pub id: String,
    pub state: WorkerState,
    /// The container's labels.
    pub labels: BTreeMap<String, String>,
    /// When it last started (`None` when never started, or from a list without inspect).
    pub started_at: Option<DateTime<Utc>>,
    /// When it last stopped.
    pub finished_at: Option<DateTime<Utc>>,
    /// Exit code of the last run (inspect only).
    pub exit_code: Option<i64>,
    /// Whether the last run was killed for memory (inspect only).
    pub oom_killed: bool,
    /// Restarts by the restart policy (inspect only).
    pub restart_count: i64,
}

impl Worker {
    /// The id of the event that asked for this worker.
    pub fn requested_by(&self) -> Option<&str> {
        self.labels.get(LABEL_REQUESTED_BY).map(String::as_str)
    }

    /// The pool label.
    pub fn pool(&self) -> Option<&str> {
        self.labels.get(LABEL_POOL).map(String::as_str)
    }

    pub(crate) fn from_summary(s: &ContainerSummary) -> Option<Self> {
        let name = s
            .names
            .as_ref()?
            .first()?
            .trim_start_matches('/')
            .to_string();
        Some(Self {
            name,
            id: s.id.clone().unwrap_or_default(),
            state: WorkerState::parse(s.state.as_ref().map(|st| st.as_ref()).unwrap_or("")),
            labels: s
                .labels
                .as_ref()
                .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            oom_killed: false,
            restart_count: 0,
        })
    }

    pub(crate) fn from_inspect(c: &ContainerInspectResponse) -> Self {
        let state = c.state.as_ref();
        Self {
            name: c
                .name
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            id: c.id.clone().unwrap_or_default(),
            state: WorkerState::parse(
                &state
                    .and_then(|s| s.status.as_ref())
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            ),
            labels: c
                .config
                .as_ref()
                .and_then(|cfg| cfg.labels.as_ref())
                .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            started_at: state.and_then(|s| parse_engine_time(s.started_at.as_deref())),
            finished_at: state.and_then(|s| parse_engine_time(s.finished_at.as_deref())),
            exit_code: state.and_then(|s| s.exit_code),
            oom_killed: state.and_then(|s| s.oom_killed).unwrap_or(false),
            restart_count: c.restart_count.unwrap_or(0),
        }
    }
}

/// The engine writes `0001-01-01T00:00:00Z` for "never": that is `None`.
fn parse_engine_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s?).ok()?.with_timezone(&Utc);
    (t.year() > 1).then_some(t)
}

/// The worker pool on one Docker engine.
pub struct DockerWorkerPool {
    /// Engine client with timeout, breaker and retries.
    engine: Engine,
    /// Shared with clones of the config elsewhere; never logged whole (the token is a [`super::Secret`]).
    config: Arc<PoolConfig>,
    /// The pool's own recent actions, shared with the events watcher.
    intents: Arc<PoolIntents>,
    /// Serialises name allocation + create in this process: two local creates never pick the same
    /// name; across replicas Docker's 409 settles it.
    create_lock: tokio::sync::Mutex<()>,
    /// Stopped workers kept warm: name → their [`LABEL_POOL`], so a pool only gets its own back.
    /// std mutex: never held across an await.
    pub(super) warm: Mutex<BTreeMap<String, String>>,
    /// Last CPU counters per container, for CPU % between two samples (see `stats`).
    pub(crate) cpu_prev: Mutex<HashMap<String, super::stats::CpuCounters>>,
}

impl std::fmt::Debug for DockerWorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerWorkerPool")
            .field("engine", &self.engine)
            .field("cluster_id", &self.config.cluster_id)
            .field("name_prefix", &self.config.name_prefix)
            .finish_non_exhaustive()
    }
}

impl DockerWorkerPool {
    /// Connects to the configured engine (see [`super::connect`]) and builds the pool.
    pub async fn connect(config: PoolConfig) -> Result<Self> {
        let docker = connect_with(&config.host, &config.access, config.timeout).await?;
        Ok(Self::new(docker, config))
    }

    /// A pool on a connected client (after `negotiate_version`).
    pub fn new(docker: Docker, config: PoolConfig) -> Self {
        let engine = Engine::new(
            docker,
            &engine_address(&config.host),
            config.timeout,
            config.breaker_failures,
            config.breaker_cool_off,
        );
        Self {
            engine,
            config: Arc::new(config),
            intents: Arc::new(PoolIntents::new(INTENT_TTL)),
            create_lock: tokio::sync::Mutex::new(()),
            warm: Mutex::new(BTreeMap::new()),
            cpu_prev: Mutex::new(HashMap::new()),
        }
    }

    /// The engine client.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// The pool's record of its own actions, for [`super::DockerEventsWatcher`].
    pub fn intents(&self) -> Arc<PoolIntents> {
        self.intents.clone()
    }

    /// Label filters selecting this cluster's managed containers.
    pub fn managed_filters(&self) -> HashMap<String, Vec<String>> {
        managed_filters(&self.config.cluster_id)
    }

    /// Whether a container's labels say it is one of ours.
    fn is_ours(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VALUE)
            && labels.get(LABEL_CLUSTER_ID) == Some(&self.config.cluster_id)
    }

    /// The labels of a worker of the pool labelled `pool` and of its volume.
    fn base_labels(&self, pool: &str) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = self
            .config
            .extra_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY_VALUE.into());
        labels.insert(LABEL_CLUSTER_ID.into(), self.config.cluster_id.clone());
        labels.insert(LABEL_POOL.into(), pool.to_string());
        labels
    }

    /// The create request for worker `name`: k3d's agent shape (see the module doc).
    pub fn container_body(&self, name: &str, req: &CreateWorker) -> Result<ContainerCreateBody> {
        let c = &self.config;
        let t = c.template(req.pool.as_deref())?;
        let mut labels = self.base_labels(t.label);
        labels.extend(req.extra_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        if !req.requested_by.is_empty() {
            labels.insert(LABEL_REQUESTED_BY.into(), req.requested_by.clone());
        }

        let mut env: Vec<String> = Vec::new();
        if !c.k3s_url.is_empty() {
            env.push(format!("K3S_URL={}", c.k3s_url));
        }
        if let Some(token) = &c.token {
            env.push(format!("K3S_TOKEN={}", token.expose()));
        }
        env.push(format!("K3S_NODE_NAME={name}"));
        env.extend(t.env.iter().map(|(k, v)| format!("{k}={v}")));

        let restart: RestartPolicyNameEnum = c.restart_policy.parse().map_err(|_| {
            DockerError::InvalidConfig(format!(
                "restart_policy `{}`: expected no, always, unless-stopped or on-failure",
                c.restart_policy
            ))
        })?;

        let host_config = HostConfig {
            privileged: Some(c.privileged),
            tmpfs: Some(HashMap::from([
                ("/run".to_string(), String::new()),
                ("/var/run".to_string(), String::new()),
            ])),
            restart_policy: Some(RestartPolicy {
                name: Some(restart),
                maximum_retry_count: None,
            }),
            mounts: Some(vec![Mount {
                target: Some(c.state_path.clone()),
                source: Some(naming::state_volume_name(name)),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            }]),
            network_mode: (!c.network.is_empty()).then(|| c.network.clone()),
            nano_cpus: (t.cpu > 0.0).then(|| (t.cpu * 1e9).round() as i64),
            memory: (t.memory_bytes > 0).then(|| i64::try_from(t.memory_bytes).unwrap_or(i64::MAX)),
            ..Default::default()
        };
        Ok(ContainerCreateBody {
            // On the host's own network the container has the host's name (engines refuse another);
            // the node is named by K3S_NODE_NAME.
            hostname: (c.network != "host").then(|| name.to_string()),
            image: Some(t.image.to_string()),
            cmd: Some(t.cmd),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        })
    }

    /// The next free `<name_prefix><n>` among all containers on the engine (ours or not, running or
    /// not), so a foreign container never makes us collide; `<name_prefix><pool>-<n>` for a worker
    /// of a configured pool other than the default.
    pub async fn next_name(&self, pool: Option<&str>) -> Result<String> {
        let prefix = &self.config.template(pool)?.name_prefix;
        // The engine matches `name` as a regular expression against `/<name>`.
        let filters = HashMap::from([(
            "name".to_string(),
            vec![format!("^/{}", regex_escape(prefix))],
        )]);
        let docker = self.engine.docker();
        let list = self
            .engine
            .call_retrying("list_containers", Duration::ZERO, || {
                docker.list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters.clone()),
                    ..Default::default()
                }))
            })
            .await?;
        let names: Vec<&str> = list
            .iter()
            .filter_map(|c| c.names.as_ref())
            .flatten()
            .map(String::as_str)
            .collect();
        Ok(naming::next_free_name(prefix, names))
    }

    /// Creates and starts a worker. A 409 for its name means it exists already: if it is ours, that is
    /// success and the existing worker is returned (and started); if not, [`DockerError::NameTaken`].
    pub async fn create(&self, req: &CreateWorker) -> Result<Worker> {
        let name = {
            // Held from choosing the name until the engine has reserved it, not during the start.
            let _serialised = self.create_lock.lock().await;
            let name = match &req.name {
                Some(n) => n.clone(),
                None => self.next_name(req.pool.as_deref()).await?,
            };
            self.create_container(&name, req).await?;
            name
        };
        self.start_worker(&name).await
    }

    /// Creates the container (and its volume); an existing one of ours in the same pool is success.
    /// A stopped one of another pool (a warm worker left by an earlier configuration) is removed
    /// and the worker created anew; a running one is [`DockerError::PoolMismatch`].
    async fn create_container(&self, name: &str, req: &CreateWorker) -> Result<()> {
        let body = self.container_body(name, req)?;
        let pool = self.config.template(req.pool.as_deref())?.label.to_string();
        info!(worker = %name, pool = %pool, image = body.image.as_deref().unwrap_or_default(), requested_by = %req.requested_by, "creating worker");
        let mut replaced = false;
        loop {
            self.ensure_volume(name, &pool, req).await?;
            self.intents.record(name, Intent::Start);

            let docker = self.engine.docker();
            let created = self
                .engine
                .call(
                    "create_container",
                    Duration::ZERO,
                    docker.create_container(
                        Some(CreateContainerOptions {
                            name: Some(name.to_string()),
                            ..Default::default()
                        }),
                        body.clone(),
                    ),
                )
                .await;
            return match created {
                Ok(resp) => {
                    debug!(worker = %name, id = %resp.id, "container created");
                    Ok(())
                }
                Err(e) if e.status_code() == Some(409) => {
                    match self.inspect_conflicting(name).await? {
                        Some(existing) if self.is_ours(&existing.labels) => {
                            let has = existing.pool().unwrap_or_default();
                            if has == pool {
                                info!(worker = %name, id = %existing.id, "worker exists already (created by another replica): idempotent success");
                                Ok(())
                            } else if existing.state.is_stopped() && !replaced {
                                warn!(worker = %name, has = %has, wanted = %pool, "a stopped worker of another pool holds the name: removing it");
                                DockerWorkerPool::remove_worker(self, name).await?;
                                replaced = true;
                                continue;
                            } else {
                                Err(DockerError::PoolMismatch {
                                    name: name.to_string(),
                                    has: has.to_string(),
                                    wanted: pool,
                                })
                            }
                        }
                        Some(_) => Err(DockerError::NameTaken {
                            name: name.to_string(),
                            cluster_id: self.config.cluster_id.clone(),
                        }),
                        // Removed between the 409 and the inspect: let the caller retry.
                        None => Err(e),
                    }
                }
                Err(e) => {
                    // No container of that name holds the volume (a concurrent one keeps it: 409).
                    self.remove_volume_best_effort(name).await;
                    Err(e)
                }
            };
        }
    }

    /// The container whose name answered 409. Another replica's create may still be in flight: the
    /// engine reserves the name before the container can be inspected, so a 404 is retried briefly.
    async fn inspect_conflicting(&self, name: &str) -> Result<Option<Worker>> {
        let mut backoff =
            primitives::Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        for _ in 0..10 {
            if let Some(w) = self.inspect_any(name).await? {
                return Ok(Some(w));
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
        Ok(None)
    }

    /// The state volume, labelled like the worker so cleanups by label find it. Creating an existing
    /// volume is a no-op in Docker, which keeps a repeated create idempotent.
    async fn ensure_volume(&self, name: &str, pool: &str, req: &CreateWorker) -> Result<()> {
        let mut labels = self.base_labels(pool);
        labels.extend(req.extra_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let volume = naming::state_volume_name(name);
        let docker = self.engine.docker();
        self.engine
            .call_retrying("create_volume", Duration::ZERO, || {
                docker.create_volume(VolumeCreateRequest {
                    name: Some(volume.clone()),
                    labels: Some(labels.clone()),
                    ..Default::default()
                })
            })
            .await?;
        Ok(())
    }

    /// Starts a created or stopped worker; starting a running one is fine (304).
    pub async fn start_worker(&self, name: &str) -> Result<Worker> {
        self.intents.record(name, Intent::Start);
        self.intents.clear(name, Intent::Stop);
        // Started by whatever path (acquire, a create that met the stopped container): no longer warm.
        self.warm_lock().remove(name);
        let docker = self.engine.docker();
        match self
            .engine
            .call(
                "start_container",
                Duration::ZERO,
                docker.start_container(name, None::<StartContainerOptions>),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if e.status_code() == Some(304) => {}
            Err(e) if e.status_code() == Some(404) => {
                return Err(DockerError::NotFound(name.into()))
            }
            Err(e) => return Err(e),
        }
        info!(worker = %name, "worker started");
        self.inspect_worker(name)
            .await?
            .ok_or_else(|| DockerError::NotFound(name.into()))
    }

    /// Stops a worker with the configured grace period, keeping the container (for the warm pool).
    pub async fn stop_worker(&self, name: &str) -> Result<()> {
        self.intents.record(name, Intent::Stop);
        match self.stop_container(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.status_code() == Some(404) => Err(DockerError::NotFound(name.into())),
            Err(e) => Err(e),
        }
    }

    async fn stop_container(&self, name: &str) -> Result<()> {
        let grace = self.config.stop_grace;
        let docker = self.engine.docker();
        let result = self
            .engine
            .call_retrying("stop_container", grace, || {
                docker.stop_container(
                    name,
                    Some(StopContainerOptions {
                        t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)),
                        signal: None,
                    }),
                )
            })
            .await;
        match result {
            // 304: not running.
            Err(e) if e.status_code() == Some(304) => Ok(()),
            other => other,
        }
    }

    /// Removes a worker: stop with the grace period, remove the container with its volumes, remove
    /// the state volume. A worker that is already gone is success. A container of that name that is
    /// not ours is refused with [`DockerError::NameTaken`].
    pub async fn remove_worker(&self, name: &str) -> Result<()> {
        self.intents.record(name, Intent::Remove);
        self.warm_lock().remove(name);
        match self.inspect_any(name).await? {
            None => debug!(worker = %name, "container already gone"),
            Some(w) if !self.is_ours(&w.labels) => {
                return Err(DockerError::NameTaken {
                    name: name.into(),
                    cluster_id: self.config.cluster_id.clone(),
                })
            }
            Some(w) => {
                if w.state.is_running() || w.state == WorkerState::Paused {
                    match self.stop_container(name).await {
                        Ok(()) => {}
                        Err(e) if e.status_code() == Some(404) => {}
                        Err(e) => {
                            warn!(worker = %name, error = %e, "stop before remove failed; forcing removal")
                        }
                    }
                }
                let docker = self.engine.docker();
                let removed = self
                    .engine
                    .call_retrying("remove_container", Duration::ZERO, || {
                        docker.remove_container(
                            name,
                            Some(RemoveContainerOptions {
                                v: true,
                                force: true,
                                link: false,
                            }),
                        )
                    })
                    .await;
                match removed {
                    Ok(()) => {}
                    Err(e) if e.status_code() == Some(404) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.remove_volume(name).await?;
        info!(worker = %name, "worker removed");
        Ok(())
    }

    async fn remove_volume(&self, worker: &str) -> Result<()> {
        let volume = naming::state_volume_name(worker);
        let docker = self.engine.docker();
        // The engine may still count the just-removed container as a user for a moment (409): retry.
        let mut backoff =
            primitives::Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        for attempt in 1..=5 {
            let result = self
                .engine
                .call(
                    "remove_volume",
                    Duration::ZERO,
                    docker.remove_volume(&volume, Some(RemoveVolumeOptions { force: true })),
                )
                .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.status_code() == Some(404) => return Ok(()),
                Err(e) if e.status_code() == Some(409) && attempt < 5 => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn remove_volume_best_effort(&self, worker: &str) {
        if let Err(e) = self.remove_volume(worker).await {
            warn!(worker = %worker, error = %e, "could not remove the state volume of a failed create");
        }
    }

    /// This cluster's managed workers, running or not (list only: no exit codes).
    pub async fn list_workers(&self) -> Result<Vec<Worker>> {
        list_managed(&self.engine, &self.config.cluster_id).await
    }

    /// One worker's full state; `None` when it does not exist or is not ours.
    pub async fn inspect_worker(&self, name: &str) -> Result<Option<Worker>> {
        Ok(self
            .inspect_any(name)
            .await?
            .filter(|w| self.is_ours(&w.labels)))
    }

    /// Any container of that name; `None` on 404.
    async fn inspect_any(&self, name: &str) -> Result<Option<Worker>> {
        inspect_container(&self.engine, name).await
    }

    /// Start-up: lists and inspects this cluster's workers, and takes the stopped ones that a stop
    /// ended (code 0; 143 = SIGTERM; 137 = killed when the grace period ran out; never OOM-killed)
    /// into the warm pool, up to `warm_pool`.
    /// The others are the caller's to judge (e.g. remove crashed ones).
    pub async fn adopt(&self) -> Result<Vec<Worker>> {
        let listed = self.list_workers().await?;
        let mut workers: Vec<Worker> = futures::stream::iter(listed)
            .map(|w| async move { self.inspect_worker(&w.name).await })
            .buffer_unordered(ADOPT_CONCURRENCY)
            .try_filter_map(|w| async move { Ok(w) })
            .try_collect()
            .await?;
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut warm = self.warm_lock();
        for w in &workers {
            if warm.len() >= self.config.warm_pool as usize {
                break;
            }
            if w.state.is_stopped()
                && !w.oom_killed
                && matches!(w.exit_code, Some(0) | Some(137) | Some(143))
            {
                warm.insert(w.name.clone(), w.pool().unwrap_or_default().to_string());
            }
        }
        info!(
            workers = workers.len(),
            warm = warm.len(),
            "adopted managed workers"
        );
        Ok(workers)
    }
}

/// The managed containers of `cluster_id`, running or not, sorted by name.
pub(crate) async fn list_managed(engine: &Engine, cluster_id: &str) -> Result<Vec<Worker>> {
    let filters = managed_filters(cluster_id);
    let docker = engine.docker();
    let list = engine
        .call_retrying("list_containers", Duration::ZERO, || {
            docker.list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
        })
        .await?;
    let mut workers: Vec<Worker> = list.iter().filter_map(Worker::from_summary).collect();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(workers)
}

/// Any container of that name, fully inspected; `None` on 404.
pub(crate) async fn inspect_container(engine: &Engine, name: &str) -> Result<Option<Worker>> {
    let docker = engine.docker();
    let result = engine
        .call_retrying("inspect_container", Duration::ZERO, || {
            docker.inspect_container(name, None::<InspectContainerOptions>)
        })
        .await;
    match result {
        Ok(c) => Ok(Some(Worker::from_inspect(&c))),
        Err(e) if e.status_code() == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Escapes the regular-expression metacharacters of a literal.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Label filters selecting the managed containers of `cluster_id`.
pub fn managed_filters(cluster_id: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"),
            format!("{LABEL_CLUSTER_ID}={cluster_id}"),
        ],
    )])
}

/// The handlers' boundary. Names come from the handlers; the event id is not part of the trait, so
/// such workers carry no `requested-by` label. The decision core says whether a removed worker is
/// kept warm (`RemoveWorker {keep_warm_in}`, its pool's `warm_pool`): then it is stopped and kept (its
/// Node was already drained and deleted by then, with k3s's node-password secret, so the agent
/// registers anew when it starts), and a later `create_worker` of the same name starts it again
/// through the 409 path.
impl handlers::traits::WorkerPool for DockerWorkerPool {
    async fn create_worker(
        &self,
        name: &str,
        pool: &str,
    ) -> std::result::Result<String, ActionError> {
        let req = CreateWorker {
            name: Some(name.to_string()),
            pool: Some(pool.to_string()),
            ..CreateWorker::default()
        };
        self.create(&req).await.map(|w| w.id).map_err(action_error)
    }

    async fn remove_worker(
        &self,
        name: &str,
        keep_warm: bool,
    ) -> std::result::Result<Removal, ActionError> {
        if keep_warm {
            if self.keep_warm(name).await.map_err(action_error)?.is_some() {
                return Ok(Removal::KeptWarm);
            }
            return Ok(Removal::Removed);
        }
        DockerWorkerPool::remove_worker(self, name)
            .await
            .map(|()| Removal::Removed)
            .map_err(action_error)
    }
}

/// The handlers' error: the message (never holding the token: no error of this module carries
/// configuration values) and whether to retry. When the engine did not answer (unreachable, timed
/// out, circuit open) the message starts with `provider_unavailable: `, the code the decision core
/// backs the pool off on until the engine is seen answering again.
pub fn action_error(e: DockerError) -> ActionError {
    let message = if e.provider_unavailable() {
        format!("{}: {e}", handlers::codes::PROVIDER_UNAVAILABLE)
    } else {
        e.to_string()
    };
    ActionError {
        message,
        retryable: e.retryable(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Secret;
    use super::*;

    fn pool(config: PoolConfig) -> DockerWorkerPool {
        // A client that is never called: building the request is pure.
        let docker =
            Docker::connect_with_http("http://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION)
                .expect("client");
        DockerWorkerPool::new(docker, config)
    }

    #[test]
    fn docker_container_body_is_shaped_like_a_k3d_agent() {
        let p = pool(PoolConfig {
            token: Some(Secret::new("sekret-token")),
            k3s_url: "https://k3s-server:6443".into(),
            network: "k3s-lab".into(),
            args: vec!["--node-label".into(), "pool=burst".into()],
            cpu: 1.5,
            memory_bytes: 512 * 1024 * 1024,
            ..PoolConfig::default()
        });
        let body = p
            .container_body(
                "k3s-worker-3",
                &CreateWorker {
                    name: None,
                    requested_by: "evt-1".into(),
                    extra_labels: BTreeMap::new(),
                    pool: None,
                },
            )
            .unwrap();
        assert_eq!(body.hostname.as_deref(), Some("k3s-worker-3"));
        assert_eq!(
            body.cmd.unwrap(),
            vec!["agent", "--node-label", "pool=burst"]
        );
        let env = body.env.unwrap();
        assert!(env.contains(&"K3S_URL=https://k3s-server:6443".to_string()));
        assert!(env.contains(&"K3S_TOKEN=sekret-token".to_string()));
        assert!(env.contains(&"K3S_NODE_NAME=k3s-worker-3".to_string()));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_REQUESTED_BY], "evt-1");
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY_VALUE);
        assert!(labels
            .iter()
            .all(|(k, v)| !k.contains("sekret") && !v.contains("sekret")));
        let hc = body.host_config.unwrap();
        assert_eq!(hc.privileged, Some(true));
        assert_eq!(hc.nano_cpus, Some(1_500_000_000));
        assert_eq!(hc.memory, Some(512 * 1024 * 1024));
        assert_eq!(hc.network_mode.as_deref(), Some("k3s-lab"));
        assert!(hc.tmpfs.unwrap().contains_key("/var/run"));
        let mount = &hc.mounts.unwrap()[0];
        assert_eq!(mount.source.as_deref(), Some("k3s-worker-3-state"));
        assert_eq!(mount.target.as_deref(), Some("/var/lib/rancher/k3s"));
    }

    fn two_pools() -> PoolConfig {
        let spec = |cpu: f64, memory_bytes: u64| super::super::PoolSpec {
            image: "example/k3s:pool".into(),
            args: vec!["--with-node-id".into()],
            cpu,
            memory_bytes,
            // The kubelet's default: no argument for it.
            max_pods: 110,
            env: BTreeMap::from([
                ("LAB_NODE_CPU".to_string(), cpu.to_string()),
                ("LAB_NODE_MEMORY".to_string(), memory_bytes.to_string()),
            ]),
            ..Default::default()
        };
        let mut highmem = spec(2.0, 4 << 30);
        highmem.labels = BTreeMap::from([
            ("tier".to_string(), "highmem".to_string()),
            ("example.com/disk".to_string(), "ssd".to_string()),
        ]);
        highmem.taints = vec!["dedicated=highmem:NoSchedule".into()];
        highmem.max_pods = 30;
        PoolConfig {
            name_prefix: "w-".into(),
            pool: "ignored-with-pools".into(),
            extra_env: BTreeMap::from([
                ("LAB_NODE_CPU".to_string(), "1".to_string()),
                ("EXTRA".to_string(), "kept".to_string()),
            ]),
            pools: BTreeMap::from([
                ("general".to_string(), spec(1.0, 1 << 30)),
                ("highmem".to_string(), highmem),
            ]),
            ..PoolConfig::default()
        }
    }

    #[test]
    fn docker_container_of_a_pool_carries_its_template_labels_and_taints() {
        let p = pool(two_pools());
        let req = CreateWorker {
            pool: Some("highmem".into()),
            ..CreateWorker::default()
        };
        let body = p.container_body("w-highmem-1", &req).unwrap();
        assert_eq!(body.image.as_deref(), Some("example/k3s:pool"));
        assert_eq!(
            body.cmd.unwrap(),
            vec![
                "agent",
                "--with-node-id",
                "--node-label",
                "k3s-autoscaler/pool=highmem",
                "--node-label",
                "example.com/disk=ssd",
                "--node-label",
                "tier=highmem",
                "--node-taint",
                "dedicated=highmem:NoSchedule",
                // The pod slots the simulation counts are the Node's.
                "--kubelet-arg",
                "max-pods=30",
            ]
        );
        assert_eq!(body.labels.unwrap()[LABEL_POOL], "highmem");
        let env = body.env.unwrap();
        assert!(env.contains(&"LAB_NODE_CPU=2".to_string()), "{env:?}");
        assert!(env.contains(&format!("LAB_NODE_MEMORY={}", 4u64 << 30)));
        assert!(env.contains(&"EXTRA=kept".to_string()));
        assert!(!env.contains(&"LAB_NODE_CPU=1".to_string()));
        let hc = body.host_config.unwrap();
        assert_eq!(hc.nano_cpus, Some(2_000_000_000));
        assert_eq!(hc.memory, Some(4 << 30));

        // A pool without labels or taints still carries its pool as a node label.
        let general = CreateWorker {
            pool: Some("general".into()),
            ..CreateWorker::default()
        };
        let body = p.container_body("w-general-1", &general).unwrap();
        let cmd = body.cmd.unwrap();
        assert_eq!(
            cmd[cmd.len() - 2..],
            ["--node-label", "k3s-autoscaler/pool=general"]
        );
        assert_eq!(body.host_config.unwrap().nano_cpus, Some(1_000_000_000));
        assert_eq!(
            p.config().template(Some("highmem")).unwrap().name_prefix,
            "w-highmem-"
        );
    }

    #[test]
    fn docker_unknown_pool_is_an_error_not_the_default_template() {
        let p = pool(two_pools());
        for asked in [None, Some("default"), Some("gpu")] {
            let req = CreateWorker {
                pool: asked.map(str::to_string),
                ..CreateWorker::default()
            };
            let err = p.container_body("w-1", &req).unwrap_err();
            assert!(!err.retryable());
            assert!(
                err.to_string().contains("configured: general, highmem"),
                "{err}"
            );
        }
        // Without pools, the default pool is the only one, with today's container.
        let p = pool(PoolConfig::default());
        let body = p
            .container_body(
                "k3s-worker-1",
                &CreateWorker {
                    pool: Some("default".into()),
                    ..CreateWorker::default()
                },
            )
            .unwrap();
        assert_eq!(body.cmd.unwrap(), vec!["agent"]);
        assert_eq!(body.labels.unwrap()[LABEL_POOL], "default");
        let err = p
            .container_body(
                "k3s-worker-1",
                &CreateWorker {
                    pool: Some("highmem".into()),
                    ..CreateWorker::default()
                },
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown pool `highmem` (configured: default)"
        );
    }

    #[test]
    fn docker_bad_restart_policy_is_a_config_error() {
        let p = pool(PoolConfig {
            restart_policy: "sometimes".into(),
            ..PoolConfig::default()
        });
        let err = p
            .container_body("w1", &CreateWorker::default())
            .unwrap_err();
        assert!(!err.retryable());
        assert!(err.to_string().contains("sometimes"));
    }

    #[test]
    fn docker_name_filter_escapes_the_prefix() {
        assert_eq!(regex_escape("k3s-worker-"), "k3s-worker-");
        assert_eq!(regex_escape("w.1+"), "w\\.1\\+");
    }

    #[test]
    fn docker_engine_never_time_is_none() {
        assert_eq!(parse_engine_time(Some("0001-01-01T00:00:00Z")), None);
        assert!(parse_engine_time(Some("2026-11-23T20:00:00.123456789Z")).is_some());
    }
}
