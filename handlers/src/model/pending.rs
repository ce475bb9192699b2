//! Pending pods: the pods the scheduler cannot place, as last reported, and which of them a
//! `pending_pods` scale-up has already sized workers for.

use std::collections::{BTreeMap, BTreeSet};

use bus::event::{PendingPodsDetected, ScaleUpBlocked};
use bus::scheduling::PodSpec;
use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::command::Cause;
use crate::policy::chrono;

/// The pods the scheduler cannot place, as last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub count: u32,
    pub pods: Vec<PodSpec>,
    pub since: DateTime<Utc>,
    pub last_report: DateTime<Utc>,
    pub cause: Cause,
}

/// A pod a scale-up sized capacity for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvidedFor {
    /// `namespace/name` of a listed pod.
    Pod(String),
    /// The scale-up answered a report that listed no pods.
    Unlisted,
}

impl ProvidedFor {
    fn pod(p: &PodSpec) -> Self {
        ProvidedFor::Pod(format!("{}/{}", p.namespace, p.name))
    }
}

/// Pending pods are cleared by a report with `pending_count: 0`, by the completion of a scale-up
/// that started after they were first reported (its capacity is Ready; the watcher reports again if
/// they still do not fit), or after `scaling.pending_pods_ttl` without a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingPods {
    ttl: std::time::Duration,
    /// The last report, while it holds.
    pub report: Option<Pending>,
    /// Pending pods a `pending_pods` scale-up sized, kept while they stay pending (beyond the
    /// scale-up's completion): the workers made for them can be Ready before the scheduler binds
    /// them.
    pub provided_for: BTreeSet<ProvidedFor>,
    /// Per pending pod (`namespace/name`), the [`blocked_key`] of the last `ScaleUpBlocked` naming
    /// it: a block is published again only when its reason changes. Pods no longer reported are
    /// forgotten.
    #[serde(default)]
    pub blocked: BTreeMap<String, String>,
    /// The code of the last `ScalingActionFailed` without a node the decision engine published
    /// for these pending pods (a report listing no pods: `max_nodes_reached`): said again only
    /// when it changes.
    #[serde(default)]
    pub failed_said: Option<String>,
}

/// What identifies a `ScaleUpBlocked` reason for a pod: its code, the pool it names and the
/// failing predicate per pool.
pub fn blocked_key(b: &ScaleUpBlocked) -> String {
    let mut key = b.reason.clone();
    if let Some(p) = &b.pool {
        key.push_str(&format!(" pool={p}"));
    }
    for (pool, predicate) in &b.predicates {
        key.push_str(&format!(" {pool}:{predicate}"));
    }
    key
}

impl PendingPods {
    pub(super) fn new(ttl: std::time::Duration) -> Self {
        Self {
            ttl,
            report: None,
            provided_for: BTreeSet::new(),
            blocked: BTreeMap::new(),
            failed_said: None,
        }
    }

    /// Pods pending now.
    pub fn count(&self) -> u32 {
        self.report.as_ref().map_or(0, |p| p.count)
    }

    /// The pods of the pending report (none when nothing is pending, or the report listed none).
    pub fn pods(&self) -> &[PodSpec] {
        self.report.as_ref().map_or(&[][..], |p| &p.pods[..])
    }

    /// Some pod of the pending report was already sized by a `pending_pods` scale-up.
    pub fn awaits_provided_capacity(&self) -> bool {
        self.report.as_ref().is_some_and(|p| {
            if p.pods.is_empty() {
                self.provided_for.contains(&ProvidedFor::Unlisted)
            } else {
                p.pods
                    .iter()
                    .any(|pod| self.provided_for.contains(&ProvidedFor::pod(pod)))
            }
        })
    }

    /// Forgets a report older than the TTL at `now`.
    pub(super) fn expire(&mut self, now: DateTime<Utc>) {
        if let Some(p) = &self.report {
            if now - p.last_report > chrono(self.ttl) {
                self.report = None;
                self.blocked.clear();
            }
        }
    }

    /// `PendingPodsDetected`.
    pub(super) fn reported(&mut self, env: &Envelope, p: &PendingPodsDetected) {
        // Pods no longer pending were bound: nothing is on its way for them any more.
        if !p.pods.is_empty() {
            let now: BTreeSet<ProvidedFor> = p.pods.iter().map(ProvidedFor::pod).collect();
            self.provided_for.retain(|k| now.contains(k));
            let names: BTreeSet<String> = p
                .pods
                .iter()
                .map(|pod| format!("{}/{}", pod.namespace, pod.name))
                .collect();
            self.blocked.retain(|k, _| names.contains(k));
        } else if p.pending_count == 0 {
            self.provided_for.clear();
            self.blocked.clear();
        }
        if p.pending_count == 0 {
            self.report = None;
            self.failed_said = None;
        } else {
            let since = self.report.as_ref().map_or(env.timestamp, |old| old.since);
            self.report = Some(Pending {
                count: p.pending_count,
                pods: p.pods.clone(),
                since,
                last_report: env.timestamp,
                cause: Cause::from(env),
            });
        }
    }

    /// `ScaleUpBlocked`: remembers the reason for each pod it names.
    pub(super) fn blocked_published(&mut self, b: &ScaleUpBlocked) {
        let key = blocked_key(b);
        for pod in &b.pods {
            self.blocked.insert(pod.clone(), key.clone());
        }
    }

    /// A `pending_pods` scale-up was decided: capacity is on its way for the reported pods.
    /// A `ScalingActionFailed` without a node for these pods, with `code`.
    pub(super) fn failed_published(&mut self, code: String) {
        self.failed_said = Some(code);
    }

    pub(super) fn provided(&mut self) {
        self.failed_said = None;
        if let Some(p) = &self.report {
            // A worker is on its way for them: a later block of the same reason is news again.
            for pod in &p.pods {
                self.blocked
                    .remove(&format!("{}/{}", pod.namespace, pod.name));
            }
            self.provided_for
                .extend(p.pods.iter().map(ProvidedFor::pod));
            if p.pods.is_empty() {
                self.provided_for.insert(ProvidedFor::Unlisted);
            }
        }
    }

    /// A scale-up started at `started_at` completed: pods reported since before it are cleared.
    pub(super) fn scale_up_completed(&mut self, started_at: DateTime<Utc>) {
        if self.report.as_ref().is_some_and(|p| p.since <= started_at) {
            self.report = None;
        }
    }
}
