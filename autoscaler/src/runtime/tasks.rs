//! Every task `autoscaler run` starts, tracked and named, so a graceful shutdown waits for in-flight
//! work (a delivery, a ticker's command mid-drain) up to a bound, and can say what was still running
//! when the bound was hit.
//!
//! A [`TaskTracker`] does the waiting; the names are a count per name next to it, kept by a guard that
//! each task holds, so a task that ends, panics or is dropped is forgotten alike.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::task::TaskTracker;

/// The tasks of one running autoscaler. Cheap to clone: clones share the tasks.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    /// How many tasks of each name are running.
    running: Arc<Mutex<BTreeMap<String, usize>>>,
}

/// How a [`Tasks::shut_down`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Every task finished within the bound.
    All,
    /// The bound was hit; these tasks (name, how many) were still running.
    AtBound(Vec<(String, usize)>),
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts `fut` as a task named `name`.
    pub fn spawn(&self, name: impl Into<String>, fut: impl Future<Output = ()> + Send + 'static) {
        let guard = NameGuard::enter(self.running.clone(), name.into());
        self.tracker.spawn(async move {
            let _guard = guard;
            fut.await;
        });
    }

    /// Starts `fut` as a task named `name`; an error it ends with is logged.
    pub fn spawn_logged<E: std::fmt::Display + Send + 'static>(
        &self,
        name: &'static str,
        fut: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        self.spawn(name, async move {
            if let Err(e) = fut.await {
                tracing::error!(task = name, error = %e, "task stopped with an error");
            }
        });
    }

    /// The tasks running now: name and how many.
    pub fn running(&self) -> Vec<(String, usize)> {
        self.lock()
            .iter()
            .map(|(name, n)| (name.clone(), *n))
            .collect()
    }

    /// Waits until every task (including any started meanwhile) has finished, or `bound` has passed.
    pub async fn shut_down(&self, bound: Duration) -> Stopped {
        self.tracker.close();
        match tokio::time::timeout(bound, self.tracker.wait()).await {
            Ok(()) => Stopped::All,
            Err(_) => Stopped::AtBound(self.running()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
        lock(&self.running)
    }
}

fn lock(
    map: &Mutex<BTreeMap<String, usize>>,
) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
    // A poisoned lock only means a panic elsewhere mid-update of a counter: keep going.
    map.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts its task under its name for as long as the task lives.
#[derive(Debug)]
struct NameGuard {
    running: Arc<Mutex<BTreeMap<String, usize>>>,
    name: String,
}

impl NameGuard {
    fn enter(running: Arc<Mutex<BTreeMap<String, usize>>>, name: String) -> Self {
        *lock(&running).entry(name.clone()).or_default() += 1;
        Self { running, name }
    }
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        let mut map = lock(&self.running);
        if let Some(n) = map.get_mut(&self.name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shut_down_waits_for_in_flight_work() {
        let tasks = Tasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tasks.spawn("drain", async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(());
        });
        assert_eq!(tasks.running(), vec![("drain".to_string(), 1)]);
        assert_eq!(tasks.shut_down(Duration::from_secs(5)).await, Stopped::All);
        assert!(rx.await.is_ok(), "the task ran to its end");
        assert!(tasks.running().is_empty());
    }

    #[tokio::test]
    async fn shut_down_names_what_outlived_the_bound() {
        let tasks = Tasks::new();
        tasks.spawn("quick", async {});
        for _ in 0..2 {
            tasks.spawn("ticker MinimumNodeEnforcer", std::future::pending());
        }
        let stopped = tasks.shut_down(Duration::from_millis(50)).await;
        assert_eq!(
            stopped,
            Stopped::AtBound(vec![("ticker MinimumNodeEnforcer".to_string(), 2)])
        );
    }
}
