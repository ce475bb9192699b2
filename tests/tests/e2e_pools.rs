//! Two node pools end to end: `general`, and `highmem` with a label and a `NoSchedule` taint. Pods
//! that select and tolerate `highmem` get a `highmem` worker, plain pods `general` workers, a pod no
//! pool can run gets no worker and one `ScaleUpBlocked`, the scale-down after the load keeps a worker
//! whose pod fits nowhere else (the scheduling simulation over the placement on the stream) and each
//! pool's `min_nodes`. A pool's `max_pods` is its Nodes' pod capacity. Real Redis, real Docker, the
//! lab cluster, `autoscaler run` as a real process.

use std::time::Duration;

use bus::{Envelope, Event};
use tests::{find, trail, Lab, LabOptions, LabPool};

/// How long the cluster may take to settle after a change.
const SETTLE: Duration = Duration::from_secs(120);

/// A Deployment of `replicas` 700m pods; `highmem` ones select the pool and tolerate its taint.
fn deployment(name: &str, replicas: u32, highmem: bool) -> String {
    let placement = if highmem {
        r#"      nodeSelector: {k3s-autoscaler/pool: highmem}
      tolerations:
      - {key: dedicated, operator: Equal, value: highmem, effect: NoSchedule}
"#
    } else {
        ""
    };
    tests::deployment_with(name, replicas, placement)
}

/// A pod that selects a label no pool's nodes have.
const NO_POOL_FITS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: ssd
spec:
  nodeSelector: {disktype: ssd}
  containers:
  - name: app
    image: registry.invalid/app
    resources:
      requests: {cpu: "100m", memory: "16Mi"}
"#;

/// A pod `name` that only `node` can run (its hostname as `nodeSelector`).
fn pinned(name: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: pinned}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  containers:
  - name: app
    image: registry.invalid/app
    resources:
      requests: {{cpu: "100m", memory: "16Mi"}}
"#
    )
}

/// The nodes of the `count` Running pods of `app`, once there are that many.
async fn wait_running(lab: &Lab, app: &str, count: usize) -> Vec<String> {
    let pods = lab.wait_running(app, count, SETTLE).await;
    pods.into_iter().map(|(_, node)| node).collect()
}

fn node_json(lab: &Lab, node: &str) -> serde_json::Value {
    serde_json::from_str(&lab.kubectl(&["get", "node", node, "-o", "json"])).expect("node JSON")
}

/// The `(key, value, effect)` of a Node's taints.
fn taints(node: &serde_json::Value) -> Vec<(String, String, String)> {
    let field = |t: &serde_json::Value, k: &str| t[k].as_str().unwrap_or_default().to_string();
    node["spec"]["taints"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| (field(t, "key"), field(t, "value"), field(t, "effect")))
                .collect()
        })
        .unwrap_or_default()
}

/// The `ScaleUpBlocked` events naming pod `default/<pod>`.
fn blocked_for<'a>(events: &'a [Envelope], pod: &str) -> Vec<&'a bus::event::ScaleUpBlocked> {
    let pod = format!("default/{pod}");
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpBlocked(b) if b.pods.contains(&pod) => Some(b),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_two_pools_scale_up_by_selector_and_taint_and_keep_their_minimums() {
    let lab = Lab::start(LabOptions {
        min_nodes: 1,
        max_nodes: 5,
        pools: vec![
            LabPool {
                name: "general".into(),
                min_nodes: 1,
                max_nodes: 3,
                cpu: 1.0,
                memory: "1Gi".into(),
                ..LabPool::default()
            },
            LabPool {
                name: "highmem".into(),
                min_nodes: 1,
                max_nodes: 2,
                cpu: 2.0,
                memory: "2Gi".into(),
                labels: vec![("tier".into(), "highmem".into())],
                taints: vec!["dedicated=highmem:NoSchedule".into()],
                ..LabPool::default()
            },
        ],
        ..LabOptions::default()
    })
    .await;
    let (general, highmem) = (
        format!("{}general-", lab.prefix),
        format!("{}highmem-", lab.prefix),
    );
    // Each pool's minimum, though the cluster's is 1.
    lab.settled(0, 2..=2, SETTLE).await;
    let mut running = lab.running_workers();
    running.sort();
    assert_eq!(running, vec![format!("{general}1"), format!("{highmem}1")]);

    // The highmem worker carries its pool, label and taint as a Node; the general one only its pool.
    let node = node_json(&lab, &format!("{highmem}1"));
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["k3s-autoscaler/pool"], "highmem", "{node}");
    assert_eq!(labels["tier"], "highmem", "{node}");
    assert_eq!(
        taints(&node),
        vec![("dedicated".into(), "highmem".into(), "NoSchedule".into())]
    );
    assert_eq!(node["status"]["allocatable"]["cpu"], "2", "{node}");
    let node = node_json(&lab, &format!("{general}1"));
    assert_eq!(node["metadata"]["labels"]["k3s-autoscaler/pool"], "general");
    assert!(taints(&node).is_empty(), "{node}");

    // 3 tolerating highmem pods of 700m: two fit on highmem-1 (2 CPUs), one more highmem worker.
    // 2 plain pods: one fits on general-1 (1 CPU), one more general worker. The ssd pod: none.
    let before = lab.events().await.len();
    lab.kubectl_apply(&deployment("big", 3, true));
    lab.kubectl_apply(&deployment("web", 2, false));
    lab.kubectl_apply(NO_POOL_FITS);
    let big = wait_running(&lab, "big", 3).await;
    let web = wait_running(&lab, "web", 2).await;
    assert!(big.iter().all(|n| n.starts_with(&highmem)), "{big:?}");
    assert!(
        big.contains(&format!("{highmem}2")),
        "a new highmem worker runs a pod: {big:?}"
    );
    assert!(web.iter().all(|n| n.starts_with(&general)), "{web:?}");
    assert!(
        web.contains(&format!("{general}2")),
        "a new general worker runs a pod: {web:?}"
    );
    let node = node_json(&lab, &format!("{highmem}2"));
    assert_eq!(node["metadata"]["labels"]["k3s-autoscaler/pool"], "highmem");
    assert_eq!(
        taints(&node),
        vec![("dedicated".into(), "highmem".into(), "NoSchedule".into())]
    );

    // The ssd pod: one ScaleUpBlocked naming it, and no worker for it.
    lab.settled(before, 4..=4, SETTLE).await;
    let events = lab
        .wait_for_events("ScaleUpBlocked for the ssd pod", SETTLE, |ev| {
            !blocked_for(&ev[before..], "ssd").is_empty()
        })
        .await;
    let blocked = blocked_for(&events, "ssd");
    assert_eq!(
        blocked.len(),
        1,
        "{blocked:?}\n{}",
        trail(&events[before..])
    );
    assert_eq!(blocked[0].reason, "no_pool_fits");
    assert_eq!(
        blocked[0].predicates["general"], "node_selector",
        "{blocked:?}"
    );
    assert!(blocked[0].predicates.contains_key("highmem"), "{blocked:?}");
    assert_eq!(lab.running_workers().len(), 4);
    let pods = lab.kubectl(&["get", "pod", "ssd", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(pods, "Pending");
    let decided: Vec<(Option<String>, u32)> = events[before..]
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpDecision(d) => Some((d.pool.clone(), d.target_workers)),
            _ => None,
        })
        .collect();
    assert!(
        decided.iter().all(|(_, target)| *target <= 4),
        "no worker beyond the two: {decided:?}\n{}",
        trail(&events[before..])
    );

    // The load goes, but for a pod pinned to each general worker by its hostname: neither can go,
    // since its pod fits on no other node, and the engine says so; a highmem worker goes.
    let generals = [format!("{general}1"), format!("{general}2")];
    for (i, node) in generals.iter().enumerate() {
        lab.kubectl_apply(&pinned(&format!("pinned-{i}"), node));
    }
    wait_running(&lab, "pinned", 2).await;
    let before = events.len();
    lab.kubectl(&["delete", "deployment", "big", "web", "--wait=false"]);
    lab.kubectl(&["delete", "pod", "ssd", "--wait=false"]);
    let kept = |e: &Envelope| {
        matches!(&e.event, Event::ScaleDownBlocked(b)
            if b.reason == "no_place_for_pods"
                && b.node_name.as_ref().is_some_and(|n| generals.contains(n)))
    };
    let events = lab
        .wait_for_events(
            "the general workers kept for their pinned pods",
            SETTLE,
            |ev| {
                find(ev, before, "ScaleDownBlocked", kept).is_some()
                && find(ev, before, "NodeRemoved", |e| {
                    matches!(&e.event, Event::NodeRemoved(r) if r.node_name.starts_with(&highmem))
                })
                .is_some()
            },
        )
        .await;
    assert!(
        find(&events, before, "NodeRemoved", |e| {
            matches!(&e.event, Event::NodeRemoved(r) if r.node_name.starts_with(&general))
        })
        .is_none(),
        "{}",
        trail(&events[before..])
    );
    let mut pinned_on = lab
        .running_pods("pinned")
        .into_iter()
        .map(|(_, node)| node)
        .collect::<Vec<_>>();
    pinned_on.sort();
    assert_eq!(pinned_on, generals);

    // The pinned pod goes too: each pool keeps its minimum, though the cluster's would allow one.
    lab.kubectl(&["delete", "pod", "pinned-0", "pinned-1", "--wait=false"]);
    let events = lab.settled(before, 2..=2, SETTLE).await;
    let mut running = lab.running_workers();
    running.sort();
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(running[0].starts_with(&general), "{running:?}");
    assert!(running[1].starts_with(&highmem), "{running:?}");
    let removed: Vec<&str> = events[before..]
        .iter()
        .filter_map(|e| match &e.event {
            Event::NodeRemoved(r) => Some(r.node_name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        removed.len(),
        2,
        "{removed:?}\n{}",
        trail(&events[before..])
    );
    // And the next scale-down is refused at a pool's minimum, not done. The block is said once per
    // reason, node and pool, so it may already be on the stream from the pinned phase.
    let settled_at = events.len();
    lab.wait_for_events(
        "a scale-down blocked at the pools' minimums",
        SETTLE,
        |ev| {
            find(ev, before, "ScaleDownBlocked", |e| {
                matches!(&e.event, Event::ScaleDownBlocked(b) if b.reason == "min_nodes_reached")
            })
            .is_some()
        },
    )
    .await;
    // Longer than underutilized_for (6 s) plus the cooldown (3 s): time for a removal, if any came.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let events = lab.events().await;
    assert!(
        find(&events, settled_at, "NodeRemoved", |_| true).is_none(),
        "{}",
        trail(&events[settled_at..])
    );
    // Over the whole run, the ssd pod was reported blocked once, for all its pending reports.
    assert_eq!(blocked_for(&events, "ssd").len(), 1, "{}", trail(&events));
    let failed = find(&events, 0, "ScalingActionFailed", |_| true);
    assert!(failed.is_none(), "{failed:?}\n{}", trail(&events));
    lab.assert_replay_identity().await;
}

/// A pool's `max_pods` reaches its workers (`--kubelet-arg max-pods=N`): 2 pods that fit on one
/// worker by CPU and memory take two workers of 1 pod slot, and the Nodes say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_pools_max_pods_is_the_pod_capacity_of_its_nodes() {
    let lab = Lab::start(LabOptions {
        min_nodes: 1,
        max_nodes: 3,
        pools: vec![LabPool {
            name: "dense".into(),
            min_nodes: 1,
            max_nodes: 3,
            // The engine refuses more CPUs than the machine has (2 here).
            cpu: 2.0,
            memory: "2Gi".into(),
            max_pods: Some(1),
            ..LabPool::default()
        }],
        ..LabOptions::default()
    })
    .await;
    lab.settled(0, 1..=1, SETTLE).await;
    // 2 × 700m of 2 CPUs: one worker by resources, two by pod slots.
    lab.kubectl_apply(&tests::deployment("small", 2));
    let pods = lab.wait_running("small", 2, SETTLE).await;
    let mut per_node: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, node) in &pods {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [1, 1],
        "{per_node:?}"
    );
    for node in per_node.keys() {
        let n = node_json(&lab, node);
        assert_eq!(n["status"]["allocatable"]["pods"], "1", "{n}");
    }
    let events = lab.events().await;
    let ups: Vec<_> = events
        .iter()
        .filter(|e| matches!(&e.event, Event::ScaleUpDecision(d) if d.reason == "pending_pods"))
        .collect();
    assert_eq!(
        ups.len(),
        1,
        "one scale-up, for one worker: {}",
        trail(&events)
    );
    lab.assert_replay_identity().await;
}
