//! Shared test fixtures: a lab server on a free port in a fresh directory, a kube client for it,
//! in-process agents, and polling.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use lab::controllers::ControllerConfig;
use lab::{AgentOptions, LabServer, ServeOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lab-test-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Options for a fast lab: 2 s node grace, 2 s eviction timeout, frequent resyncs and bookmarks.
pub fn fast_options(tag: &str) -> ServeOptions {
    ServeOptions {
        lab_dir: temp_dir(tag),
        controllers: ControllerConfig {
            node_monitor_grace: Duration::from_secs(2),
            pod_eviction_timeout: Duration::from_secs(2),
            resync: Duration::from_millis(200),
        },
        bookmark_interval: Duration::from_millis(200),
        ..ServeOptions::default()
    }
}

/// A started lab server and a client from its kubeconfig.
pub async fn start(opts: ServeOptions) -> (LabServer, Client) {
    let server = LabServer::start(opts).await.unwrap();
    let client = client_for(&server).await;
    (server, client)
}

/// A kube client from the server's kubeconfig, as kubectl or the autoscaler would make it.
pub async fn client_for(server: &LabServer) -> Client {
    let kc = Kubeconfig::read_from(server.kubeconfig_path()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

/// An agent running in-process until `stop` is cancelled.
pub struct TestAgent {
    /// Cancel to stop the agent (as SIGTERM would).
    pub stop: CancellationToken,
    /// The agent task.
    pub task: JoinHandle<Result<(), lab::agent::AgentError>>,
}

impl TestAgent {
    /// Stops the agent and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the agent stops promptly")
            .unwrap()
            .unwrap();
    }
}

/// Starts an agent for node `name` with this capacity, heartbeating every 300 ms, with no real load.
pub fn agent(client: &Client, name: &str, cpu: &str, memory: &str) -> TestAgent {
    agent_with(client, test_agent_options(name, cpu, memory))
}

/// The options [`agent`] uses, to add labels or taints to.
pub fn test_agent_options(name: &str, cpu: &str, memory: &str) -> AgentOptions {
    let mut opts = AgentOptions::new(name, cpu, memory);
    opts.heartbeat = Duration::from_millis(300);
    opts.pod_sync = Duration::from_millis(200);
    opts.simulate_load = false;
    opts
}

/// Starts an agent with these options, until its `stop` is cancelled.
pub fn agent_with(client: &Client, opts: AgentOptions) -> TestAgent {
    let stop = CancellationToken::new();
    let s = stop.clone();
    let client = client.clone();
    let task = tokio::spawn(async move {
        lab::agent::run(client, opts, async move { s.cancelled().await }).await
    });
    TestAgent { stop, task }
}

/// Polls `check` every 100 ms until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pod condition of this type: (status, reason, message).
pub fn condition(pod: &Pod, kind: &str) -> Option<(String, Option<String>, Option<String>)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The status of the node's Ready condition.
pub fn node_ready(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

/// Waits (up to 10 s) for node `name` to be Ready.
pub async fn wait_node_ready(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(
        &format!("node {name} Ready"),
        Duration::from_secs(10),
        || {
            let nodes = nodes.clone();
            async move { (node_ready(&nodes.get_opt(name).await.ok()??)? == "True").then_some(()) }
        },
    )
    .await;
}
