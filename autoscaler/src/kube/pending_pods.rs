//! `PendingPodsWatcher`: unschedulable pods → `PendingPodsDetected`, batched like Karpenter's provisioner.
//!
//! A pod counts as pending when its `PodScheduled` condition is `False` with reason `Unschedulable` (the
//! scheduler tried and found no node), it is not bound and not being deleted. Pods are aggregated:
//!
//! - the first new pending pod is reported at once (the leading edge: a lone pod, the common case, gets
//!   its worker requested without waiting out a window), and opens a batch;
//! - the batch closes `pending_batch_idle` after the last new pod, or `pending_batch_max` after the
//!   first, whichever comes first; then, if pods joined after the leading report, one more
//!   `PendingPodsDetected` lists every pod still pending (count, seconds the oldest has waited, their
//!   Deployments, each pod's requests and scheduling constraints as a `bus::scheduling::PodSpec`,
//!   see [`pod_spec`](super::pod_spec)). The decision engine counts workers already being created as capacity,
//!   so the pod of the leading report is not provided for twice;
//! - during a (re-)list the leading report waits for the list to complete, so a watcher that starts
//!   amid many pending pods reports them together;
//! - while pods stay pending with nothing new, the event is repeated every `reemit` (default
//!   `pending_batch_max`), so one lost or ignored event does not strand them;
//! - when the pending set empties after a non-empty report, one `PendingPodsDetected {pending_count: 0}`
//!   says so, and nothing more is sent until a pod is pending again.
//!
//! `affected_deployments` are Deployment names found through the ReplicaSet owner: the owner's name minus
//! its `-<pod-template-hash>` suffix, or, when the name does not end so, the ReplicaSet's own Deployment
//! owner looked up once and cached. Pods of other owners (StatefulSets, Jobs, bare pods) are counted and
//! their requests listed, but add no name.
//!
//! [`PendingBatcher`] is the pure part (time is a parameter); [`PendingPodsWatcher`] feeds it from a watch
//! of all pods.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use bus::event::PendingPodsDetected;
use bus::scheduling::PodSpec;
use bus::{Envelope, Metadata};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::error::Result;
use super::pod_spec::pod_spec;

/// The `source` of the envelopes this watcher emits.
pub const SOURCE: &str = "pending_pods_watcher";

/// Whether the scheduler has given up on `pod` for now: `PodScheduled=False`, reason `Unschedulable`,
/// no node, not being deleted.
pub fn is_unschedulable(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
    {
        return false;
    }
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

/// Since when `pod` has been unschedulable: its `PodScheduled` condition's transition time, else its
/// creation time.
pub fn unschedulable_since(pod: &Pod) -> Option<DateTime<Utc>> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
        .and_then(|c| c.last_transition_time.as_ref())
        .and_then(|t| super::to_chrono(&t.0))
        .or_else(|| {
            pod.metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| super::to_chrono(&t.0))
        })
}

/// The owning ReplicaSet's name, if a ReplicaSet controls `pod`.
fn replicaset_owner(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "ReplicaSet" && o.controller.unwrap_or(true))
        .map(|o| o.name.as_str())
}

/// The Deployment's name read off the ReplicaSet owner's name (`<deployment>-<pod-template-hash>`), when
/// the pod's `pod-template-hash` label confirms the suffix.
pub fn deployment_from_names(pod: &Pod) -> Option<String> {
    let rs = replicaset_owner(pod)?;
    let hash = pod.metadata.labels.as_ref()?.get("pod-template-hash")?;
    rs.strip_suffix(hash.as_str())
        .and_then(|s| s.strip_suffix('-'))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// One pending pod as the batcher keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEntry {
    pub uid: String,
    pub since: DateTime<Utc>,
    pub deployment: Option<String>,
    /// What it requests and where it may run, as published.
    pub spec: PodSpec,
}

/// Batching windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchWindows {
    /// Close a batch after this long with no new pending pod (`kubernetes.pending_batch_idle`).
    pub idle: Duration,
    /// …or this long after its first pod (`kubernetes.pending_batch_max`).
    pub max: Duration,
    /// Repeat the report this often while pods stay pending.
    pub reemit: Duration,
}

impl BatchWindows {
    /// `idle` and `max` from the config; reports repeat every `max`.
    pub fn new(idle: Duration, max: Duration) -> Self {
        Self {
            idle,
            max,
            reemit: max,
        }
    }
}

/// An open batch.
#[derive(Debug, Clone, Copy)]
struct Batch {
    first: Instant,
    last: Instant,
    /// The leading report (of the pod that opened the batch) has been made.
    led: bool,
    /// Pods joined after the last report of this batch.
    unreported: bool,
}

/// The pure batching of pending pods; see the module doc.
#[derive(Debug)]
pub struct PendingBatcher {
    windows: BatchWindows,
    /// Pending pods by uid.
    pods: BTreeMap<String, PendingEntry>,
    batch: Option<Batch>,
    last_emit: Option<Instant>,
    /// The last report listed pods, so an empty set must be reported once.
    reported_nonempty: bool,
    /// Uids listed since a re-list began.
    relisting: Option<HashSet<String>>,
}

impl PendingBatcher {
    pub fn new(windows: BatchWindows) -> Self {
        Self {
            windows,
            pods: BTreeMap::new(),
            batch: None,
            last_emit: None,
            reported_nonempty: false,
            relisting: None,
        }
    }

    /// A pod is (still) pending. A pod not seen pending before opens or extends the batch.
    pub fn pending(&mut self, entry: PendingEntry, now: Instant) {
        if let Some(seen) = self.relisting.as_mut() {
            seen.insert(entry.uid.clone());
        }
        let is_new = !self.pods.contains_key(&entry.uid);
        self.pods.insert(entry.uid.clone(), entry);
        if is_new {
            match self.batch.as_mut() {
                Some(b) => {
                    b.last = now;
                    b.unreported = true;
                }
                None => {
                    self.batch = Some(Batch {
                        first: now,
                        last: now,
                        led: false,
                        unreported: true,
                    })
                }
            }
        }
    }

    /// A pod is no longer pending (scheduled, deleted, or listed as something else).
    pub fn not_pending(&mut self, uid: &str) {
        if let Some(seen) = self.relisting.as_mut() {
            seen.insert(uid.to_string());
        }
        self.pods.remove(uid);
    }

    /// Whether a pod is known pending.
    pub fn is_pending(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// The watch restarted: a full list follows.
    pub fn relist_started(&mut self) {
        self.relisting = Some(HashSet::new());
    }

    /// The list is complete: pods not listed are gone.
    pub fn relist_done(&mut self) {
        if let Some(seen) = self.relisting.take() {
            self.pods.retain(|uid, _| seen.contains(uid));
        }
    }

    /// The report due at `now`, if any; `wall` is the wall-clock time for `waiting_time`.
    pub fn poll(&mut self, now: Instant, wall: DateTime<Utc>) -> Option<PendingPodsDetected> {
        if let Some(b) = self.batch.as_mut() {
            if !b.led && self.relisting.is_none() {
                b.led = true;
                b.unreported = false;
                return self.report(now, wall);
            }
            if now < b.last + self.windows.idle && now < b.first + self.windows.max {
                return None;
            }
            let unreported = b.unreported;
            self.batch = None;
            if unreported {
                return self.report(now, wall);
            }
            // Nothing joined after the leading report; the set may have emptied meanwhile, which the
            // rules below report.
        }
        if self.pods.is_empty() {
            return if self.reported_nonempty {
                self.report(now, wall)
            } else {
                None
            };
        }
        match self.last_emit {
            Some(t) if now < t + self.windows.reemit => None,
            _ => self.report(now, wall),
        }
    }

    /// When `poll` may next have something to say, if nothing else happens.
    pub fn next_due(&self) -> Option<Instant> {
        if let Some(b) = self.batch {
            if !b.led && self.relisting.is_none() {
                return Some(b.first);
            }
            return Some((b.last + self.windows.idle).min(b.first + self.windows.max));
        }
        if self.pods.is_empty() {
            return None;
        }
        self.last_emit.map(|t| t + self.windows.reemit)
    }

    fn report(&mut self, now: Instant, wall: DateTime<Utc>) -> Option<PendingPodsDetected> {
        if self.pods.is_empty() && !self.reported_nonempty {
            return None;
        }
        self.last_emit = Some(now);
        self.reported_nonempty = !self.pods.is_empty();
        let oldest = self.pods.values().map(|p| p.since).min();
        let waiting_time = oldest
            .map(|t| ((wall - t).num_milliseconds().max(0) as f64) / 1000.0)
            .unwrap_or(0.0);
        let deployments: BTreeSet<String> = self
            .pods
            .values()
            .filter_map(|p| p.deployment.clone())
            .collect();
        let mut pods: Vec<PodSpec> = self.pods.values().map(|p| p.spec.clone()).collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Some(PendingPodsDetected {
            pending_count: u32::try_from(pods.len()).unwrap_or(u32::MAX),
            waiting_time,
            affected_deployments: deployments.into_iter().collect(),
            pods,
        })
    }
}

/// Watches all pods and reports the unschedulable ones; see the module doc.
pub struct PendingPodsWatcher {
    client: Client,
    windows: BatchWindows,
    metadata: Metadata,
    /// Deployment of a ReplicaSet whose name did not tell it, by (namespace, name).
    rs_cache: HashMap<(String, String), Option<String>>,
    watcher_config: watcher::Config,
}

impl PendingPodsWatcher {
    /// Batches with `windows` (see [`BatchWindows::new`] for the config keys).
    pub fn new(client: Client, windows: BatchWindows, metadata: Metadata) -> Self {
        Self {
            client,
            windows,
            metadata,
            rs_cache: HashMap::new(),
            watcher_config: watcher::Config::default(),
        }
    }

    /// Replaces the watcher's list/watch parameters.
    pub fn with_watcher_config(mut self, config: watcher::Config) -> Self {
        self.watcher_config = config;
        self
    }

    /// Runs until `shutdown` completes or `tx`'s receiver is dropped. API failures are logged and retried
    /// with kube's default backoff, never returned.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<Envelope>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        let api: Api<Pod> = Api::all(self.client.clone());
        let stream = watcher(api, self.watcher_config.clone()).default_backoff();
        tokio::pin!(stream);
        let mut batcher = PendingBatcher::new(self.windows);
        loop {
            let due = batcher.next_due();
            let wake = async move {
                match due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = wake => {}
                item = stream.next() => match item {
                    Some(Ok(event)) => self.observe(&mut batcher, event).await,
                    Some(Err(error)) => warn!(%error, "pod watch failed; retrying with backoff"),
                    None => return Ok(()),
                },
            }
            if let Some(report) = batcher.poll(Instant::now(), Utc::now()) {
                info!(
                    pending_count = report.pending_count,
                    waiting_time = report.waiting_time,
                    deployments = ?report.affected_deployments,
                    "pending pods"
                );
                let envelope = Envelope::root(SOURCE, report, self.metadata.clone());
                if tx.send(envelope).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    async fn observe(&mut self, batcher: &mut PendingBatcher, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => batcher.relist_started(),
            watcher::Event::InitDone => batcher.relist_done(),
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    batcher.not_pending(uid);
                }
            }
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let Some(uid) = pod.metadata.uid.clone() else {
                    return;
                };
                if !is_unschedulable(&pod) {
                    batcher.not_pending(&uid);
                    return;
                }
                let spec = match pod_spec(&pod) {
                    Ok(s) => s,
                    Err(error) => {
                        // A pod the API server accepted has valid quantities; count it without requests
                        // or constraints.
                        warn!(%error, pod = ?pod.metadata.name, "unreadable pod requests");
                        PodSpec::new(
                            pod.metadata.namespace.clone().unwrap_or_default(),
                            pod.metadata.name.clone().unwrap_or_default(),
                        )
                    }
                };
                let deployment = if batcher.is_pending(&uid) {
                    // Owners do not change: keep what was found the first time.
                    None
                } else {
                    self.deployment_of(&pod).await
                };
                let deployment = deployment
                    .or_else(|| batcher.pods.get(&uid).and_then(|e| e.deployment.clone()));
                let since = unschedulable_since(&pod).unwrap_or_else(Utc::now);
                batcher.pending(
                    PendingEntry {
                        uid,
                        since,
                        deployment,
                        spec,
                    },
                    Instant::now(),
                );
            }
        }
    }

    /// The Deployment that owns `pod` through its ReplicaSet, if any.
    async fn deployment_of(&mut self, pod: &Pod) -> Option<String> {
        if let Some(d) = deployment_from_names(pod) {
            return Some(d);
        }
        let rs = replicaset_owner(pod)?.to_string();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let key = (ns.clone(), rs.clone());
        if let Some(found) = self.rs_cache.get(&key) {
            return found.clone();
        }
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
        let found = match api.get_opt(&rs).await {
            Ok(Some(r)) => r
                .metadata
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .find(|o| o.kind == "Deployment")
                .map(|o| o.name),
            Ok(None) => None,
            Err(error) => {
                // Not cached: the next pod of this ReplicaSet tries again.
                debug!(%error, replicaset = %rs, "looking up a ReplicaSet's Deployment");
                return None;
            }
        };
        self.rs_cache.insert(key, found.clone());
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, PodCondition, PodSpec, PodStatus, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn entry(uid: &str, deployment: Option<&str>, since: DateTime<Utc>) -> PendingEntry {
        PendingEntry {
            uid: uid.into(),
            since,
            deployment: deployment.map(Into::into),
            spec: bus::scheduling::PodSpec {
                cpu_millis: 100,
                memory_bytes: 1 << 20,
                ..bus::scheduling::PodSpec::new("default", format!("pod-{uid}"))
            },
        }
    }

    fn windows() -> BatchWindows {
        BatchWindows::new(Duration::from_secs(1), Duration::from_secs(10))
    }

    #[test]
    fn a_batch_closes_after_idle() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let mut b = PendingBatcher::new(windows());
        b.pending(entry("a", Some("web"), wall), t0);
        // The leading edge: the first pod is reported at once.
        assert_eq!(b.next_due(), Some(t0));
        assert_eq!(b.poll(t0, wall).map(|r| r.pending_count), Some(1));
        assert!(b.poll(t0, wall).is_none());
        b.pending(
            entry("b", Some("web"), wall),
            t0 + Duration::from_millis(800),
        );
        assert!(b.poll(t0 + Duration::from_millis(1500), wall).is_none());
        assert_eq!(b.next_due(), Some(t0 + Duration::from_millis(1800)));
        let r = b
            .poll(
                t0 + Duration::from_millis(1800),
                wall + chrono::Duration::seconds(2),
            )
            .unwrap();
        assert_eq!(r.pending_count, 2);
        assert_eq!(r.affected_deployments, ["web"]);
        assert_eq!(r.waiting_time, 2.0);
        assert_eq!(r.pods.len(), 2);
    }

    #[test]
    fn a_busy_batch_closes_after_max() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let mut b = PendingBatcher::new(windows());
        for i in 0..20u64 {
            let now = t0 + Duration::from_millis(500 * i);
            b.pending(entry(&i.to_string(), None, wall), now);
            let report = b.poll(now, wall);
            if i == 0 {
                assert_eq!(report.map(|r| r.pending_count), Some(1), "leading edge");
            } else if now < t0 + Duration::from_secs(10) {
                assert!(report.is_none(), "at {i}");
            }
        }
        let r = b.poll(t0 + Duration::from_secs(10), wall).unwrap();
        assert_eq!(r.pending_count, 20);
        assert!(r.affected_deployments.is_empty());
    }

    #[test]
    fn reports_repeat_while_pods_stay_pending_and_an_empty_set_is_reported_once() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let mut b = PendingBatcher::new(windows());
        b.pending(entry("a", Some("web"), wall), t0);
        assert!(b.poll(t0, wall).is_some());
        // Nothing joined after the leading report: the batch closes without another.
        assert!(b.poll(t0 + Duration::from_secs(1), wall).is_none());
        // The same pod updated: no new batch.
        b.pending(entry("a", Some("web"), wall), t0 + Duration::from_secs(2));
        assert!(b.poll(t0 + Duration::from_secs(3), wall).is_none());
        // Repeated `reemit` after the last report, the leading one.
        assert_eq!(b.next_due(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(
            b.poll(t0 + Duration::from_secs(10), wall)
                .unwrap()
                .pending_count,
            1
        );
        b.not_pending("a");
        let r = b.poll(t0 + Duration::from_secs(12), wall).unwrap();
        assert_eq!(r.pending_count, 0);
        assert!(r.pods.is_empty());
        assert!(b.poll(t0 + Duration::from_secs(30), wall).is_none());
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn pods_scheduled_before_the_batch_closes_are_not_reported() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let mut b = PendingBatcher::new(windows());
        b.pending(entry("a", None, wall), t0);
        b.not_pending("a");
        assert!(b.poll(t0 + Duration::from_secs(5), wall).is_none());
    }

    #[test]
    fn a_pod_gone_while_its_batch_is_open_is_reported_gone_when_it_closes() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let mut b = PendingBatcher::new(windows());
        b.pending(entry("a", None, wall), t0);
        assert_eq!(b.poll(t0, wall).map(|r| r.pending_count), Some(1));
        b.not_pending("a");
        assert!(b.poll(t0 + Duration::from_millis(500), wall).is_none());
        assert_eq!(b.next_due(), Some(t0 + Duration::from_secs(1)));
        let r = b.poll(t0 + Duration::from_secs(1), wall);
        assert_eq!(r.map(|r| r.pending_count), Some(0));
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn a_watcher_starting_amid_pending_pods_reports_the_whole_list_at_once() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let mut b = PendingBatcher::new(windows());
        b.relist_started();
        b.pending(entry("a", None, wall), t0);
        assert!(b.poll(t0, wall).is_none(), "no leading report mid-list");
        b.pending(entry("b", None, wall), t0);
        b.relist_done();
        assert_eq!(b.poll(t0, wall).map(|r| r.pending_count), Some(2));
    }

    #[test]
    fn a_relist_forgets_pods_no_longer_listed() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let mut b = PendingBatcher::new(windows());
        b.pending(entry("a", None, wall), t0);
        b.pending(entry("b", None, wall), t0);
        b.relist_started();
        b.pending(entry("b", None, wall), t0);
        b.relist_done();
        assert!(!b.is_pending("a"));
        assert!(b.is_pending("b"));
    }

    fn pod() -> Pod {
        let mut requests = BTreeMap::new();
        requests.insert("cpu".to_string(), Quantity("250m".into()));
        requests.insert("memory".to_string(), Quantity("64Mi".into()));
        let mut limits = BTreeMap::new();
        limits.insert("cpu".to_string(), Quantity("1".into()));
        limits.insert("memory".to_string(), Quantity("128Mi".into()));
        let mut labels = BTreeMap::new();
        labels.insert("pod-template-hash".to_string(), "5d9f8c7b6".to_string());
        Pod {
            metadata: ObjectMeta {
                name: Some("web-5d9f8c7b6-abcde".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                labels: Some(labels),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: "web-5d9f8c7b6".into(),
                    uid: "rs".into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![
                    Container {
                        name: "a".into(),
                        resources: Some(ResourceRequirements {
                            requests: Some(requests),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    Container {
                        name: "b".into(),
                        resources: Some(ResourceRequirements {
                            limits: Some(limits),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn requests_sum_containers_with_limits_standing_in_for_missing_requests() {
        let r = pod_spec(&pod()).unwrap();
        assert_eq!(r.cpu_millis, 1250);
        assert_eq!(r.memory_bytes, 192 * 1024 * 1024);
        assert_eq!(r.name, "web-5d9f8c7b6-abcde");
        assert_eq!(r.owner_kind.as_deref(), Some("ReplicaSet"));
    }

    #[test]
    fn a_report_lists_each_pod_with_its_constraints_sorted_by_name() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let mut p = pod();
        let spec = p.spec.as_mut().unwrap();
        spec.node_selector = Some(BTreeMap::from([("disktype".into(), "ssd".into())]));
        let mut b = PendingBatcher::new(windows());
        b.pending(entry("z", None, wall), t0);
        b.pending(
            PendingEntry {
                uid: "u1".into(),
                since: wall,
                deployment: deployment_from_names(&p),
                spec: pod_spec(&p).unwrap(),
            },
            t0,
        );
        let r = b.poll(t0, wall).unwrap();
        assert_eq!(r.pending_count, 2);
        assert_eq!(r.pods[0].name, "pod-z");
        assert_eq!(r.pods[1].name, "web-5d9f8c7b6-abcde");
        assert_eq!(r.pods[1].node_selector.get("disktype").unwrap(), "ssd");
        assert_eq!(r.pods[1].cpu_millis, 1250);
    }

    #[test]
    fn the_deployment_is_the_replicaset_name_minus_the_template_hash() {
        let p = pod();
        assert!(is_unschedulable(&p));
        assert_eq!(deployment_from_names(&p).as_deref(), Some("web"));
        let mut q = p.clone();
        q.metadata.labels = None;
        assert_eq!(deployment_from_names(&q), None);
        let mut bound = p;
        bound.spec.as_mut().unwrap().node_name = Some("w1".into());
        assert!(!is_unschedulable(&bound));
    }
}
