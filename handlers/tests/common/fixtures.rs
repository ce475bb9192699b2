//! Builders and constructors for the events tests feed in.

use bus::event::{
    ClusterObserved, Event, MetricsSampled, NodeCordoned, NodeDrained, NodeRemoved, ObservedNode,
    PendingPodsDetected, ScalingAction, ScalingActionCompleted,
};

use bus::scheduling::PodSpec;

use super::t0;

/// A pending pod: `PodBuilder::new("web-1").cpu(250).memory_mi(128).build()`; in `default`, with
/// no requests unless set.
#[derive(Debug, Clone)]
pub struct PodBuilder(PodSpec);

impl PodBuilder {
    pub fn new(name: &str) -> Self {
        Self(PodSpec::new("default", name))
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.0.namespace = namespace.into();
        self
    }

    /// The CPU request in millicores.
    pub fn cpu(mut self, millis: u64) -> Self {
        self.0.cpu_millis = millis;
        self
    }

    /// The memory request in MiB.
    pub fn memory_mi(mut self, mib: u64) -> Self {
        self.0.memory_bytes = mib << 20;
        self
    }

    /// The memory request in bytes.
    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.0.memory_bytes = bytes;
        self
    }

    /// `nodeSelector: {key: value}`.
    pub fn select(mut self, key: &str, value: &str) -> Self {
        self.0.node_selector.insert(key.into(), value.into());
        self
    }

    /// Tolerates `key=value` taints of any effect.
    pub fn tolerate(mut self, key: &str, value: &str) -> Self {
        self.0
            .tolerations
            .push(bus::scheduling::Toleration::equal(key, value));
        self
    }

    pub fn build(self) -> PodSpec {
        self.0
    }
}

/// A node as Kubernetes shows it: `NodeBuilder::new("k3s-worker-1").not_ready().build()`; Ready
/// and without the scale-down-disabled annotation unless set.
#[derive(Debug, Clone)]
pub struct NodeBuilder(ObservedNode);

impl NodeBuilder {
    pub fn new(name: &str) -> Self {
        Self(ObservedNode {
            name: name.into(),
            ready: true,
            scale_down_disabled: false,
        })
    }

    pub fn not_ready(self) -> Self {
        self.ready(false)
    }

    pub fn ready(mut self, ready: bool) -> Self {
        self.0.ready = ready;
        self
    }

    /// Annotated `cluster-autoscaler.kubernetes.io/scale-down-disabled` (or not).
    pub fn scale_down_disabled(mut self, disabled: bool) -> Self {
        self.0.scale_down_disabled = disabled;
        self
    }

    pub fn build(self) -> ObservedNode {
        self.0
    }
}

/// A pending-pods report of `count` pods listing `pods`.
pub fn pending(pods: Vec<PodSpec>, count: u32) -> PendingPodsDetected {
    PendingPodsDetected {
        pending_count: count,
        waiting_time: 5.0,
        affected_deployments: vec!["app1".into()],
        pods,
    }
}

/// A utilisation sample without per-node figures.
pub fn metrics(workers: u32, cpu: f64, mem: f64) -> MetricsSampled {
    MetricsSampled {
        workers,
        cpu_avg: cpu,
        memory_avg: mem,
        source: "docker_stats".into(),
        nodes: vec![],
    }
}

/// Kubernetes and Docker both show `names`, all Ready.
pub fn all_ready(names: &[&str]) -> ClusterObserved {
    ClusterObserved {
        k8s_nodes: names.iter().map(|n| NodeBuilder::new(n).build()).collect(),
        docker_containers: names.iter().map(|n| (*n).to_string()).collect(),
        unreachable: Vec::new(),
    }
}

/// The facts of `victim`'s removal after its `ScaleDownStarted`, in order, down from `previous` workers.
pub fn removal_of(victim: &str, previous: u32) -> [Event; 4] {
    [
        NodeCordoned {
            node_name: victim.into(),
        }
        .into(),
        NodeDrained {
            node_name: victim.into(),
            evicted_pods: 0,
        }
        .into(),
        NodeRemoved {
            node_name: victim.into(),
            pool: None,
        }
        .into(),
        ScalingActionCompleted {
            action: ScalingAction::ScaleDown,
            count: 1,
            previous_workers: previous,
            new_workers: previous - 1,
            duration: 3.0,
            nodes: vec![victim.into()],
        }
        .into(),
    ]
}

/// Root envelopes at a clock that steps forward before each one (for tests that drive a model and
/// one handler directly, to put entries in an order the simulation would not produce).
pub struct Clock {
    pub now: chrono::DateTime<chrono::Utc>,
    step: chrono::Duration,
    metadata: bus::Metadata,
}

impl Clock {
    pub fn new(step_secs: i64) -> Self {
        Self {
            now: t0(),
            step: chrono::Duration::seconds(step_secs),
            metadata: bus::Metadata::new("lab", "local"),
        }
    }

    pub fn at(&mut self, event: impl Into<Event>) -> bus::Envelope {
        self.now += self.step;
        bus::Envelope::root("test", event, self.metadata.clone()).with_timestamp(self.now)
    }
}
