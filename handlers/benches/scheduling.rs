//! The scheduling simulation at 1,000 nodes (2 pools), 30,000 placed pods and 10,000 pending pods of
//! 50 Deployments: the time to decode the pending-pods JSON beside the scale-up decision, a
//! scale-down pass over every node, and the encoded sizes the stream would carry.
//!
//! `cargo bench -p handlers --bench scheduling`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bus::scheduling::{
    LabelSelector, NodeSelectorOperator, NodeSelectorRequirement, NodeSelectorTerm, NodeSpec,
    PodSpec, Resources, Taint, TaintEffect, Toleration,
};
use handlers::scheduling::{scale_down, scale_up, Expander, PoolTemplate, Snapshot};

const MI: u64 = 1 << 20;
const GI: u64 = 1 << 30;
const RUNS: usize = 20;

fn pools() -> Vec<PoolTemplate> {
    let mut general = PoolTemplate::new("general", 3, 1600, Resources::new(4000, 16 * GI, 110));
    general.labels.insert("tier".into(), "general".into());
    let mut highmem = PoolTemplate::new("highmem", 1, 500, Resources::new(8000, 64 * GI, 110));
    highmem.labels.insert("memory".into(), "high".into());
    highmem
        .taints
        .push(Taint::new("dedicated", "highmem", TaintEffect::NoSchedule));
    highmem.priority = 10;
    vec![general, highmem]
}

/// Deployment `d`'s pod `i`; every fifth Deployment wants highmem, every seventh spreads its
/// replicas one per node, every third of the rest asks for the general tier by affinity.
fn pod(prefix: &str, d: usize, i: usize, cpu: u64, mem: u64) -> PodSpec {
    let mut p = PodSpec::new(format!("ns{}", d % 5), format!("{prefix}{d:02}-{i:05}"));
    p.cpu_millis = cpu;
    p.memory_bytes = mem;
    p.owner_kind = Some("ReplicaSet".into());
    p.labels.insert("app".into(), format!("{prefix}{d:02}"));
    p.labels
        .insert("pod-template-hash".into(), format!("{:08x}", d * 7919));
    if d.is_multiple_of(5) {
        p.node_selector.insert("memory".into(), "high".into());
        p.tolerations
            .push(Toleration::equal("dedicated", "highmem"));
    } else if d.is_multiple_of(3) {
        p.required_affinity.push(NodeSelectorTerm {
            match_expressions: vec![NodeSelectorRequirement::new(
                "tier",
                NodeSelectorOperator::In,
                &["general"],
            )],
        });
    }
    if d.is_multiple_of(7) {
        p.anti_affinity.push(LabelSelector::labels(&[(
            "app",
            &format!("{prefix}{d:02}"),
        )]));
    }
    p
}

fn build() -> (Vec<NodeSpec>, Vec<PodSpec>, Vec<PodSpec>) {
    let pools = pools();
    let nodes: Vec<NodeSpec> = (0..1000)
        .map(|i| {
            let pool = if i < 800 { &pools[0] } else { &pools[1] };
            pool.node(format!("{}-{i:04}", pool.name))
        })
        .collect();
    // 30 pods a node: a DaemonSet pod and 29 of small Deployments that fit the node.
    let mut placed = Vec::with_capacity(30_000);
    let mut counter = vec![0usize; 50];
    for (n, node) in nodes.iter().enumerate() {
        let mut ds = PodSpec::new("kube-system", format!("agent-{n:04}"));
        ds.cpu_millis = 50;
        ds.memory_bytes = 64 * MI;
        ds.owner_kind = Some("DaemonSet".into());
        ds.node_name = Some(node.name.clone());
        placed.push(ds);
        let highmem = n >= 800;
        let mut spread_here = false;
        let mut k = 0;
        let mut d = n % 50;
        while k < 29 {
            // Highmem nodes carry the highmem Deployments, general nodes the others; a spreading
            // Deployment at most once a node, as the scheduler would have placed it.
            let spread = d % 7 == 0;
            if (d % 5 == 0) == highmem && !(spread && spread_here) {
                let cpu = 30 + (d as u64 % 6) * 15;
                let mem = (64 + (d as u64 % 8) * 48) * MI;
                let mut p = pod("placed", d, counter[d], cpu, mem);
                counter[d] += 1;
                p.node_name = Some(node.name.clone());
                placed.push(p);
                spread_here |= spread;
                k += 1;
            }
            d = (d + 1) % 50;
        }
    }
    // 10,000 pending pods: 50 Deployments of 200 replicas with varied requests.
    let mut pending = Vec::with_capacity(10_000);
    for d in 0..50 {
        let cpu = 50 + (d as u64 % 10) * 50;
        let mem = (128 + (d as u64 % 12) * 160) * MI;
        for i in 0..200 {
            pending.push(pod("web", d, i, cpu, mem));
        }
    }
    (nodes, placed, pending)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let pools = pools();
    let (nodes, placed, pending) = build();
    let pending_json = serde_json::to_string(&pending).expect("pods encode");
    let placed_json = serde_json::to_string(&placed).expect("pods encode");
    let nodes_json = serde_json::to_string(&nodes).expect("nodes encode");

    let mut decode = Vec::new();
    let mut build_t = Vec::new();
    let mut up = Vec::new();
    let mut down = Vec::new();
    let candidates: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let mut last = (0, 0, 0, 0);
    for _ in 0..RUNS {
        let t = Instant::now();
        let decoded: Vec<PodSpec> = serde_json::from_str(&pending_json).expect("pods decode");
        decode.push(t.elapsed());
        assert_eq!(decoded.len(), 10_000);

        let t = Instant::now();
        let snapshot = Snapshot::from_parts(
            nodes.iter().cloned(),
            placed.iter().cloned(),
            decoded,
            BTreeMap::from([("general".to_string(), 5)]),
        );
        build_t.push(t.elapsed());

        let t = Instant::now();
        let plan = scale_up(&snapshot, &pools, Expander::LeastWaste, 1000);
        up.push(t.elapsed());
        last.0 = plan.total_new_nodes();
        last.1 = plan.blocked.iter().map(|b| b.pods.len()).sum();
        black_box(&plan);

        let t = Instant::now();
        let plan = scale_down(&snapshot, &pools, &candidates, 1000);
        down.push(t.elapsed());
        last.2 = plan.removable.len();
        last.3 = plan.blocked.len();
        black_box(&plan);
    }
    println!("scheduling simulation: 1,000 nodes (2 pools), 30,000 placed pods, 10,000 pending pods of 50 Deployments; medians of {RUNS} runs");
    println!(
        "  decode pending-pods JSON (10,000 pods) : {}  (reference)",
        ms(median(decode))
    );
    println!("  scale-up decision                      : {}  (target <= 10 ms; {} new nodes, {} pods blocked)", ms(median(up)), last.0, last.1);
    println!(
        "  scale-down pass over all 1,000 nodes   : {}  (target <= 50 ms; {} removable, {} stay)",
        ms(median(down)),
        last.2,
        last.3
    );
    println!(
        "  snapshot build (clone + place 30,000)  : {}",
        ms(median(build_t))
    );
    println!("  encoded: pending event {} bytes ({} B/pod), placed pods {} bytes ({} B/pod), nodes {} bytes ({} B/node)",
        pending_json.len(), pending_json.len() / pending.len(),
        placed_json.len(), placed_json.len() / placed.len(),
        nodes_json.len(), nodes_json.len() / nodes.len());
}
