//! What the scheduling simulation of the decision core reads, as it rides on the stream: pods'
//! requests and constraints, nodes' labels, taints, allocatable and pool.
//!
//! These are the project's own types, not Kubernetes' API objects: only the fields the simulation
//! folds, with Kubernetes' semantics (`tolerates`, `matches`) next to them so the observers and the
//! decision core cannot disagree. Empty fields are left out of the JSON, since tens of thousands of
//! pods ride in one snapshot; taints travel in k3s's own `key=value:Effect` form.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The node label that carries a worker's pool.
pub const POOL_LABEL: &str = "k3s-autoscaler/pool";
/// The node label whose value is the node's name; the only topology key of pod anti-affinity the
/// simulation knows.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// A pod's `DaemonSet` owner kind: such pods run on every node, so they never call for a new node
/// and never keep one.
pub const DAEMON_SET: &str = "DaemonSet";

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// CPU, memory and pod slots: a node's allocatable, what pods request, what is left.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub cpu_millis: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub memory_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub pods: u32,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_bytes: 0,
        pods: 0,
    };

    pub const fn new(cpu_millis: u64, memory_bytes: u64, pods: u32) -> Self {
        Resources {
            cpu_millis,
            memory_bytes,
            pods,
        }
    }

    /// Sum, capped at the maximum of each dimension.
    #[must_use]
    pub fn saturating_add(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            pods: self.pods.saturating_add(other.pods),
        }
    }

    /// Difference, floored at 0 in each dimension (an over-committed node has nothing left).
    #[must_use]
    pub fn saturating_sub(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            pods: self.pods.saturating_sub(other.pods),
        }
    }

    /// `n` times these resources, saturating.
    #[must_use]
    pub fn saturating_mul(self, n: u32) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_mul(u64::from(n)),
            memory_bytes: self.memory_bytes.saturating_mul(u64::from(n)),
            pods: self.pods.saturating_mul(n),
        }
    }

    /// Whether a request of `self` fits into `free`, in every dimension.
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpu_millis <= free.cpu_millis
            && self.memory_bytes <= free.memory_bytes
            && self.pods <= free.pods
    }

    /// How many requests of `self` fit into `free` at once (`u32::MAX` for a zero request).
    pub fn copies_in(&self, free: &Resources) -> u32 {
        let per = |need: u64, have: u64| have.checked_div(need).unwrap_or(u64::from(u32::MAX));
        per(self.cpu_millis, free.cpu_millis)
            .min(per(self.memory_bytes, free.memory_bytes))
            .min(per(u64::from(self.pods), u64::from(free.pods)))
            .min(u64::from(u32::MAX)) as u32
    }
}

/// What a taint does to pods that do not tolerate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaintEffect {
    /// New pods are not scheduled.
    NoSchedule,
    /// The scheduler avoids the node but may use it: it never blocks a placement.
    PreferNoSchedule,
    /// New pods are not scheduled and running ones are evicted.
    NoExecute,
}

impl TaintEffect {
    /// Kubernetes' spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }

    /// Whether a pod that does not tolerate it cannot be placed on the node.
    pub fn blocks_scheduling(self) -> bool {
        !matches!(self, TaintEffect::PreferNoSchedule)
    }
}

impl fmt::Display for TaintEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a taint string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaintParseError {
    #[error("taint `{0}` has no `:Effect`")]
    MissingEffect(String),
    #[error(
        "taint `{taint}`: unknown effect `{effect}` (NoSchedule, PreferNoSchedule or NoExecute)"
    )]
    UnknownEffect { taint: String, effect: String },
    #[error("taint `{0}` has an empty key")]
    EmptyKey(String),
}

impl FromStr for TaintEffect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "NoSchedule" => Ok(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Ok(TaintEffect::PreferNoSchedule),
            "NoExecute" => Ok(TaintEffect::NoExecute),
            other => Err(other.to_string()),
        }
    }
}

/// A node taint; on the wire and in the configuration as k3s writes it: `key=value:Effect`, or
/// `key:Effect` for an empty value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Taint {
    pub key: String,
    /// Empty when the taint has no value.
    pub value: String,
    pub effect: TaintEffect,
}

impl Taint {
    pub fn new(key: impl Into<String>, value: impl Into<String>, effect: TaintEffect) -> Self {
        Taint {
            key: key.into(),
            value: value.into(),
            effect,
        }
    }
}

impl FromStr for Taint {
    type Err = TaintParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kv, effect) = s
            .rsplit_once(':')
            .ok_or_else(|| TaintParseError::MissingEffect(s.to_string()))?;
        let effect =
            effect
                .parse::<TaintEffect>()
                .map_err(|effect| TaintParseError::UnknownEffect {
                    taint: s.to_string(),
                    effect,
                })?;
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        if key.is_empty() {
            return Err(TaintParseError::EmptyKey(s.to_string()));
        }
        Ok(Taint::new(key, value, effect))
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect)
        }
    }
}

impl TryFrom<String> for Taint {
    type Error = TaintParseError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Taint> for String {
    fn from(t: Taint) -> String {
        t.to_string()
    }
}

/// How a toleration compares its value.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum TolerationOperator {
    /// The taint's value must equal the toleration's (Kubernetes' default).
    #[default]
    Equal,
    /// Any value.
    Exists,
}

impl TolerationOperator {
    fn is_default(&self) -> bool {
        *self == TolerationOperator::Equal
    }
}

/// A pod's toleration, with Kubernetes' semantics ([`Toleration::tolerates`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    /// `None` (with `Exists`) matches every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "TolerationOperator::is_default")]
    pub operator: TolerationOperator,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// `None` matches every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Tolerates `key=value` taints of any effect.
    pub fn equal(key: impl Into<String>, value: impl Into<String>) -> Self {
        Toleration {
            key: Some(key.into()),
            operator: TolerationOperator::Equal,
            value: value.into(),
            effect: None,
        }
    }

    /// Tolerates every taint with this key.
    pub fn exists(key: impl Into<String>) -> Self {
        Toleration {
            key: Some(key.into()),
            operator: TolerationOperator::Exists,
            ..Toleration::default()
        }
    }

    /// Tolerates every taint (empty key, `Exists`).
    pub fn everything() -> Self {
        Toleration {
            operator: TolerationOperator::Exists,
            ..Toleration::default()
        }
    }

    /// Only for taints of this effect.
    #[must_use]
    pub fn with_effect(mut self, effect: TaintEffect) -> Self {
        self.effect = Some(effect);
        self
    }

    /// Kubernetes' `ToleratesTaint`: the effect (when set) and the key (when set) must match, then
    /// `Exists` matches any value and `Equal` the same value.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if self
            .key
            .as_deref()
            .is_some_and(|k| !k.is_empty() && k != taint.key)
        {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => true,
            TolerationOperator::Equal => self.value == taint.value,
        }
    }
}

/// The operators of required node affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeSelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// The label's value, as an integer, is greater than the single value.
    Gt,
    /// The label's value, as an integer, is less than the single value.
    Lt,
}

/// One expression of a node selector term.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSelectorRequirement {
    pub key: String,
    pub operator: NodeSelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl NodeSelectorRequirement {
    pub fn new(key: impl Into<String>, operator: NodeSelectorOperator, values: &[&str]) -> Self {
        NodeSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// Whether a node whose label `key` is `label` (absent: `None`) satisfies it. As Kubernetes
    /// does, `Gt`/`Lt` need exactly one integer value and an integer label, else they fail.
    pub fn matches(&self, label: Option<&str>) -> bool {
        match self.operator {
            NodeSelectorOperator::In => label.is_some_and(|l| self.values.iter().any(|v| v == l)),
            NodeSelectorOperator::NotIn => label.is_none_or(|l| self.values.iter().all(|v| v != l)),
            NodeSelectorOperator::Exists => label.is_some(),
            NodeSelectorOperator::DoesNotExist => label.is_none(),
            NodeSelectorOperator::Gt | NodeSelectorOperator::Lt => {
                let [bound] = self.values.as_slice() else {
                    return false;
                };
                let (Some(Ok(have)), Ok(bound)) =
                    (label.map(str::parse::<i64>), bound.parse::<i64>())
                else {
                    return false;
                };
                if self.operator == NodeSelectorOperator::Gt {
                    have > bound
                } else {
                    have < bound
                }
            }
        }
    }
}

/// One term of required node affinity: all its expressions must hold (AND). A pod's terms are
/// ORed; a term without expressions matches no node, as in Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSelectorTerm {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<NodeSelectorRequirement>,
}

impl NodeSelectorTerm {
    /// Whether a node whose labels `label(key)` returns satisfies every expression.
    pub fn matches<'l>(&self, label: impl Fn(&str) -> Option<&'l str>) -> bool {
        !self.match_expressions.is_empty()
            && self
                .match_expressions
                .iter()
                .all(|e| e.matches(label(&e.key)))
    }
}

/// The operators of a label selector's expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LabelSelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One expression of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: LabelSelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A selector of pods by labels (of required pod anti-affinity). An empty selector matches every
/// pod, as in Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl LabelSelector {
    /// A selector of the pods carrying all of `labels`.
    pub fn labels(labels: &[(&str, &str)]) -> Self {
        LabelSelector {
            match_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether a pod with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let l = labels.get(&e.key);
                match e.operator {
                    LabelSelectorOperator::In => l.is_some_and(|l| e.values.contains(l)),
                    LabelSelectorOperator::NotIn => l.is_none_or(|l| !e.values.contains(l)),
                    LabelSelectorOperator::Exists => l.is_some(),
                    LabelSelectorOperator::DoesNotExist => l.is_none(),
                }
            })
    }
}

/// A pod as the scheduling simulation sees it: what it requests and where it may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    /// CPU request in millicores (the sum over its containers).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub cpu_millis: u64,
    /// Memory request in bytes.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub memory_bytes: u64,
    /// What other pods' anti-affinity selects it by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity: ORed terms; empty means none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_affinity: Vec<NodeSelectorTerm>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Required pod anti-affinity with topology key `kubernetes.io/hostname`: no pod of its
    /// namespace matching any of these may share its node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anti_affinity: Vec<LabelSelector>,
    /// The kind of its controller (`ReplicaSet`, `DaemonSet`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_kind: Option<String>,
    /// The node it is bound to (placed pods), or that it names (`spec.nodeName` of a pending pod:
    /// no new node can run it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Its PodDisruptionBudget allows no disruption now: evicting it would fail.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pdb_blocked: bool,
}

impl PodSpec {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            ..PodSpec::default()
        }
    }

    /// What it takes from a node: its requests and one pod slot.
    pub fn requests(&self) -> Resources {
        Resources::new(self.cpu_millis, self.memory_bytes, 1)
    }

    /// Whether a DaemonSet runs it.
    pub fn is_daemon_set(&self) -> bool {
        self.owner_kind.as_deref() == Some(DAEMON_SET)
    }

    pub fn pod_ref(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// A pod by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A node as the scheduling simulation sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    /// Its `k3s-autoscaler/pool` label; `None` for nodes the autoscaler does not manage (servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub allocatable: Resources,
    /// Its labels; `kubernetes.io/hostname` may be left out, [`NodeSpec::label`] answers it from
    /// the name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub cordoned: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ready: bool,
}

impl NodeSpec {
    /// The value of label `key`; `kubernetes.io/hostname` is the node's name unless a label says
    /// otherwise.
    pub fn label(&self, key: &str) -> Option<&str> {
        match self.labels.get(key) {
            Some(v) => Some(v),
            None if key == HOSTNAME_LABEL => Some(&self.name),
            None => None,
        }
    }

    /// Whether the scheduler may place new pods on it.
    pub fn schedulable(&self) -> bool {
        self.ready && !self.cordoned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_and_print_in_k3s_form() {
        let t: Taint = "dedicated=highmem:NoSchedule".parse().unwrap();
        assert_eq!(
            t,
            Taint::new("dedicated", "highmem", TaintEffect::NoSchedule)
        );
        assert_eq!(t.to_string(), "dedicated=highmem:NoSchedule");
        let t: Taint = "gpu:NoExecute".parse().unwrap();
        assert_eq!(t, Taint::new("gpu", "", TaintEffect::NoExecute));
        assert_eq!(t.to_string(), "gpu:NoExecute");
        let t: Taint = "example.com/k=a:b:PreferNoSchedule".parse().unwrap();
        assert_eq!(t.value, "a:b");
    }

    #[test]
    fn bad_taints_are_errors() {
        assert_eq!(
            "dedicated=highmem".parse::<Taint>(),
            Err(TaintParseError::MissingEffect("dedicated=highmem".into()))
        );
        assert!(matches!(
            "a=b:Sometimes".parse::<Taint>(),
            Err(TaintParseError::UnknownEffect { .. })
        ));
        assert_eq!(
            "=b:NoSchedule".parse::<Taint>(),
            Err(TaintParseError::EmptyKey("=b:NoSchedule".into()))
        );
        assert!(serde_json::from_str::<Taint>("\"x:Never\"").is_err());
    }

    #[test]
    fn taints_ride_as_strings() {
        let t = Taint::new("k", "v", TaintEffect::NoSchedule);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"k=v:NoSchedule\"");
        assert_eq!(serde_json::from_str::<Taint>(&json).unwrap(), t);
    }

    #[test]
    fn tolerations_follow_kubernetes() {
        let t = Taint::new("dedicated", "highmem", TaintEffect::NoSchedule);
        assert!(Toleration::everything().tolerates(&t));
        assert!(Toleration::exists("dedicated").tolerates(&t));
        assert!(!Toleration::exists("other").tolerates(&t));
        assert!(Toleration::equal("dedicated", "highmem").tolerates(&t));
        assert!(!Toleration::equal("dedicated", "gpu").tolerates(&t));
        assert!(Toleration::equal("dedicated", "highmem")
            .with_effect(TaintEffect::NoSchedule)
            .tolerates(&t));
        assert!(!Toleration::equal("dedicated", "highmem")
            .with_effect(TaintEffect::NoExecute)
            .tolerates(&t));
        assert!(!Toleration::everything()
            .with_effect(TaintEffect::NoExecute)
            .tolerates(&t));
    }

    #[test]
    fn node_selector_operators_follow_kubernetes() {
        use NodeSelectorOperator::*;
        let r = |op, vals: &[&str]| NodeSelectorRequirement::new("k", op, vals);
        assert!(r(In, &["a", "b"]).matches(Some("b")));
        assert!(!r(In, &["a"]).matches(Some("b")));
        assert!(!r(In, &["a"]).matches(None));
        assert!(r(NotIn, &["a"]).matches(Some("b")));
        assert!(r(NotIn, &["a"]).matches(None));
        assert!(!r(NotIn, &["a"]).matches(Some("a")));
        assert!(r(Exists, &[]).matches(Some("")));
        assert!(!r(Exists, &[]).matches(None));
        assert!(r(DoesNotExist, &[]).matches(None));
        assert!(!r(DoesNotExist, &[]).matches(Some("x")));
        assert!(r(Gt, &["3"]).matches(Some("4")));
        assert!(!r(Gt, &["3"]).matches(Some("3")));
        assert!(r(Lt, &["3"]).matches(Some("-1")));
        assert!(!r(Gt, &["3"]).matches(None));
        assert!(!r(Gt, &["3"]).matches(Some("four")));
        assert!(!r(Gt, &["3", "4"]).matches(Some("9")));
        assert!(!r(Lt, &["x"]).matches(Some("1")));
    }

    #[test]
    fn an_empty_term_matches_no_node() {
        assert!(!NodeSelectorTerm::default().matches(|_| Some("x")));
    }

    #[test]
    fn label_selectors_follow_kubernetes() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        assert!(LabelSelector::default().matches(&labels));
        assert!(LabelSelector::labels(&[("app", "web")]).matches(&labels));
        assert!(!LabelSelector::labels(&[("app", "db")]).matches(&labels));
        let expr = |op, values: &[&str]| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        };
        assert!(expr(LabelSelectorOperator::In, &["web", "db"]).matches(&labels));
        assert!(!expr(LabelSelectorOperator::NotIn, &["web"]).matches(&labels));
        assert!(expr(LabelSelectorOperator::Exists, &[]).matches(&labels));
        assert!(expr(LabelSelectorOperator::DoesNotExist, &[]).matches(&BTreeMap::new()));
    }

    #[test]
    fn resources_saturate_and_count_copies() {
        let a = Resources::new(1000, 1 << 30, 10);
        let b = Resources::new(300, 1 << 28, 1);
        assert_eq!(b.copies_in(&a), 3);
        assert_eq!(a.saturating_sub(a.saturating_add(b)), Resources::ZERO);
        assert!(b.fits_in(&a));
        assert!(!a.fits_in(&b));
        assert_eq!(Resources::new(0, 0, 1).copies_in(&a), 10);
    }

    #[test]
    fn empty_fields_stay_off_the_wire() {
        let mut p = PodSpec::new("default", "web-1");
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"namespace":"default","name":"web-1"}"#
        );
        p.cpu_millis = 250;
        p.tolerations.push(Toleration::exists("dedicated"));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"namespace":"default","name":"web-1","cpu_millis":250,"tolerations":[{"key":"dedicated","operator":"Exists"}]}"#
        );
        assert_eq!(serde_json::from_str::<PodSpec>(&json).unwrap(), p);
        let n = NodeSpec {
            name: "w1".into(),
            pool: Some("general".into()),
            allocatable: Resources::new(2000, 4 << 30, 110),
            labels: BTreeMap::new(),
            taints: vec![Taint::new("a", "", TaintEffect::NoSchedule)],
            cordoned: false,
            ready: true,
        };
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(
            json,
            r#"{"name":"w1","pool":"general","allocatable":{"cpu_millis":2000,"memory_bytes":4294967296,"pods":110},"taints":["a:NoSchedule"],"ready":true}"#
        );
        assert_eq!(serde_json::from_str::<NodeSpec>(&json).unwrap(), n);
    }

    #[test]
    fn hostname_defaults_to_the_node_name() {
        let n = NodeSpec {
            name: "w1".into(),
            ..NodeSpec::default()
        };
        assert_eq!(n.label(HOSTNAME_LABEL), Some("w1"));
        assert_eq!(n.label("other"), None);
    }
}
