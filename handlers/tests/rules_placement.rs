//! Scale-down with the placement on the stream: a node goes only when each of its pods fits on a
//! node that stays, under its constraints and its PDB; among those that can go, the one whose
//! removal wastes least goes first. Without a placement the fluid check decides (`rules_engine`).

mod common;

use bus::placement::{PartSize, Placement, PlacementTracker};
use bus::scheduling::{LabelSelector, NodeSpec, PodSpec, Resources};
use bus::Event;
use common::*;
use handlers::simulate::Simulation;
use handlers::Policy;

fn node(name: &str, labels: &[(&str, &str)]) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        pool: Some("default".into()),
        allocatable: Resources::new(2000, 4 << 30, 110),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ready: true,
        ..NodeSpec::default()
    }
}

fn on(mut pod: PodSpec, node: &str) -> PodSpec {
    pod.node_name = Some(node.into());
    pod
}

/// Publishes the placement of `nodes` and `pods` as the observer does (a snapshot in parts).
fn place(sim: &mut Simulation, nodes: &[NodeSpec], pods: &[PodSpec]) {
    let state = Placement::from_state(
        nodes.iter().map(|n| (n.name.clone(), n.clone())).collect(),
        pods.iter().map(|p| (p.pod_ref(), p.clone())).collect(),
    );
    for part in PlacementTracker::new().snapshot("s1", state, PartSize { nodes: 2, pods: 2 }) {
        sim.observe("placement_observer", part);
    }
}

fn blocks(sim: &Simulation) -> Vec<(String, Option<String>)> {
    sim.log
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleDownBlocked(b) => Some((b.reason.clone(), b.node_name.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_node_whose_pod_fits_nowhere_else_stays_and_another_goes() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    // worker-1 is the emptiest, so it would go first, but its pod needs its `disk=ssd` label.
    let nodes = [
        node("k3s-worker-1", &[("disk", "ssd")]),
        node("k3s-worker-2", &[]),
        node("k3s-worker-3", &[]),
    ];
    let pods = [
        on(
            PodBuilder::new("db").cpu(100).select("disk", "ssd").build(),
            "k3s-worker-1",
        ),
        on(PodBuilder::new("web-a").cpu(400).build(), "k3s-worker-2"),
        on(PodBuilder::new("web-b").cpu(300).build(), "k3s-worker-3"),
    ];
    place(&mut sim, &nodes, &pods);
    sample_for(&mut sim, 330, 10.0, 10.0);
    assert_eq!(removed(&sim), ["k3s-worker-3"], "{}", trail(&sim));
}

#[test]
fn when_no_candidate_can_go_the_block_names_the_pod_and_says_it_once() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    let nodes = [
        node("k3s-worker-1", &[]),
        node("k3s-worker-2", &[]),
        node("k3s-worker-3", &[]),
    ];
    // One replica per node (hostname anti-affinity): none can move.
    let spread = |i: u32| {
        let mut p = PodBuilder::new(&format!("spread-{i}")).cpu(100).build();
        p.labels.insert("app".into(), "spread".into());
        p.anti_affinity = vec![LabelSelector::labels(&[("app", "spread")])];
        on(p, &format!("k3s-worker-{i}"))
    };
    place(&mut sim, &nodes, &[spread(1), spread(2), spread(3)]);
    sample_for(&mut sim, 600, 10.0, 10.0);
    assert!(removed(&sim).is_empty(), "{}", trail(&sim));
    let b = blocks(&sim);
    assert!(!b.is_empty());
    assert!(
        b.iter()
            .all(|(r, n)| r == "no_place_for_pods" && n.is_some()),
        "{b:?}"
    );
    assert_eq!(b.len(), 1, "said once, not on every sample: {b:?}");
}

#[test]
fn a_pod_whose_budget_allows_no_disruption_keeps_its_node() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    let nodes = [
        node("k3s-worker-1", &[]),
        node("k3s-worker-2", &[]),
        node("k3s-worker-3", &[]),
    ];
    let guarded = |i: u32| {
        let mut p = PodBuilder::new(&format!("guarded-{i}")).cpu(100).build();
        p.pdb_blocked = true;
        on(p, &format!("k3s-worker-{i}"))
    };
    place(&mut sim, &nodes, &[guarded(1), guarded(2), guarded(3)]);
    sample_for(&mut sim, 600, 10.0, 10.0);
    assert!(removed(&sim).is_empty());
    assert!(
        blocks(&sim).iter().any(|(r, _)| r == "pdb"),
        "{:?}",
        blocks(&sim)
    );
}

#[test]
fn a_delta_that_frees_room_lets_the_node_go() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    let nodes = [
        node("k3s-worker-1", &[]),
        node("k3s-worker-2", &[]),
        node("k3s-worker-3", &[]),
    ];
    let big = |name: &str, n: &str| on(PodBuilder::new(name).cpu(1500).build(), n);
    let pods = [
        big("a", "k3s-worker-1"),
        big("b", "k3s-worker-2"),
        big("c", "k3s-worker-3"),
    ];
    let state = |pods: &[PodSpec]| {
        Placement::from_state(
            nodes.iter().map(|n| (n.name.clone(), n.clone())).collect(),
            pods.iter().map(|p| (p.pod_ref(), p.clone())).collect(),
        )
    };
    let mut tracker = PlacementTracker::new();
    for part in tracker.snapshot("s1", state(&pods), PartSize::default()) {
        sim.observe("placement_observer", part);
    }
    sample_for(&mut sim, 330, 10.0, 10.0);
    assert!(removed(&sim).is_empty());
    // Pod `b` finishes: worker-2 is empty now and goes.
    let change = tracker.change(state(&[pods[0].clone(), pods[2].clone()]));
    sim.observe("placement_observer", change.expect("a delta"));
    sample_for(&mut sim, 330, 10.0, 10.0);
    assert_eq!(removed(&sim), ["k3s-worker-2"], "{}", trail(&sim));
}

fn trail(sim: &Simulation) -> String {
    sim.log
        .iter()
        .map(|e| format!("{} {}", e.event_type(), e.event.data_string()))
        .collect::<Vec<_>>()
        .join("\n")
}
