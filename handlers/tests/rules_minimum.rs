//! The MinimumNodeEnforcer's rules: violations, emergencies, the timer.

mod common;

use std::time::Duration;

use bus::event::*;
use bus::Event;
use common::*;
use handlers::simulate::Simulation;
use handlers::Policy;

#[test]
fn several_workers_lost_together_trigger_an_emergency_scale_up() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    sim.kill("k3s-worker-2");
    sim.kill("k3s-worker-3");
    sim.observe_cluster();
    let e = first(&sim.log, "EmergencyScaleUp");
    let Event::EmergencyScaleUp(e) = &e.event else {
        unreachable!()
    };
    assert_eq!(
        (e.lost_count, e.remaining_workers, e.target_workers),
        (2, 1, 3)
    );
    sim.advance(Duration::from_secs(120));
    assert_eq!(sim.model.current_workers(), 3);
    assert_eq!(
        commands(&sim, "create_worker"),
        ["k3s-worker-4", "k3s-worker-5"]
    );
    assert!(
        events_of(&sim, "AutoScaleUpToMinimum").is_empty(),
        "the emergency covers the minimum"
    );
    assert_eq!(events_of(&sim, "MinimumNodesViolation").len(), 1);
    assert_eq!(events_of(&sim, "MinimumNodesRestored").len(), 1);
}

#[test]
fn an_emergency_counts_a_replacement_already_on_its_way_once() {
    // `docker kill` of two workers: the signal of the first arrives as an interruption notice, whose
    // replacement is started before the losses are known.
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    sim.observe(
        "docker_events",
        NodeInterruptionNotice {
            node_name: "k3s-worker-2".into(),
            cause: "docker_kill".into(),
        },
    );
    assert_eq!(commands(&sim, "create_worker"), ["k3s-worker-4"]);
    sim.kill("k3s-worker-2");
    sim.kill("k3s-worker-3");
    sim.observe_cluster();
    let e = first(&sim.log, "EmergencyScaleUp");
    let Event::EmergencyScaleUp(e) = &e.event else {
        unreachable!()
    };
    assert_eq!(
        (e.lost_count, e.target_workers, e.emergency_scale),
        (2, 3, 1),
        "worker-4 is on its way for worker-2: one more, for worker-3"
    );
    sim.advance(Duration::from_secs(120));
    assert_eq!(sim.model.current_workers(), 3);
    assert_eq!(
        commands(&sim, "create_worker"),
        ["k3s-worker-4", "k3s-worker-5"],
        "back to three, not four"
    );
}

#[test]
fn the_minimum_is_rechecked_on_the_timer() {
    use handlers::MinimumNodeEnforcer;
    let policy = Policy::default();
    // A record with one worker whose handlers never ran (e.g. a fresh leader): only the timer notices.
    let ready = bus::Envelope::root(
        "node_watcher",
        NodeReady {
            node_name: "k3s-worker-1".into(),
        },
        bus::Metadata::default(),
    )
    .with_timestamp(t0());
    let mut model = handlers::Model::from_events(&policy, [&ready]);
    let out = MinimumNodeEnforcer.tick(&model, &policy, t0() + chrono::Duration::seconds(10));
    let types: Vec<_> = out.events.iter().map(|e| e.event_type()).collect();
    assert_eq!(types, ["MinimumNodesViolation", "AutoScaleUpToMinimum"]);
    assert!(
        out.events[0].causation_id.is_none(),
        "the timer's finding is a root observation"
    );
    assert_eq!(out.events[1].causation_id, Some(out.events[0].event_id));
    // Another replica ticking at the same stream position publishes the same ids.
    let again = MinimumNodeEnforcer.tick(&model, &policy, t0() + chrono::Duration::seconds(10));
    assert_eq!(
        again.events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        out.events.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
    // With the violation open and nothing being created, the timer asks again, in the violation's chain.
    model.apply(&out.events[0]);
    let later = MinimumNodeEnforcer.tick(&model, &policy, t0() + chrono::Duration::seconds(20));
    assert_eq!(later.events.len(), 1);
    assert_eq!(later.events[0].event_type(), "AutoScaleUpToMinimum");
    assert_eq!(later.events[0].causation_id, Some(out.events[0].event_id));
    // The simulated world catches up through the same path.
    let mut sim = Simulation::new(policy, t0()).with_workers(1);
    sim.advance(Duration::from_secs(120));
    assert_eq!(sim.model.current_workers(), 2);
    assert_eq!(events_of(&sim, "MinimumNodesRestored").len(), 1);
}

#[test]
fn a_killed_worker_at_the_minimum_is_replaced_once_and_the_minimum_decision_is_still_explicit() {
    // `docker kill` gives an interruption notice (replacement first), then the loss.
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.observe(
        "docker_events",
        NodeInterruptionNotice {
            node_name: "k3s-worker-2".into(),
            cause: "docker_kill".into(),
        },
    );
    sim.kill("k3s-worker-2");
    sim.observe(
        "docker_events",
        NodeUnexpectedlyLost {
            node_name: "k3s-worker-2".into(),
            last_seen: t0(),
            cause: "container_crash".into(),
        },
    );
    sim.advance(Duration::from_secs(120));
    let types = sim.types();
    assert_in_order(
        &types,
        &[
            "NodeUnexpectedlyLost",
            "MinimumNodesViolation",
            "AutoScaleUpToMinimum",
            "NodeReady",
            "MinimumNodesRestored",
        ],
    );
    let lost = first(&sim.log, "NodeUnexpectedlyLost");
    let v = first(&sim.log, "MinimumNodesViolation");
    assert_eq!(v.causation_id, Some(lost.event_id));
    assert_eq!(
        commands(&sim, "create_worker"),
        ["k3s-worker-3"],
        "one replacement"
    );
    assert_eq!(sim.model.current_workers(), 2);
}
