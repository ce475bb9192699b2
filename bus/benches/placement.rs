//! The stream budget of the placement at 1,000 nodes × 30 pods: what a steady hour adds to the
//! stream (the placement's snapshots and deltas, and beside them the other periodic observations at
//! that size), in bytes as the entries are written (every field of `Envelope::to_fields`).
//!
//! Steady state, stated: every `placement_interval` (5 s) some pods are replaced (a rolling update
//! or a crash loop somewhere: 1 % of all pods a minute, 300 a minute), nodes do not change; a
//! snapshot every `placement_snapshot_interval` (10 min); `MetricsSampled` with every node every
//! 15 s (`metrics.interval`), `ClusterObserved` every 60 s (the StateSynchronizer's period). The
//! budget is 1 MB a minute for all of it.
//!
//! References measured in the same run: the snapshot written as plain `PodSpec`s (no groups), and
//! the time to encode/decode the same pods with bare serde_json beside the placement's own
//! encode (tracker + entry fields) and fold (decode + apply).
//!
//! `cargo bench -p bus --bench placement`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bus::event::{ClusterObserved, MetricsSampled, NodeUsage, ObservedNode};
use bus::placement::{PartSize, Placement, PlacementTracker};
use bus::scheduling::{NodeSpec, PodRef, PodSpec, Resources, Toleration, POOL_LABEL};
use bus::{Envelope, Event, Metadata};

const NODES: usize = 1_000;
const PODS_PER_NODE: usize = 30;
const TICK: Duration = Duration::from_secs(5);
const SNAPSHOT_EVERY: Duration = Duration::from_secs(600);
const CHURN_PER_MINUTE: usize = NODES * PODS_PER_NODE / 100;
const MINUTES: u64 = 60;

fn node(i: usize) -> NodeSpec {
    let name = format!("k3s-worker-{i}");
    let labels: BTreeMap<String, String> = [
        ("beta.kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/instance-type", "k3s"),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/os", "linux"),
        ("node.kubernetes.io/instance-type", "k3s"),
        (POOL_LABEL, "general"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([
        ("kubernetes.io/hostname".to_string(), name.clone()),
        ("k3s.io/hostname".to_string(), name.clone()),
        (
            "k3s.io/internal-ip".to_string(),
            format!("10.42.{}.{}", i / 250, i % 250),
        ),
    ])
    .collect();
    NodeSpec {
        name,
        pool: Some("general".into()),
        allocatable: Resources::new(8000, 32 << 30, 110),
        labels,
        taints: Vec::new(),
        cordoned: false,
        ready: true,
    }
}

/// Pod `n` of Deployment `d` (1,000 Deployments of 30 replicas), on `node`.
fn pod(d: usize, n: u64, node: &str) -> PodSpec {
    let app = format!("service-{d}");
    let hash = format!("{:010x}", d * 7919 + 12345);
    let mut p = PodSpec::new(format!("team-{}", d % 20), format!("{app}-{hash}-{n:05x}"));
    p.cpu_millis = 100 + (d as u64 % 8) * 50;
    p.memory_bytes = (128 + (d as u64 % 4) * 128) << 20;
    p.labels.insert("app".into(), app);
    p.labels.insert("pod-template-hash".into(), hash);
    p.owner_kind = Some("ReplicaSet".into());
    if d.is_multiple_of(10) {
        p.tolerations.push(Toleration::exists("dedicated"));
    }
    p.node_name = Some(node.into());
    p
}

struct Cluster {
    nodes: BTreeMap<String, NodeSpec>,
    pods: BTreeMap<PodRef, PodSpec>,
    next: u64,
}

impl Cluster {
    fn new() -> Self {
        let nodes: BTreeMap<String, NodeSpec> = (0..NODES)
            .map(|i| (node(i).name.clone(), node(i)))
            .collect();
        let names: Vec<String> = nodes.keys().cloned().collect();
        let mut pods = BTreeMap::new();
        let mut next = 0u64;
        for d in 0..NODES {
            for r in 0..PODS_PER_NODE {
                let p = pod(d, next, &names[(d * 7 + r * 13) % NODES]);
                next += 1;
                pods.insert(p.pod_ref(), p);
            }
        }
        Cluster { nodes, pods, next }
    }

    /// Replaces `count` pods (deterministic choice): one removed, a new one of its Deployment on
    /// another node.
    fn churn(&mut self, count: usize) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for _ in 0..count {
            let k = (self.next as usize * 2_654_435_761) % self.pods.len();
            let Some(victim) = self.pods.keys().nth(k).cloned() else {
                return;
            };
            let old = self.pods.remove(&victim).expect("present");
            let d: usize = old.labels["app"]["service-".len()..]
                .parse()
                .expect("app label");
            let p = pod(d, self.next, &names[self.next as usize % NODES]);
            self.next += 1;
            self.pods.insert(p.pod_ref(), p);
        }
    }

    fn state(&self) -> Placement {
        Placement::from_state(self.nodes.clone(), self.pods.clone())
    }
}

fn entry_bytes(e: impl Into<Event>) -> usize {
    let env = Envelope::root("placement_observer", e, Metadata::new("bench", "local"));
    env.to_fields().iter().map(|(k, v)| k.len() + v.len()).sum()
}

fn mb(bytes: f64) -> String {
    format!("{:.3} MB", bytes / 1e6)
}

fn main() {
    let mut cluster = Cluster::new();
    let mut tracker = PlacementTracker::new();

    // One snapshot: size and time, beside plain PodSpecs with bare serde_json.
    let t = Instant::now();
    let parts = tracker.snapshot("s0", cluster.state(), PartSize::default());
    let fields: Vec<Vec<(&'static str, String)>> = parts
        .iter()
        .map(|p| {
            Envelope::root(
                "placement_observer",
                p.clone(),
                Metadata::new("bench", "local"),
            )
            .to_fields()
        })
        .collect();
    let encode = t.elapsed();
    let snapshot_bytes: usize = fields
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    let plain: Vec<&PodSpec> = cluster.pods.values().collect();
    let t = Instant::now();
    let plain_json = serde_json::to_string(&plain).expect("json");
    let bare_encode = t.elapsed();
    let t = Instant::now();
    let back: Vec<PodSpec> = serde_json::from_str(&plain_json).expect("json");
    let bare_decode = t.elapsed();
    assert_eq!(back.len(), plain.len());
    let t = Instant::now();
    let mut folded = Placement::new();
    for f in &fields {
        let env = Envelope::from_pairs(f).expect("decodes");
        match &env.event {
            Event::PlacementSnapshot(s) => folded.apply_snapshot(s),
            other => panic!("unexpected {}", other.event_type()),
        }
    }
    let fold = t.elapsed();
    assert!(folded.is_known());
    assert_eq!(folded.pods().len(), NODES * PODS_PER_NODE);

    println!(
        "placement at {NODES} nodes x {PODS_PER_NODE} pods ({} pods)",
        NODES * PODS_PER_NODE
    );
    println!(
        "  snapshot: {} in {} entries ({:.0} B/pod); as plain PodSpecs: {} ({:.0} B/pod)",
        mb(snapshot_bytes as f64),
        parts.len(),
        snapshot_bytes as f64 / (NODES * PODS_PER_NODE) as f64,
        mb(plain_json.len() as f64),
        plain_json.len() as f64 / (NODES * PODS_PER_NODE) as f64
    );
    println!(
        "  snapshot encode (groups + entry fields) {:.1} ms | bare serde_json encode of the PodSpecs {:.1} ms",
        encode.as_secs_f64() * 1e3,
        bare_encode.as_secs_f64() * 1e3
    );
    println!(
        "  snapshot fold (decode entries + apply) {:.1} ms | bare serde_json decode of the PodSpecs {:.1} ms",
        fold.as_secs_f64() * 1e3,
        bare_decode.as_secs_f64() * 1e3
    );

    // A steady hour.
    let ticks_per_minute = (60 / TICK.as_secs()) as usize;
    let ticks = MINUTES as usize * ticks_per_minute;
    let snapshot_every = (SNAPSHOT_EVERY.as_secs() / TICK.as_secs()) as usize;
    let (mut snapshots, mut deltas, mut delta_entries) = (0usize, 0usize, 0usize);
    let mut diff_time = Duration::ZERO;
    for i in 1..=ticks {
        cluster.churn(CHURN_PER_MINUTE / ticks_per_minute);
        let t = Instant::now();
        if i % snapshot_every == 0 {
            snapshots += tracker
                .snapshot(&format!("s{i}"), cluster.state(), PartSize::default())
                .into_iter()
                .map(entry_bytes)
                .sum::<usize>();
        } else if let Some(c) = tracker.change(cluster.state()) {
            deltas += entry_bytes(c);
            delta_entries += 1;
        }
        diff_time += t.elapsed();
    }
    let names: Vec<String> = cluster.nodes.keys().cloned().collect();
    let sample = MetricsSampled {
        workers: NODES as u32,
        cpu_avg: 41.7,
        memory_avg: 55.2,
        source: "docker_stats".into(),
        nodes: names
            .iter()
            .enumerate()
            .map(|(i, n)| NodeUsage {
                node_name: n.clone(),
                cpu: 20.0 + (i % 50) as f64 * 1.37,
                memory: 30.0 + (i % 40) as f64 * 1.11,
            })
            .collect(),
    };
    let metrics = entry_bytes(sample) * 4 * MINUTES as usize;
    let observed = entry_bytes(ClusterObserved {
        k8s_nodes: names
            .iter()
            .map(|n| ObservedNode {
                name: n.clone(),
                ready: true,
                scale_down_disabled: false,
            })
            .collect(),
        docker_containers: names.clone(),
        unreachable: Vec::new(),
    }) * MINUTES as usize;
    let per_min = |b: usize| b as f64 / MINUTES as f64;
    let placement = per_min(snapshots + deltas);
    let total = per_min(snapshots + deltas + metrics + observed);
    println!(
        "steady hour ({CHURN_PER_MINUTE} pods replaced a minute, a snapshot every {}):",
        humantime(SNAPSHOT_EVERY)
    );
    println!("  placement snapshots  {}/min", mb(per_min(snapshots)));
    println!(
        "  placement deltas     {}/min ({delta_entries} entries, {:.0} B each; diff {:.1} ms a tick)",
        mb(per_min(deltas)),
        deltas as f64 / delta_entries.max(1) as f64,
        diff_time.as_secs_f64() * 1e3 / ticks as f64
    );
    println!("  placement total      {}/min", mb(placement));
    println!(
        "  MetricsSampled       {}/min (every node, every 15 s)",
        mb(per_min(metrics))
    );
    println!(
        "  ClusterObserved      {}/min (every 60 s)",
        mb(per_min(observed))
    );
    println!(
        "  stream growth        {}/min (budget 1 MB/min: {})",
        mb(total),
        if total <= 1e6 { "within" } else { "OVER" }
    );
}

fn humantime(d: Duration) -> String {
    format!("{} min", d.as_secs() / 60)
}
