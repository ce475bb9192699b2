//! What the StateSynchronizer follows: the last `ClusterStateSynced` and the managed containers
//! nobody knows.

use std::collections::{BTreeMap, BTreeSet};

use bus::event::ClusterObserved;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::workers::Workers;

/// A `ClusterStateSynced`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Synced {
    pub at: DateTime<Utc>,
    /// Its `db_workers`.
    pub workers: u32,
}

/// The sync record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The last `ClusterStateSynced`.
    pub last: Option<Synced>,
    /// The live workers when `ClusterStateSynced` was last published.
    pub last_names: BTreeSet<String>,
    /// Managed containers with no Node and no record, and when first seen so.
    pub unknown_containers: BTreeMap<String, DateTime<Utc>>,
}

impl SyncRecord {
    /// `ClusterStateSynced` at `at` reporting `db_workers`.
    pub(super) fn synced(&mut self, at: DateTime<Utc>, db_workers: u32, workers: &Workers) {
        self.last = Some(Synced {
            at,
            workers: db_workers,
        });
        // The live names now are those reported only if the count agrees; otherwise the report
        // raced a change and no names are known to have been reported.
        self.last_names = if workers.current() == db_workers {
            workers.live().map(|w| w.name.clone()).collect()
        } else {
            BTreeSet::new()
        };
    }

    /// The Docker side of `ClusterObserved` at `at` (after `workers` folded it): containers with
    /// neither a Node nor a worker not gone yet.
    pub(super) fn observed(&mut self, at: DateTime<Utc>, o: &ClusterObserved, workers: &Workers) {
        let in_k8s: BTreeSet<&str> = o.k8s_nodes.iter().map(|n| n.name.as_str()).collect();
        let unknown: Vec<&String> = o
            .docker_containers
            .iter()
            .filter(|c| !in_k8s.contains(c.as_str()))
            // A warm worker's stopped container is known: kept on purpose.
            .filter(|c| workers.get(c).is_none_or(|w| w.state.is_gone() && !w.warm))
            .collect();
        self.unknown_containers
            .retain(|name, _| unknown.contains(&name));
        for u in unknown {
            self.unknown_containers.entry(u.clone()).or_insert(at);
        }
    }

    /// `NodeRemoved`: its container is gone too.
    pub(super) fn removed(&mut self, name: &str) {
        self.unknown_containers.remove(name);
    }
}
