//! The warm pool of [`DockerWorkerPool`]: stopped workers kept for a quick scale-up.
//!
//! Each warm worker is kept with its pool (its `k3s-autoscaler/pool` label): a scale-up of one pool
//! only ever starts a warm worker of that pool, whose labels, taints and limits are the pool's.
//!
//! `release` may stop a worker into the pool (up to `warm_pool`) instead of removing it, and
//! `acquire` starts a stopped one before creating a new one. The caller still drains and deletes the
//! worker's Node object before `release`: a warm worker is a stopped container, not a cluster node;
//! when it starts again its agent registers the node anew. Warm membership is kept in memory and
//! rebuilt by [`DockerWorkerPool::adopt`] from the stopped workers that exited cleanly.

use std::collections::BTreeMap;

use tracing::info;

use super::pool::{CreateWorker, DockerWorkerPool, Worker};
use super::{DockerError, Result};

/// What [`DockerWorkerPool::acquire`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Acquired {
    /// The running worker.
    pub worker: Worker,
    /// Started from the warm pool rather than created.
    pub from_warm_pool: bool,
}

/// What [`DockerWorkerPool::release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Stopped and kept in the warm pool.
    Warm,
    /// Stopped and removed with its volume.
    Removed,
}

impl DockerWorkerPool {
    pub(super) fn warm_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.warm.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Names of the stopped workers kept warm.
    pub fn warm_workers(&self) -> Vec<String> {
        self.warm_lock().keys().cloned().collect()
    }

    /// Takes the first warm worker of the pool labelled `pool` out of the warm pool, if any.
    fn take_warm(&self, pool: &str) -> Option<String> {
        let mut warm = self.warm_lock();
        let first = warm
            .iter()
            .find(|(_, p)| p.as_str() == pool)
            .map(|(name, _)| name.clone());
        if let Some(name) = &first {
            warm.remove(name);
        }
        first
    }

    /// Scale-up by one: starts a warm worker of the request's pool if there is one, else creates
    /// one.
    pub async fn acquire(&self, req: &CreateWorker) -> Result<Acquired> {
        let pool = self
            .config()
            .template(req.pool.as_deref())?
            .label
            .to_string();
        while let Some(name) = self.take_warm(&pool) {
            match self.start_worker(&name).await {
                Ok(worker) => {
                    return Ok(Acquired {
                        worker,
                        from_warm_pool: true,
                    })
                }
                // Someone removed it meanwhile: try the next one.
                Err(DockerError::NotFound(_)) => continue,
                Err(e) => {
                    // Keep it for later; the engine may be the problem, not the worker.
                    self.warm_lock().insert(name, pool);
                    return Err(e);
                }
            }
        }
        let worker = self.create(req).await?;
        Ok(Acquired {
            worker,
            from_warm_pool: false,
        })
    }

    /// Stops worker `name` and keeps it warm, as the decision core asked (`RemoveWorker
    /// {keep_warm_in}`): returns its pool label, or `None` when there is no such worker of ours.
    pub async fn keep_warm(&self, name: &str) -> Result<Option<String>> {
        let Some(w) = self.inspect_worker(name).await? else {
            return Ok(None);
        };
        let pool = w.pool().unwrap_or_default().to_string();
        self.stop_worker(name).await?;
        self.warm_lock().insert(name.to_string(), pool.clone());
        info!(worker = %name, pool = %pool, "worker stopped into the warm pool");
        Ok(Some(pool))
    }

    /// Scale-down of one worker (already drained and deleted from the cluster by the caller): stops it
    /// into the warm pool while that holds fewer than `warm_pool`, else removes it (as it does a
    /// worker that is gone or not ours).
    pub async fn release(&self, name: &str) -> Result<Released> {
        let room = {
            let warm = self.warm_lock();
            !warm.contains_key(name) && warm.len() < self.config().warm_pool as usize
        };
        let pool = if room {
            self.inspect_worker(name)
                .await?
                .map(|w| w.pool().unwrap_or_default().to_string())
        } else {
            None
        };
        if let Some(pool) = pool {
            self.stop_worker(name).await?;
            self.warm_lock().insert(name.to_string(), pool);
            info!(worker = %name, "worker stopped into the warm pool");
            Ok(Released::Warm)
        } else {
            self.remove_worker(name).await?;
            Ok(Released::Removed)
        }
    }
}
