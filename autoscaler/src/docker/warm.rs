//! The warm pool of [`DockerWorkerPool`]: stopped workers kept for a quick scale-up.
//!
//! `release` may stop a worker into the pool (up to `warm_pool`) instead of removing it, and
//! `acquire` starts a stopped one before creating a new one. The caller still drains and deletes the
//! worker's Node object before `release`: a warm worker is a stopped container, not a cluster node;
//! when it starts again its agent registers the node anew. Warm membership is kept in memory and
//! rebuilt by [`DockerWorkerPool::adopt`] from the stopped workers that exited cleanly.

use std::collections::BTreeSet;

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
    pub(super) fn warm_lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.warm.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Names of the stopped workers kept warm.
    pub fn warm_workers(&self) -> Vec<String> {
        self.warm_lock().iter().cloned().collect()
    }

    /// Takes the first warm worker out of the pool, if any.
    fn take_warm(&self) -> Option<String> {
        let mut warm = self.warm_lock();
        let first = warm.iter().next().cloned();
        if let Some(name) = &first {
            warm.remove(name);
        }
        first
    }

    /// Scale-up by one: starts a warm worker if there is one, else creates one.
    pub async fn acquire(&self, req: &CreateWorker) -> Result<Acquired> {
        while let Some(name) = self.take_warm() {
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
                    self.warm_lock().insert(name);
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

    /// Scale-down of one worker (already drained and deleted from the cluster by the caller): stops it
    /// into the warm pool while that holds fewer than `warm_pool`, else removes it.
    pub async fn release(&self, name: &str) -> Result<Released> {
        let keep = {
            let warm = self.warm_lock();
            !warm.contains(name) && warm.len() < self.config().warm_pool as usize
        };
        if keep {
            self.stop_worker(name).await?;
            self.warm_lock().insert(name.to_string());
            info!(worker = %name, "worker stopped into the warm pool");
            Ok(Released::Warm)
        } else {
            self.remove_worker(name).await?;
            Ok(Released::Removed)
        }
    }
}
