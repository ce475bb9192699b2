//! Utilisation over time: the latest sample, streaks of high and low samples, and when the last
//! scale-up and scale-down started (for the cooldowns).

use std::collections::BTreeMap;

use bus::event::MetricsSampled;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::policy::Thresholds;

/// One node's utilisation in a sample, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    pub cpu: f64,
    pub memory: f64,
}

/// The latest utilisation sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub workers: u32,
    pub cpu_avg: f64,
    pub memory_avg: f64,
    /// By node name.
    pub nodes: BTreeMap<String, NodeLoad>,
}

/// Streaks and timers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Streaks {
    thresholds: Thresholds,
    pub sample: Option<Sample>,
    /// Consecutive samples above a high threshold.
    pub high: u32,
    /// Consecutive samples with both figures below the low thresholds.
    pub low: u32,
    /// Start of the current low streak.
    pub low_since: Option<DateTime<Utc>>,
    /// `OptimalStateTrigger` was published for the current low streak at the minimum.
    pub optimal_announced: bool,
    pub last_scale_up: Option<DateTime<Utc>>,
    pub last_scale_down: Option<DateTime<Utc>>,
}

impl Streaks {
    pub(super) fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            sample: None,
            high: 0,
            low: 0,
            low_since: None,
            optimal_announced: false,
            last_scale_up: None,
            last_scale_down: None,
        }
    }

    /// `MetricsSampled` at `at`.
    pub(super) fn sampled(&mut self, at: DateTime<Utc>, s: &MetricsSampled) {
        let t = &self.thresholds;
        let high = s.cpu_avg > t.cpu_high || s.memory_avg > t.memory_high;
        let low = s.cpu_avg < t.cpu_low && s.memory_avg < t.memory_low;
        if high {
            self.high += 1;
        } else {
            self.high = 0;
        }
        if low {
            self.low += 1;
            self.low_since.get_or_insert(at);
        } else {
            self.low = 0;
            self.low_since = None;
            self.optimal_announced = false;
        }
        self.sample = Some(Sample {
            at,
            workers: s.workers,
            cpu_avg: s.cpu_avg,
            memory_avg: s.memory_avg,
            nodes: s
                .nodes
                .iter()
                .map(|n| {
                    let usage = NodeLoad {
                        cpu: n.cpu,
                        memory: n.memory,
                    };
                    (n.node_name.clone(), usage)
                })
                .collect(),
        });
    }
}
