//! The kinds the lab serves: their API group, version, plural and scope, in one table that discovery,
//! routing and the store all read.

/// A kind the lab stores and serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Namespace (cluster-scoped).
    Namespace,
    /// `v1` Node (cluster-scoped, with `status`).
    Node,
    /// `v1` Pod (with `status` and `eviction`).
    Pod,
    /// `v1` Secret.
    Secret,
    /// `v1` ConfigMap: kubectl and clients often look for one; cheap to keep.
    ConfigMap,
    /// `v1` Event: `kubectl describe` lists them.
    Event,
    /// `apps/v1` Deployment (with `status` and `scale`).
    Deployment,
    /// `apps/v1` ReplicaSet (with `status`).
    ReplicaSet,
    /// `apps/v1` DaemonSet: served (empty unless created) because `kubectl drain` asks about them.
    DaemonSet,
    /// `policy/v1` PodDisruptionBudget (with `status`).
    PodDisruptionBudget,
    /// `coordination.k8s.io/v1` Lease.
    Lease,
}

/// What discovery and routing need to know about a [`Kind`].
#[derive(Debug, Clone, Copy)]
pub struct ResourceInfo {
    /// The kind.
    pub kind: Kind,
    /// `kind` as written in objects.
    pub kind_name: &'static str,
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// URL plural.
    pub plural: &'static str,
    /// Singular name (discovery).
    pub singular: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Whether `status` is a subresource (so the main endpoint ignores status changes).
    pub has_status: bool,
    /// Whether `kubectl get all` includes it.
    pub in_all: bool,
}

impl ResourceInfo {
    /// `apiVersion` as written in objects (`v1`, `apps/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Every kind served, in discovery order.
pub const RESOURCES: &[ResourceInfo] = &[
    info(
        Kind::Namespace,
        "Namespace",
        "",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        true,
        false,
    ),
    info(
        Kind::Node,
        "Node",
        "",
        "nodes",
        "node",
        false,
        &["no"],
        true,
        false,
    ),
    info(
        Kind::Pod,
        "Pod",
        "",
        "pods",
        "pod",
        true,
        &["po"],
        true,
        true,
    ),
    info(
        Kind::Secret,
        "Secret",
        "",
        "secrets",
        "secret",
        true,
        &[],
        false,
        false,
    ),
    info(
        Kind::ConfigMap,
        "ConfigMap",
        "",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        false,
        false,
    ),
    info(
        Kind::Event,
        "Event",
        "",
        "events",
        "event",
        true,
        &["ev"],
        false,
        false,
    ),
    info(
        Kind::Deployment,
        "Deployment",
        "apps",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        true,
        true,
    ),
    info(
        Kind::ReplicaSet,
        "ReplicaSet",
        "apps",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        true,
        true,
    ),
    info(
        Kind::DaemonSet,
        "DaemonSet",
        "apps",
        "daemonsets",
        "daemonset",
        true,
        &["ds"],
        true,
        true,
    ),
    info(
        Kind::PodDisruptionBudget,
        "PodDisruptionBudget",
        "policy",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        true,
        &["pdb"],
        true,
        false,
    ),
    info(
        Kind::Lease,
        "Lease",
        "coordination.k8s.io",
        "leases",
        "lease",
        true,
        &[],
        false,
        false,
    ),
];

#[allow(clippy::too_many_arguments)]
const fn info(
    kind: Kind,
    kind_name: &'static str,
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    has_status: bool,
    in_all: bool,
) -> ResourceInfo {
    ResourceInfo {
        kind,
        kind_name,
        group,
        version: "v1",
        plural,
        singular,
        namespaced,
        short_names,
        has_status,
        in_all,
    }
}

impl Kind {
    /// The table row for this kind.
    pub fn info(self) -> &'static ResourceInfo {
        RESOURCES
            .iter()
            .find(|r| r.kind == self)
            .expect("every Kind has a row in RESOURCES")
    }

    /// The kind served at `group`/`version` under `plural`.
    pub fn from_path(group: &str, version: &str, plural: &str) -> Option<Kind> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .map(|r| r.kind)
    }
}

/// The API groups other than core, with their one version each.
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_found_by_its_path() {
        for r in RESOURCES {
            assert_eq!(Kind::from_path(r.group, r.version, r.plural), Some(r.kind));
            assert_eq!(r.kind.info().plural, r.plural);
        }
        assert_eq!(groups(), vec!["apps", "policy", "coordination.k8s.io"]);
    }
}
