//! The ScalingDecisionEngine's rules: scale-up for pending pods and pressure, scale-down and why it is
//! blocked, manual scaling.

mod common;

use std::time::Duration;

use bus::event::*;
use bus::Event;
use common::*;
use handlers::simulate::Simulation;
use handlers::{Command, Policy};

#[test]
fn pending_pods_are_bin_packed_onto_the_worker_template() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    // 2000m workers: 900m pods go two per worker, so five need three workers.
    let pods = (0..5)
        .map(|i| {
            PodBuilder::new(&format!("p{i}"))
                .cpu(900)
                .memory_mi(256)
                .build()
        })
        .collect();
    sim.observe("pending_pods_watcher", pending(pods, 5));
    assert_eq!(decision_targets(&sim), vec![5]);
    let started = first(&sim.log, "ScaleUpStarted");
    let Event::ScaleUpStarted(s) = &started.event else {
        unreachable!()
    };
    assert_eq!(s.nodes, ["k3s-worker-3", "k3s-worker-4", "k3s-worker-5"]);
    assert_eq!(commands(&sim, "create_worker").len(), 3);
}

#[test]
fn pending_pods_without_requests_count_as_pod_slots() {
    let t = handlers::policy::WorkerTemplate::default();
    assert_eq!(handlers::binpack::workers_needed(&[], 3, &t).workers, 1);
    assert_eq!(handlers::binpack::workers_needed(&[], 111, &t).workers, 2);
    let huge = handlers::binpack::workers_needed(
        &[PodBuilder::new("big").cpu(64_000).memory_bytes(1).build()],
        1,
        &t,
    );
    assert_eq!(huge.workers, 0);
    assert_eq!(huge.unschedulable, ["default/big"]);
}

#[test]
fn scale_up_is_capped_at_max_nodes_counting_workers_being_created() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(4);
    let pods = (0..10)
        .map(|i| {
            PodBuilder::new(&format!("p{i}"))
                .cpu(1500)
                .memory_mi(1)
                .build()
        })
        .collect();
    sim.observe("pending_pods_watcher", pending(pods, 10));
    assert_eq!(decision_targets(&sim), vec![6]);
    assert_eq!(sim.model.planned_workers(), 6);
    // A second report while the two are being created asks for nothing more.
    let pods = (0..12)
        .map(|i| {
            PodBuilder::new(&format!("q{i}"))
                .cpu(1500)
                .memory_mi(1)
                .build()
        })
        .collect();
    sim.observe("pending_pods_watcher", pending(pods, 12));
    assert_eq!(decision_targets(&sim), vec![6]);
    assert_eq!(commands(&sim, "create_worker").len(), 2);
}

#[test]
fn a_repeated_pending_report_adds_no_workers_while_capacity_is_on_its_way() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    sim.advance(Duration::from_secs(10));
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    assert_eq!(commands(&sim, "create_worker"), ["k3s-worker-3"]);
}

#[test]
fn a_report_after_the_new_worker_is_ready_but_before_its_pod_is_bound_adds_no_worker() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    let a = || pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1);
    sim.observe("pending_pods_watcher", a());
    // k3s-worker-3 is created and Ready (40 s in the simulated world); the scheduler has not bound
    // pod a yet when the watcher repeats its report.
    sim.advance(Duration::from_secs(41));
    assert_eq!(
        sim.model.workers["k3s-worker-3"].state,
        handlers::model::WorkerState::Ready
    );
    sim.observe("pending_pods_watcher", a());
    assert_eq!(commands(&sim, "create_worker"), ["k3s-worker-3"]);
    // Still pending once the grace is over: the new worker evidently cannot take it; sized afresh.
    sim.advance(Policy::default().scaling.new_worker_grace);
    sim.observe("pending_pods_watcher", a());
    assert_eq!(
        commands(&sim, "create_worker"),
        ["k3s-worker-3", "k3s-worker-4"]
    );
}

#[test]
fn pods_that_become_pending_after_a_new_worker_is_ready_are_sized_at_once() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    sim.advance(Duration::from_secs(41));
    // a is bound; b found no room anywhere, the new worker included.
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("b").cpu(1800).memory_mi(1).build()], 1),
    );
    assert_eq!(
        commands(&sim, "create_worker"),
        ["k3s-worker-3", "k3s-worker-4"]
    );
}

#[test]
fn resource_pressure_needs_consecutive_periods_then_adds_the_step() {
    let mut policy = Policy::default();
    policy.scaling.scale_up_step = 2;
    let mut sim = Simulation::new(policy, t0()).with_workers(2);
    sample_for(&mut sim, 30, 90.0, 50.0);
    assert!(
        events_of(&sim, "ResourcePressureAlert").is_empty(),
        "two samples are not enough"
    );
    sample_for(&mut sim, 15, 90.0, 50.0);
    assert_eq!(events_of(&sim, "ResourcePressureAlert").len(), 1);
    assert_eq!(decision_targets(&sim), vec![4]);
    // While the workers are being created, continued pressure adds nothing.
    sample_for(&mut sim, 30, 90.0, 50.0);
    assert_eq!(decision_targets(&sim), vec![4]);
}

#[test]
fn pending_pods_always_win_over_underutilisation() {
    let mut policy = Policy::default();
    policy.limits.max_nodes = 3;
    let mut sim = Simulation::new(policy, t0()).with_workers(3);
    // Pods pending that no new worker can help with at max: capacity is "covered" (at max).
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    sample_for(&mut sim, 330, 10.0, 10.0);
    assert!(events_of(&sim, "ScaleDownDecision").is_empty());
    let reasons = blocked_reasons(&sim);
    assert!(!reasons.is_empty());
    assert!(reasons.iter().all(|r| r == "pending_pods"), "{reasons:?}");
    let b = first(&sim.log, "ScaleDownBlocked");
    let Event::ScaleDownBlocked(b) = &b.event else {
        unreachable!()
    };
    assert_eq!(b.pending_count, Some(1));
}

#[test]
fn scale_down_waits_until_underutilisation_has_lasted_long_enough() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    sample_for(&mut sim, 285, 10.0, 10.0);
    assert!(!events_of(&sim, "UnderutilizationWarning").is_empty());
    assert!(events_of(&sim, "ScaleDownDecision").is_empty());
    sample_for(&mut sim, 30, 10.0, 10.0);
    assert_eq!(events_of(&sim, "ScaleDownDecision").len(), 1);
}

#[test]
fn scale_down_never_goes_below_min_nodes() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sample_for(&mut sim, 600, 5.0, 5.0);
    assert!(events_of(&sim, "ScaleDownDecision").is_empty());
    assert!(events_of(&sim, "UnderutilizationWarning").is_empty());
    assert_eq!(
        events_of(&sim, "OptimalStateTrigger").len(),
        1,
        "announced once at the minimum"
    );
    // Even a decision from elsewhere is refused by the NodeManager.
    sim.observe(
        "operator",
        ScaleDownDecision {
            current_workers: 2,
            target_workers: 1,
            nodes: vec!["k3s-worker-1".into()],
            reason: "test".into(),
            pool: None,
        },
    );
    assert!(events_of(&sim, "ScaleDownStarted").is_empty());
    assert_eq!(blocked_reasons(&sim), ["min_nodes_reached"]);
}

#[test]
fn scale_down_waits_for_the_cooldown_after_a_scale_up() {
    let mut policy = Policy::default();
    policy.scaling.scale_up_cooldown = Duration::from_secs(600);
    let mut sim = Simulation::new(policy, t0()).with_workers(3);
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    sim.advance(Duration::from_secs(60));
    sim.observe("pending_pods_watcher", pending(vec![], 0));
    sample_for(&mut sim, 330, 10.0, 10.0);
    assert!(events_of(&sim, "ScaleDownDecision").is_empty());
    assert!(blocked_reasons(&sim).iter().any(|r| r == "cooldown"));
}

#[test]
fn scale_down_is_blocked_when_too_many_workers_are_unhealthy() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(4);
    for n in ["k3s-worker-1", "k3s-worker-2"] {
        sim.observe(
            "node_watcher",
            NodeHealthDegraded {
                node_name: n.into(),
                status: "NotReady".into(),
                last_check: t0(),
            },
        );
    }
    sample_for(&mut sim, 330, 10.0, 10.0);
    assert!(events_of(&sim, "ScaleDownDecision").is_empty());
    assert!(blocked_reasons(&sim).iter().all(|r| r == "unhealthy_nodes"));
    assert!(!blocked_reasons(&sim).is_empty());
}

#[test]
fn protected_and_scale_down_disabled_workers_are_never_chosen() {
    let mut policy = Policy::default();
    policy.workers.protected = vec!["k3s-worker-3".into()];
    let mut sim = Simulation::new(policy.clone(), t0());
    sim.observe(
        "state_observer",
        ClusterObserved {
            k8s_nodes: (1..=3)
                .map(|i| {
                    NodeBuilder::new(&format!("k3s-worker-{i}"))
                        .scale_down_disabled(i == 2)
                        .build()
                })
                .collect(),
            docker_containers: (1..=3).map(|i| format!("k3s-worker-{i}")).collect(),
            unreachable: Vec::new(),
        },
    );
    let candidates: Vec<_> = handlers::engine::removal_candidates(&sim.model, &policy)
        .iter()
        .map(|w| w.name.clone())
        .collect();
    assert_eq!(candidates, ["k3s-worker-1"]);

    // With every worker excluded the reason says so.
    policy.workers.protected = vec!["k3s-worker-1".into(), "k3s-worker-3".into()];
    let mut sim2 = Simulation::new(policy, t0());
    sim2.world = sim.world.clone();
    for e in sim.log.clone() {
        sim2.publish(e);
    }
    sample_for(&mut sim2, 330, 10.0, 10.0);
    assert!(events_of(&sim2, "ScaleDownDecision").is_empty());
    assert!(blocked_reasons(&sim2)
        .iter()
        .all(|r| r == "scale_down_disabled"));
}

#[test]
fn the_newest_worker_goes_first_among_equal_candidates() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    sim.advance(Duration::from_secs(60));
    sim.observe("pending_pods_watcher", pending(vec![], 0));
    let c = handlers::engine::removal_candidates(&sim.model, &Policy::default());
    assert_eq!(c[0].name, "k3s-worker-3");
}

#[test]
fn no_place_for_pods_blocks_a_scale_down_that_would_overload_the_rest() {
    let mut policy = Policy::default();
    policy.thresholds.cpu_high = 40.0;
    let mut sim = Simulation::new(policy, t0()).with_workers(3);
    sample_for(&mut sim, 330, 29.0, 20.0);
    assert!(events_of(&sim, "ScaleDownDecision").is_empty());
    assert!(blocked_reasons(&sim)
        .iter()
        .all(|r| r == "no_place_for_pods"));
    assert!(!blocked_reasons(&sim).is_empty());
}

#[test]
fn manual_scaling_outside_the_limits_is_refused() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    sim.observe(
        "cli",
        ManualScaleRequested {
            target_workers: 9,
            reason: "test".into(),
        },
    );
    sim.observe(
        "cli",
        ManualScaleRequested {
            target_workers: 1,
            reason: "test".into(),
        },
    );
    let failed = events_of(&sim, "ScalingActionFailed");
    assert_eq!(failed.len(), 2);
    for f in failed {
        let Event::ScalingActionFailed(f) = &f.event else {
            unreachable!()
        };
        assert!(!f.retryable && f.error.starts_with("target_out_of_range"));
    }
    assert!(sim
        .commands
        .iter()
        .all(|c| matches!(c.command, Command::Notify { .. })));
}

#[test]
fn manual_scaling_goes_through_the_same_rules() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    sim.observe(
        "cli",
        ManualScaleRequested {
            target_workers: 5,
            reason: "test".into(),
        },
    );
    assert_eq!(
        commands(&sim, "create_worker"),
        ["k3s-worker-4", "k3s-worker-5"]
    );
    sim.advance(Duration::from_secs(60));
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    sim.observe(
        "cli",
        ManualScaleRequested {
            target_workers: 2,
            reason: "test".into(),
        },
    );
    assert_eq!(blocked_reasons(&sim), ["pending_pods"]);
    sim.observe("pending_pods_watcher", pending(vec![], 0));
    sim.observe(
        "cli",
        ManualScaleRequested {
            target_workers: 3,
            reason: "test".into(),
        },
    );
    let d = first(&sim.log, "ScaleDownDecision");
    let Event::ScaleDownDecision(d) = &d.event else {
        unreachable!()
    };
    assert_eq!(d.nodes, ["k3s-worker-5", "k3s-worker-4"]);
    sim.advance(Duration::from_secs(30));
    assert_eq!(sim.model.current_workers(), 3);
}

/// Every `ScaleUpBlocked` as (reason, pods, predicates per pool).
fn scale_up_blocks(sim: &Simulation) -> Vec<ScaleUpBlocked> {
    events_of(sim, "ScaleUpBlocked")
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpBlocked(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn pending_pods_that_no_new_worker_can_help_are_reported_not_ignored() {
    let mut policy = Policy::default();
    policy.limits.max_nodes = 3;
    let mut sim = Simulation::new(policy, t0()).with_workers(3);
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    sim.observe(
        "pending_pods_watcher",
        pending(
            vec![PodBuilder::new("huge").cpu(8000).memory_mi(1).build()],
            1,
        ),
    );
    let blocks = scale_up_blocks(&sim);
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    assert_eq!(blocks[0].reason, "max_nodes_reached");
    assert_eq!(blocks[0].pods, ["default/a"]);
    assert_eq!(blocks[1].reason, "no_pool_fits");
    assert_eq!(blocks[1].pods, ["default/huge"]);
    assert!(events_of(&sim, "ScalingActionFailed").is_empty());
    assert!(commands(&sim, "create_worker").is_empty());

    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    for _ in 0..3 {
        sim.observe(
            "pending_pods_watcher",
            pending(
                vec![PodBuilder::new("huge").cpu(8000).memory_mi(1).build()],
                1,
            ),
        );
        sim.advance(Duration::from_secs(2));
    }
    let blocks = scale_up_blocks(&sim);
    assert_eq!(blocks.len(), 1, "published once, not on every report");
    assert_eq!(blocks[0].reason, "no_pool_fits");
    assert_eq!(blocks[0].pods, ["default/huge"]);
    assert_eq!(
        blocks[0].predicates,
        [("default".to_string(), "resources".to_string())].into()
    );
    assert!(decision_targets(&sim).is_empty());
    assert!(events_of(&sim, "ScalingActionFailed").is_empty());
}
