//! The two reference event flows (a scale-down with visibility, and a recovery from a minimum-node
//! violation), driven through the model and every handler with a simulated world answering the
//! commands.

mod common;

use std::time::Duration;

use bus::event::{MetricsSampled, NodeUsage};
use common::*;
use handlers::simulate::Simulation;
use handlers::Policy;

fn sample(workers: u32, nodes: &[(&str, f64, f64)]) -> MetricsSampled {
    let n = nodes.len().max(1) as f64;
    MetricsSampled {
        workers,
        cpu_avg: nodes.iter().map(|x| x.1).sum::<f64>() / n,
        memory_avg: nodes.iter().map(|x| x.2).sum::<f64>() / n,
        source: "docker_stats".into(),
        nodes: nodes
            .iter()
            .map(|(name, cpu, mem)| NodeUsage {
                node_name: name.to_string(),
                cpu: *cpu,
                memory: *mem,
            })
            .collect(),
    }
}

#[test]
fn scale_down_with_visibility_follows_the_reference_flow() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    let busy = [
        ("k3s-worker-1", 25.0, 35.0),
        ("k3s-worker-2", 28.0, 36.0),
        ("k3s-worker-3", 22.0, 34.0),
    ];
    // Low for 6 minutes, one sample every 15 s.
    for _ in 0..24 {
        sim.advance(Duration::from_secs(15));
        let live: Vec<_> = busy
            .iter()
            .copied()
            .filter(|(n, _, _)| sim.model.worker(n).is_some_and(|w| w.state.is_live()))
            .collect();
        let workers = sim.model.current_workers();
        sim.observe("metrics_collector", sample(workers, &live));
    }
    sim.observe_cluster();

    let types = sim.types();
    assert_in_order(
        &types,
        &[
            "ClusterStateSynced",
            "UnderutilizationWarning",
            "ScaleDownDecision",
            "ScaleDownStarted",
            "NodeCordoned",
            "NodeDrained",
            "NodeRemoved",
            "ScalingActionCompleted",
            "OptimalStateTrigger",
            "ClusterStateSynced",
        ],
    );
    assert_causation_consistent(&sim.log);

    // The least utilised worker went, and the chain from the sample to the decision is explicit.
    let decision = first(&sim.log, "ScaleDownDecision");
    let bus::Event::ScaleDownDecision(d) = &decision.event else {
        unreachable!()
    };
    assert_eq!(d.nodes, vec!["k3s-worker-3".to_string()]);
    assert_eq!(d.target_workers, 2);
    let chain =
        handlers::explain::chain_of(&sim.log, first(&sim.log, "ScalingActionCompleted").event_id);
    let chain_types: Vec<_> = chain.iter().map(|e| e.event_type()).collect();
    assert_eq!(
        chain_types,
        [
            "MetricsSampled",
            "UnderutilizationWarning",
            "ScaleDownDecision",
            "ScaleDownStarted",
            "NodeCordoned",
            "NodeDrained",
            "NodeRemoved",
            "ScalingActionCompleted"
        ]
    );
    assert!(chain[0].causation_id.is_none());
    for w in chain.windows(2) {
        assert_eq!(w[1].causation_id, Some(w[0].event_id));
        assert_eq!(w[1].correlation_id, chain[0].event_id);
    }
    let synced: Vec<_> = sim
        .log
        .iter()
        .filter_map(|e| match &e.event {
            bus::Event::ClusterStateSynced(s) => Some(s.db_workers),
            _ => None,
        })
        .collect();
    assert_eq!(synced, vec![3, 2]);
    assert_eq!(sim.model.current_workers(), 2);
}

#[test]
fn minimum_node_violation_recovery_follows_the_reference_flow() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.advance(Duration::from_secs(30));
    sim.kill("k3s-worker-2");
    sim.observe_cluster();
    sim.advance(Duration::from_secs(120));
    sim.observe_cluster();

    let types = sim.types();
    assert_in_order(
        &types,
        &[
            "NodeUnexpectedlyLost",
            "MinimumNodesViolation",
            "AutoScaleUpToMinimum",
            "ScaleUpStarted",
            "NodeCreated",
            "NodeReady",
            "ScalingActionCompleted",
            "MinimumNodesRestored",
            "ClusterStateSynced",
        ],
    );
    assert_causation_consistent(&sim.log);

    let lost = first(&sim.log, "NodeUnexpectedlyLost");
    let violation = first(&sim.log, "MinimumNodesViolation");
    let auto = first(&sim.log, "AutoScaleUpToMinimum");
    let started = first(&sim.log, "ScaleUpStarted");
    let created = first(&sim.log, "NodeCreated");
    assert_eq!(violation.causation_id, Some(lost.event_id));
    assert_eq!(auto.causation_id, Some(violation.event_id));
    assert_eq!(started.causation_id, Some(auto.event_id));
    assert_eq!(created.causation_id, Some(started.event_id));
    // The watcher's NodeReady is an observation (a root); the completion continues the action's chain.
    let completed = first(&sim.log, "ScalingActionCompleted");
    assert_eq!(completed.causation_id, Some(started.event_id));
    let root = sim
        .log
        .iter()
        .find(|e| Some(e.event_id) == lost.causation_id)
        .unwrap();
    assert_eq!(root.event_type(), "ClusterObserved");
    assert!(root.causation_id.is_none());
    for e in [violation, auto, started, created, completed] {
        assert_eq!(e.correlation_id, root.event_id);
    }
    let bus::Event::ScaleUpStarted(s) = &started.event else {
        unreachable!()
    };
    assert_eq!(
        s.nodes,
        vec!["k3s-worker-3".to_string()],
        "names continue above every name seen"
    );
    let bus::Event::AutoScaleUpToMinimum(a) = &auto.event else {
        unreachable!()
    };
    assert_eq!(
        (
            a.current_workers,
            a.min_workers,
            a.scale_up_count,
            a.target_workers
        ),
        (1, 2, 1, 2)
    );
    // Exactly one recovery, however many events noticed it.
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "MinimumNodesRestored")
            .count(),
        1
    );
    assert_eq!(types.iter().filter(|t| **t == "ScaleUpStarted").count(), 1);
    assert_eq!(sim.model.current_workers(), 2);
}
