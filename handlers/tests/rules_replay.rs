//! `explain` and the what-if replays.

mod common;

use std::time::Duration;

use common::*;
use handlers::simulate::Simulation;
use handlers::Policy;

#[test]
fn explain_renders_a_chain_root_first_with_reasons() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.kill("k3s-worker-2");
    sim.observe_cluster();
    let started = first(&sim.log, "ScaleUpStarted").event_id;
    let mut chain = handlers::explain::chain_of(&sim.log, started);
    chain.reverse(); // any order in
    let text = handlers::explain::render(&chain);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].contains("ClusterObserved") && lines[0].contains("observation (root)"));
    assert!(lines[1].contains("NodeUnexpectedlyLost from StateSynchronizer"));
    assert!(lines[1].contains("node_name=k3s-worker-2"));
    assert!(
        lines[2].contains("MinimumNodesViolation")
            && lines[2].contains("because of NodeUnexpectedlyLost")
    );
    assert!(
        lines[3].contains("AutoScaleUpToMinimum") && lines[3].contains("reason minimum_violation")
    );
    assert!(lines[4].contains("ScaleUpStarted") && lines[4].contains("nodes=[k3s-worker-3]"));
}

#[test]
fn what_if_with_a_higher_minimum_changes_decisions_and_node_minutes() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    sample_for(&mut sim, 600, 10.0, 10.0);
    sim.observe_cluster();
    let recorded = sim.log.clone();
    assert_eq!(events_of(&sim, "ScaleDownDecision").len(), 1);

    let same = handlers::replay::what_if(&recorded, &Policy::default());
    assert_eq!(same.decisions_changed, 0, "{}", same.render());
    assert!((same.recorded.node_minutes - same.replayed.node_minutes).abs() < 0.5);

    let mut higher = Policy::default();
    higher.limits.min_nodes = 3;
    let report = handlers::replay::what_if(&recorded, &higher);
    let text = report.render();
    assert!(report.decisions_changed >= 1, "{text}");
    assert!(
        report.replayed.node_minutes > report.recorded.node_minutes,
        "{text}"
    );
    assert!(report.pairs.iter().any(|p| p
        .recorded
        .as_ref()
        .is_some_and(|d| d.event_type == "ScaleDownDecision")
        && p.replayed.is_none()));
    assert!(text.contains("node-minutes"));
}

#[test]
fn what_if_with_a_higher_maximum_shortens_the_time_pods_wait() {
    let mut tight = Policy::default();
    tight.limits.max_nodes = 2;
    let mut sim = Simulation::new(tight, t0()).with_workers(2);
    sim.advance(Duration::from_secs(30));
    let pods = (0..4)
        .map(|i| {
            PodBuilder::new(&format!("p{i}"))
                .cpu(1500)
                .memory_mi(1)
                .build()
        })
        .collect();
    sim.observe("pending_pods_watcher", pending(pods, 4));
    sim.advance(Duration::from_secs(900));
    sim.observe_cluster();
    let recorded = sim.log.clone();

    let report = handlers::replay::what_if(&recorded, &Policy::default());
    let text = report.render();
    assert!(report.recorded.pending_seconds >= 590.0, "{text}");
    assert!(report.replayed.pending_seconds < 120.0, "{text}");
    assert!(
        report.replayed.node_minutes > report.recorded.node_minutes,
        "{text}"
    );
    let pair = report
        .pairs
        .iter()
        .find(|p| p.root_type == "PendingPodsDetected")
        .expect(&text);
    assert_eq!(
        pair.recorded.as_ref().map(|d| d.event_type.as_str()),
        Some("ScaleUpBlocked")
    );
    assert_eq!(
        pair.replayed.as_ref().and_then(|d| d.target_workers),
        Some(6)
    );
    assert!(pair.changed);
}
