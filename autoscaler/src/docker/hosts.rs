//! [`DockerHosts`]: the engines workers run on. The default engine (`docker.host`) runs the default
//! pool and every pool without `docker_host`; each of `docker.hosts` runs the pools that name it.
//! Each host is its own [`DockerWorkerPool`]: its own client, timeout, circuit breaker, intents and
//! warm pool, so one engine that stops answering never holds up the others.
//!
//! A host other than the default one may be down when the autoscaler starts: it is connected when
//! first needed, and again at most every [`RECONNECT_GAP`] while it does not answer. Until then
//! every call routed to it fails as `provider_unavailable` (the decision core backs its pools off).
//! What a host that stops answering means for its workers is the StateSynchronizer's rule
//! (`handlers::sync`, docs/TOPOLOGY.md "Docker hosts").

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus::event::UnreachableHost;
use handlers::traits::{ActionError, Removal, WorkerPool};

use super::pool::action_error;
use super::{engine_address, DockerError, DockerWorkerPool, PoolConfig, Result, Worker};

/// The shortest time between two connection attempts to a host that does not answer.
pub const RECONNECT_GAP: Duration = Duration::from_secs(5);

/// One engine: its name (`default` for `docker.host`), the pools it runs, and its pool once
/// connected.
pub struct Host {
    pub name: String,
    /// The pools whose workers it runs.
    pub pools: Vec<String>,
    config: PoolConfig,
    /// std mutexes: never held across an await.
    pool: Mutex<Option<Arc<DockerWorkerPool>>>,
    last_attempt: Mutex<Option<Instant>>,
    /// Serializes connection attempts, so concurrent callers make one.
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.name)
            .field("address", &self.address())
            .field("pools", &self.pools)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// A host not connected yet.
    pub fn new(name: impl Into<String>, pools: Vec<String>, config: PoolConfig) -> Self {
        Self {
            name: name.into(),
            pools,
            config,
            pool: Mutex::new(None),
            last_attempt: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// A host on an already connected pool.
    pub fn connected(name: impl Into<String>, pools: Vec<String>, pool: DockerWorkerPool) -> Self {
        let host = Self::new(name, pools, pool.config().clone());
        *lock(&host.pool) = Some(Arc::new(pool));
        host
    }

    /// The engine's address.
    pub fn address(&self) -> String {
        engine_address(&self.config.host)
    }

    /// The pool, if connected.
    pub fn current(&self) -> Option<Arc<DockerWorkerPool>> {
        lock(&self.pool).clone()
    }

    /// The pool, connecting (and adopting the host's workers) if it is not yet; fails at once while
    /// the last attempt is less than [`RECONNECT_GAP`] old.
    pub async fn pool(&self) -> Result<Arc<DockerWorkerPool>> {
        if let Some(p) = self.current() {
            return Ok(p);
        }
        let _one = self.connecting.lock().await;
        if let Some(p) = self.current() {
            return Ok(p);
        }
        let now = Instant::now();
        if let Some(at) = *lock(&self.last_attempt) {
            if now.duration_since(at) < RECONNECT_GAP {
                return Err(DockerError::Unreachable {
                    address: self.address(),
                    reason: "not connected yet (the last attempt failed)".into(),
                });
            }
        }
        *lock(&self.last_attempt) = Some(now);
        let pool = DockerWorkerPool::connect(self.config.clone()).await?;
        match pool.adopt().await {
            Ok(ws) => {
                tracing::info!(host = %self.name, adopted = ws.len(), "docker: host connected")
            }
            Err(e) => {
                tracing::warn!(host = %self.name, error = %e, "docker: host connected, cannot list its workers yet")
            }
        }
        let pool = Arc::new(pool);
        *lock(&self.pool) = Some(pool.clone());
        Ok(pool)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The engines, the default one first.
#[derive(Debug)]
pub struct DockerHosts {
    hosts: Vec<Host>,
    /// `workers.name_prefix`: a worker's name says its pool, and so its host.
    name_prefix: String,
}

/// What [`DockerHosts::list_workers`] found: the workers of the hosts that answered, with their
/// host's name, and the hosts that did not.
#[derive(Debug, Default)]
pub struct Listing {
    pub workers: Vec<(String, Worker)>,
    pub unreachable: Vec<UnreachableHost>,
}

impl DockerHosts {
    /// `hosts[0]` is the default engine.
    pub fn new(hosts: Vec<Host>, name_prefix: impl Into<String>) -> Self {
        Self {
            hosts,
            name_prefix: name_prefix.into(),
        }
    }

    /// One engine for everything (no `docker.hosts`).
    pub fn single(pool: DockerWorkerPool) -> Self {
        let prefix = pool.config().name_prefix.clone();
        Self::new(
            vec![Host::connected(
                crate::config::DEFAULT_DOCKER_HOST_NAME,
                Vec::new(),
                pool,
            )],
            prefix,
        )
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The default engine.
    pub fn default_host(&self) -> &Host {
        &self.hosts[0]
    }

    /// Whether workers run on more than one engine.
    pub fn several(&self) -> bool {
        self.hosts.len() > 1
    }

    /// The host that runs `pool`: the one listing it, else the default engine.
    pub fn host_of_pool(&self, pool: &str) -> &Host {
        self.hosts
            .iter()
            .skip(1)
            .find(|h| h.pools.iter().any(|p| p == pool))
            .unwrap_or(&self.hosts[0])
    }

    /// The host worker `name` runs on, from the pool its name says.
    pub fn host_of_worker(&self, name: &str) -> &Host {
        match handlers::policy::parse_worker_name(&self.name_prefix, name) {
            Some((pool, _)) => self.host_of_pool(pool),
            None => &self.hosts[0],
        }
    }

    /// Every host's managed workers. With one engine, its failure is the listing's; with several,
    /// a host that does not answer is reported in [`Listing::unreachable`] and the others listed.
    pub async fn list_workers(&self) -> Result<Listing> {
        let lists = futures::future::join_all(self.hosts.iter().map(|h| async move {
            let listed = match h.pool().await {
                Ok(p) => p.list_workers().await,
                Err(e) => Err(e),
            };
            (h, listed)
        }))
        .await;
        let mut out = Listing::default();
        for (h, listed) in lists {
            match listed {
                Ok(ws) => out
                    .workers
                    .extend(ws.into_iter().map(|w| (h.name.clone(), w))),
                Err(e) if self.several() => out.unreachable.push(UnreachableHost {
                    host: h.name.clone(),
                    pools: h.pools.clone(),
                    error: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

impl WorkerPool for DockerHosts {
    async fn create_worker(
        &self,
        name: &str,
        pool: &str,
    ) -> std::result::Result<String, ActionError> {
        let host = self.host_of_pool(pool).pool().await.map_err(action_error)?;
        WorkerPool::create_worker(host.as_ref(), name, pool).await
    }

    async fn remove_worker(
        &self,
        name: &str,
        keep_warm: bool,
    ) -> std::result::Result<Removal, ActionError> {
        let host = self
            .host_of_worker(name)
            .pool()
            .await
            .map_err(action_error)?;
        WorkerPool::remove_worker(host.as_ref(), name, keep_warm).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> DockerHosts {
        let config = |host: &str| PoolConfig {
            host: host.into(),
            name_prefix: "k3s-worker-".into(),
            ..PoolConfig::default()
        };
        DockerHosts::new(
            vec![
                Host::new(
                    "default",
                    vec!["default".into(), "general".into()],
                    config(""),
                ),
                Host::new(
                    "edge",
                    vec!["edge".into(), "edge-gpu".into()],
                    config("tcp://127.0.0.1:9"),
                ),
            ],
            "k3s-worker-",
        )
    }

    #[test]
    fn docker_hosts_route_a_pool_and_a_worker_name_to_their_engine() {
        let h = hosts();
        assert_eq!(h.host_of_pool("edge").name, "edge");
        assert_eq!(h.host_of_pool("general").name, "default");
        assert_eq!(h.host_of_pool("unknown").name, "default");
        assert_eq!(h.host_of_worker("k3s-worker-3").name, "default");
        assert_eq!(h.host_of_worker("k3s-worker-general-2").name, "default");
        assert_eq!(h.host_of_worker("k3s-worker-edge-1").name, "edge");
        assert_eq!(h.host_of_worker("k3s-worker-edge-gpu-1").name, "edge");
        assert_eq!(h.host_of_worker("someone-else").name, "default");
    }

    /// A host that does not answer fails fast after its first attempt, and is tried again only
    /// after the gap.
    #[tokio::test]
    async fn docker_a_host_that_does_not_answer_is_retried_only_after_the_gap() {
        let h = hosts();
        let edge = h.host_of_pool("edge");
        let first = edge.pool().await.unwrap_err();
        assert!(first.provider_unavailable(), "{first}");
        let began = Instant::now();
        let second = edge.pool().await.unwrap_err();
        assert!(second.to_string().contains("not connected yet"), "{second}");
        assert!(began.elapsed() < Duration::from_secs(1));
        let e = WorkerPool::create_worker(&h, "k3s-worker-edge-1", "edge")
            .await
            .unwrap_err();
        assert!(
            e.message.starts_with("provider_unavailable:"),
            "{}",
            e.message
        );
    }
}
