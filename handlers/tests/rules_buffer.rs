//! Capacity buffers: a pool keeps spare workers (or CPU/memory headroom) above what its pods
//! request. The engine fills the shortfall ahead of demand (`ScaleUpDecision {reason:
//! capacity_buffer}`), refills it when a pod takes a spare worker, and scale-down never takes a
//! worker the buffer keeps. What the buffer reads is the placement on the stream, so the recorded
//! config replays as itself.

mod common;

use bus::placement::{PartSize, Placement, PlacementTracker};
use bus::scheduling::{NodeSpec, PodSpec, Resources};
use bus::Event;
use common::*;
use handlers::policy::Buffer;
use handlers::simulate::Simulation;
use handlers::Policy;

fn node(name: &str) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        pool: Some("default".into()),
        allocatable: Resources::new(2000, 2 << 30, 110),
        ready: true,
        ..NodeSpec::default()
    }
}

fn on(name: &str, node: &str, cpu: u64) -> PodSpec {
    let mut pod = PodBuilder::new(name).cpu(cpu).memory_mi(64).build();
    pod.node_name = Some(node.into());
    pod
}

/// Publishes a whole placement as the observer does.
fn place(sim: &mut Simulation, snapshot: &str, nodes: &[&str], pods: &[PodSpec]) {
    let state = Placement::from_state(
        nodes.iter().map(|n| (n.to_string(), node(n))).collect(),
        pods.iter().map(|p| (p.pod_ref(), p.clone())).collect(),
    );
    for part in PlacementTracker::new().snapshot(snapshot, state, PartSize { nodes: 8, pods: 8 }) {
        sim.observe("placement_observer", part);
    }
}

fn buffer_decisions(sim: &Simulation) -> Vec<u32> {
    events_of(sim, "ScaleUpDecision")
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpDecision(d) if d.reason == "capacity_buffer" => Some(d.target_workers),
            _ => None,
        })
        .collect()
}

fn policy(buffer: Buffer) -> Policy {
    let mut policy = Policy::default();
    policy.limits.min_nodes = 1;
    policy.limits.max_nodes = 6;
    policy.workers.buffer = buffer;
    policy
}

const W1: &str = "k3s-worker-1";
const W2: &str = "k3s-worker-2";
const W3: &str = "k3s-worker-3";

#[test]
fn a_buffer_of_one_keeps_an_empty_worker_and_refills_it_when_a_pod_takes_it() {
    let mut sim = Simulation::new(
        policy(Buffer {
            nodes: 1,
            ..Buffer::default()
        }),
        t0(),
    )
    .with_workers(2);
    assert!(
        buffer_decisions(&sim).is_empty(),
        "no placement yet: no buffer"
    );
    place(
        &mut sim,
        "s1",
        &[W1, W2],
        &[on("a", W1, 500), on("b", W2, 500)],
    );
    assert_eq!(buffer_decisions(&sim), vec![3], "{:?}", sim.types());
    sim.advance(std::time::Duration::from_secs(60));
    assert_eq!(sim.model.current_workers(), 3);
    assert_eq!(commands(&sim, "create_worker"), vec![W3.to_string()]);

    // Observed again and again with the spare worker empty: nothing more.
    for s in ["s2", "s3"] {
        place(
            &mut sim,
            s,
            &[W1, W2, W3],
            &[on("a", W1, 500), on("b", W2, 500)],
        );
        sim.observe_cluster();
    }
    assert_eq!(buffer_decisions(&sim), vec![3]);

    // A pod lands on the spare worker: the buffer is short again and refills.
    place(
        &mut sim,
        "s4",
        &[W1, W2, W3],
        &[on("a", W1, 500), on("b", W2, 500), on("c", W3, 500)],
    );
    assert_eq!(buffer_decisions(&sim), vec![3, 4]);
    sim.advance(std::time::Duration::from_secs(60));
    assert_eq!(sim.model.current_workers(), 4);

    let report = handlers::replay::what_if(&sim.log, &sim.policy.clone());
    assert_eq!(report.decisions_changed, 0, "{}", report.render());
    // Without the buffer, the what-if creates nothing ahead of demand.
    let report = handlers::replay::what_if(&sim.log, &policy(Buffer::default()));
    assert_eq!(report.replayed.peak_workers, 2, "{}", report.render());
}

#[test]
fn a_headroom_buffer_adds_workers_until_enough_cpu_is_free() {
    let mut sim = Simulation::new(
        policy(Buffer {
            cpu_millis: 3000,
            ..Buffer::default()
        }),
        t0(),
    )
    .with_workers(2);
    // 500 m free on each: 1000 m free, 2000 m short = one 2000 m worker.
    place(
        &mut sim,
        "s1",
        &[W1, W2],
        &[on("a", W1, 1500), on("b", W2, 1500)],
    );
    assert_eq!(buffer_decisions(&sim), vec![3]);
}

#[test]
fn scale_down_leaves_the_worker_the_buffer_keeps() {
    let mut p = policy(Buffer {
        nodes: 1,
        ..Buffer::default()
    });
    p.scaling.scale_up_cooldown = std::time::Duration::ZERO;
    let mut sim = Simulation::new(p, t0()).with_workers(3);
    // Two small pods on two workers, the third empty: underused for long. The empty one is the
    // buffer's; a busy one cannot go either, since its pod would take the spare worker
    // (kube-scheduler puts it on the least allocated node).
    let pods = [on("a", W1, 100), on("b", W2, 100)];
    place(&mut sim, "s1", &[W1, W2, W3], &pods);
    assert!(buffer_decisions(&sim).is_empty(), "one spare already");
    sample_for(&mut sim, 400, 5.0, 5.0);
    assert!(removed(&sim).is_empty(), "{:?}", removed(&sim));
    assert!(
        blocked_reasons(&sim).contains(&"capacity_buffer".to_string()),
        "{:?}",
        blocked_reasons(&sim)
    );
}

#[test]
fn a_spare_worker_beyond_the_buffer_is_removed() {
    let mut p = policy(Buffer {
        nodes: 1,
        ..Buffer::default()
    });
    p.scaling.scale_up_cooldown = std::time::Duration::ZERO;
    let mut sim = Simulation::new(p, t0()).with_workers(4);
    let w4 = "k3s-worker-4";
    let pods = [on("a", W1, 100), on("b", W2, 100)];
    place(&mut sim, "s1", &[W1, W2, W3, w4], &pods);
    sample_for(&mut sim, 400, 5.0, 5.0);
    let gone = removed(&sim);
    assert_eq!(gone.len(), 1, "{gone:?} {:?}", blocked_reasons(&sim));
    assert!(gone[0] == W3 || gone[0] == w4, "an empty one: {gone:?}");
    let report = handlers::replay::what_if(&sim.log, &sim.policy.clone());
    assert_eq!(report.decisions_changed, 0, "{}", report.render());
}
