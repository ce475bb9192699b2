//! The model as a whole (redelivery, serialization), and the test support's name checks.

mod common;

use common::*;
use handlers::simulate::Simulation;
use handlers::Policy;

#[test]
fn a_redelivered_event_publishes_nothing_new() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.kill("k3s-worker-2");
    let obs = sim.observe_cluster();
    let (events, cmds) = (sim.log.len(), sim.commands.len());
    sim.redeliver(&obs);
    assert_eq!(sim.log.len(), events);
    // Commands are re-issued (the executor's effects are idempotent), but name the same workers.
    let creates = commands(&sim, "create_worker");
    assert!(
        creates.iter().all(|n| n == "k3s-worker-3"),
        "{creates:?} after {cmds}"
    );
}

#[test]
fn the_model_round_trips_through_serde() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    sample_for(&mut sim, 60, 10.0, 10.0);
    let json = serde_json::to_string(&sim.model).unwrap();
    let back: handlers::Model = serde_json::from_str(&json).unwrap();
    assert_eq!(back, sim.model);
    assert_eq!(back.current_workers(), 3);
}

#[test]
fn a_model_with_decisions_actions_and_alerts_round_trips_through_serde() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.observe(
        "pod_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    assert!(!sim.model.decisions.by_cause.is_empty());
    let json = serde_json::to_value(&sim.model).unwrap();
    let keys: Vec<&String> = json["decisions"]["by_cause"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert!(
        keys.iter().any(|k| k.ends_with("/ScaleUpDecision")),
        "{keys:?}"
    );
    let back: handlers::Model = serde_json::from_value(json).unwrap();
    assert_eq!(back, sim.model);
}

#[test]
#[should_panic(expected = "is not an event type")]
fn a_misspelt_event_type_panics_instead_of_matching_nothing() {
    let sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    events_of(&sim, "ScaleDownDecison");
}

#[test]
#[should_panic(expected = "is not a command kind")]
fn a_misspelt_command_kind_panics_instead_of_matching_nothing() {
    let sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    commands(&sim, "create_workers");
}

/// Found by the duplicated-event property: another replica's copy of a `pending_pods` decision,
/// folded after a newer report, must not mark that report as already sized (the next scale-up
/// would then count a newly Ready worker as the capacity these pods await and decide nothing).
#[test]
fn a_late_copy_of_a_pending_pods_decision_does_not_size_a_newer_report() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    let report = |count| bus::event::PendingPodsDetected {
        pending_count: count,
        waiting_time: 1.0,
        affected_deployments: vec![],
        pods: vec![],
    };
    sim.observe("pod_watcher", report(1));
    let decision = first(&sim.log, "ScaleUpDecision").clone();
    sim.observe("pod_watcher", report(0));
    sim.observe("pod_watcher", report(1));
    let fresh = sim.model.clone();
    let mut copy = decision.clone();
    copy.event_id = uuid::Uuid::nil();
    let copy = copy.with_deterministic_id("another-replica");
    sim.model.apply(&copy);
    assert!(!fresh.pending_awaits_provided_capacity());
    assert!(!sim.model.pending_awaits_provided_capacity());
}
