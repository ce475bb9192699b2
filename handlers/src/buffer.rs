//! Capacity buffers: per pool, spare capacity kept ready ahead of demand (`pools[].buffer`, or
//! `workers.buffer` for the default pool), like cluster-autoscaler's `CapacityBuffer`.
//!
//! A buffer asks for `nodes` spare workers (Ready, schedulable, with no pod placed on them but
//! DaemonSet pods) and/or a headroom of free CPU and memory (allocatable minus what the pods placed
//! there request, over the pool's schedulable workers). Workers on their way count as spare: they
//! arrive empty. It reads the placement on the stream (`PlacementSnapshot`/`PlacementChanged`), so
//! a replay sees what the live engine saw; before the first placement snapshot no buffer is
//! filled.
//!
//! Every rule counts it: the engine fills a shortfall with a `ScaleUpDecision {reason:
//! capacity_buffer}` when no pod is pending ([`crate::engine`]), and scale-down never takes a
//! worker whose removal would leave the buffer short ([`keeps`]), so an empty buffer worker is not
//! "underused". A pod that lands on a spare worker uses it up; the next placement change refills.

use std::collections::BTreeMap;

use bus::scheduling::Resources;
use serde::{Deserialize, Serialize};

use crate::model::{Model, Worker, WorkerState};
use crate::policy::PoolTemplate;

/// A pool's buffer (all zero: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffer {
    /// Spare workers: schedulable, with no pod placed on them (DaemonSet pods aside).
    #[serde(default)]
    pub nodes: u32,
    /// Free CPU over the pool's schedulable workers, in millicores.
    #[serde(default)]
    pub cpu_millis: u64,
    /// Free memory over the pool's schedulable workers, in bytes.
    #[serde(default)]
    pub memory_bytes: u64,
}

impl Buffer {
    pub fn is_empty(&self) -> bool {
        self.nodes == 0 && self.cpu_millis == 0 && self.memory_bytes == 0
    }
}

/// What a pool has of spare capacity now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spare {
    /// Schedulable workers with no pod placed on them, and workers on their way.
    pub nodes: u32,
    /// Free allocatable over the pool's schedulable workers and those on their way.
    pub free: Resources,
}

/// What the pods placed on each node request, and whether any of them is not a DaemonSet's:
/// computed once per decision, since every worker of every buffered pool reads it.
#[derive(Debug, Default)]
pub struct Usage<'m> {
    by_node: BTreeMap<&'m str, (Resources, bool)>,
}

impl<'m> Usage<'m> {
    pub fn of(model: &'m Model) -> Self {
        let mut by_node: BTreeMap<&str, (Resources, bool)> = BTreeMap::new();
        for pod in model.placement.pods().values() {
            if let Some(node) = pod.node_name.as_deref() {
                let u = by_node.entry(node).or_default();
                u.0 = u.0.saturating_add(pod.requests());
                u.1 |= !pod.is_daemon_set();
            }
        }
        Usage { by_node }
    }
}

/// One worker's part of its pool's spare capacity: whether it is empty, and what is free on it;
/// `None` when it offers none (leaving, cordoned, NotReady, interrupted).
fn worker_spare(
    model: &Model,
    usage: &Usage<'_>,
    pool: &PoolTemplate,
    w: &Worker,
) -> Option<(bool, Resources)> {
    if w.state.is_provisioning() {
        return Some((true, pool.allocatable));
    }
    if w.state != WorkerState::Ready || w.interruption.is_some() {
        return None;
    }
    let Some(node) = model.placement.nodes().get(&w.name) else {
        // Ready but not in the placement yet: it arrives empty.
        return Some((true, pool.allocatable));
    };
    if !node.schedulable() {
        return None;
    }
    let (used, busy) = usage
        .by_node
        .get(w.name.as_str())
        .copied()
        .unwrap_or_default();
    Some((!busy, node.allocatable.saturating_sub(used)))
}

/// `pool`'s spare capacity, `None` before the placement is known.
pub fn spare(model: &Model, usage: &Usage<'_>, pool: &PoolTemplate) -> Option<Spare> {
    if !model.placement.is_known() {
        return None;
    }
    let mut s = Spare::default();
    for w in model.workers.active().filter(|w| w.pool == pool.name) {
        if let Some((empty, free)) = worker_spare(model, usage, pool, w) {
            s.nodes += u32::from(empty);
            s.free = s.free.saturating_add(free);
        }
    }
    Some(s)
}

/// Workers `pool` needs to add for its buffer, given what it has spare.
pub fn shortfall(pool: &PoolTemplate, spare: &Spare) -> u32 {
    let b = &pool.buffer;
    let nodes = b.nodes.saturating_sub(spare.nodes);
    let per = |want: u64, have: u64, one: u64| -> u32 {
        if want <= have || one == 0 {
            return 0;
        }
        u32::try_from((want - have).div_ceil(one)).unwrap_or(u32::MAX)
    };
    let cpu = per(
        b.cpu_millis,
        spare.free.cpu_millis,
        pool.allocatable.cpu_millis,
    );
    let memory = per(
        b.memory_bytes,
        spare.free.memory_bytes,
        pool.allocatable.memory_bytes,
    );
    nodes.max(cpu).max(memory)
}

/// Whether `pool`'s buffer keeps `w`: without it (and with its pods on other workers of the pool)
/// the pool would be short of spare capacity. A busy worker's pods are assumed to take a spare
/// worker, as kube-scheduler's default scoring puts them on the least allocated node: so with no
/// spare worker beyond the buffer, no worker of the pool goes (rather than a removal followed by
/// a refill).
pub fn keeps(model: &Model, usage: &Usage<'_>, pool: &PoolTemplate, w: &Worker) -> bool {
    if pool.buffer.is_empty() {
        return false;
    }
    let (Some(mut s), Some((_, free))) = (
        spare(model, usage, pool),
        worker_spare(model, usage, pool, w),
    ) else {
        return false;
    };
    // One spare worker fewer: itself when it is empty, else the one its pods may move to.
    s.nodes = s.nodes.saturating_sub(1);
    // What its pods request is no longer free on the others either.
    let moved = pool.allocatable.saturating_sub(free);
    s.free = s.free.saturating_sub(free).saturating_sub(moved);
    shortfall(pool, &s) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(buffer: Buffer) -> PoolTemplate {
        let mut p = PoolTemplate::new("web", 0, 10, Resources::new(2000, 2 << 30, 110));
        p.buffer = buffer;
        p
    }

    #[test]
    fn the_shortfall_is_the_larger_of_spare_workers_and_headroom() {
        let spare = Spare {
            nodes: 1,
            free: Resources::new(1500, 1 << 30, 200),
        };
        let nodes = pool(Buffer {
            nodes: 3,
            ..Buffer::default()
        });
        assert_eq!(shortfall(&nodes, &spare), 2);
        let cpu = pool(Buffer {
            cpu_millis: 5000,
            ..Buffer::default()
        });
        // 3500 m short, 2000 m per worker.
        assert_eq!(shortfall(&cpu, &spare), 2);
        let memory = pool(Buffer {
            memory_bytes: 1 << 30,
            ..Buffer::default()
        });
        assert_eq!(shortfall(&memory, &spare), 0);
        assert_eq!(shortfall(&pool(Buffer::default()), &spare), 0);
    }
}
