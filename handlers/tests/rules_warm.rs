//! The warm pool as facts on the stream: a scale-down keeps the drained worker's container stopped
//! (`WarmPoolEntered`) while its pool keeps fewer than `warm_pool`; the StateSynchronizer never
//! takes it for an orphan; the pool's next scale-up starts it under its own name
//! (`WarmPoolLeft {started}`).

mod common;

use std::time::Duration;

use bus::Event;
use common::*;
use handlers::simulate::Simulation;
use handlers::Policy;

#[test]
fn a_scaled_down_worker_waits_warm_and_is_the_next_scale_up() {
    let mut policy = Policy::default();
    policy.limits.min_nodes = 2;
    policy.workers.warm_pool = 1;
    let mut sim = Simulation::new(policy, t0()).with_workers(3);
    // Underused for longer than `underutilized_for`: one worker goes, into the warm pool.
    sample_for(&mut sim, 400, 5.0, 5.0);
    let entered: Vec<String> = events_of(&sim, "WarmPoolEntered")
        .iter()
        .filter_map(|e| e.event.node_name().map(str::to_string))
        .collect();
    assert_eq!(entered.len(), 1, "{:?}", sim.types());
    let warm = entered[0].clone();
    assert!(sim.world.containers.contains(&warm) && sim.world.stopped.contains(&warm));
    assert_eq!(sim.model.current_workers(), 2);
    assert_eq!(commands(&sim, "remove_worker"), std::slice::from_ref(&warm));

    // Observed many times over longer than `max_node_provision_time`: kept, not an orphan.
    for _ in 0..8 {
        sim.advance(Duration::from_secs(60));
        sim.observe_cluster();
    }
    assert_eq!(commands(&sim, "remove_worker"), std::slice::from_ref(&warm));
    assert!(sim.model.workers.get(&warm).is_some_and(|w| w.warm));
    let synced = events_of(&sim, "ClusterStateSynced");
    let last = synced.last().expect("synced");
    assert!(
        matches!(&last.event, Event::ClusterStateSynced(s) if s.docker_containers == 2 && s.db_workers == 2),
        "the warm container is not a cluster worker: {:?}",
        last.event
    );

    // The next scale-up starts it under its own name.
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(1500).memory_mi(1).build()], 1),
    );
    sim.advance(Duration::from_secs(60));
    assert_eq!(
        commands(&sim, "create_worker").last(),
        Some(&warm),
        "{:?}",
        commands(&sim, "create_worker")
    );
    let left = events_of(&sim, "WarmPoolLeft");
    assert!(
        matches!(&left[..], [e] if matches!(&e.event, Event::WarmPoolLeft(l) if l.node_name == warm && l.reason == "started")),
        "{left:?}"
    );
    assert_eq!(sim.model.current_workers(), 3);
    assert!(!sim.model.workers.get(&warm).is_some_and(|w| w.warm));
    assert_eq!(sim.model.workers.max_seq, 3, "no new name");

    // The stream replays as itself, warm pool included; without it, the what-if creates anew.
    let policy = sim.policy.clone();
    let report = handlers::replay::what_if(&sim.log, &policy);
    assert_eq!(report.decisions_changed, 0, "{}", report.render());
    let replayed = handlers::replay::replay(&sim.log, &policy, &handlers::Handler::ALL);
    let ids = |log: &[bus::Envelope]| log.iter().map(|e| e.event_id).collect::<Vec<_>>();
    assert_eq!(ids(&replayed.log), ids(&sim.log));
}

#[test]
fn without_a_warm_pool_a_scaled_down_worker_is_removed() {
    let mut policy = Policy::default();
    policy.limits.min_nodes = 2;
    let mut sim = Simulation::new(policy, t0()).with_workers(3);
    sample_for(&mut sim, 400, 5.0, 5.0);
    assert!(events_of(&sim, "WarmPoolEntered").is_empty());
    assert_eq!(sim.world.containers.len(), 2);
    let report = handlers::replay::what_if(&sim.log, &sim.policy);
    assert_eq!(report.decisions_changed, 0, "{}", report.render());
}
