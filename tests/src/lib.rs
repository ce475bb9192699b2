//! End-to-end test support: a real `redis-server`, the real Docker engine, the lab cluster (its API
//! server as a container on a network of its own) and `autoscaler run` as real processes.
//!
//! [`Lab::start`] lays it all out with a unique cluster id, so tests can run side by side; dropping the
//! [`Lab`] kills the autoscaler processes and removes every container, volume and network it made,
//! also when the test panics.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod second_engine;

use autoscaler::labenv::{LabEnv, LabEnvOptions};
use bus::testing::{RedisSentinels, RedisServer};
use bus::{Envelope, Query};

/// A Deployment whose pods need a worker each (1 CPU worker template, 700m requests); the pods declare a
/// tiny real load so the test machine is not burnt.
pub fn deployment(name: &str, replicas: u32) -> String {
    deployment_with(name, replicas, "")
}

/// As [`deployment`], with `placement` (pod spec lines such as a `nodeSelector` and `tolerations`,
/// indented by six spaces) before the containers.
pub fn deployment_with(name: &str, replicas: u32, placement: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
      annotations:
        lab.k3s-autoscaler/cpu-usage: "5"
        lab.k3s-autoscaler/memory-usage: "1048576"
    spec:
{placement}      containers:
      - name: app
        image: registry.invalid/app
        resources:
          requests: {{cpu: "700m", memory: "64Mi"}}
"#
    )
}

/// How many of the stream's last entries a timed-out wait prints.
const TRAIL_ON_TIMEOUT: usize = 80;

/// Label on everything an end-to-end test creates.
pub const TEST_LABEL: &str = "k3s-autoscaler/e2e-test";

/// A bare pod the benches create: 700m of a 1-CPU lab worker, so it fits on no worker that runs
/// another one.
pub fn bench_pod(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  annotations: {{lab.k3s-autoscaler/cpu-usage: "1", lab.k3s-autoscaler/memory-usage: "1048576"}}
spec:
  containers:
  - name: app
    image: registry.invalid/app
    resources:
      requests: {{cpu: "700m", memory: "32Mi"}}
"#
    )
}

/// The `p`th percentile (nearest rank) of `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The `autoscaler` binary of this build (`target/<profile>/autoscaler`).
pub fn autoscaler_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test> -> target/<profile>/autoscaler
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("autoscaler"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p autoscaler`; scripts/test does)",
        bin.display()
    );
    bin
}

/// A lab image tag of this build's own (`k3s-autoscaler-lab:build-<hash of the binary's path>`):
/// stable across runs, so an up-to-date image is not built again, but apart from the tags other
/// checkouts' tests build at the same time, which would otherwise swap the image under a running lab.
pub fn lab_image_of_this_build() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    autoscaler_binary().hash(&mut h);
    format!("k3s-autoscaler-lab:build-{:016x}", h.finish())
}

/// Knobs of one lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub min_nodes: u32,
    pub max_nodes: u32,
    pub replicas: usize,
    pub dry_run: bool,
    /// `scaling.underutilized_for`: how long underuse lasts before a scale-down.
    pub underutilized_for: Duration,
    /// `pools`; empty: the one default pool from `workers`.
    pub pools: Vec<LabPool>,
    /// `kubernetes.placement_interval` (and the snapshot interval, at least 10 min). Tests that need
    /// a drain held by a PodDisruptionBudget set hours: a placement that is current lets the
    /// scale-down simulation see the budget and (rightly) never start that drain.
    pub placement_interval: Duration,
    /// `docker.host` (empty: the machine's engine), e.g. an
    /// [`EngineProxy`](autoscaler::docker::proxy::EngineProxy) the test can take down.
    pub docker_host: String,
    /// `workers.warm_pool`.
    pub warm_pool: u32,
    /// `scaling.max_node_provision_time`.
    pub max_node_provision_time: Duration,
    /// `workers.buffer.nodes`: spare workers kept ready.
    pub buffer_nodes: u32,
    /// `schedules`: (cron, duration, min_nodes) of the cluster.
    pub schedules: Vec<(String, Duration, u32)>,
    /// The Redis the lab's bus runs on.
    pub topology: LabTopology,
    /// `docker.hosts`: more engines for pools that name one.
    pub docker_hosts: Vec<LabDockerHost>,
    /// `scaling.expander` (empty: the default, least-waste).
    pub expander: String,
}

/// One of [`LabOptions::docker_hosts`].
#[derive(Debug, Clone, Default)]
pub struct LabDockerHost {
    pub name: String,
    /// The engine's address (`unix:///…`).
    pub host: String,
    /// The network its workers join (`host` for the engine's own).
    pub network: String,
    /// The lab server as that engine's workers reach it.
    pub k3s_url: String,
    /// `tls`: the engine's CA and a client certificate of it, for a `tcp://` host.
    pub tls: Option<bus::testing::TestCerts>,
    /// `ssh_key_file`, for an `ssh://` host.
    pub ssh_key_file: Option<PathBuf>,
}

/// Which Redis a lab's bus runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LabTopology {
    /// One `redis-server`.
    #[default]
    Single,
    /// A primary, a replica and three sentinels ([`RedisSentinels`], `down-after-milliseconds` 1000); the
    /// autoscaler connects through the sentinels.
    Sentinel,
    /// A Redis Cluster the test started (`host:port` of its nodes), shared by several labs: each lab's
    /// stream is `{<tag>}:autoscaler_events`.
    Cluster { nodes: Vec<String>, tag: String },
}

/// The Redis processes of a lab; stopped when the lab drops.
pub enum LabRedis {
    Single(RedisServer),
    Sentinel(RedisSentinels),
    /// The test owns the cluster; the lab only uses its stream there.
    Cluster {
        nodes: Vec<String>,
        stream: String,
    },
}

impl LabRedis {
    /// The bus settings for the lab's stream (tools' and the test's view, not the replicas').
    pub fn bus_config(&self) -> bus::BusConfig {
        match self {
            LabRedis::Single(r) => bus::BusConfig::new(r.url(), "autoscaler_events"),
            LabRedis::Sentinel(s) => s.config("autoscaler_events"),
            LabRedis::Cluster { nodes, stream } => {
                let mut c = bus::BusConfig::new(format!("redis://{}/", nodes[0]), stream.clone());
                c.topology = bus::Topology::Cluster {
                    seeds: nodes[1..].to_vec(),
                };
                c
            }
        }
    }

    /// The lab's stream name.
    pub fn stream(&self) -> &str {
        match self {
            LabRedis::Cluster { stream, .. } => stream,
            _ => "autoscaler_events",
        }
    }

    /// The `event_bus` lines of the lab's config that say where Redis is.
    fn config_lines(&self) -> String {
        match self {
            LabRedis::Single(r) => format!("      url: \"{}\"\n", r.url()),
            LabRedis::Sentinel(s) => format!(
                "      url: \"redis://sentinel-named-master\"\n      mode: sentinel\n      sentinels: [{}]\n      sentinel_master: \"{}\"\n",
                s.sentinel_addresses()
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                bus::testing::SENTINEL_MASTER
            ),
            LabRedis::Cluster { nodes, .. } => format!(
                "      url: \"redis://{}\"\n      mode: cluster\n      cluster_nodes: [{}]\n",
                nodes[0],
                nodes[1..]
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The sentinel set, for a test that fails its primary over.
    pub fn sentinels(&mut self) -> Option<&mut RedisSentinels> {
        match self {
            LabRedis::Sentinel(s) => Some(s),
            _ => None,
        }
    }
}

/// One of [`LabOptions::pools`].
#[derive(Debug, Clone, Default)]
pub struct LabPool {
    pub name: String,
    pub min_nodes: u32,
    pub max_nodes: u32,
    pub cpu: f64,
    /// A quantity (`2Gi`).
    pub memory: String,
    pub labels: Vec<(String, String)>,
    /// `key=value:Effect`.
    pub taints: Vec<String>,
    /// For the `priority` expander.
    pub priority: i32,
    /// One of [`LabOptions::docker_hosts`]; `None`: the machine's engine.
    pub docker_host: Option<String>,
    /// Pods per worker; `None`: `workers.max_pods`.
    pub max_pods: Option<u32>,
}

impl LabPool {
    /// The pool's entry under `pools:`, as JSON (which is YAML).
    fn yaml(&self) -> String {
        let labels: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect();
        serde_json::json!({
            "name": self.name,
            "min_nodes": self.min_nodes,
            "max_nodes": self.max_nodes,
            "cpu": self.cpu,
            "memory": self.memory,
            "labels": labels,
            "taints": self.taints,
            "priority": self.priority,
            "docker_host": self.docker_host,
            "max_pods": self.max_pods,
        })
        .to_string()
    }
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            min_nodes: 2,
            max_nodes: 4,
            replicas: 1,
            dry_run: false,
            underutilized_for: Duration::from_secs(6),
            pools: Vec::new(),
            placement_interval: Duration::from_secs(1),
            docker_host: String::new(),
            warm_pool: 0,
            max_node_provision_time: Duration::from_secs(60),
            buffer_nodes: 0,
            schedules: Vec::new(),
            topology: LabTopology::Single,
            docker_hosts: Vec::new(),
            expander: String::new(),
        }
    }
}

/// A running lab with its autoscaler replicas.
pub struct Lab {
    pub redis: LabRedis,
    pub env: LabEnv,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub cluster_id: String,
    pub prefix: String,
    replicas: Vec<Child>,
}

impl Lab {
    /// Redis, the lab API server, and `options.replicas` autoscaler processes.
    pub async fn start(options: LabOptions) -> Lab {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let cluster_id = format!("e2e-{id}");
        let prefix = format!("e2e{id}-w-");
        let dir = std::env::temp_dir().join(format!("k3s-autoscaler-{cluster_id}"));
        std::fs::create_dir_all(&dir).expect("test dir");
        let redis = match &options.topology {
            LabTopology::Single => LabRedis::Single(RedisServer::start()),
            LabTopology::Sentinel => LabRedis::Sentinel(tokio::task::block_in_place(|| {
                RedisSentinels::start(Duration::from_secs(1))
            })),
            LabTopology::Cluster { nodes, tag } => LabRedis::Cluster {
                nodes: nodes.clone(),
                stream: format!("{{{tag}}}:autoscaler_events"),
            },
        };
        let docker = autoscaler::docker::connect("", Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("the end-to-end tests need the Docker engine: {e}"));
        let mut env_options = LabEnvOptions::new(&cluster_id, &dir, autoscaler_binary());
        env_options.image = "k3s-autoscaler-lab:e2e".into();
        // Longer than the node agent's 10 s heartbeat.
        env_options.node_monitor_grace = Duration::from_secs(15);
        env_options.pod_eviction_timeout = Duration::from_secs(5);
        env_options.extra_labels = HashMap::from([(TEST_LABEL.to_string(), "1".to_string())]);
        let env = LabEnv::up(docker, env_options)
            .await
            .unwrap_or_else(|e| panic!("cannot start the lab: {e}"));
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            config_yaml(&options, &cluster_id, &prefix, &redis, &env),
        )
        .expect("write config");
        let mut lab = Lab {
            redis,
            env,
            dir,
            config,
            cluster_id,
            prefix,
            replicas: Vec::new(),
        };
        for i in 0..options.replicas {
            lab.spawn_replica(i, options.dry_run);
        }
        lab
    }

    /// Starts replica `i` (`replica-<i>`, a stable consumer name).
    pub fn spawn_replica(&mut self, i: usize, dry_run: bool) {
        let log =
            std::fs::File::create(self.dir.join(format!("replica-{i}.log"))).expect("log file");
        let mut cmd = Command::new(autoscaler_binary());
        cmd.arg("--config").arg(&self.config).arg("run");
        if dry_run {
            cmd.arg("--dry-run");
        }
        cmd.env("AUTOSCALER_REPLICA_ID", format!("replica-{i}"))
            .env("RUST_LOG", "info")
            .env_remove("REDIS_URL")
            .env_remove("KUBECONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = cmd.spawn().expect("spawn autoscaler run");
        if i < self.replicas.len() {
            self.replicas[i] = child;
        } else {
            self.replicas.push(child);
        }
    }

    /// The process id of replica `i`.
    pub fn replica_pid(&self, i: usize) -> u32 {
        self.replicas[i].id()
    }

    /// `kill -9` of replica `i`.
    pub fn kill_replica(&mut self, i: usize) {
        let _ = self.replicas[i].kill();
        let _ = self.replicas[i].wait();
    }

    /// SIGTERM to replica `i`: a graceful shutdown begins (see [`Lab::wait_replica_exit`]).
    pub fn terminate_replica(&self, i: usize) {
        let out = Command::new("kill")
            .args(["-TERM", &self.replicas[i].id().to_string()])
            .output()
            .expect("kill -TERM");
        assert!(out.status.success(), "kill -TERM: {out:?}");
    }

    /// Replica `i`'s exit status if it has exited.
    pub fn replica_exited(&mut self, i: usize) -> Option<ExitStatus> {
        self.replicas[i].try_wait().expect("try_wait")
    }

    /// Waits until replica `i` has exited and returns its status; panics (with the logs) after `within`.
    pub async fn wait_replica_exit(&mut self, i: usize, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.replica_exited(i) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "replica-{i} still running {within:?} later\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The bus of this lab.
    pub async fn bus(&self) -> bus::Bus {
        bus::connect(self.redis.bus_config())
            .await
            .expect("connect to the test redis")
    }

    /// Every decodable event on the stream, oldest first.
    pub async fn events(&self) -> Vec<Envelope> {
        let bus = self.bus().await;
        bus.audit()
            .query(&Query::default())
            .await
            .expect("XRANGE")
            .iter()
            .filter_map(|e| e.decode().ok())
            .collect()
    }

    /// Polls the stream until `pred` holds, or panics after `within` with the trail.
    pub async fn wait_for_events(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&[Envelope]) -> bool,
    ) -> Vec<Envelope> {
        let deadline = Instant::now() + within;
        loop {
            let events = self.events().await;
            if pred(&events) {
                return events;
            }
            if Instant::now() > deadline {
                // The end of the stream is what explains a timeout; CI keeps a bounded log.
                let tail = &events[events.len().saturating_sub(TRAIL_ON_TIMEOUT)..];
                panic!(
                    "timed out waiting for {what}; the last {} of {} entries:\n{}\n{}",
                    tail.len(),
                    events.len(),
                    trail(tail),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `kubectl --kubeconfig <lab> …`, returning stdout; panics on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.env.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl is installed");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `(pod, node)` of the Running pods labelled `app=<app>`.
    pub fn running_pods(&self, app: &str) -> Vec<(String, String)> {
        let out = self.kubectl(&[
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase}{"\n"}{end}"#,
        ]);
        out.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let (pod, node, phase) = (it.next()?, it.next()?, it.next()?);
                (phase == "Running").then(|| (pod.to_string(), node.to_string()))
            })
            .collect()
    }

    /// Waits until exactly `count` pods of `app` are Running and returns them as `(pod, node)`;
    /// panics after `within` with the end of the trail and the logs.
    pub async fn wait_running(
        &self,
        app: &str,
        count: usize,
        within: Duration,
    ) -> Vec<(String, String)> {
        let deadline = Instant::now() + within;
        loop {
            let pods = self.running_pods(app);
            if pods.len() == count {
                return pods;
            }
            if Instant::now() > deadline {
                let events = self.events().await;
                panic!(
                    "{count} pods of {app} not Running: {pods:?}\n{}\n{}",
                    trail(&events[events.len().saturating_sub(TRAIL_ON_TIMEOUT)..]),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Applies a manifest given as YAML text.
    pub fn kubectl_apply(&self, yaml: &str) {
        let path = self
            .dir
            .join(format!("manifest-{}.yaml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, yaml).expect("write manifest");
        self.kubectl(&["create", "-f", path.to_str().unwrap_or_default()]);
    }

    /// Names of this lab's worker containers that are running.
    pub fn running_workers(&self) -> Vec<String> {
        self.worker_containers()
            .into_iter()
            .filter(|(_, state)| state == "running")
            .map(|(name, _)| name)
            .collect()
    }

    /// This lab's managed worker containers in any state, by name: (name, `running`/`exited`/`created`/…).
    pub fn worker_containers(&self) -> Vec<(String, String)> {
        self.worker_containers_on("")
    }

    /// As [`Lab::worker_containers`], on the engine at `docker_host` (empty: the machine's).
    pub fn worker_containers_on(&self, docker_host: &str) -> Vec<(String, String)> {
        let mut docker = Command::new("docker");
        if !docker_host.is_empty() {
            docker.args(["-H", docker_host]);
        }
        let out = docker
            .args(["ps", "-a", "--filter"])
            .arg(format!(
                "label=k3s-autoscaler/cluster-id={}",
                self.cluster_id
            ))
            .args([
                "--filter",
                "label=k3s-autoscaler/managed-by=k3s-autoscaler",
                "--format",
                "{{.Names}} {{.State}}",
            ])
            .output()
            .expect("docker ps");
        let mut v: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        v.sort();
        v
    }

    /// The workers of this lab that have a `<node>.node-password.k3s` secret (k3s's node password).
    pub fn node_password_secrets(&self) -> BTreeSet<String> {
        let out = self.kubectl(&[
            "get",
            "secrets",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        out.split_whitespace()
            .filter_map(|s| s.strip_suffix(".node-password.k3s"))
            .filter(|n| n.starts_with(&self.prefix))
            .map(str::to_string)
            .collect()
    }

    /// Waits until a `ClusterStateSynced` after stream index `from` has the record, Kubernetes and Docker
    /// agreeing on a number of workers in `workers`; panics with the trail after `within`.
    pub async fn settled(
        &self,
        from: usize,
        workers: std::ops::RangeInclusive<u32>,
        within: Duration,
    ) -> Vec<Envelope> {
        self.wait_for_events(
            &format!("the cluster settled at {workers:?} workers"),
            within,
            |ev| {
                find(ev, from, "ClusterStateSynced", |e| {
                    matches!(&e.event, bus::Event::ClusterStateSynced(s)
                        if workers.contains(&s.db_workers) && s.k8s_nodes == s.db_workers
                            && s.docker_containers == s.db_workers)
                })
                .is_some()
            },
        )
        .await
    }

    /// Replay identity: `autoscaler events replay --what-if --json` under this lab's own config, over
    /// the whole stream up to a moment every group had handled all of it ([`Lab::quiescent`]), must
    /// reproduce every recorded decision (0 changed, as many replayed as recorded). Panics with the readable
    /// report otherwise, and keeps the stream as JSON lines (`Envelope` fields) in the temp dir so the
    /// replay can be run again offline (every stream with [`KEEP_STREAMS`] set). Returns the
    /// report's figures.
    pub async fn assert_replay_identity(&self) -> ReplayFigures {
        let last = self.quiescent(Duration::from_secs(60)).await;
        self.assert_replay_identity_until(&self.config, &last).await
    }

    /// [`Lab::assert_replay_identity`] for the stream up to `last` (a stream id), under `config`: for a
    /// scenario whose configuration changed at a restart, the stretch recorded under the first one.
    pub async fn assert_replay_identity_until(&self, config: &Path, last: &str) -> ReplayFigures {
        let last = last.to_string();
        let what_if = |json: bool| {
            let mut cmd = Command::new(autoscaler_binary());
            cmd.arg("--config").arg(config).args([
                "events",
                "replay",
                "--what-if",
                "--from",
                "0-0",
                "--to",
                &last,
            ]);
            if json {
                cmd.arg("--json");
            }
            let out = cmd
                .env_remove("REDIS_URL")
                .env("RUST_LOG", "warn")
                .output()
                .expect("run autoscaler events replay --what-if");
            assert!(
                out.status.success(),
                "events replay --what-if failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let report: serde_json::Value =
            serde_json::from_str(what_if(true).trim()).expect("the --json report is JSON");
        let figure = |path: &[&str]| {
            path.iter()
                .try_fold(&report, |v, k| v.get(k))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or_else(|| panic!("no {path:?} in the report: {report}"))
        };
        let events: Vec<Envelope> = self
            .bus()
            .await
            .audit()
            .query(&Query {
                end: last.clone(),
                ..Query::default()
            })
            .await
            .expect("XRANGE")
            .iter()
            .filter_map(|e| e.decode().ok())
            .collect();
        let figures = ReplayFigures {
            events: events.len(),
            observations: figure(&["observations"]),
            recorded: figure(&["recorded", "decisions"]),
            replayed: figure(&["replayed", "decisions"]),
            changed: figure(&["decisions_changed"]),
        };
        eprintln!("replay identity: {figures:?}");
        let kept = std::env::temp_dir()
            .join("k3s-autoscaler-streams")
            .join(format!("{}.jsonl", self.cluster_id));
        if std::env::var_os(KEEP_STREAMS).is_some() {
            eprintln!("stream {}", save_stream(&kept, &events, config));
        }
        if figures.changed != 0 || figures.recorded != figures.replayed {
            let saved = save_stream(&kept, &events, config);
            panic!(
                "the what-if replay under the recorded config changed decisions ({figures:?}); \
                 stream {saved}\n{}\n{}",
                what_if(false),
                trail(&events[events.len().saturating_sub(TRAIL_ON_TIMEOUT)..])
            );
        }
        figures
    }

    /// Waits until every consumer group has handled and acknowledged every entry of the stream (the
    /// observers keep publishing, so this is a moment between two observations), and returns the
    /// stream's last id then: every entry up to it has its handlers' outputs before it, so the stream
    /// up to there is a complete record. Panics with the groups' state after `within`.
    pub async fn quiescent(&self, within: Duration) -> String {
        let bus = self.bus().await;
        let audit = bus.audit();
        let deadline = Instant::now() + within;
        loop {
            // Groups, the stream's end, groups again: if nothing was delivered or acknowledged in
            // between and every group had delivered the last entry with nothing pending, the stream
            // ended there with everything handled.
            let before = audit.groups().await.expect("XINFO GROUPS");
            let last = audit.last_id().await.expect("XREVRANGE");
            let after = audit.groups().await.expect("XINFO GROUPS");
            let state = |g: &[bus::GroupInfo]| -> Vec<(String, String, u64)> {
                g.iter()
                    .map(|g| (g.name.clone(), g.last_delivered_id.clone(), g.pending))
                    .collect()
            };
            if let Some(last) = last {
                let done = !after.is_empty()
                    && state(&before) == state(&after)
                    && after
                        .iter()
                        .all(|g| g.pending == 0 && g.last_delivered_id == last);
                if done {
                    return last;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the consumer groups never caught up with the stream within {within:?}: {:?}\n{}",
                state(&after),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The replicas' logs (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.replicas.len() {
            let text = std::fs::read_to_string(self.dir.join(format!("replica-{i}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- replica-{i} (last lines) ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.replicas {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Remove the lab's containers, volumes and network even when the test failed. The docker CLI:
        // a Drop cannot await, and may run while the test's runtime is unwinding.
        let label = format!("label=k3s-autoscaler/cluster-id={}", self.cluster_id);
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-fv"])
                .args(&ids)
                .output();
        }
        let _ = Command::new("docker")
            .args(["volume", "prune", "-f", "--filter", &label])
            .output();
        let _ = Command::new("docker")
            .args(["network", "rm", &self.env.network])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Set (to anything): [`Lab::assert_replay_identity`] keeps every stream it checks, not only those
/// that fail, in `<temp dir>/k3s-autoscaler-streams/`.
pub const KEEP_STREAMS: &str = "E2E_KEEP_STREAMS";

/// What [`Lab::assert_replay_identity`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayFigures {
    /// Entries on the stream.
    pub events: usize,
    /// Recorded observations the replay ran.
    pub observations: u64,
    /// Decisions recorded, replayed, and changed between the two.
    pub recorded: u64,
    pub replayed: u64,
    pub changed: u64,
}

/// Writes `events` as JSON lines of their stream fields, and beside them (`.yaml`) the `config` they
/// were recorded under; returns where (or why not).
fn save_stream(path: &Path, events: &[Envelope], config: &Path) -> String {
    let lines: String = events
        .iter()
        .map(|e| {
            let fields: serde_json::Map<String, serde_json::Value> = e
                .to_fields()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            format!("{}\n", serde_json::Value::from(fields))
        })
        .collect();
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, lines))
        .and_then(|()| std::fs::copy(config, path.with_extension("yaml")).map(drop));
    match written {
        Ok(()) => format!("kept in {} (config: .yaml)", path.display()),
        Err(e) => format!("not kept ({}: {e})", path.display()),
    }
}

/// The trail as lines, for failure messages.
pub fn trail(events: &[Envelope]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {:<24} {:<22} {} <- {}  {}",
                bus::envelope::format_timestamp(e.timestamp),
                e.event_type(),
                e.source,
                &e.event_id.to_string()[..8],
                e.causation_id
                    .map(|c| c.to_string()[..8].to_string())
                    .unwrap_or_default(),
                e.event.data_json()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn config_yaml(
    o: &LabOptions,
    cluster_id: &str,
    prefix: &str,
    redis: &LabRedis,
    env: &LabEnv,
) -> String {
    format!(
        r#"autoscaler:
  cluster_id: "{cluster_id}"
  limits:
    min_nodes: {min}
    max_nodes: {max}
  enforcement:
    auto_scale_to_min: true
    min_violation_check_interval: 2
    emergency_scale_threshold: 2
  events:
    event_bus:
      type: "redis_streams"
      stream_name: "{stream}"
      max_stream_length: 10000
{redis_lines}      claim_idle: 5s
      block: 1s
    handlers: ["MetricsListener", "ScalingDecisionEngine", "NodeManager", "MinimumNodeEnforcer", "StateSynchronizer"]
  thresholds:
    consecutive_periods: 2
  scaling:
    underutilized_for: {underutilized_for}s
    scale_up_cooldown: 3s
    scale_down_cooldown: 3s
    max_node_provision_time: {provision}s
    drain_timeout: 30s
{expander}  workers:
    name_prefix: "{prefix}"
    image: "{image}"
    network: "{network}"
    k3s_url: "{k3s_url}"
    privileged: false
    restart_policy: "no"
    cpu: 1.0
    memory: "1Gi"
    warm_pool: {warm_pool}
    buffer: {{nodes: {buffer_nodes}}}
  schedules: {schedules}
  metrics:
    interval: 2s
  kubernetes:
    kubeconfig: "{kubeconfig}"
    pending_batch_idle: 500ms
    pending_batch_max: 2s
    placement_interval: {placement}s
    placement_snapshot_interval: {placement_snapshot}s
  leader:
    lease_ttl: 3s
  docker:
    host: "{docker_host}"
    hosts: {docker_hosts}
  http:
    listen: "127.0.0.1:0"
{pools}"#,
        stream = redis.stream(),
        redis_lines = redis.config_lines(),
        min = o.min_nodes,
        max = o.max_nodes,
        image = env.options.image,
        network = env.network,
        k3s_url = env.network_url,
        kubeconfig = env.kubeconfig.display(),
        underutilized_for = o.underutilized_for.as_secs(),
        placement = o.placement_interval.as_secs().max(1),
        docker_host = o.docker_host,
        expander = if o.expander.is_empty() {
            String::new()
        } else {
            format!("    expander: \"{}\"\n", o.expander)
        },
        docker_hosts = serde_json::Value::from(
            o.docker_hosts
                .iter()
                .map(|h| {
                    let mut host = serde_json::json!({"name": h.name, "host": h.host, "network": h.network, "k3s_url": h.k3s_url});
                    if let Some(c) = &h.tls {
                        host["tls"] = serde_json::json!({"ca_file": c.ca, "cert_file": c.client_cert, "key_file": c.client_key});
                    }
                    if let Some(k) = &h.ssh_key_file {
                        host["ssh_key_file"] = serde_json::json!(k);
                    }
                    host
                })
                .collect::<Vec<_>>()
        ),
        provision = o.max_node_provision_time.as_secs().max(1),
        warm_pool = o.warm_pool,
        buffer_nodes = o.buffer_nodes,
        schedules = serde_json::Value::from(
            o.schedules
                .iter()
                .map(|(cron, d, min)| {
                    serde_json::json!({"cron": cron, "duration": format!("{}s", d.as_secs()), "min_nodes": min})
                })
                .collect::<Vec<_>>()
        ),
        placement_snapshot = o.placement_interval.as_secs().max(600),
        pools = if o.pools.is_empty() {
            String::new()
        } else {
            let entries: Vec<String> = o
                .pools
                .iter()
                .map(|p| format!("    - {}\n", p.yaml()))
                .collect();
            format!("  pools:\n{}", entries.concat())
        },
    )
}

/// The first event of `event_type` after index `from` satisfying `pred`, with its index. Panics if
/// `event_type` is not in `bus::EVENT_TYPES`, so a misspelt name fails instead of finding nothing.
pub fn find<'a>(
    events: &'a [Envelope],
    from: usize,
    event_type: &str,
    pred: impl Fn(&Envelope) -> bool,
) -> Option<(usize, &'a Envelope)> {
    assert!(
        bus::EVENT_TYPES.contains(&event_type),
        "{event_type:?} is not an event type; the catalogue is {:?}",
        bus::EVENT_TYPES
    );
    events
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, e)| e.event_type() == event_type && pred(e))
}
