//! The event catalogue: every fact and decision the autoscaler records, as typed data.
//!
//! Names and data fields are contracts shared with every reader of the stream (see
//! `docs/ARCHITECTURE.md`): tools read them with `redis-cli`, so they are PascalCase event types with snake_case JSON fields, percentages as plain numbers (`85.0` is 85 %)
//! and durations in seconds.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::scheduling::{NodeSpec, PodRef, PodSpec};

/// Which way a scaling action goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalingAction {
    ScaleUp,
    ScaleDown,
}

impl ScalingAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ScalingAction::ScaleUp => "scale_up",
            ScalingAction::ScaleDown => "scale_down",
        }
    }
}

/// Utilisation of one worker in one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUsage {
    pub node_name: String,
    pub cpu: f64,
    pub memory: f64,
}

/// Mean CPU % and memory % over `nodes` (0 for no nodes): the `cpu_avg`/`memory_avg` of a sample.
pub fn mean_usage(nodes: &[NodeUsage]) -> (f64, f64) {
    if nodes.is_empty() {
        return (0.0, 0.0);
    }
    let n = nodes.len() as f64;
    (
        nodes.iter().map(|u| u.cpu).sum::<f64>() / n,
        nodes.iter().map(|u| u.memory).sum::<f64>() / n,
    )
}

// ---- Core -------------------------------------------------------------------------------------------

/// Workers are at the minimum and resources are underused: the efficient state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimalStateTrigger {
    pub current_workers: u32,
    pub min_workers: u32,
    pub cpu_avg: f64,
    pub memory_avg: f64,
}

/// A scale-up or scale-down finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingActionCompleted {
    pub action: ScalingAction,
    pub count: u32,
    pub previous_workers: u32,
    pub new_workers: u32,
    /// Seconds from the decision to completion.
    pub duration: f64,
    /// The workers created or removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

/// Kubernetes, Docker and the record agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterStateSynced {
    pub k8s_nodes: u32,
    pub docker_containers: u32,
    pub db_workers: u32,
    pub last_sync: DateTime<Utc>,
}

// ---- Resource ---------------------------------------------------------------------------------------

/// Workers > min and CPU and memory below the low thresholds for consecutive periods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnderutilizationWarning {
    pub workers: u32,
    pub min_workers: u32,
    pub cpu_avg: f64,
    pub memory_avg: f64,
    /// Seconds the underutilisation has lasted.
    pub duration: f64,
    /// Per-worker figures of the sample, for choosing which worker to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeUsage>,
}

/// CPU or memory above the high thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcePressureAlert {
    pub cpu_avg: f64,
    pub memory_avg: f64,
    pub workers: u32,
    pub max_workers: u32,
}

/// Pods that cannot be scheduled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingPodsDetected {
    pub pending_count: u32,
    /// Seconds the oldest of them has waited.
    pub waiting_time: f64,
    pub affected_deployments: Vec<String>,
    /// Their requests and constraints, when the watcher knows them (entries written before
    /// constraints were carried hold only `namespace`, `name`, `cpu_millis`, `memory_bytes`, and
    /// still decode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodSpec>,
}

/// A raw utilisation sample of the MetricsCollector; MetricsListener turns samples into resource events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSampled {
    pub workers: u32,
    pub cpu_avg: f64,
    pub memory_avg: f64,
    /// `docker_stats`, `metrics_api` or `pod_requests`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeUsage>,
}

// ---- Node lifecycle -----------------------------------------------------------------------------------

/// A node failed its health checks or became NotReady.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeHealthDegraded {
    pub node_name: String,
    pub status: String,
    pub last_check: DateTime<Utc>,
}

/// A worker disappeared without a scale-down asking for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUnexpectedlyLost {
    pub node_name: String,
    pub last_seen: DateTime<Utc>,
    /// e.g. `container_crash`, `container_oom`, `container_destroyed`, `node_deleted`.
    pub cause: String,
}

/// A worker's container exists and runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCreated {
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The worker's pool; absent for the default pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// A worker's Node became Ready for the first time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReady {
    pub node_name: String,
}

/// Someone else is stopping a worker (docker `kill`/`stop` seen before `die`, or an operator's request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInterruptionNotice {
    pub node_name: String,
    /// e.g. `docker_kill`, `docker_stop`, `operator`.
    pub cause: String,
}

/// A worker was cordoned and tainted for removal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCordoned {
    pub node_name: String,
}

/// A worker's pods were evicted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDrained {
    pub node_name: String,
    pub evicted_pods: u32,
}

/// A worker's container and Node object are gone (reported by the executor after a removal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRemoved {
    pub node_name: String,
    /// The worker's pool; absent for the default pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// A removed worker's container was stopped and kept in its pool's warm pool (reported by the
/// executor): its Node object is gone, and the pool's next scale-up starts it again under its own
/// name instead of creating a new one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmPoolEntered {
    pub node_name: String,
    /// The worker's pool; absent for the default pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// A worker left its pool's warm pool: `started` (a scale-up took it), `container_gone` (its
/// stopped container vanished), `over_capacity` (more warm workers than the pool's `warm_pool`:
/// it is removed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmPoolLeft {
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub reason: String,
}

/// A scheduled minimum's window opened (`schedules: [{cron, duration, min_nodes}]`, UTC): until
/// `window_end` the cluster (no `pool`) or the pool keeps at least `min_nodes` workers, and the
/// MinimumNodeEnforcer tops it up with the reason `schedule`. Published by the enforcer at the
/// first event or timer after the window's edge; its id is derived from the schedule and the
/// window, so replicas and redeliveries publish it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledMinimumStarted {
    /// Which schedule: `cluster/<i>` or `pool/<name>/<i>` (its place in the configuration).
    pub schedule: String,
    /// The pool it raises; absent: the cluster's `limits.min_nodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub min_nodes: u32,
    pub cron: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
}

/// A scheduled minimum's window closed (or its schedule left the configuration): the minimum is
/// the configured one again, and scale-down may remove what the window added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledMinimumEnded {
    pub schedule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub min_nodes: u32,
    pub window_start: DateTime<Utc>,
}

/// One worker Node as Kubernetes shows it, in a [`ClusterObserved`] snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservedNode {
    pub name: String,
    /// The Ready condition is True.
    pub ready: bool,
    /// Annotated `cluster-autoscaler.kubernetes.io/scale-down-disabled: "true"`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scale_down_disabled: bool,
}

/// A snapshot of the workers as Kubernetes and Docker see them (only this autoscaler's workers: the
/// server and foreign nodes are left out). The StateSynchronizer compares it with the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterObserved {
    pub k8s_nodes: Vec<ObservedNode>,
    /// Names of the managed worker containers that exist (running or not), on the engines that
    /// answered.
    pub docker_containers: Vec<String>,
    /// Docker hosts that did not answer this observation, with the pools whose workers they run:
    /// those workers' containers are unknown, not missing. Only with several hosts (`docker.hosts`):
    /// with one engine, an engine that does not answer fails the whole observation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<UnreachableHost>,
}

/// A Docker host that did not answer a [`ClusterObserved`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnreachableHost {
    /// Its name in `docker.hosts`.
    pub host: String,
    /// The pools on it.
    pub pools: Vec<String>,
    /// What the engine (or the connection to it) said.
    pub error: String,
}

impl ClusterObserved {
    /// The pools whose engine did not answer.
    pub fn unreachable_pools(&self) -> impl Iterator<Item = &str> {
        self.unreachable
            .iter()
            .flat_map(|h| h.pools.iter().map(String::as_str))
    }
}

/// Where pods run, a whole picture in `parts` entries: every node (labels, taints, allocatable,
/// pool, cordoned, Ready) and every pod bound to one (requests and constraints), what the
/// scale-down simulation folds. Published when the leader starts observing and then every
/// `kubernetes.placement_snapshot_interval`; [`PlacementChanged`] deltas follow. See
/// [`crate::placement`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSnapshot {
    /// The snapshot's id, the same in each of its parts.
    pub snapshot: String,
    /// 0-based; part 0 starts the picture afresh.
    pub part: u32,
    pub parts: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSpec>,
    /// The pods on this part's nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<crate::placement::PodGroup>,
}

/// What changed in where pods run since the last [`PlacementSnapshot`] or delta: nodes and pods
/// added or changed (whole), and removed (by name).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementChanged {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes_removed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<crate::placement::PodGroup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods_removed: Vec<PodRef>,
}

impl PlacementChanged {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.nodes_removed.is_empty()
            && self.pods.is_empty()
            && self.pods_removed.is_empty()
    }
}

// ---- Minimum enforcement ------------------------------------------------------------------------------

/// Fewer workers than the minimum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinimumNodesViolation {
    pub current_workers: u32,
    pub min_workers: u32,
    pub violation_time: DateTime<Utc>,
}

/// The corrective scale-up after a violation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoScaleUpToMinimum {
    pub current_workers: u32,
    pub min_workers: u32,
    pub scale_up_count: u32,
    pub reason: String,
    /// Absolute target, so a duplicated decision is harmless.
    pub target_workers: u32,
}

/// Back at the minimum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinimumNodesRestored {
    pub current_workers: u32,
    pub min_workers: u32,
    pub restore_time: DateTime<Utc>,
}

/// Several workers lost together: scale up at once, bypassing cooldowns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmergencyScaleUp {
    pub lost_count: u32,
    pub remaining_workers: u32,
    pub min_workers: u32,
    pub emergency_scale: u32,
    pub target_workers: u32,
}

// ---- Decisions and actions ------------------------------------------------------------------------------

/// The engine decided to grow to `target_workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleUpDecision {
    pub current_workers: u32,
    /// Cluster-wide, absolute.
    pub target_workers: u32,
    /// e.g. `pending_pods`, `resource_pressure`, `minimum_violation`, `manual`.
    pub reason: String,
    /// The pool that grows; absent for the default pool. A scale-up over two pools is two
    /// decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The pool's absolute size after the decision, when it names a pool target (pending-pods
    /// scale-ups do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_target: Option<u32>,
}

/// The engine decided to shrink to `target_workers` by removing `nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleDownDecision {
    pub current_workers: u32,
    pub target_workers: u32,
    pub nodes: Vec<String>,
    pub reason: String,
    /// The pool of `nodes`; absent for the default pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// An operator asked for an absolute size (`autoscaler scale --to N`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualScaleRequested {
    pub target_workers: u32,
    pub reason: String,
}

/// The NodeManager began creating workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleUpStarted {
    pub count: u32,
    pub target_workers: u32,
    pub nodes: Vec<String>,
    /// The pool of `nodes`; absent for the default pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// The NodeManager began removing workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleDownStarted {
    pub count: u32,
    pub target_workers: u32,
    pub nodes: Vec<String>,
}

/// A scale-down that would otherwise happen, and the stable code of why it does not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleDownBlocked {
    /// `pending_pods`, `min_nodes_reached`, `cooldown`, `action_in_progress`, `unhealthy_nodes`,
    /// `no_place_for_pods`, `pdb`, `scale_down_disabled`, …
    pub reason: String,
    pub workers: u32,
    pub min_workers: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The pool whose minimum or nodes the block is about; absent for the default pool or the
    /// whole cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// Pending pods that get no new worker, and the stable code of why. Published when a pod's reason
/// first appears or changes, not on every re-report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleUpBlocked {
    /// `no_pool_fits`, `pool_max_reached`, `max_nodes_reached`.
    pub reason: String,
    /// The pods, as `namespace/name`.
    pub pods: Vec<String>,
    /// The pool at its maximum (`pool_max_reached` with one pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For `no_pool_fits`: per pool, the first predicate its new node fails (`resources`,
    /// `node_selector`, `node_affinity`, `taints`, `anti_affinity`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub predicates: BTreeMap<String, String>,
}

/// A scaling action failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingActionFailed {
    pub action: ScalingAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    pub error: String,
    pub retryable: bool,
}

macro_rules! catalogue {
    ($($name:ident),* $(,)?) => {
        /// One event of the catalogue; the variant name is the stream's `event_type`.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event {
            $($name($name),)*
        }

        /// Every event type name, in catalogue order.
        pub const EVENT_TYPES: &[&str] = &[$(stringify!($name),)*];

        impl Event {
            /// The catalogue name, e.g. `MinimumNodesViolation`.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Event::$name(_) => stringify!($name),)*
                }
            }

            /// The data as a JSON object.
            pub fn data_json(&self) -> serde_json::Value {
                let value = match self {
                    $(Event::$name(d) => serde_json::to_value(d),)*
                };
                // Serialising plain structs of strings and numbers cannot fail.
                value.unwrap_or(serde_json::Value::Null)
            }

            /// The data as JSON text, as the stream stores it (fields in declaration order).
            pub fn data_string(&self) -> String {
                let text = match self {
                    $(Event::$name(d) => serde_json::to_string(d),)*
                };
                text.unwrap_or_else(|_| "null".to_string())
            }

            /// Builds an event from its type name and JSON data, as stored on the stream.
            pub fn from_parts(event_type: &str, data: &str) -> Result<Self, crate::DecodeError> {
                match event_type {
                    $(stringify!($name) => serde_json::from_str(data)
                        .map(Event::$name)
                        .map_err(|e| crate::DecodeError::BadData { event_type: event_type.to_string(), source: e }),)*
                    other => Err(crate::DecodeError::UnknownEventType(other.to_string())),
                }
            }

            /// As [`Event::from_parts`], from a JSON value.
            pub fn from_value(event_type: &str, data: serde_json::Value) -> Result<Self, crate::DecodeError> {
                match event_type {
                    $(stringify!($name) => serde_json::from_value(data)
                        .map(Event::$name)
                        .map_err(|e| crate::DecodeError::BadData { event_type: event_type.to_string(), source: e }),)*
                    other => Err(crate::DecodeError::UnknownEventType(other.to_string())),
                }
            }
        }

        $(impl From<$name> for Event {
            fn from(d: $name) -> Self { Event::$name(d) }
        })*
    };
}

catalogue!(
    // core
    OptimalStateTrigger,
    ScalingActionCompleted,
    ClusterStateSynced,
    // resource
    UnderutilizationWarning,
    ResourcePressureAlert,
    PendingPodsDetected,
    MetricsSampled,
    // node lifecycle
    NodeHealthDegraded,
    NodeUnexpectedlyLost,
    NodeCreated,
    NodeReady,
    NodeInterruptionNotice,
    NodeCordoned,
    NodeDrained,
    NodeRemoved,
    WarmPoolEntered,
    WarmPoolLeft,
    ClusterObserved,
    PlacementSnapshot,
    PlacementChanged,
    // minimum enforcement
    MinimumNodesViolation,
    AutoScaleUpToMinimum,
    MinimumNodesRestored,
    EmergencyScaleUp,
    ScheduledMinimumStarted,
    ScheduledMinimumEnded,
    // decisions and actions
    ScaleUpDecision,
    ScaleDownDecision,
    ManualScaleRequested,
    ScaleUpStarted,
    ScaleDownStarted,
    ScaleDownBlocked,
    ScaleUpBlocked,
    ScalingActionFailed,
);

impl Event {
    /// The node an event is about, when it is about one node.
    pub fn node_name(&self) -> Option<&str> {
        match self {
            Event::NodeHealthDegraded(d) => Some(&d.node_name),
            Event::NodeUnexpectedlyLost(d) => Some(&d.node_name),
            Event::NodeCreated(d) => Some(&d.node_name),
            Event::NodeReady(d) => Some(&d.node_name),
            Event::NodeInterruptionNotice(d) => Some(&d.node_name),
            Event::NodeCordoned(d) => Some(&d.node_name),
            Event::NodeDrained(d) => Some(&d.node_name),
            Event::NodeRemoved(d) => Some(&d.node_name),
            Event::WarmPoolEntered(d) => Some(&d.node_name),
            Event::WarmPoolLeft(d) => Some(&d.node_name),
            Event::ScalingActionFailed(d) => d.node_name.as_deref(),
            Event::ScaleDownBlocked(d) => d.node_name.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_pending_pods_entry_decodes_into_pod_specs() {
        let old = r#"{"pending_count":1,"waiting_time":5.0,"affected_deployments":["web"],"pods":[{"namespace":"default","name":"web-1","cpu_millis":250,"memory_bytes":268435456}]}"#;
        let Event::PendingPodsDetected(p) = Event::from_parts("PendingPodsDetected", old).unwrap()
        else {
            unreachable!()
        };
        let mut want = PodSpec::new("default", "web-1");
        want.cpu_millis = 250;
        want.memory_bytes = 268_435_456;
        assert_eq!(p.pods, [want]);
        assert_eq!(Event::from(p).data_string(), old);
    }

    #[test]
    fn default_pool_entries_look_as_before_pools() {
        let old = r#"{"current_workers":2,"target_workers":3,"reason":"pending_pods"}"#;
        let e = Event::from_parts("ScaleUpDecision", old).unwrap();
        assert_eq!(e.data_string(), old);
        let old = r#"{"count":1,"target_workers":3,"nodes":["k3s-worker-3"]}"#;
        let e = Event::from_parts("ScaleUpStarted", old).unwrap();
        assert_eq!(e.data_string(), old);
        let old = r#"{"node_name":"k3s-worker-3","container_id":"abc"}"#;
        assert_eq!(
            Event::from_parts("NodeCreated", old).unwrap().data_string(),
            old
        );
    }

    #[test]
    fn scale_up_blocked_carries_the_predicate_per_pool() {
        let b = ScaleUpBlocked {
            reason: "no_pool_fits".into(),
            pods: vec!["default/ssd".into()],
            pool: None,
            detail: None,
            predicates: [
                ("general".to_string(), "node_selector".to_string()),
                ("highmem".to_string(), "taints".to_string()),
            ]
            .into(),
        };
        assert_eq!(
            Event::from(b).data_string(),
            r#"{"reason":"no_pool_fits","pods":["default/ssd"],"predicates":{"general":"node_selector","highmem":"taints"}}"#
        );
    }
}
