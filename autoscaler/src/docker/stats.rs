//! Per-worker CPU % and memory % from the engine's stats, for the MetricsCollector.
//!
//! One request per running worker (`stream=false`), at most [`STATS_CONCURRENCY`] at once. CPU % needs
//! two readings of the CPU counters: the first sample of a container asks the engine for a
//! non-one-shot reading (the engine waits ~1 s and fills `precpu_stats`); later samples ask for
//! `one-shot` readings (immediate) and take the delta against the previous sample, which also makes the
//! figure an average over the whole sampling interval rather than over one second.
//!
//! Both figures are percentages of the worker's allotment: CPU of its CPU limit (or of the host's
//! CPUs when unlimited, or when the limit exceeds them), memory of its memory limit; clamped to 0–100.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerMemoryStats, ContainerStatsResponse};
use bollard::query_parameters::StatsOptions;
use bus::event::NodeUsage;
use futures::StreamExt;
use tracing::debug;

use super::pool::DockerWorkerPool;
use super::{DockerError, Result};

/// Stats requests in flight at once.
pub const STATS_CONCURRENCY: usize = 8;

/// Cumulative CPU counters of one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuCounters {
    /// The container's CPU time, ns.
    pub total: u64,
    /// The host's CPU time, ns (all CPUs).
    pub system: u64,
    /// CPUs online on the host.
    pub online: u32,
}

impl CpuCounters {
    fn of(stats: Option<&bollard::models::ContainerCpuStats>) -> Option<Self> {
        let s = stats?;
        let total = s.cpu_usage.as_ref()?.total_usage?;
        let system = s.system_cpu_usage?;
        let online = s.online_cpus.filter(|n| *n > 0).unwrap_or_else(|| {
            s.cpu_usage
                .as_ref()
                .and_then(|u| u.percpu_usage.as_ref())
                .map(|v| v.len() as u32)
                .unwrap_or(1)
        });
        Some(Self {
            total,
            system,
            online,
        })
    }
}

/// One sample across the running workers.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageSample {
    /// Per worker, by name.
    pub nodes: Vec<NodeUsage>,
    /// Mean CPU % over `nodes` (0 when there are none).
    pub cpu_avg: f64,
    /// Mean memory % over `nodes` (0 when there are none).
    pub memory_avg: f64,
}

impl UsageSample {
    /// Builds a sample and its averages from per-worker figures.
    pub fn from_nodes(mut nodes: Vec<NodeUsage>) -> Self {
        nodes.sort_by(|a, b| a.node_name.cmp(&b.node_name));
        let (cpu_avg, memory_avg) = bus::event::mean_usage(&nodes);
        Self {
            nodes,
            cpu_avg,
            memory_avg,
        }
    }
}

/// CPU % of the allotment between two readings; `None` when they cannot be compared (a restart reset
/// the counters, or no host time passed).
pub fn cpu_percent(prev: CpuCounters, cur: CpuCounters, limit_cpus: f64) -> Option<f64> {
    let cpu_delta = cur.total.checked_sub(prev.total)? as f64;
    let system_delta = cur.system.checked_sub(prev.system)? as f64;
    if system_delta <= 0.0 {
        return None;
    }
    let online = f64::from(cur.online.max(1));
    let used_cpus = cpu_delta / system_delta * online;
    let capacity = if limit_cpus > 0.0 {
        limit_cpus.min(online)
    } else {
        online
    };
    Some((used_cpus / capacity * 100.0).clamp(0.0, 100.0))
}

/// Memory % of the limit: usage less the reclaimable page cache (`total_inactive_file` on cgroup v1,
/// `inactive_file` on v2, else `cache`), as `docker stats` computes it.
pub fn memory_percent(mem: &ContainerMemoryStats) -> Option<f64> {
    let usage = mem.usage?;
    let limit = mem.limit.filter(|l| *l > 0)?;
    let inactive = mem.stats.as_ref().and_then(|s| {
        s.get("total_inactive_file")
            .or_else(|| s.get("inactive_file"))
            .or_else(|| s.get("cache"))
            .copied()
    });
    let working = match inactive {
        Some(i) if i < usage => usage - i,
        _ => usage,
    };
    Some((working as f64 / limit as f64 * 100.0).clamp(0.0, 100.0))
}

impl DockerWorkerPool {
    /// CPU % and memory % of every running worker, and their averages. Workers that stop while being
    /// measured are left out; an engine failure fails the sample.
    pub async fn usage(&self) -> Result<UsageSample> {
        let workers: Vec<_> = self
            .list_workers()
            .await?
            .into_iter()
            .filter(|w| w.state.is_running())
            .collect();
        let limit_cpus = self.config().cpu;
        let results: Vec<(String, String, Result<ContainerStatsResponse>)> =
            futures::stream::iter(workers)
                .map(|w| async move {
                    let one_shot = self.previous_counters(&w.id).is_some();
                    let r = self.stats_once(&w.id, one_shot).await;
                    (w.name, w.id, r)
                })
                .buffer_unordered(STATS_CONCURRENCY)
                .collect()
                .await;

        let mut nodes = Vec::with_capacity(results.len());
        let mut seen = Vec::with_capacity(results.len());
        for (name, id, result) in results {
            let stats = match result {
                Ok(s) => s,
                Err(e)
                    if e.counts_as_engine_failure()
                        || matches!(e, DockerError::CircuitOpen { .. }) =>
                {
                    return Err(e)
                }
                Err(e) => {
                    debug!(worker = %name, error = %e, "no stats for a worker (stopped meanwhile?)");
                    continue;
                }
            };
            let Some(cur) = CpuCounters::of(stats.cpu_stats.as_ref()) else {
                continue;
            };
            let prev = self
                .previous_counters(&id)
                .or_else(|| CpuCounters::of(stats.precpu_stats.as_ref()));
            self.cpu_prev_lock().insert(id.clone(), cur);
            seen.push(id);
            let cpu = prev
                .and_then(|p| cpu_percent(p, cur, limit_cpus))
                .unwrap_or(0.0);
            let memory = stats
                .memory_stats
                .as_ref()
                .and_then(memory_percent)
                .unwrap_or(0.0);
            nodes.push(NodeUsage {
                node_name: name,
                cpu,
                memory,
            });
        }
        // Forget containers that are gone, so the map does not grow with churn.
        self.cpu_prev_lock().retain(|id, _| seen.contains(id));
        Ok(UsageSample::from_nodes(nodes))
    }

    fn cpu_prev_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CpuCounters>> {
        self.cpu_prev.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn previous_counters(&self, id: &str) -> Option<CpuCounters> {
        self.cpu_prev_lock().get(id).copied()
    }

    async fn stats_once(&self, id: &str, one_shot: bool) -> Result<ContainerStatsResponse> {
        let docker = self.engine().docker();
        // A non-one-shot reading takes the engine about a second to fill `precpu_stats`.
        let extra = if one_shot {
            Duration::ZERO
        } else {
            Duration::from_secs(2)
        };
        self.engine()
            .call("stats", extra, async {
                let mut stream = docker.stats(
                    id,
                    Some(StatsOptions {
                        stream: false,
                        one_shot,
                    }),
                );
                match stream.next().await {
                    Some(r) => r,
                    None => Err(bollard::errors::Error::DockerStreamError {
                        error: "empty stats answer".into(),
                    }),
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(total: u64, system: u64, online: u32) -> CpuCounters {
        CpuCounters {
            total,
            system,
            online,
        }
    }

    #[test]
    fn docker_cpu_percent_is_of_the_cpu_limit() {
        // 2 host CPUs; the container used 0.5 CPU over the interval (system advances 2 s per s).
        let p = cpu_percent(c(0, 0, 2), c(500, 2000, 2), 1.0).unwrap();
        assert!((p - 50.0).abs() < 1e-9, "{p}");
        // Same usage against a 2-CPU limit: 25 %.
        let p = cpu_percent(c(0, 0, 2), c(500, 2000, 2), 2.0).unwrap();
        assert!((p - 25.0).abs() < 1e-9, "{p}");
        // A limit above the host's CPUs is capped at the host's.
        let p = cpu_percent(c(0, 0, 2), c(500, 2000, 2), 8.0).unwrap();
        assert!((p - 25.0).abs() < 1e-9, "{p}");
    }

    #[test]
    fn docker_cpu_percent_is_clamped_and_rejects_reset_counters() {
        assert_eq!(cpu_percent(c(0, 0, 2), c(5000, 2000, 2), 0.5), Some(100.0));
        assert_eq!(cpu_percent(c(900, 0, 2), c(100, 2000, 2), 1.0), None);
        assert_eq!(cpu_percent(c(0, 100, 2), c(10, 100, 2), 1.0), None);
    }

    #[test]
    fn docker_memory_percent_leaves_out_the_page_cache() {
        let mem = ContainerMemoryStats {
            usage: Some(300),
            limit: Some(1000),
            stats: Some(HashMap::from([
                ("total_inactive_file".to_string(), 100u64),
                ("cache".to_string(), 150u64),
            ])),
            ..Default::default()
        };
        assert_eq!(memory_percent(&mem), Some(20.0));
        let v2 = ContainerMemoryStats {
            usage: Some(300),
            limit: Some(1000),
            stats: Some(HashMap::from([("inactive_file".to_string(), 50u64)])),
            ..Default::default()
        };
        assert_eq!(memory_percent(&v2), Some(25.0));
        let no_limit = ContainerMemoryStats {
            usage: Some(300),
            ..Default::default()
        };
        assert_eq!(memory_percent(&no_limit), None);
    }

    #[test]
    fn docker_usage_sample_averages_the_workers() {
        let s = UsageSample::from_nodes(vec![
            NodeUsage {
                node_name: "w2".into(),
                cpu: 40.0,
                memory: 10.0,
            },
            NodeUsage {
                node_name: "w1".into(),
                cpu: 20.0,
                memory: 30.0,
            },
        ]);
        assert_eq!(s.nodes[0].node_name, "w1");
        assert_eq!(s.cpu_avg, 30.0);
        assert_eq!(s.memory_avg, 20.0);
        assert_eq!(UsageSample::from_nodes(vec![]).cpu_avg, 0.0);
    }
}
