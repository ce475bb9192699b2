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
