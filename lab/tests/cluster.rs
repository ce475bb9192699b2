//! The lab's controllers and node agent, through the kube client: registration and heartbeats, node
//! lifecycle, scheduling, Deployments, evictions under PodDisruptionBudgets, and garbage collection.

mod common;

use std::time::Duration;

use common::{agent, condition, eventually, fast_options, node_ready, start, wait_node_ready};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn pod(name: &str, cpu: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu, "memory": "16Mi"}}}]}}))
    .unwrap()
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "100m"}}}]}}}}))
    .unwrap()
}

async fn running_pods(pods: &Api<Pod>, selector: &str) -> Vec<Pod> {
    pods.list(
        &ListParams::default()
            .labels(selector)
            .fields("status.phase=Running"),
    )
    .await
    .unwrap()
    .items
    .into_iter()
    .filter(|p| condition(p, "Ready").is_some_and(|c| c.0 == "True"))
    .collect()
}

#[tokio::test]
async fn an_agent_registers_a_ready_node_that_runs_pods_and_goes_not_ready_when_stopped() {
    let (server, client) = start(fast_options("agent")).await;
    let w1 = agent(&client, "w1", "2", "2Gi");
    wait_node_ready(&client, "w1").await;

    let node = Api::<Node>::all(client.clone()).get("w1").await.unwrap();
    assert_eq!(
        node.metadata.labels.as_ref().unwrap()["kubernetes.io/hostname"],
        "w1"
    );
    let capacity = node.status.as_ref().unwrap().capacity.as_ref().unwrap();
    assert_eq!(capacity["cpu"].0, "2");
    assert_eq!(capacity["memory"].0, "2Gi");
    let allocatable = node.status.as_ref().unwrap().allocatable.as_ref().unwrap();
    assert_eq!(
        allocatable["memory"].0, "1994752Ki",
        "2Gi less the 100Mi eviction reserve"
    );
    Api::<Secret>::namespaced(client.clone(), "kube-system")
        .get("w1.node-password.k3s")
        .await
        .unwrap();
    let lease = Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .get("w1")
        .await
        .unwrap();
    assert!(lease.spec.unwrap().renew_time.is_some());

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("p", "500m"))
        .await
        .unwrap();
    let running = eventually("the pod Running on w1", WAIT, || {
        let pods = pods.clone();
        async move {
            let p = pods.get("p").await.ok()?;
            (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
        }
    })
    .await;
    assert_eq!(
        running.spec.as_ref().unwrap().node_name.as_deref(),
        Some("w1")
    );
    assert_eq!(condition(&running, "Ready").unwrap().0, "True");

    // Stopping the agent is a `docker kill` of the worker: heartbeats stop, the 2 s grace passes.
    w1.stop().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = eventually("w1 NotReady (Ready=Unknown)", WAIT, || {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get("w1").await.ok()?;
            (node_ready(&n)? == "Unknown").then_some(n)
        }
    })
    .await;
    let taints = node.spec.unwrap().taints.unwrap();
    assert!(taints
        .iter()
        .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"));
    // Then, after the 2 s eviction timeout, its pod is evicted.
    eventually("the pod evicted from the unreachable node", WAIT, || {
        let pods = pods.clone();
        async move { pods.get_opt("p").await.ok()?.is_none().then_some(()) }
    })
    .await;

    // A restarted agent brings the node back and the taints go.
    let w1 = agent(&client, "w1", "2", "2Gi");
    wait_node_ready(&client, "w1").await;
    eventually("the unreachable taints removed", WAIT, || {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get("w1").await.ok()?;
            n.spec?.taints.unwrap_or_default().is_empty().then_some(())
        }
    })
    .await;
    w1.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_pod_requesting_more_than_any_node_has_stays_pending_with_reason_unschedulable() {
    let (server, client) = start(fast_options("unschedulable")).await;
    let w1 = agent(&client, "w1", "1", "1Gi");
    wait_node_ready(&client, "w1").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("big", "4"))
        .await
        .unwrap();
    let (_, reason, message) =
        eventually("PodScheduled=False", WAIT, || {
            let pods = pods.clone();
            async move {
                condition(&pods.get("big").await.ok()?, "PodScheduled").filter(|c| c.0 == "False")
            }
        })
        .await;
    assert_eq!(reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        message.as_deref(),
        Some("0/1 nodes are available: 1 Insufficient cpu.")
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let big = pods.get("big").await.unwrap();
    assert_eq!(big.status.unwrap().phase.as_deref(), Some("Pending"));
    assert!(big.spec.unwrap().node_name.is_none());

    // As kube-scheduler does, it says so in an Event (what `kubectl describe pod` shows).
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let failed = events
        .list(&ListParams::default().fields("involvedObject.name=big,reason=FailedScheduling"))
        .await
        .unwrap();
    assert_eq!(
        failed.items.len(),
        1,
        "one event per change of reason, not one per pass"
    );
    assert_eq!(failed.items[0].type_.as_deref(), Some("Warning"));

    // The listing the autoscaler's PendingPodsWatcher makes.
    let pending = pods
        .list(&ListParams::default().fields("status.phase=Pending,spec.nodeName="))
        .await
        .unwrap();
    assert_eq!(pending.items.len(), 1);

    // Taints keep pods off unless tolerated.
    let nodes: Api<Node> = Api::all(client.clone());
    let taint =
        json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}});
    nodes
        .patch("w1", &PatchParams::default(), &Patch::Strategic(taint))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("plain", "100m"))
        .await
        .unwrap();
    let mut tolerant = pod("tolerant", "100m");
    tolerant.spec.as_mut().unwrap().tolerations = Some(vec![serde_json::from_value(
        json!({"key": "dedicated", "operator": "Exists"}),
    )
    .unwrap()]);
    pods.create(&PostParams::default(), &tolerant)
        .await
        .unwrap();
    eventually("the tolerant pod bound", WAIT, || {
        let pods = pods.clone();
        async move { pods.get("tolerant").await.ok()?.spec?.node_name.map(|_| ()) }
    })
    .await;
    let (_, _, message) = eventually("the plain pod unschedulable", WAIT, || {
        let pods = pods.clone();
        async move {
            condition(&pods.get("plain").await.ok()?, "PodScheduled").filter(|c| c.0 == "False")
        }
    })
    .await;
    assert!(message
        .unwrap()
        .contains("untolerated taint {dedicated: gpu}"));
    w1.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_pdb_blocks_an_eviction_until_another_replica_is_ready() {
    let (server, client) = start(fast_options("pdb")).await;
    let w1 = agent(&client, "w1", "2", "2Gi");
    wait_node_ready(&client, "w1").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&PostParams::default(), &deployment("web", 1))
        .await
        .unwrap();
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}))
    .unwrap();
    Api::<PodDisruptionBudget>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pdb)
        .await
        .unwrap();
    let first = eventually("one replica Ready", WAIT, || {
        let pods = pods.clone();
        async move { running_pods(&pods, "app=web").await.pop() }
    })
    .await;
    let name = first.metadata.name.clone().unwrap();
    match pods.evict(&name, &EvictParams::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 429);
            assert!(s.message.contains("disruption budget"), "{}", s.message);
        }
        other => panic!("expected 429, got {other:?}"),
    }

    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    eventually("two replicas Ready", WAIT, || {
        let pods = pods.clone();
        async move { (running_pods(&pods, "app=web").await.len() == 2).then_some(()) }
    })
    .await;
    pods.evict(&name, &EvictParams::default()).await.unwrap();
    assert!(
        pods.get_opt(&name).await.unwrap().is_none(),
        "the evicted pod is gone"
    );
    w1.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn deployment_replicas_come_back_after_an_eviction_and_follow_scaling() {
    let (server, client) = start(fast_options("deployment")).await;
    let w1 = agent(&client, "w1", "2", "2Gi");
    wait_node_ready(&client, "w1").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&PostParams::default(), &deployment("api", 2))
        .await
        .unwrap();
    let running = eventually("two replicas Ready", WAIT, || {
        let pods = pods.clone();
        async move { Some(running_pods(&pods, "app=api").await).filter(|p| p.len() == 2) }
    })
    .await;

    // Pod → ReplicaSet → Deployment.
    let owner = &running[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "ReplicaSet");
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), "default")
        .get(&owner.name)
        .await
        .unwrap();
    assert_eq!(rs.metadata.owner_references.unwrap()[0].kind, "Deployment");
    let status = eventually("deployment status 2 ready", WAIT, || {
        let deployments = deployments.clone();
        async move {
            deployments
                .get("api")
                .await
                .ok()?
                .status
                .filter(|s| s.ready_replicas == Some(2))
        }
    })
    .await;
    assert_eq!(status.available_replicas, Some(2));

    // With the only node cordoned, the evicted replica comes back Pending and unschedulable.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    let evicted = running[0].metadata.name.clone().unwrap();
    pods.evict(&evicted, &EvictParams::default()).await.unwrap();
    let replacement = eventually("a Pending replacement", WAIT, || {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default().labels("app=api"))
                .await
                .ok()?
                .items
                .into_iter()
                .find(|p| {
                    condition(p, "PodScheduled")
                        .is_some_and(|c| c.1.as_deref() == Some("Unschedulable"))
                })
        }
    })
    .await;
    assert_ne!(replacement.metadata.name.as_deref(), Some(evicted.as_str()));
    assert_eq!(
        replacement.status.unwrap().phase.as_deref(),
        Some("Pending")
    );

    nodes
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": false}})),
        )
        .await
        .unwrap();
    eventually("two replicas Ready again", WAIT, || {
        let pods = pods.clone();
        async move { (running_pods(&pods, "app=api").await.len() == 2).then_some(()) }
    })
    .await;

    deployments
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    eventually("scaled down to one pod", WAIT, || {
        let pods = pods.clone();
        async move {
            (pods
                .list(&ListParams::default().labels("app=api"))
                .await
                .ok()?
                .items
                .len()
                == 1)
                .then_some(())
        }
    })
    .await;

    // Deleting the Deployment takes its ReplicaSet and pods with it.
    deployments
        .delete("api", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the pods garbage-collected", WAIT, || {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await;
    w1.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn pods_bound_to_a_deleted_node_are_garbage_collected() {
    let (server, client) = start(fast_options("podgc")).await;
    let w1 = agent(&client, "w1", "2", "2Gi");
    wait_node_ready(&client, "w1").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("p", "100m"))
        .await
        .unwrap();
    eventually("the pod bound", WAIT, || {
        let pods = pods.clone();
        async move { pods.get("p").await.ok()?.spec?.node_name.map(|_| ()) }
    })
    .await;
    w1.stop().await;
    Api::<Node>::all(client.clone())
        .delete("w1", &DeleteParams::default())
        .await
        .unwrap();
    Api::<Secret>::namespaced(client.clone(), "kube-system")
        .delete("w1.node-password.k3s", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the pod deleted", WAIT, || {
        let pods = pods.clone();
        async move { pods.get_opt("p").await.ok()?.is_none().then_some(()) }
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn node_metrics_report_the_usage_running_pods_declare() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let (server, client) = start(fast_options("metrics")).await;
    let w1 = agent(&client, "w1", "2", "2Gi");
    wait_node_ready(&client, "w1").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut busy = pod("busy", "100m");
    busy.metadata.annotations = Some(
        [(
            "lab.k3s-autoscaler/cpu-usage".to_string(),
            "750".to_string(),
        )]
        .into(),
    );
    pods.create(&PostParams::default(), &busy).await.unwrap();
    pods.create(&PostParams::default(), &pod("quiet", "250m"))
        .await
        .unwrap();
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "NodeMetrics"),
        "nodes",
    );
    let metrics: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let usage = eventually("w1's metrics with both pods running", WAIT, || {
        let metrics = metrics.clone();
        async move {
            let m = metrics.get("w1").await.ok()?;
            let usage = m.data["usage"].clone();
            (usage["cpu"] == "1000000000n").then_some(usage)
        }
    })
    .await;
    assert_eq!(usage["memory"], "32768Ki", "16Mi + 16Mi of requests");
    w1.stop().await;
    server.shutdown().await;
}
