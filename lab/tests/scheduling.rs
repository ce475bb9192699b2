//! The lab scheduler through the kube client, against in-process agents: the predicates the
//! autoscaler's scheduling simulation uses — node labels and taints from the agent's flags,
//! `nodeSelector`, required node affinity and hostname anti-affinity — and the `Unschedulable`
//! message a pod waits with.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{agent, agent_with, condition, eventually, fast_options, start, test_agent_options};
use common::{wait_node_ready, TestAgent};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// A bare pod requesting 100m, with `spec` merged into its spec.
fn pod(name: &str, spec: Value) -> Pod {
    let mut p = json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "100m"}}}]}});
    if let (Some(s), Some(extra)) = (p["spec"].as_object_mut(), spec.as_object()) {
        s.extend(extra.clone());
    }
    serde_json::from_value(p).unwrap()
}

fn requires_disktype(values: &[&str]) -> Value {
    json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpressions":
            [{"key": "disktype", "operator": "In", "values": values}]}]}}}})
}

/// An agent whose node carries `labels` and `taints` (`key=value:Effect`), as `--node-label` and
/// `--node-taint` give them.
fn labelled_agent(
    client: &Client,
    name: &str,
    labels: &[(&str, &str)],
    taints: &[&str],
) -> TestAgent {
    let mut opts = test_agent_options(name, "2", "2Gi");
    opts.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>();
    opts.taints = taints
        .iter()
        .map(|t| lab::agent::parse_taint(t).unwrap())
        .collect();
    agent_with(client, opts)
}

async fn bound_node(pods: &Api<Pod>, name: &str) -> String {
    eventually(&format!("{name} bound"), WAIT, || {
        let pods = pods.clone();
        async move { pods.get(name).await.ok()?.spec?.node_name }
    })
    .await
}

/// Waits for the pod's `PodScheduled=False` condition with reason `Unschedulable` and this message.
async fn wait_unschedulable(pods: &Api<Pod>, name: &str, message: &str) {
    let got =
        eventually(&format!("{name} unschedulable"), WAIT, || {
            let pods = pods.clone();
            async move {
                condition(&pods.get(name).await.ok()?, "PodScheduled").filter(|c| c.0 == "False")
            }
        })
        .await;
    assert_eq!(got.1.as_deref(), Some("Unschedulable"));
    assert_eq!(got.2.as_deref(), Some(message));
}

/// After a few scheduler passes the pod is still Pending and unbound.
async fn assert_still_pending(pods: &Api<Pod>, name: &str) {
    tokio::time::sleep(Duration::from_millis(600)).await;
    let p = pods.get(name).await.unwrap();
    assert!(p.spec.unwrap().node_name.is_none(), "{name} stays unbound");
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
}

#[tokio::test]
async fn an_agent_registers_the_labels_and_taints_of_its_flags_and_its_hostname() {
    let (server, client) = start(fast_options("node-flags")).await;
    let w1 = labelled_agent(
        &client,
        "w1",
        &[("k3s-autoscaler/pool", "highmem")],
        &["dedicated=highmem:NoSchedule"],
    );
    wait_node_ready(&client, "w1").await;
    let node = Api::<Node>::all(client.clone()).get("w1").await.unwrap();
    let labels = node.metadata.labels.unwrap();
    assert_eq!(labels["k3s-autoscaler/pool"], "highmem");
    assert_eq!(labels["kubernetes.io/hostname"], "w1");
    let taints = node.spec.unwrap().taints.unwrap();
    assert_eq!(taints.len(), 1);
    assert_eq!(
        (
            taints[0].key.as_str(),
            taints[0].value.as_deref(),
            taints[0].effect.as_str()
        ),
        ("dedicated", Some("highmem"), "NoSchedule")
    );

    // A node created through the API (no kubelet) gets its hostname label too.
    let bare: Node = serde_json::from_value(json!({"metadata": {"name": "bare"}})).unwrap();
    let created = Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &bare)
        .await
        .unwrap();
    assert_eq!(
        created.metadata.labels.unwrap()["kubernetes.io/hostname"],
        "bare"
    );
    w1.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_pod_with_required_node_affinity_lands_only_on_matching_nodes_and_waits_with_the_reason_otherwise(
) {
    let (server, client) = start(fast_options("node-affinity")).await;
    let ssd = labelled_agent(&client, "ssd", &[("disktype", "ssd")], &[]);
    let plain = agent(&client, "plain", "2", "2Gi");
    wait_node_ready(&client, "ssd").await;
    wait_node_ready(&client, "plain").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b", "c"] {
        pods.create(
            &PostParams::default(),
            &pod(name, requires_disktype(&["ssd", "nvme"])),
        )
        .await
        .unwrap();
    }
    for name in ["a", "b", "c"] {
        assert_eq!(bound_node(&pods, name).await, "ssd", "{name}");
    }

    pods.create(
        &PostParams::default(),
        &pod("nvme", requires_disktype(&["nvme"])),
    )
    .await
    .unwrap();
    wait_unschedulable(
        &pods,
        "nvme",
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
    )
    .await;
    assert_still_pending(&pods, "nvme").await;

    // Level-triggered, like kube-scheduler's requeue on a node update: a matching label places it.
    Api::<Node>::all(client.clone())
        .patch(
            "plain",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"disktype": "nvme"}}})),
        )
        .await
        .unwrap();
    assert_eq!(bound_node(&pods, "nvme").await, "plain");
    ssd.stop().await;
    plain.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn replicas_with_hostname_anti_affinity_spread_over_two_nodes_and_a_third_stays_pending() {
    let (server, client) = start(fast_options("anti-affinity")).await;
    let w1 = agent(&client, "w1", "2", "2Gi");
    let w2 = agent(&client, "w2", "2", "2Gi");
    wait_node_ready(&client, "w1").await;
    wait_node_ready(&client, "w2").await;
    let deployment: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app": "web"}}}]}},
                    "containers": [{"name": "c", "image": "x",
                        "resources": {"requests": {"cpu": "100m"}}}]}}}}))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (placed, pending) = eventually("two replicas bound, one unschedulable", WAIT, || {
        let pods = pods.clone();
        async move {
            let all = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?
                .items;
            let mut placed: Vec<String> = all
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect();
            let pending: Vec<Pod> = all
                .into_iter()
                .filter(|p| {
                    condition(p, "PodScheduled")
                        .is_some_and(|c| c.0 == "False" && c.1.as_deref() == Some("Unschedulable"))
                })
                .collect();
            placed.sort();
            (placed.len() == 2 && pending.len() == 1).then_some((placed, pending))
        }
    })
    .await;
    assert_eq!(placed, ["w1", "w2"], "one replica per node");
    let third = pending[0].metadata.name.clone().unwrap();
    wait_unschedulable(
        &pods,
        &third,
        "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules.",
    )
    .await;
    assert_still_pending(&pods, &third).await;

    // A third node takes it.
    let w3 = agent(&client, "w3", "2", "2Gi");
    assert_eq!(bound_node(&pods, &third).await, "w3");
    for a in [w1, w2, w3] {
        a.stop().await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_pod_selecting_a_label_no_node_has_stays_pending() {
    let (server, client) = start(fast_options("no-such-label")).await;
    let general = labelled_agent(
        &client,
        "general",
        &[("k3s-autoscaler/pool", "general")],
        &[],
    );
    let highmem = labelled_agent(
        &client,
        "highmem",
        &[("k3s-autoscaler/pool", "highmem")],
        &["dedicated=highmem:NoSchedule"],
    );
    wait_node_ready(&client, "general").await;
    wait_node_ready(&client, "highmem").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &pod("ssd", json!({"nodeSelector": {"disktype": "ssd"}})),
    )
    .await
    .unwrap();
    wait_unschedulable(
        &pods,
        "ssd",
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: highmem}.",
    )
    .await;
    assert_still_pending(&pods, "ssd").await;

    // The taint keeps plain pods off highmem; a tolerating pod selecting the pool lands there.
    pods.create(&PostParams::default(), &pod("plain", json!({})))
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("big", json!({"nodeSelector": {"k3s-autoscaler/pool": "highmem"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "highmem", "effect": "NoSchedule"}]})),
    )
    .await
    .unwrap();
    assert_eq!(bound_node(&pods, "plain").await, "general");
    assert_eq!(bound_node(&pods, "big").await, "highmem");
    general.stop().await;
    highmem.stop().await;
    server.shutdown().await;
}
