//! The lab's API as the real clients see it: the `kube` client (list, watch, patch, errors) and an
//! unmodified `kubectl`.

mod common;

use std::time::Duration;

use common::{agent, eventually, fast_options, start};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

fn node(name: &str, labels: serde_json::Value) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
        "status": {"capacity": {"cpu": "2", "memory": "2Gi"}}}))
    .unwrap()
}

#[tokio::test]
async fn the_kube_client_lists_watches_and_patches_nodes() {
    let (server, client) = start(fast_options("kube")).await;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(&PostParams::default(), &node("a", json!({"pool": "x"})))
        .await
        .unwrap();
    nodes
        .create(&PostParams::default(), &node("b", json!({"pool": "y"})))
        .await
        .unwrap();

    let listed = nodes
        .list(&ListParams::default().labels("pool in (x,z)"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.name.as_deref(), Some("a"));
    let rv = listed.metadata.resource_version.clone().unwrap();
    let none = nodes
        .list(&ListParams::default().labels("pool!=x,pool!=y"))
        .await
        .unwrap();
    assert!(none.items.is_empty());
    let schedulable = nodes
        .list(&ListParams::default().fields("spec.unschedulable=false"))
        .await
        .unwrap();
    assert_eq!(schedulable.items.len(), 2);

    let mut events = nodes
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    // A merge patch (cordon), a strategic merge patch (a label) and a JSON patch (a taint).
    nodes
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    nodes
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"extra": "1"}}})),
        )
        .await
        .unwrap();
    let taint = json!([{"op": "add", "path": "/spec/taints", "value": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}]);
    let patched = nodes
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(taint).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.as_ref().unwrap().unschedulable, Some(true));
    assert_eq!(
        patched.metadata.labels.as_ref().unwrap()["pool"],
        "x",
        "labels merge"
    );
    assert_eq!(patched.metadata.labels.as_ref().unwrap()["extra"], "1");
    assert_eq!(
        patched.spec.as_ref().unwrap().taints.as_ref().unwrap()[0].key,
        "k"
    );

    let mut modified = 0;
    while modified < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Modified(n) => {
                assert_eq!(n.metadata.name.as_deref(), Some("a"));
                modified += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    let cordoned = nodes
        .list(&ListParams::default().fields("spec.unschedulable=true"))
        .await
        .unwrap();
    assert_eq!(cordoned.items.len(), 1);
    nodes.delete("b", &Default::default()).await.unwrap();
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    server.shutdown().await;
}

#[tokio::test]
async fn errors_come_back_as_kubernetes_status_objects() {
    let (server, client) = start(fast_options("errors")).await;
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.get("missing").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => panic!("expected 404, got {other:?}"),
    }
    nodes
        .create(&PostParams::default(), &node("a", json!({})))
        .await
        .unwrap();
    match nodes
        .create(&PostParams::default(), &node("a", json!({})))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected 409, got {other:?}"),
    }
    let mut stale = nodes.get("a").await.unwrap();
    nodes
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .unwrap();
    stale.metadata.labels = Some([("y".to_string(), "2".to_string())].into());
    match nodes.replace("a", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let bad: Pod =
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}))
            .unwrap();
    match pods.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (422, "Invalid")),
        other => panic!("expected 422, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_watch_from_a_version_older_than_the_kept_history_gets_410_gone() {
    let mut opts = fast_options("gone");
    opts.history_limit = 5;
    let (server, client) = start(opts).await;
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..10 {
        nodes
            .create(&PostParams::default(), &node(&format!("n{i}"), json!({})))
            .await
            .unwrap();
    }
    let mut events = nodes
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), events.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(s)) => {
            assert_eq!(s.code, 410);
            assert_eq!(s.reason, "Expired");
        }
        other => panic!("expected a 410 error event, got {other:?}"),
    }
    // A recent version still works.
    let rv = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut events = nodes
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    nodes
        .create(&PostParams::default(), &node("late", json!({})))
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), events.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ev, Some(WatchEvent::Added(n)) if n.metadata.name.as_deref() == Some("late")));
    server.shutdown().await;
}

#[tokio::test]
async fn bookmarks_come_only_when_asked_for() {
    let (server, client) = start(fast_options("bookmarks")).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let rv = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let mut with = nodes
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let ev = tokio::time::timeout(Duration::from_secs(3), with.try_next())
        .await
        .unwrap()
        .unwrap();
    match ev {
        Some(WatchEvent::Bookmark(b)) => assert!(!b.metadata.resource_version.is_empty()),
        other => panic!("expected a bookmark, got {other:?}"),
    }

    let mut without = nodes
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    // Several bookmark intervals (200 ms) pass with nothing sent.
    assert!(
        tokio::time::timeout(Duration::from_millis(1200), without.try_next())
            .await
            .is_err()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn kube_runtime_watchers_list_then_follow_with_both_initial_list_strategies() {
    use kube::runtime::watcher;
    let (server, client) = start(fast_options("watcher")).await;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(&PostParams::default(), &node("before", json!({})))
        .await
        .unwrap();
    for config in [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ] {
        let mut stream = watcher(nodes.clone(), config).boxed();
        macro_rules! next {
            () => {
                tokio::time::timeout(Duration::from_secs(5), stream.try_next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap()
            };
        }
        assert!(matches!(next!(), watcher::Event::Init));
        assert!(
            matches!(next!(), watcher::Event::InitApply(n) if n.metadata.name.as_deref() == Some("before"))
        );
        assert!(matches!(next!(), watcher::Event::InitDone));
        nodes
            .create(&PostParams::default(), &node("after", json!({})))
            .await
            .unwrap();
        assert!(
            matches!(next!(), watcher::Event::Apply(n) if n.metadata.name.as_deref() == Some("after"))
        );
        nodes.delete("after", &Default::default()).await.unwrap();
        assert!(
            matches!(next!(), watcher::Event::Delete(n) if n.metadata.name.as_deref() == Some("after"))
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn with_a_token_set_only_clients_presenting_it_are_served() {
    let mut opts = fast_options("token");
    opts.token = Some("t0ken".into());
    let (server, client) = start(opts).await;
    // The kubeconfig carries the token.
    Api::<Node>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap();
    // With a token the server speaks HTTPS (kubectl sends a token over HTTPS only).
    assert!(server.url().starts_with("https://"), "{}", server.url());
    let mut config = kube::Config::new(server.url().parse().unwrap());
    config.default_retry = false;
    config.accept_invalid_certs = true;
    let anonymous = kube::Client::try_from(config).unwrap();
    match Api::<Node>::all(anonymous)
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 401),
        other => panic!("expected 401, got {other:?}"),
    }
    // Unmodified kubectl with the kubeconfig: client-go sends the token because the server speaks
    // HTTPS (over plain HTTP it sends none, and a token server would be out of kubectl's reach).
    let nodes = kubectl_ok(server.kubeconfig_path(), &["get", "nodes"]).await;
    assert!(!nodes.contains("Unauthorized"), "{nodes}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_selective_watch_sees_objects_leave_and_enter_its_selection() {
    let (server, client) = start(fast_options("selective")).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let wp = WatchParams::default()
        .fields("status.phase=Pending")
        .disable_bookmarks();
    let mut events = pods.watch(&wp, "0").await.unwrap().boxed();
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "x"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running = json!({"status": {"phase": "Running"}});
    let pending = json!({"status": {"phase": "Pending"}});
    let mut seen = Vec::new();
    let mut step = 0;
    while seen.last().map(String::as_str) != Some("ADDED again") {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match (step, ev) {
            (0, WatchEvent::Added(_)) => {
                seen.push("ADDED".to_string());
                step = 1;
                pods.patch_status("p", &PatchParams::default(), &Patch::Merge(&running))
                    .await
                    .unwrap();
            }
            // The scheduler may mark it unschedulable first: still Pending, still selected.
            (1, WatchEvent::Modified(p)) => {
                assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"))
            }
            (1, WatchEvent::Deleted(_)) => {
                seen.push("DELETED".to_string());
                step = 2;
                pods.patch_status("p", &PatchParams::default(), &Patch::Merge(&pending))
                    .await
                    .unwrap();
            }
            (2, WatchEvent::Added(_)) => seen.push("ADDED again".to_string()),
            (_, other) => panic!("unexpected {other:?} at step {step}"),
        }
    }
    server.shutdown().await;
}

// ---- kubectl ----

async fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .await
        .expect("kubectl must be installed for this test (it is on the project's machines)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn kubectl_ok(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let (ok, text) = kubectl(kubeconfig, args).await;
    assert!(ok, "kubectl {args:?} failed:\n{text}");
    text
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx
        resources:
          requests: {cpu: 100m, memory: 32Mi}
";

#[tokio::test]
async fn unmodified_kubectl_gets_creates_cordons_drains_and_deletes() {
    let which = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    assert!(
        which.is_ok_and(|o| o.status.success()),
        "kubectl is not installed: this test needs the real kubectl"
    );
    let (server, client) = start(fast_options("kubectl")).await;
    let kc = server.kubeconfig_path().to_path_buf();
    let w1 = agent(&client, "w1", "2", "2Gi");

    let k = kc.clone();
    eventually("kubectl shows w1 Ready", Duration::from_secs(10), || {
        let k = k.clone();
        async move {
            let out = kubectl_ok(&k, &["get", "nodes"]).await;
            (out.contains("w1") && out.contains(" Ready ")).then_some(())
        }
    })
    .await;

    let file = server
        .kubeconfig_path()
        .parent()
        .unwrap()
        .join("deployment.yaml");
    std::fs::write(&file, DEPLOYMENT).unwrap();
    let out = kubectl_ok(&kc, &["create", "-f", file.to_str().unwrap()]).await;
    assert!(out.contains("deployment.apps/web created"), "{out}");

    let k = kc.clone();
    eventually("both pods Running", Duration::from_secs(10), || {
        let k = k.clone();
        async move {
            (kubectl_ok(&k, &["get", "pods"])
                .await
                .matches("Running")
                .count()
                == 2)
                .then_some(())
        }
    })
    .await;
    let out = kubectl_ok(&kc, &["get", "deployments"]).await;
    assert!(out.contains("web") && out.contains("2/2"), "{out}");
    let out = kubectl_ok(&kc, &["get", "pods", "-o", "wide"]).await;
    assert!(out.contains("w1") && out.contains("1/1"), "{out}");

    let out = kubectl_ok(&kc, &["cordon", "w1"]).await;
    assert!(out.contains("node/w1 cordoned"), "{out}");
    assert!(kubectl_ok(&kc, &["get", "nodes"])
        .await
        .contains("SchedulingDisabled"));
    let out = kubectl_ok(&kc, &["uncordon", "w1"]).await;
    assert!(out.contains("node/w1 uncordoned"), "{out}");
    assert!(!kubectl_ok(&kc, &["get", "nodes"])
        .await
        .contains("SchedulingDisabled"));

    let w2 = agent(&client, "w2", "2", "2Gi");
    let out = kubectl_ok(
        &kc,
        &[
            "drain",
            "w1",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=30s",
        ],
    )
    .await;
    assert!(
        out.contains("evicted") && out.contains("node/w1 drained"),
        "{out}"
    );
    let k = kc.clone();
    eventually("the pods run on w2", Duration::from_secs(10), || {
        let k = k.clone();
        async move {
            let out = kubectl_ok(&k, &["get", "pods", "-o", "wide"]).await;
            (out.matches("Running").count() == 2 && out.matches("w2").count() == 2).then_some(())
        }
    })
    .await;

    let out = kubectl_ok(&kc, &["delete", "-f", file.to_str().unwrap()]).await;
    assert!(out.contains("deleted"), "{out}");
    let k = kc.clone();
    eventually("the pods are gone", Duration::from_secs(10), || {
        let k = k.clone();
        async move {
            kubectl_ok(&k, &["get", "pods"])
                .await
                .contains("No resources found")
                .then_some(())
        }
    })
    .await;
    let (ok, out) = kubectl(&kc, &["get", "deployment", "web"]).await;
    assert!(!ok && out.contains("NotFound"), "{out}");

    w1.stop().await;
    w2.stop().await;
    server.shutdown().await;
}
