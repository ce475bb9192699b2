//! Provider backoff as state on the stream: a pool whose creates fail waits before the next one,
//! says why once (`ScaleUpBlocked pool_backoff` / `provider_unavailable`), leaves pods to another
//! pool that fits them, and a create that never reached the engine uses up no name.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bus::scheduling::Resources;
use bus::Event;
use common::*;
use handlers::policy::PoolTemplate;
use handlers::simulate::Simulation;
use handlers::{Command, Policy};

fn started_names(sim: &Simulation) -> Vec<String> {
    events_of(sim, "ScaleUpStarted")
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpStarted(s) => Some(s.nodes.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The watcher's re-reports: the same pending pod every 2 s for `secs` seconds.
fn report_for(sim: &mut Simulation, secs: u64) {
    for _ in 0..secs / 2 {
        sim.advance(Duration::from_secs(2));
        sim.observe(
            "pending_pods_watcher",
            pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
        );
    }
}

#[test]
fn an_engine_outage_backs_the_pool_off_says_so_once_and_uses_up_no_name() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.world.engine_down = true;
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    report_for(&mut sim, 60);

    // One decision; the first create and the one retry after 30 s fail; one block says why.
    assert_eq!(events_of(&sim, "ScaleUpDecision").len(), 1);
    let failed = action_failures(&sim);
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed
        .iter()
        .all(|f| f.error.starts_with("provider_unavailable:")
            && f.node_name.as_deref() == Some("k3s-worker-3")));
    let b = scale_up_blocks(&sim);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].reason, "provider_unavailable");
    assert_eq!(b[0].pods, ["default/a"]);
    assert!(b[0]
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("2 failed create(s)") || d.contains("1 failed create(s)")));
    // Nothing was created, so nothing is removed.
    assert!(commands(&sim, "remove_worker").is_empty());

    // The engine answers again: the first observation that lists its containers ends the
    // backoff (the next is not due before t+90 s), and the scale-up finishes under the same name.
    sim.world.engine_down = false;
    sim.observe_cluster();
    report_for(&mut sim, 4);
    assert_eq!(
        commands(&sim, "create_worker").last().map(String::as_str),
        Some("k3s-worker-3")
    );
    sim.advance(Duration::from_secs(60));
    assert_eq!(sim.model.current_workers(), 3);
    assert!(started_names(&sim).iter().all(|n| n == "k3s-worker-3"));
    assert_eq!(sim.model.workers.max_seq, 3, "no name used up");
    assert!(!events_of(&sim, "ScalingActionCompleted").is_empty());
    assert!(sim.model.provision.backoff.is_empty(), "Ready ends it");
}

#[test]
fn without_an_observation_the_backoff_doubles_up_to_its_cap() {
    let mut policy = Policy::default();
    policy.scaling.provision_retry_backoff = Duration::from_secs(10);
    policy.scaling.provision_retry_backoff_max = Duration::from_secs(40);
    policy.scaling.max_provision_retries = 100;
    let mut sim = Simulation::new(policy, t0()).with_workers(2);
    sim.world.engine_down = true;
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    report_for(&mut sim, 200);
    let at: Vec<i64> = events_of(&sim, "ScalingActionFailed")
        .iter()
        .map(|e| (e.timestamp - t0()).num_seconds())
        .collect();
    // 0, +10, +20, +40, then every 40 s (the ticks run each second).
    let gaps: Vec<i64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(&gaps[..3], [10, 20, 40], "{at:?}");
    assert!(gaps[3..].iter().all(|g| *g == 40), "{at:?}");
    assert_eq!(scale_up_blocks(&sim).len(), 1, "said once");
    assert!(started_names(&sim).iter().all(|n| n == "k3s-worker-3"));
}

#[test]
fn a_pool_that_backs_off_leaves_its_pods_to_another_pool_that_fits_them() {
    let mut policy = Policy::default();
    let mut cheap = PoolTemplate::new("cheap", 0, 4, Resources::new(1000, 1 << 30, 110));
    cheap.priority = 10;
    let spare = PoolTemplate::new("spare", 0, 4, Resources::new(2000, 2 << 30, 110));
    policy.pools = vec![cheap, spare];
    policy.limits.min_nodes = 0;
    policy.expander = handlers::policy::Expander::Priority;
    let mut sim = Simulation::new(policy, t0());
    sim.world.failing_pools.insert("cheap".into());
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    report_for(&mut sim, 6);
    let created: Vec<(String, String)> = sim
        .commands
        .iter()
        .filter_map(|i| match &i.command {
            Command::CreateWorker { name, pool, .. } => Some((name.clone(), pool.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        created,
        [
            ("k3s-worker-cheap-1".to_string(), "cheap".to_string()),
            ("k3s-worker-spare-1".to_string(), "spare".to_string()),
        ],
        "the expander's first choice failed; the pod went to the other pool"
    );
    // The other pool could take the pod: nothing blocks it, so nothing is said.
    assert!(scale_up_blocks(&sim).is_empty());
    assert_eq!(
        sim.model
            .provision
            .backoff
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        ["cheap"]
    );
}

#[test]
fn pods_only_a_backing_off_pool_fits_get_pool_backoff_once() {
    let mut policy = Policy::default();
    let only = PoolTemplate::new("only", 0, 4, Resources::new(1000, 1 << 30, 110));
    policy.pools = vec![only];
    policy.limits.min_nodes = 0;
    let mut sim = Simulation::new(policy, t0());
    sim.world.failing_pools.insert("only".into());
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    report_for(&mut sim, 40);
    let b = scale_up_blocks(&sim);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(
        (b[0].reason.as_str(), b[0].pool.as_deref()),
        ("pool_backoff", Some("only"))
    );
    assert_eq!(b[0].predicates, BTreeMap::new());
    // The failed create is retried after 30 s under the same name (a container the engine may
    // have left behind is adopted by the create of that name).
    assert_eq!(action_failures(&sim).len(), 2);
    assert_eq!(
        commands(&sim, "create_worker"),
        ["k3s-worker-only-1", "k3s-worker-only-1"]
    );
}

#[test]
fn a_report_without_pods_beyond_max_nodes_fails_once_not_on_every_report() {
    let mut policy = Policy::default();
    policy.limits.max_nodes = 2;
    let mut sim = Simulation::new(policy, t0()).with_workers(2);
    for _ in 0..10 {
        sim.advance(Duration::from_secs(2));
        // An older watcher: a count, no pods.
        sim.observe("pending_pods_watcher", pending(Vec::new(), 30));
    }
    let failed = action_failures(&sim);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].error.starts_with("max_nodes_reached"));
    // Pods gone, then pending again: a new episode is said again.
    sim.observe("pending_pods_watcher", pending(Vec::new(), 0));
    sim.advance(Duration::from_secs(2));
    sim.observe("pending_pods_watcher", pending(Vec::new(), 30));
    assert_eq!(action_failures(&sim).len(), 2);
}
