//! The Kubernetes adapters against the lab cluster, started in-process on 127.0.0.1:0.
//!
//! Each test starts its own lab (its own state and node-monitor grace) so they run in parallel without
//! seeing each other's nodes. Nodes are registered by the lab's own node agent, in-process, or created
//! through the API with a Ready condition whose heartbeats the test controls.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autoscaler::intents::RemovalIntents;
use autoscaler::kube::node_ops::{
    KubeNodeOps, LAST_DECISION_ANNOTATION, SAFE_TO_EVICT_ANNOTATION,
    SCALE_DOWN_DISABLED_ANNOTATION, TO_BE_DELETED_TAINT,
};
use autoscaler::kube::pending_pods::{BatchWindows, PendingPodsWatcher};
use autoscaler::kube::{utilisation, KubeError, NodeWatcher};
use bus::event::Event;
use bus::{Envelope, Metadata};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "k3s-worker-";

// ---- the lab ---------------------------------------------------------------------------------------

/// A lab server of this test, stopped on drop.
struct Lab {
    addr: SocketAddr,
    kubeconfig: PathBuf,
    client: Client,
    stop: CancellationToken,
    agents: Vec<(String, CancellationToken)>,
    _server: lab::server::LabServer,
}

impl Lab {
    /// A lab whose node-lifecycle controller marks nodes NotReady after `grace` without heartbeats.
    async fn start(grace: Duration) -> Lab {
        Lab::start_with(grace, 10_000).await
    }

    /// As [`Lab::start`], keeping only `history` changes for watches to resume from (older: 410 Gone).
    async fn start_with(grace: Duration, history: usize) -> Lab {
        let dir = std::env::temp_dir().join(format!(
            "kube-adapters-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let stop = CancellationToken::new();
        let server = lab::server::LabServer::start(lab::server::ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            lab_dir: dir.clone(),
            controllers: lab::controllers::ControllerConfig {
                node_monitor_grace: grace,
                pod_eviction_timeout: Duration::from_secs(300),
                resync: Duration::from_millis(200),
            },
            history_limit: history,
            ..Default::default()
        })
        .await
        .expect("the lab server starts");
        let addr = server.addr();
        let kubeconfig = server.kubeconfig_path().to_path_buf();
        let client = autoscaler::kube::connect_kubeconfig(&kubeconfig)
            .await
            .expect("a client from the lab's kubeconfig");
        Lab {
            addr,
            kubeconfig,
            client,
            stop,
            agents: Vec::new(),
            _server: server,
        }
    }

    /// Runs the lab's node agent for `name` in-process until [`Lab::stop_agent`].
    fn start_agent(&mut self, name: &str, cpu: &str, memory: &str) {
        let token = self.stop.child_token();
        let mut opts = lab::AgentOptions::new(name, cpu, memory);
        opts.heartbeat = Duration::from_millis(300);
        opts.pod_sync = Duration::from_millis(200);
        // The test checks API objects, not load: no CPU burnt.
        opts.simulate_load = false;
        let client = self.client.clone();
        let t = token.clone();
        tokio::spawn(async move {
            if let Err(e) = lab::agent::run(client, opts, t.cancelled_owned()).await {
                panic!("lab agent failed: {e}");
            }
        });
        self.agents.push((name.to_string(), token));
    }

    /// Stops the agent of `name`: its heartbeats stop, as when a worker container is killed.
    fn stop_agent(&mut self, name: &str) {
        for (n, t) in &self.agents {
            if n == name {
                t.cancel();
            }
        }
    }

    /// A client that goes through `proxy` instead of straight to the lab.
    async fn client_via(&self, proxy: &Proxy) -> Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let scheme = config
            .cluster_url
            .scheme_str()
            .unwrap_or("http")
            .to_string();
        config.cluster_url = format!("{scheme}://{}", proxy.addr).parse().unwrap();
        config.default_retry = false;
        Client::try_from(config).unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// ---- a TCP proxy that can cut the watcher off --------------------------------------------------------

/// Forwards 127.0.0.1:<port> to the lab; `block` drops every connection and refuses new ones, like a
/// network partition between the autoscaler and the API server.
struct Proxy {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (b, c) = (blocked.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if b.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Proxy {
            addr,
            blocked,
            conns,
            accept,
        }
    }

    fn block(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn unblock(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.block();
    }
}

// ---- helpers -----------------------------------------------------------------------------------------

fn metadata() -> Metadata {
    Metadata::new("test-cluster", "local")
}

/// Creates a Node through the API, Ready with a heartbeat of now (no agent: nothing heartbeats after).
async fn create_ready_node(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    heartbeat(client, name).await;
}

/// Writes a Ready=True condition with a heartbeat of now, as a kubelet does.
async fn heartbeat(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let status = json!({"status": {
        "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "test heartbeat", "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// The next envelope within `within`, if any.
async fn next(rx: &mut mpsc::Receiver<Envelope>, within: Duration) -> Option<Envelope> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// Waits for an event matching `pred`, failing after `within`; events before it are returned too.
async fn expect(
    rx: &mut mpsc::Receiver<Envelope>,
    within: Duration,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> (Envelope, Vec<Envelope>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next(rx, left).await {
            Some(e) if pred(&e.event) => return (e, before),
            Some(e) => before.push(e),
            None => panic!("no {what} within {within:?}; saw {before:#?}"),
        }
    }
}

/// Every envelope that arrives within `during`.
async fn drain_for(rx: &mut mpsc::Receiver<Envelope>, during: Duration) -> Vec<Envelope> {
    let deadline = tokio::time::Instant::now() + during;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next(rx, left).await {
            Some(e) => out.push(e),
            None => return out,
        }
    }
}

fn node_of(e: &Event) -> Option<&str> {
    match e {
        Event::NodeReady(d) => Some(&d.node_name),
        Event::NodeHealthDegraded(d) => Some(&d.node_name),
        Event::NodeUnexpectedlyLost(d) => Some(&d.node_name),
        _ => None,
    }
}

fn is(e: &Event, ty: &str, node: &str) -> bool {
    e.event_type() == ty && node_of(e) == Some(node)
}

/// Starts `watcher.run` with a fresh channel; the token stops it.
fn spawn_node_watcher(
    watcher: NodeWatcher,
) -> (mpsc::Receiver<Envelope>, CancellationToken, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        watcher.run(tx, s.cancelled_owned()).await.unwrap();
    });
    (rx, stop, task)
}

async fn apply_yaml<K>(api: &Api<K>, value: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap()
}

fn deployment(name: &str, replicas: i32, cpu: &str, memory: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app", "image": "registry.local/app:1",
                    "resources": {"requests": {"cpu": cpu, "memory": memory}},
                }]},
            },
        },
    })
}

async fn scale(client: &Client, name: &str, replicas: i32) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": replicas}})),
    )
    .await
    .unwrap();
}

/// Pods of `app` bound to `node` whose Ready condition is True.
async fn ready_pods_on(client: &Client, app: &str, node: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pods = api
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap();
    pods.items
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

async fn wait_for<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within {within:?}");
}

// ---- NodeWatcher ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_node_watcher_reports_ready_once_and_degraded_once() {
    let mut lab = Lab::start(Duration::from_secs(2)).await;
    let watcher = NodeWatcher::new(
        lab.client.clone(),
        PREFIX,
        RemovalIntents::new(),
        metadata(),
    );
    let store = watcher.store();
    let (mut rx, stop, task) = spawn_node_watcher(watcher);

    let node = "k3s-worker-ready";
    lab.start_agent(node, "2", "2Gi");
    // A node that is not one of our workers: in the store, but no events.
    create_ready_node(&lab.client, "k3s-server-0").await;

    let (ready, before) = expect(&mut rx, Duration::from_secs(15), "NodeReady", |e| {
        is(e, "NodeReady", node)
    })
    .await;
    assert!(before.is_empty(), "{before:#?}");
    assert_eq!(ready.source, "node_watcher");
    // Heartbeats keep coming: no second NodeReady.
    let quiet = drain_for(&mut rx, Duration::from_secs(1)).await;
    assert!(quiet.is_empty(), "{quiet:#?}");
    store.wait_until_ready().await.unwrap();
    assert!(store
        .state()
        .iter()
        .any(|n| n.metadata.name.as_deref() == Some("k3s-server-0")));

    lab.stop_agent(node);
    let (degraded, before) = expect(
        &mut rx,
        Duration::from_secs(15),
        "NodeHealthDegraded",
        |e| is(e, "NodeHealthDegraded", node),
    )
    .await;
    assert!(before.is_empty(), "{before:#?}");
    match degraded.event {
        Event::NodeHealthDegraded(d) => assert!(d.status == "Unknown" || d.status == "NotReady"),
        other => panic!("{other:?}"),
    }
    // The node stays NotReady (and the server node goes NotReady too, being no worker): nothing more.
    let later = drain_for(&mut rx, Duration::from_secs(3)).await;
    assert!(later.is_empty(), "degradation repeated: {later:#?}");

    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_node_deleted_during_a_partition_is_lost_on_relist_unless_we_remove_it() {
    // A long grace: these nodes have no agent and must stay Ready on their own heartbeat.
    let lab = Lab::start(Duration::from_secs(300)).await;
    let proxy = Proxy::start(lab.addr).await;
    let intents = RemovalIntents::new();
    let watcher = NodeWatcher::new(
        lab.client_via(&proxy).await,
        PREFIX,
        intents.clone(),
        metadata(),
    )
    .with_resync(Some(Duration::from_secs(2)));
    let (mut rx, stop, task) = spawn_node_watcher(watcher);

    let (ours, lost) = ("k3s-worker-removed", "k3s-worker-lost");
    create_ready_node(&lab.client, ours).await;
    create_ready_node(&lab.client, lost).await;
    let nodes: Api<Node> = Api::all(lab.client.clone());
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (e, _) = expect(&mut rx, Duration::from_secs(15), "NodeReady", |e| {
            e.event_type() == "NodeReady"
        })
        .await;
        seen.push(node_of(&e.event).unwrap().to_string());
    }

    // Our own removal, seen live on the watch: no loss.
    intents.removing(ours, Duration::from_secs(60));
    nodes.delete(ours, &DeleteParams::default()).await.unwrap();
    let quiet = drain_for(&mut rx, Duration::from_secs(1)).await;
    assert!(quiet.is_empty(), "{quiet:#?}");

    // Cut the watcher off, delete the other node, and let the resync restart the watch while cut off:
    // the deletion can only be learnt from the re-list.
    proxy.block();
    nodes.delete(lost, &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.unblock();
    let (e, before) = expect(
        &mut rx,
        Duration::from_secs(20),
        "NodeUnexpectedlyLost",
        |e| e.event_type() == "NodeUnexpectedlyLost",
    )
    .await;
    assert!(before.is_empty(), "{before:#?}");
    match e.event {
        Event::NodeUnexpectedlyLost(l) => {
            assert_eq!(l.node_name, lost);
            assert_eq!(l.cause, "node_deleted");
        }
        other => panic!("{other:?}"),
    }
    let after = drain_for(&mut rx, Duration::from_secs(1)).await;
    assert!(after.is_empty(), "{after:#?}");

    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_node_deleted_while_the_watch_was_away_too_long_is_lost_after_410_relist() {
    // A short history: after the partition the watch cannot resume (410 Gone) and must re-list.
    let lab = Lab::start_with(Duration::from_secs(300), 5).await;
    let proxy = Proxy::start(lab.addr).await;
    let watcher = NodeWatcher::new(
        lab.client_via(&proxy).await,
        PREFIX,
        RemovalIntents::new(),
        metadata(),
    )
    .with_resync(None);
    let (mut rx, stop, task) = spawn_node_watcher(watcher);

    let gone = "k3s-worker-gone";
    create_ready_node(&lab.client, gone).await;
    create_ready_node(&lab.client, "k3s-server-churn").await;
    expect(&mut rx, Duration::from_secs(15), "NodeReady", |e| {
        is(e, "NodeReady", gone)
    })
    .await;

    proxy.block();
    let nodes: Api<Node> = Api::all(lab.client.clone());
    nodes.delete(gone, &DeleteParams::default()).await.unwrap();
    // Enough later changes that the deletion falls out of the kept history.
    for i in 0..10 {
        nodes
            .patch(
                "k3s-server-churn",
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": {"churn": i.to_string()}}})),
            )
            .await
            .unwrap();
    }
    proxy.unblock();
    let (e, before) = expect(
        &mut rx,
        Duration::from_secs(20),
        "NodeUnexpectedlyLost",
        |e| e.event_type() == "NodeUnexpectedlyLost",
    )
    .await;
    assert!(before.is_empty(), "{before:#?}");
    assert_eq!(node_of(&e.event), Some(gone));
    let after = drain_for(&mut rx, Duration::from_secs(1)).await;
    assert!(after.is_empty(), "{after:#?}");

    stop.cancel();
    task.await.unwrap();
}

// ---- KubeNodeOps -----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_cordon_taints_and_annotation_are_visible_through_the_api_and_delete_cleans_up() {
    let lab = Lab::start(Duration::from_secs(300)).await;
    let node = "k3s-worker-cordon";
    create_ready_node(&lab.client, node).await;
    let secrets: Api<Secret> = Api::namespaced(lab.client.clone(), "kube-system");
    apply_yaml(
        &secrets,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("{node}.node-password.k3s"), "namespace": "kube-system"},
            "stringData": {"hash": "x"},
        }),
    )
    .await;
    let ops = KubeNodeOps::new(lab.client.clone(), Duration::from_secs(10));
    let nodes: Api<Node> = Api::all(lab.client.clone());

    ops.cordon(node).await.unwrap();
    ops.cordon(node).await.unwrap(); // idempotent
    let n = nodes.get(node).await.unwrap();
    let spec = n.spec.unwrap();
    assert_eq!(spec.unschedulable, Some(true));
    let taints = spec.taints.unwrap_or_default();
    let ours: Vec<_> = taints
        .iter()
        .filter(|t| t.key == TO_BE_DELETED_TAINT)
        .collect();
    assert_eq!(ours.len(), 1, "{taints:?}");
    assert_eq!(ours[0].effect, "NoSchedule");

    ops.annotate_decision(node, "scale_down_blocked: pdb")
        .await
        .unwrap();
    let n = nodes.get(node).await.unwrap();
    assert_eq!(
        n.metadata
            .annotations
            .unwrap()
            .get(LAST_DECISION_ANNOTATION)
            .map(String::as_str),
        Some("scale_down_blocked: pdb")
    );

    ops.uncordon(node).await.unwrap();
    let spec = nodes.get(node).await.unwrap().spec.unwrap();
    assert_ne!(spec.unschedulable, Some(true));
    assert!(!spec
        .taints
        .unwrap_or_default()
        .iter()
        .any(|t| t.key == TO_BE_DELETED_TAINT));

    let missing = ops.cordon("k3s-worker-nope").await.unwrap_err();
    assert_eq!(missing.code(), "node_not_found");

    let d = ops.delete(node).await.unwrap();
    assert!(d.node && d.password_secret, "{d:?}");
    assert!(nodes.get_opt(node).await.unwrap().is_none());
    assert!(secrets
        .get_opt(&format!("{node}.node-password.k3s"))
        .await
        .unwrap()
        .is_none());
    let again = ops.delete(node).await.unwrap();
    assert!(!again.node && !again.password_secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_drain_waits_for_a_pdb_then_evicts_once_another_replica_is_ready() {
    let mut lab = Lab::start(Duration::from_secs(30)).await;
    let (a, b) = ("k3s-worker-drain-a", "k3s-worker-drain-b");
    lab.start_agent(a, "2", "2Gi");
    let client = lab.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    apply_yaml(&deployments, deployment("web", 1, "100m", "64Mi")).await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    apply_yaml(
        &pdbs,
        json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
        }),
    )
    .await;
    wait_for(Duration::from_secs(15), "web running on a", || async {
        ready_pods_on(&client, "web", a).await.len() == 1
    })
    .await;

    let ops = KubeNodeOps::new(client.clone(), Duration::from_secs(2))
        .with_eviction_backoff(Duration::from_millis(100), Duration::from_millis(500));
    ops.cordon(a).await.unwrap();

    // The only replica: the PDB refuses until the deadline.
    let err = ops.drain(a).await.unwrap_err();
    assert_eq!(err.code(), "pdb", "{err}");
    assert!(err.retryable());
    assert!(matches!(err, KubeError::PdbBlocked { ref pods, .. } if pods.len() == 1));

    // A second node and a second replica: once it is Ready, the eviction goes through.
    lab.start_agent(b, "2", "2Gi");
    let ops = KubeNodeOps::new(client.clone(), Duration::from_secs(30))
        .with_eviction_backoff(Duration::from_millis(100), Duration::from_millis(500));
    let drain = tokio::spawn({
        let ops = ops.clone();
        async move { ops.drain(a).await }
    });
    scale(&client, "web", 2).await;
    let report = drain
        .await
        .unwrap()
        .expect("drain succeeds once the PDB allows");
    assert_eq!(report.evicted.len(), 1, "{report:?}");
    let pods: Api<Pod> = Api::all(client.clone());
    let left = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={a}")))
        .await
        .unwrap();
    let web_left: Vec<_> = left
        .items
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .is_some_and(|app| app == "web")
        })
        .map(|p| p.metadata.name.clone())
        .collect();
    assert!(web_left.is_empty(), "web pods left on {a}: {web_left:?}");
    // The Deployment brought the evicted replica back on the other node, not on the cordoned one.
    wait_for(
        Duration::from_secs(15),
        "both replicas Ready on b",
        || async { ready_pods_on(&client, "web", b).await.len() == 2 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_drain_refuses_scale_down_disabled_nodes_and_safe_to_evict_false_pods() {
    let mut lab = Lab::start(Duration::from_secs(30)).await;
    let node = "k3s-worker-guarded";
    lab.start_agent(node, "2", "2Gi");
    let client = lab.client.clone();
    // The pod is bound by name: the node must exist first, or pod GC removes it as an orphan.
    wait_for(Duration::from_secs(15), "node registered", || async {
        Api::<Node>::all(client.clone())
            .get_opt(node)
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    apply_yaml(
        &pods,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "keep", "namespace": "default",
                         "annotations": {SAFE_TO_EVICT_ANNOTATION: "false"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.local/app:1"}]},
        }),
    )
    .await;
    wait_for(Duration::from_secs(15), "node registered", || async {
        Api::<Node>::all(client.clone())
            .get_opt(node)
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let ops = KubeNodeOps::new(client.clone(), Duration::from_secs(5));
    let err = ops.drain(node).await.unwrap_err();
    assert_eq!(err.code(), "safe_to_evict_false", "{err}");
    assert!(!err.retryable());

    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"metadata": {"annotations": {SCALE_DOWN_DISABLED_ANNOTATION: "true"}}}),
            ),
        )
        .await
        .unwrap();
    let err = ops.drain(node).await.unwrap_err();
    assert_eq!(err.code(), "scale_down_disabled", "{err}");
    // Nothing was evicted.
    assert!(pods.get_opt("keep").await.unwrap().is_some());
}

// ---- PendingPodsWatcher and utilisation -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_a_pod_bigger_than_any_node_is_reported_pending_with_its_deployment_and_requests() {
    let mut lab = Lab::start(Duration::from_secs(30)).await;
    lab.start_agent("k3s-worker-small", "1", "1Gi");
    let client = lab.client.clone();
    let (tx, mut rx) = mpsc::channel(16);
    let watcher = PendingPodsWatcher::new(
        client.clone(),
        BatchWindows::new(Duration::from_millis(300), Duration::from_secs(2)),
        metadata(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let s = stop.clone();
        async move { watcher.run(tx, s.cancelled_owned()).await.unwrap() }
    });

    // The small node Ready first: else `fits` is briefly unschedulable too (seen on a loaded machine).
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for(Duration::from_secs(15), "the small node Ready", || async {
        nodes
            .get_opt("k3s-worker-small")
            .await
            .ok()
            .flatten()
            .is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    apply_yaml(&deployments, deployment("fits", 1, "100m", "64Mi")).await;
    // Its constraints ride along with its requests.
    let mut huge = deployment("huge", 1, "8", "16Gi");
    huge["spec"]["template"]["spec"]["nodeSelector"] = json!({"disktype": "ssd"});
    huge["spec"]["template"]["spec"]["tolerations"] =
        json!([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]);
    apply_yaml(&deployments, huge).await;

    let (e, _) = expect(
        &mut rx,
        Duration::from_secs(20),
        "PendingPodsDetected",
        |e| matches!(e, Event::PendingPodsDetected(p) if p.pending_count > 0),
    )
    .await;
    let Event::PendingPodsDetected(p) = e.event else {
        unreachable!()
    };
    assert_eq!(p.pending_count, 1, "{p:?}");
    assert_eq!(p.affected_deployments, ["huge"]);
    assert_eq!(p.pods.len(), 1);
    assert_eq!(p.pods[0].namespace, "default");
    assert!(p.pods[0].name.starts_with("huge-"), "{:?}", p.pods[0]);
    assert_eq!(p.pods[0].cpu_millis, 8000);
    assert_eq!(p.pods[0].memory_bytes, 16 << 30);
    assert_eq!(p.pods[0].owner_kind.as_deref(), Some("ReplicaSet"));
    assert_eq!(
        p.pods[0].labels.get("app").map(String::as_str),
        Some("huge")
    );
    assert_eq!(
        p.pods[0].node_selector.get("disktype").map(String::as_str),
        Some("ssd")
    );
    assert_eq!(
        p.pods[0].tolerations,
        [bus::scheduling::Toleration::exists("dedicated")
            .with_effect(bus::scheduling::TaintEffect::NoSchedule)]
    );
    assert!(p.waiting_time >= 0.0);
    assert_eq!(e.source, "pending_pods_watcher");

    // The pending pod goes away: one report with pending_count 0.
    scale(&client, "huge", 0).await;
    let (e, _) = expect(
        &mut rx,
        Duration::from_secs(20),
        "PendingPodsDetected 0",
        |e| matches!(e, Event::PendingPodsDetected(p) if p.pending_count == 0),
    )
    .await;
    assert_eq!(e.event_type(), "PendingPodsDetected");

    // Requests-based utilisation sees the small pod on the worker; metrics.k8s.io is not served.
    wait_for(Duration::from_secs(15), "fits running", || async {
        ready_pods_on(&client, "fits", "k3s-worker-small")
            .await
            .len()
            == 1
    })
    .await;
    let u = utilisation::requests_utilisation(&client, PREFIX)
        .await
        .unwrap();
    assert_eq!(u.nodes.len(), 1);
    assert_eq!(u.nodes[0].node_name, "k3s-worker-small");
    assert!((u.nodes[0].cpu - 10.0).abs() < 1e-9, "{u:?}");
    assert!((u.cpu_avg - 10.0).abs() < 1e-9);
    // The lab serves metrics.k8s.io with usage = what Running pods declare.
    let m = utilisation::metrics_utilisation(&client, PREFIX)
        .await
        .expect("the lab serves metrics.k8s.io");
    assert_eq!(m.nodes.len(), 1, "{m:?}");
    assert!((m.nodes[0].cpu - 10.0).abs() < 1e-6, "{m:?}");

    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_metrics_api_not_served_is_a_clear_error_to_fall_back_on() {
    // A stand-in API server that serves nothing (the lab serves metrics.k8s.io): every path is 404.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::NOT_FOUND,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": "the server could not find the requested resource",
                   "reason": "NotFound", "code": 404})
            .to_string(),
        )
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    config.default_retry = false;
    let client = Client::try_from(config).unwrap();
    match utilisation::metrics_utilisation(&client, PREFIX).await {
        Err(e @ KubeError::MetricsNotServed { status: 404 }) => {
            assert_eq!(e.code(), "metrics_not_served");
            assert!(!e.retryable());
        }
        other => panic!("expected MetricsNotServed, got {other:?}"),
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_drain_leaves_daemonset_and_mirror_pods_and_evicts_the_rest() {
    let mut lab = Lab::start(Duration::from_secs(30)).await;
    let node = "k3s-worker-mixed";
    lab.start_agent(node, "2", "2Gi");
    let client = lab.client.clone();
    wait_for(Duration::from_secs(15), "node registered", || async {
        Api::<Node>::all(client.clone())
            .get_opt(node)
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), "default");
    let ds = apply_yaml(
        &daemonsets,
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agentd", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": "agentd"}},
                "template": {"metadata": {"labels": {"app": "agentd"}},
                             "spec": {"containers": [{"name": "c", "image": "registry.local/agentd:1"}]}},
            },
        }),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let container = json!([{"name": "c", "image": "registry.local/app:1"}]);
    apply_yaml(
        &pods,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "agentd-x", "namespace": "default", "labels": {"app": "agentd"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agentd",
                                              "uid": ds.metadata.uid, "controller": true}]},
            "spec": {"nodeName": node, "containers": container},
        }),
    )
    .await;
    apply_yaml(
        &pods,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "static-web", "namespace": "default",
                         "annotations": {"kubernetes.io/config.mirror": "abc"}},
            "spec": {"nodeName": node, "containers": container},
        }),
    )
    .await;
    apply_yaml(
        &pods,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "plain", "namespace": "default"},
            "spec": {"nodeName": node, "containers": container},
        }),
    )
    .await;

    let ops = KubeNodeOps::new(client.clone(), Duration::from_secs(10));
    ops.cordon(node).await.unwrap();
    let mut report = ops.drain(node).await.unwrap();
    report.skipped.sort();
    assert_eq!(report.evicted, ["default/plain"]);
    assert_eq!(report.skipped, ["default/agentd-x", "default/static-web"]);
    assert!(pods.get_opt("plain").await.unwrap().is_none());
    assert!(pods.get_opt("agentd-x").await.unwrap().is_some());
    assert!(pods.get_opt("static-web").await.unwrap().is_some());
}

// ---- PlacementObserver -----------------------------------------------------------------------------

/// Folds what arrives within `during` into `into`; returns the envelopes' types.
async fn fold_placement(
    rx: &mut mpsc::Receiver<Envelope>,
    into: &mut bus::placement::Placement,
    during: Duration,
) -> Vec<String> {
    let mut types = Vec::new();
    for e in drain_for(rx, during).await {
        types.push(e.event_type().to_string());
        match &e.event {
            Event::PlacementSnapshot(s) => into.apply_snapshot(s),
            Event::PlacementChanged(c) => into.apply_change(c),
            other => panic!("the placement observer published {}", other.event_type()),
        }
    }
    types
}

fn spawn_placement(client: &Client) -> (mpsc::Receiver<Envelope>, CancellationToken) {
    let (tx, rx) = mpsc::channel(256);
    let stop = CancellationToken::new();
    let observer = autoscaler::kube::PlacementObserver::new(
        client.clone(),
        metadata(),
        PREFIX,
        Duration::from_millis(200),
        Duration::from_secs(3600),
    );
    let s = stop.clone();
    tokio::spawn(async move { observer.run(tx, s.cancelled_owned()).await.unwrap() });
    (rx, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_placement_is_a_snapshot_then_deltas_that_fold_to_what_a_new_snapshot_says() {
    let mut lab = Lab::start(Duration::from_secs(30)).await;
    let (a, b) = ("k3s-worker-place-a", "k3s-worker-place-b");
    lab.start_agent(a, "2", "2Gi");
    lab.start_agent(b, "2", "2Gi");
    let client = lab.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    apply_yaml(&deployments, deployment("web", 2, "100m", "64Mi")).await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    apply_yaml(
        &pdbs,
        json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
        }),
    )
    .await;
    wait_for(Duration::from_secs(15), "both replicas Ready", || async {
        ready_pods_on(&client, "web", a).await.len() + ready_pods_on(&client, "web", b).await.len()
            == 2
    })
    .await;

    let (mut rx, stop) = spawn_placement(&client);
    let mut folded = bus::placement::Placement::new();
    let types = fold_placement(&mut rx, &mut folded, Duration::from_secs(2)).await;
    assert_eq!(
        types.first().map(String::as_str),
        Some("PlacementSnapshot"),
        "{types:?}"
    );
    assert!(folded.is_known());
    for n in [a, b] {
        let spec = &folded.nodes()[n];
        assert!(spec.ready, "{spec:?}");
        assert_eq!(spec.pool.as_deref(), Some("default"));
        assert_eq!(spec.allocatable.cpu_millis, 2000);
    }
    let web: Vec<_> = folded
        .pods()
        .values()
        .filter(|p| p.labels.get("app").is_some_and(|v| v == "web"))
        .collect();
    assert_eq!(web.len(), 2);
    assert!(
        web.iter().all(|p| p.pdb_blocked && p.cpu_millis == 100),
        "{web:?}"
    );

    // A third replica gives the budget room; cordoning b changes a node: deltas, no new snapshot.
    scale(&client, "web", 3).await;
    KubeNodeOps::new(client.clone(), Duration::from_secs(5))
        .cordon(b)
        .await
        .unwrap();
    let mut types = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        types.extend(fold_placement(&mut rx, &mut folded, Duration::from_millis(300)).await);
        let web: Vec<_> = folded
            .pods()
            .values()
            .filter(|p| p.labels.get("app").is_some_and(|v| v == "web"))
            .collect();
        if web.len() == 3 && web.iter().all(|p| !p.pdb_blocked) && folded.nodes()[b].cordoned {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deltas not folded: {folded:?}"
        );
    }
    assert!(
        !types.is_empty() && types.iter().all(|t| t == "PlacementChanged"),
        "{types:?}"
    );
    stop.cancel();

    // A new observer's snapshot says the same as the old snapshot plus its deltas.
    let (mut rx, stop) = spawn_placement(&client);
    let mut fresh = bus::placement::Placement::new();
    fold_placement(&mut rx, &mut fresh, Duration::from_secs(2)).await;
    stop.cancel();
    assert!(fresh.is_known());
    assert_eq!(fresh.nodes(), folded.nodes());
    assert_eq!(fresh.pods(), folded.pods());
}

// ---- the uncordon after a failed drain ---------------------------------------------------------------

/// A drain failed, the record put the node back to Ready and the NodeManager asked for an uncordon,
/// but the API server was cut off: the NodeManager's delivery is retried by the bus until the
/// uncordon goes through, so the node does not stay cordoned and tainted while the record says Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_a_failed_uncordon_is_retried_until_the_node_is_schedulable_again() {
    use autoscaler::runtime::adapters::{Adapters, DockerWorkers, KubeNodes};
    use autoscaler::runtime::group_runner::GroupRunner;
    use autoscaler::runtime::projection::Projection;
    use bus::event::{
        NodeCordoned, NodeReady, ScaleDownBlocked, ScaleDownStarted, ScalingAction,
        ScalingActionFailed,
    };

    let lab = Lab::start(Duration::from_secs(300)).await;
    let proxy = Proxy::start(lab.addr).await;
    let node = "k3s-worker-1";
    create_ready_node(&lab.client, node).await;
    // The scale-down's cordon went through.
    KubeNodeOps::new(lab.client.clone(), Duration::from_secs(10))
        .cordon(node)
        .await
        .unwrap();

    let redis = bus::testing::RedisServer::start();
    let stream = "uncordon-retry";
    let mut config = redis.config(stream);
    config.concurrency = 1;
    config.max_deliveries = 50;
    let bus = bus::connect(config).await.unwrap();
    let publisher = bus.publisher();
    let m = metadata();
    let ready = Envelope::root(
        "test",
        NodeReady {
            node_name: node.into(),
        },
        m,
    );
    let started = Envelope::caused_by(
        &ready,
        "NodeManager",
        ScaleDownStarted {
            count: 1,
            target_workers: 0,
            nodes: vec![node.into()],
        },
    );
    let cordoned = Envelope::caused_by(
        &started,
        "executor",
        NodeCordoned {
            node_name: node.into(),
        },
    );
    let failed = Envelope::caused_by(
        &cordoned,
        "executor",
        ScalingActionFailed {
            action: ScalingAction::ScaleDown,
            node_name: Some(node.into()),
            error: "drain_timeout: pods still running after 5s".into(),
            retryable: true,
        },
    );
    // History up to the cordon is there before the NodeManager group starts at the end of the stream.
    for e in [&ready, &started, &cordoned] {
        publisher.publish(e).await.unwrap();
    }

    let policy = Arc::new(handlers::Policy::default());
    let docker = bollard::Docker::connect_with_host("tcp://127.0.0.1:9").unwrap();
    let adapters = Adapters {
        workers: DockerWorkers {
            pool: Arc::new(autoscaler::docker::DockerHosts::single(
                autoscaler::docker::DockerWorkerPool::new(
                    docker,
                    autoscaler::docker::PoolConfig::default(),
                ),
            )),
            intents: RemovalIntents::new(),
        },
        nodes: KubeNodes {
            // Through the proxy, which is cut off while the failure is handled.
            ops: KubeNodeOps::new(lab.client_via(&proxy).await, Duration::from_secs(10)),
            intents: RemovalIntents::new(),
        },
        alerts: autoscaler::webhooks::Webhooks::new(Vec::new()).unwrap(),
    };
    let runner = GroupRunner {
        handler: handlers::Handler::from_name("NodeManager").unwrap(),
        policy: policy.clone(),
        projection: tokio::sync::Mutex::new(Projection::new(
            handlers::Model::new(&policy),
            bus.audit(),
        )),
        adapters: Some(Arc::new(adapters)),
        publisher: bus.publisher(),
        metrics: Arc::new(autoscaler::metrics::Metrics::new()),
    };
    let consumer = bus.consumer();
    consumer.ensure_group("NodeManager").await.unwrap();
    let stop = CancellationToken::new();
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            consumer
                .run(runner, "NodeManager", "test", stop.cancelled_owned())
                .await
        })
    };

    proxy.block();
    publisher.publish(&failed).await.unwrap();
    // The failure is handled (its ScaleDownBlocked is published) and delivered again while the
    // uncordon cannot get through.
    let audit = bus.audit();
    let mut conn = bus.connection();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let entries = audit.query(&bus::Query::default()).await.unwrap();
        let blocked = entries
            .iter()
            .filter_map(|e| e.decode().ok())
            .any(|e| matches!(e.event, Event::ScaleDownBlocked(ScaleDownBlocked { .. })));
        // XPENDING's extended form: [id, consumer, idle ms, deliveries] per entry.
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(stream)
            .arg("NodeManager")
            .arg("-")
            .arg("+")
            .arg(10)
            .query_async(&mut conn)
            .await
            .unwrap();
        let retried = pending.iter().any(|p| p.3 >= 2);
        if blocked && retried {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed uncordon was not retried: blocked {blocked}, pending {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nodes: Api<Node> = Api::all(lab.client.clone());
    let spec = nodes.get(node).await.unwrap().spec.unwrap();
    assert_eq!(spec.unschedulable, Some(true), "cut off: still cordoned");

    // The API server is reachable again: a redelivery uncordons the node and the entry is acked.
    proxy.unblock();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let spec = nodes.get(node).await.unwrap().spec.unwrap();
        let tainted = spec
            .taints
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == TO_BE_DELETED_TAINT);
        let pending = audit
            .groups()
            .await
            .unwrap()
            .into_iter()
            .find(|g| g.name == "NodeManager")
            .map_or(0, |g| g.pending);
        if spec.unschedulable != Some(true) && !tainted && pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not uncordoned after the API server came back: unschedulable {:?}, tainted {tainted}, pending {pending}",
            spec.unschedulable
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(audit.dlq_len().await.unwrap(), 0);
    let blocked = audit
        .query(&bus::Query::default())
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.decode().ok())
        .filter(|e| e.event_type() == "ScaleDownBlocked")
        .count();
    assert_eq!(
        blocked, 1,
        "the redeliveries publish the blocked reason once"
    );

    stop.cancel();
    task.await.unwrap().unwrap();
}
