//! Node pools: pending pods get workers of the pool that can run them, named per pool; pods no
//! pool can run get none and one `ScaleUpBlocked`; pool and cluster maximums hold; the per-pool
//! minimum holds on scale-down.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bus::event::*;
use bus::scheduling::{PodSpec, Resources, Taint, TaintEffect};
use bus::Event;
use common::*;
use handlers::policy::PoolTemplate;
use handlers::simulate::Simulation;
use handlers::{Command, Policy};
use proptest::prelude::*;

const GI: u64 = 1 << 30;

/// `general` (2 CPU, 2 GiB, max 4) and `highmem` (2 CPU, 8 GiB, `tier=highmem`, tainted
/// `dedicated=highmem:NoSchedule`, max `highmem_max`); the cluster 2..6.
fn two_pools(highmem_max: u32) -> Policy {
    let mut policy = Policy::default();
    let general = PoolTemplate::new("general", 2, 4, Resources::new(2000, 2 * GI, 110));
    let mut highmem =
        PoolTemplate::new("highmem", 0, highmem_max, Resources::new(2000, 8 * GI, 110));
    highmem.labels = BTreeMap::from([("tier".to_string(), "highmem".to_string())]);
    highmem.taints = vec![Taint::new("dedicated", "highmem", TaintEffect::NoSchedule)];
    policy.pools = vec![general, highmem];
    policy
}

/// A simulation with `n` Ready `general` workers (`k3s-worker-general-1..n`).
fn with_general(policy: Policy, n: u32) -> Simulation {
    let mut sim = Simulation::new(policy, t0());
    for i in 1..=n {
        let name = format!("k3s-worker-general-{i}");
        sim.world.containers.insert(name.clone());
        sim.world.nodes.insert(name, true);
    }
    sim.observe_cluster();
    sim
}

fn highmem_pod(name: &str) -> PodSpec {
    PodBuilder::new(name)
        .cpu(500)
        .memory_bytes(4 * GI)
        .select("tier", "highmem")
        .tolerate("dedicated", "highmem")
        .build()
}

/// The pool of every `CreateWorker`, by worker name.
fn created(sim: &Simulation) -> Vec<(String, String)> {
    sim.commands
        .iter()
        .filter_map(|i| match &i.command {
            Command::CreateWorker { name, pool, .. } => Some((name.clone(), pool.clone())),
            _ => None,
        })
        .collect()
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[test]
fn pods_get_workers_of_the_pool_that_can_run_them() {
    let mut sim = with_general(two_pools(2), 2);
    let plain = PodBuilder::new("web").cpu(1500).memory_mi(256).build();
    sim.observe(
        "pending_pods_watcher",
        pending(vec![highmem_pod("db"), plain], 2),
    );
    assert_eq!(
        created(&sim),
        [
            pair("k3s-worker-general-3", "general"),
            pair("k3s-worker-highmem-1", "highmem")
        ]
    );
    // One decision per pool, each absolute: the cluster's size and the pool's.
    let decisions: Vec<(Option<String>, u32, Option<u32>)> = events_of(&sim, "ScaleUpDecision")
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpDecision(d) => Some((d.pool.clone(), d.target_workers, d.pool_target)),
            _ => None,
        })
        .collect();
    assert_eq!(
        decisions,
        [
            (Some("general".to_string()), 3, Some(3)),
            (Some("highmem".to_string()), 4, Some(1))
        ]
    );
    let started: Vec<Option<String>> = events_of(&sim, "ScaleUpStarted")
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpStarted(s) => Some(s.pool.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(started, [Some("general".into()), Some("highmem".into())]);
    sim.advance(Duration::from_secs(60));
    let w = &sim.model.workers;
    assert_eq!(w["k3s-worker-highmem-1"].pool, "highmem");
    assert_eq!(w["k3s-worker-general-3"].pool, "general");
    assert_eq!(w.current_in("highmem"), 1);
    assert_eq!(w.current_in("general"), 3);
    let created_pools: Vec<Option<String>> = events_of(&sim, "NodeCreated")
        .iter()
        .filter_map(|e| match &e.event {
            Event::NodeCreated(c) => Some(c.pool.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        created_pools,
        [Some("general".into()), Some("highmem".into())]
    );
    assert!(scale_up_blocks(&sim).is_empty());
    // Each pool keeps its own sequence.
    assert_eq!(
        sim.model.next_names_in("highmem", 1),
        ["k3s-worker-highmem-2"]
    );
    assert_eq!(
        sim.model.next_names_in("general", 1),
        ["k3s-worker-general-4"]
    );
}

#[test]
fn a_pod_selecting_a_label_no_pool_has_gets_no_worker_and_one_block() {
    let mut sim = with_general(two_pools(2), 2);
    let ssd = || {
        PodBuilder::new("ssd")
            .cpu(100)
            .memory_mi(64)
            .select("disktype", "ssd")
            .build()
    };
    for _ in 0..3 {
        sim.observe("pending_pods_watcher", pending(vec![ssd()], 1));
        sim.advance(Duration::from_secs(2));
    }
    assert!(created(&sim).is_empty());
    assert!(events_of(&sim, "ScaleUpDecision").is_empty());
    let blocks = scale_up_blocks(&sim);
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0].reason, "no_pool_fits");
    assert_eq!(blocks[0].pods, ["default/ssd"]);
    assert_eq!(
        blocks[0].predicates,
        BTreeMap::from([
            pair("general", "node_selector"),
            pair("highmem", "node_selector")
        ])
    );
    assert!(events_of(&sim, "ScalingActionFailed").is_empty());
    let alerts = sim
        .commands
        .iter()
        .filter(|i| matches!(&i.command, Command::Notify { alert } if alert.event_type == "ScaleUpBlocked"))
        .count();
    assert_eq!(alerts, 1, "alerted once");
}

#[test]
fn a_pod_too_large_for_every_pool_gets_no_worker_and_one_block() {
    let mut sim = with_general(two_pools(2), 2);
    let huge = || {
        PodBuilder::new("huge")
            .cpu(64_000)
            .memory_mi(64)
            .tolerate("dedicated", "highmem")
            .build()
    };
    for _ in 0..3 {
        sim.observe("pending_pods_watcher", pending(vec![huge()], 1));
        sim.advance(Duration::from_secs(2));
    }
    assert!(created(&sim).is_empty());
    let blocks = scale_up_blocks(&sim);
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0].reason, "no_pool_fits");
    assert_eq!(
        blocks[0].predicates,
        BTreeMap::from([pair("general", "resources"), pair("highmem", "resources")])
    );
}

#[test]
fn a_block_is_published_again_when_its_reason_changes() {
    let mut sim = with_general(two_pools(2), 2);
    let ssd = PodBuilder::new("ssd").select("disktype", "ssd").build();
    sim.observe("pending_pods_watcher", pending(vec![ssd.clone()], 1));
    // Bound elsewhere, then pending again: a pod no longer reported is forgotten.
    sim.observe("pending_pods_watcher", pending(vec![], 0));
    sim.observe("pending_pods_watcher", pending(vec![ssd], 1));
    assert_eq!(scale_up_blocks(&sim).len(), 2);
}

#[test]
fn the_pool_maximum_holds() {
    let mut sim = with_general(two_pools(1), 2);
    let big = |n: &str| {
        PodBuilder::new(n)
            .cpu(500)
            .memory_bytes(6 * GI)
            .select("tier", "highmem")
            .tolerate("dedicated", "highmem")
            .build()
    };
    for _ in 0..3 {
        sim.observe("pending_pods_watcher", pending(vec![big("a"), big("b")], 2));
        sim.advance(Duration::from_secs(2));
    }
    assert_eq!(created(&sim), [pair("k3s-worker-highmem-1", "highmem")]);
    let blocks = scale_up_blocks(&sim);
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0].reason, "pool_max_reached");
    assert_eq!(blocks[0].pool.as_deref(), Some("highmem"));
    assert_eq!(blocks[0].pods, ["default/b"]);
    assert!(sim.model.workers.planned_in("highmem") <= 1);
}

#[test]
fn the_cluster_maximum_holds() {
    let mut policy = two_pools(2);
    policy.limits.max_nodes = 3;
    let mut sim = with_general(policy, 2);
    let pods: Vec<PodSpec> = (0..3)
        .map(|i| {
            PodBuilder::new(&format!("p{i}"))
                .cpu(1500)
                .memory_mi(1)
                .build()
        })
        .collect();
    sim.observe("pending_pods_watcher", pending(pods.clone(), 3));
    assert_eq!(created(&sim), [pair("k3s-worker-general-3", "general")]);
    let blocks = scale_up_blocks(&sim);
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0].reason, "max_nodes_reached");
    assert_eq!(blocks[0].pods, ["default/p1", "default/p2"]);
    sim.advance(Duration::from_secs(60));
    // Still pending once the new worker is in: the cluster is full, nothing more, nothing said again.
    sim.observe("pending_pods_watcher", pending(pods[1..].to_vec(), 2));
    assert_eq!(created(&sim).len(), 1);
    assert_eq!(scale_up_blocks(&sim).len(), 1);
    assert!(sim.model.planned_workers() <= 3);
}

/// `with_general(policy, 2)` plus one Ready `highmem` worker.
fn general_and_highmem(policy: Policy) -> Simulation {
    let mut sim = Simulation::new(policy, t0());
    for name in [
        "k3s-worker-general-1",
        "k3s-worker-general-2",
        "k3s-worker-highmem-1",
    ] {
        sim.world.containers.insert(name.to_string());
        sim.world.nodes.insert(name.to_string(), true);
    }
    sim.observe_cluster();
    sim
}

#[test]
fn a_scale_down_keeps_each_pools_minimum() {
    // general is at its minimum (2): the highmem worker goes although general-2 ranks first.
    let mut sim = general_and_highmem(two_pools(2));
    sample_for(&mut sim, 330, 10.0, 10.0);
    let d = first(&sim.log, "ScaleDownDecision");
    let Event::ScaleDownDecision(d) = &d.event else {
        unreachable!()
    };
    assert_eq!(d.nodes, ["k3s-worker-highmem-1"]);
    assert_eq!(d.pool.as_deref(), Some("highmem"));
    sim.advance(Duration::from_secs(30));
    let removed: Vec<Option<String>> = events_of(&sim, "NodeRemoved")
        .iter()
        .filter_map(|e| match &e.event {
            Event::NodeRemoved(r) => Some(r.pool.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(removed, [Some("highmem".to_string())]);

    // Every pool at its minimum: nothing goes, and the block names the pool.
    let mut policy = two_pools(2);
    policy.pools[1].min_nodes = 1;
    let mut sim = general_and_highmem(policy);
    sample_for(&mut sim, 330, 10.0, 10.0);
    assert!(events_of(&sim, "ScaleDownDecision").is_empty());
    let blocks: Vec<(String, Option<String>, u32)> = events_of(&sim, "ScaleDownBlocked")
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleDownBlocked(b) => Some((b.reason.clone(), b.pool.clone(), b.min_workers)),
            _ => None,
        })
        .collect();
    assert!(!blocks.is_empty());
    assert!(
        blocks.iter().all(|b| *b
            == (
                "min_nodes_reached".to_string(),
                Some("general".to_string()),
                2
            )),
        "{blocks:?}"
    );
}

#[test]
fn the_node_manager_refuses_a_decision_below_a_pools_minimum() {
    let mut sim = general_and_highmem(two_pools(2));
    sim.observe(
        "operator",
        ScaleDownDecision {
            current_workers: 3,
            target_workers: 2,
            nodes: vec!["k3s-worker-general-1".into()],
            reason: "test".into(),
            pool: Some("general".into()),
        },
    );
    assert!(events_of(&sim, "ScaleDownStarted").is_empty());
    let b = first(&sim.log, "ScaleDownBlocked");
    let Event::ScaleDownBlocked(b) = &b.event else {
        unreachable!()
    };
    assert_eq!(b.reason, "min_nodes_reached");
    assert_eq!(b.pool.as_deref(), Some("general"));
}

#[test]
fn a_pool_below_its_minimum_is_topped_up() {
    let mut policy = two_pools(2);
    policy.limits.min_nodes = 1;
    let mut sim = with_general(policy, 1);
    assert_eq!(created(&sim), [pair("k3s-worker-general-2", "general")]);
    let d = first(&sim.log, "ScaleUpDecision");
    let Event::ScaleUpDecision(d) = &d.event else {
        unreachable!()
    };
    assert_eq!(d.pool.as_deref(), Some("general"));
    assert_eq!(d.pool_target, Some(2));
    assert_eq!(d.reason, "minimum_violation");
    // Once it is in, nothing more.
    sim.advance(Duration::from_secs(120));
    sim.observe_cluster();
    assert_eq!(created(&sim).len(), 1);
    assert_eq!(sim.model.workers.current_in("general"), 2);
}

/// A random pending pod: its requests, whether it selects `highmem` (or a label no pool has) and
/// whether it tolerates the `highmem` taint.
fn any_pod() -> impl Strategy<Value = (u64, u64, u8, bool)> {
    (0u64..4000, 0u64..10 * 1024, 0u8..3, any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn no_worker_is_created_for_a_pod_its_pool_cannot_run(
        pods in proptest::collection::vec(any_pod(), 1..8),
        highmem_max in 0u32..3,
    ) {
        let policy = two_pools(highmem_max);
        let pools = policy.pools.clone();
        let mut sim = with_general(policy, 2);
        let specs: Vec<PodSpec> = pods
            .iter()
            .enumerate()
            .map(|(i, (cpu, mem_mi, select, tolerate))| {
                let mut b = PodBuilder::new(&format!("p{i}")).cpu(*cpu).memory_mi(*mem_mi);
                b = match select {
                    1 => b.select("tier", "highmem"),
                    2 => b.select("disktype", "ssd"),
                    _ => b,
                };
                if *tolerate {
                    b = b.tolerate("dedicated", "highmem");
                }
                b.build()
            })
            .collect();
        let n = specs.len() as u32;
        for _ in 0..2 {
            sim.observe("pending_pods_watcher", pending(specs.clone(), n));
            sim.advance(Duration::from_secs(2));
        }
        for pool in &pools {
            let node = pool.node("probe");
            let runnable = specs
                .iter()
                .filter(|p| {
                    handlers::scheduling::check_node(p, &node).is_ok()
                        && p.requests().fits_in(&pool.allocatable)
                })
                .count();
            let made = created(&sim).iter().filter(|(_, p)| *p == pool.name).count();
            prop_assert!(made <= runnable, "{} workers in {} for {} runnable pods", made, pool.name, runnable);
            prop_assert!(sim.model.workers.planned_in(&pool.name) <= pool.max_nodes);
        }
        prop_assert!(sim.model.planned_workers() <= sim.policy.limits.max_nodes);
        // Each pod's reason is said once.
        let said: Vec<(String, String)> = scale_up_blocks(&sim)
            .into_iter()
            .flat_map(|b| b.pods.into_iter().map(move |p| (p, b.reason.clone())))
            .collect();
        let mut unique = said.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(said.len(), unique.len());
    }
}
