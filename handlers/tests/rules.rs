//! The rules of issue 4, one behaviour per test.

mod common;

use std::time::Duration;

use bus::event::*;
use bus::Event;
use common::*;
use handlers::simulate::Simulation;
use handlers::{Command, Policy};

fn pod(name: &str, cpu_millis: u64, memory_bytes: u64) -> PodRequest {
    PodRequest {
        namespace: "default".into(),
        name: name.into(),
        cpu_millis,
        memory_bytes,
    }
}

fn pending(pods: Vec<PodRequest>, count: u32) -> PendingPodsDetected {
    PendingPodsDetected {
        pending_count: count,
        waiting_time: 5.0,
        affected_deployments: vec!["app1".into()],
        pods,
    }
}

fn metrics(workers: u32, cpu: f64, mem: f64) -> MetricsSampled {
    MetricsSampled {
        workers,
        cpu_avg: cpu,
        memory_avg: mem,
        source: "docker_stats".into(),
        nodes: vec![],
    }
}

fn events_of<'a>(sim: &'a Simulation, ty: &str) -> Vec<&'a bus::Envelope> {
    sim.log.iter().filter(|e| e.event_type() == ty).collect()
}

fn blocked_reasons(sim: &Simulation) -> Vec<String> {
    sim.log
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleDownBlocked(b) => Some(b.reason.clone()),
            _ => None,
        })
        .collect()
}

fn commands(sim: &Simulation, kind: &str) -> Vec<String> {
    sim.commands
        .iter()
        .filter(|i| i.command.kind() == kind)
        .filter_map(|i| i.command.node().map(str::to_string))
        .collect()
}

/// Samples every 15 s for `secs` seconds.
fn sample_for(sim: &mut Simulation, secs: u64, cpu: f64, mem: f64) {
    for _ in 0..secs / 15 {
        sim.advance(Duration::from_secs(15));
        let w = sim.model.current_workers();
        sim.observe("metrics_collector", metrics(w, cpu, mem));
    }
}

fn decision_targets(sim: &Simulation) -> Vec<u32> {
    events_of(sim, "ScaleUpDecision")
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpDecision(d) => Some(d.target_workers),
            _ => None,
        })
        .collect()
}

#[test]
fn pending_pods_are_bin_packed_onto_the_worker_template() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    // 2000m workers: 900m pods go two per worker, so five need three workers.
    let pods = (0..5)
        .map(|i| pod(&format!("p{i}"), 900, 256 << 20))
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
    let huge = handlers::binpack::workers_needed(&[pod("big", 64_000, 1)], 1, &t);
    assert_eq!(huge.workers, 0);
    assert_eq!(huge.unschedulable, ["default/big"]);
}

#[test]
fn scale_up_is_capped_at_max_nodes_counting_workers_being_created() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(4);
    let pods = (0..10)
        .map(|i| pod(&format!("p{i}"), 1500, 1 << 20))
        .collect();
    sim.observe("pending_pods_watcher", pending(pods, 10));
    assert_eq!(decision_targets(&sim), vec![6]);
    assert_eq!(sim.model.planned_workers(), 6);
    // A second report while the two are being created asks for nothing more.
    let pods = (0..12)
        .map(|i| pod(&format!("q{i}"), 1500, 1 << 20))
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
        pending(vec![pod("a", 500, 1 << 20)], 1),
    );
    sim.advance(Duration::from_secs(10));
    sim.observe(
        "pending_pods_watcher",
        pending(vec![pod("a", 500, 1 << 20)], 1),
    );
    assert_eq!(commands(&sim, "create_worker"), ["k3s-worker-3"]);
}

#[test]
fn a_report_after_the_new_worker_is_ready_but_before_its_pod_is_bound_adds_no_worker() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    let a = || pending(vec![pod("a", 500, 1 << 20)], 1);
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
        pending(vec![pod("a", 500, 1 << 20)], 1),
    );
    sim.advance(Duration::from_secs(41));
    // a is bound; b found no room anywhere, the new worker included.
    sim.observe(
        "pending_pods_watcher",
        pending(vec![pod("b", 1800, 1 << 20)], 1),
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
        pending(vec![pod("a", 500, 1 << 20)], 1),
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
        pending(vec![pod("a", 500, 1 << 20)], 1),
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
                .map(|i| ObservedNode {
                    name: format!("k3s-worker-{i}"),
                    ready: true,
                    scale_down_disabled: i == 2,
                })
                .collect(),
            docker_containers: (1..=3).map(|i| format!("k3s-worker-{i}")).collect(),
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
        pending(vec![pod("a", 500, 1 << 20)], 1),
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
fn a_draining_node_is_not_drained_twice() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    sim.execute = false;
    let d = sim.observe(
        "operator",
        ScaleDownDecision {
            current_workers: 3,
            target_workers: 2,
            nodes: vec!["k3s-worker-3".into()],
            reason: "test".into(),
        },
    );
    // The same decision again (another replica) and two cordon reports.
    sim.observe(
        "operator",
        ScaleDownDecision {
            current_workers: 3,
            target_workers: 2,
            nodes: vec!["k3s-worker-3".into()],
            reason: "test".into(),
        },
    );
    let started = first(&sim.log, "ScaleDownStarted").clone();
    assert_eq!(started.causation_id, Some(d.event_id));
    for _ in 0..2 {
        let cordoned = bus::Envelope::caused_by(
            &started,
            "executor",
            NodeCordoned {
                node_name: "k3s-worker-3".into(),
            },
        )
        .with_timestamp(sim.now);
        sim.publish(cordoned);
    }
    assert_eq!(events_of(&sim, "ScaleDownStarted").len(), 1);
    assert_eq!(commands(&sim, "cordon_and_taint"), ["k3s-worker-3"]);
    assert_eq!(commands(&sim, "drain"), ["k3s-worker-3"]);
}

#[test]
fn an_interruption_starts_the_replacement_before_draining_and_coalesces_repeats() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    for cause in ["docker_stop", "docker_kill"] {
        sim.observe(
            "docker_events",
            NodeInterruptionNotice {
                node_name: "k3s-worker-1".into(),
                cause: cause.into(),
            },
        );
    }
    assert_eq!(commands(&sim, "create_worker"), ["k3s-worker-3"]);
    assert!(
        commands(&sim, "cordon_and_taint").is_empty(),
        "old pods stay until new capacity is Ready"
    );
    sim.advance(Duration::from_secs(120));
    assert_eq!(commands(&sim, "cordon_and_taint"), ["k3s-worker-1"]);
    let types = sim.types();
    assert_in_order(
        &types,
        &[
            "NodeInterruptionNotice",
            "ScaleUpStarted",
            "NodeReady",
            "ScaleDownStarted",
            "NodeRemoved",
        ],
    );
    assert_eq!(events_of(&sim, "ScaleUpStarted").len(), 1);
    assert!(events_of(&sim, "MinimumNodesViolation").is_empty());
    assert_eq!(sim.model.current_workers(), 2);
}

#[test]
fn a_worker_not_ready_in_time_is_failed_removed_and_replaced_after_a_backoff() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.world.never_ready.insert("k3s-worker-3".into());
    sim.observe(
        "pending_pods_watcher",
        pending(vec![pod("a", 500, 1 << 20)], 1),
    );
    sim.advance(Duration::from_secs(299));
    assert!(events_of(&sim, "ScalingActionFailed").is_empty());
    sim.advance(Duration::from_secs(10));
    let failed = first(&sim.log, "ScalingActionFailed");
    let Event::ScalingActionFailed(f) = &failed.event else {
        unreachable!()
    };
    assert_eq!(f.node_name.as_deref(), Some("k3s-worker-3"));
    assert!(f.retryable && f.error.starts_with("provision_timeout"));
    assert_eq!(commands(&sim, "remove_worker"), ["k3s-worker-3"]);
    assert_eq!(commands(&sim, "delete_node"), ["k3s-worker-3"]);
    // The replacement comes only after the backoff (30 s for the first failure).
    sim.advance(Duration::from_secs(15));
    assert_eq!(commands(&sim, "create_worker"), ["k3s-worker-3"]);
    sim.advance(Duration::from_secs(30));
    assert_eq!(
        commands(&sim, "create_worker"),
        ["k3s-worker-3", "k3s-worker-4"]
    );
    sim.advance(Duration::from_secs(60));
    assert_eq!(sim.model.current_workers(), 3);
    assert!(!events_of(&sim, "ScalingActionCompleted").is_empty());
}

#[test]
fn a_worker_named_but_never_created_is_created_again_on_the_timer() {
    use handlers::NodeManager;
    let policy = Policy::default();
    // The ScaleUpStarted is on the stream (published before acting), but whoever was to create the
    // worker died: no NodeCreated follows.
    let started = bus::Envelope::root(
        "NodeManager",
        ScaleUpStarted {
            count: 1,
            target_workers: 3,
            nodes: vec!["k3s-worker-3".into()],
        },
        bus::Metadata::default(),
    )
    .with_timestamp(t0());
    let model = handlers::Model::from_events(&policy, [&started]);
    let creates = |secs: i64| -> Vec<(String, uuid::Uuid)> {
        NodeManager
            .tick(&model, &policy, t0() + chrono::Duration::seconds(secs))
            .commands
            .into_iter()
            .filter_map(|i| match i.command {
                handlers::Command::CreateWorker { name, .. } => Some((name, i.cause.event_id)),
                _ => None,
            })
            .collect()
    };
    assert!(creates(5).is_empty(), "a create may take a while");
    assert_eq!(
        creates(12),
        [("k3s-worker-3".to_string(), started.event_id)],
        "created again, its facts caused by the ScaleUpStarted that named it"
    );
    assert!(
        creates(400).is_empty(),
        "past max_node_provision_time it is failed instead"
    );
}

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
        pending(vec![pod("a", 500, 1 << 20)], 1),
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

#[test]
fn state_sync_cleans_up_nodes_without_containers_and_orphan_containers() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    // A Node object nobody records, with no container; a container nobody records, with no Node.
    sim.world.nodes.insert("k3s-worker-9".into(), false);
    sim.world.containers.insert("k3s-worker-8".into());
    sim.world.nodes.remove("k3s-worker-9");
    sim.observe(
        "state_observer",
        ClusterObserved {
            k8s_nodes: vec![
                ObservedNode {
                    name: "k3s-worker-1".into(),
                    ready: true,
                    scale_down_disabled: false,
                },
                ObservedNode {
                    name: "k3s-worker-2".into(),
                    ready: true,
                    scale_down_disabled: false,
                },
                ObservedNode {
                    name: "stale-node".into(),
                    ready: false,
                    scale_down_disabled: false,
                },
            ],
            docker_containers: vec![
                "k3s-worker-1".into(),
                "k3s-worker-2".into(),
                "k3s-worker-8".into(),
            ],
        },
    );
    assert!(commands(&sim, "delete_node").contains(&"stale-node".to_string()));
    assert!(
        commands(&sim, "remove_worker").is_empty(),
        "an orphan gets the provision time to register"
    );
    sim.advance(Duration::from_secs(301));
    sim.observe_cluster();
    assert_eq!(commands(&sim, "remove_worker"), ["k3s-worker-8"]);
    sim.advance(Duration::from_secs(30));
    let last = sim.observe_cluster();
    let synced: Vec<_> = events_of(&sim, "ClusterStateSynced")
        .iter()
        .map(|e| e.causation_id)
        .collect();
    let first_obs = sim.log[0].event_id;
    assert_eq!(
        synced,
        [Some(first_obs), Some(last.event_id)],
        "no agreement while the orphans were there"
    );
    assert!(
        events_of(&sim, "NodeUnexpectedlyLost").is_empty(),
        "{:?}",
        sim.log
            .iter()
            .map(|e| (e.event_type(), e.event.data_json().to_string()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn sync_triggers_collapse_into_one_observation_per_gap() {
    let policy = handlers::policy::SyncPolicy::default();
    let mut t = handlers::SyncTriggers::new(policy);
    assert!(t.due(t0()), "the first observation is due at once");
    for _ in 0..100 {
        t.trigger();
    }
    assert!(!t.due(t0() + chrono::Duration::seconds(1)));
    assert!(t.due(t0() + chrono::Duration::seconds(5)));
    assert!(
        !t.due(t0() + chrono::Duration::seconds(6)),
        "the triggers were consumed"
    );
    assert!(
        t.due(t0() + chrono::Duration::seconds(65)),
        "the periodic observation"
    );
    assert!(handlers::sync::wants_sync(&Event::NodeReady(NodeReady {
        node_name: "x".into()
    })));
}

#[test]
fn alerts_go_out_before_and_after_an_action_once_per_window() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.kill("k3s-worker-2");
    sim.observe_cluster();
    sim.advance(Duration::from_secs(120));
    let alerts: Vec<_> = sim
        .commands
        .iter()
        .filter_map(|c| match &c.command {
            Command::Notify { alert } => Some((alert.event_type.clone(), alert.phase)),
            _ => None,
        })
        .collect();
    use handlers::alerts::Phase;
    assert!(alerts.contains(&("NodeUnexpectedlyLost".into(), Phase::Detected)));
    assert!(alerts.contains(&("MinimumNodesViolation".into(), Phase::Detected)));
    assert!(alerts.contains(&("AutoScaleUpToMinimum".into(), Phase::Before)));
    assert!(alerts.contains(&("ScalingActionCompleted".into(), Phase::After)));
    assert!(alerts.contains(&("MinimumNodesRestored".into(), Phase::After)));
    // A second violation inside the window is not notified again.
    sim.kill("k3s-worker-3");
    sim.observe_cluster();
    let violations = sim
        .commands
        .iter()
        .filter(|c| matches!(&c.command, Command::Notify { alert } if alert.event_type == "MinimumNodesViolation"))
        .count();
    assert_eq!(events_of(&sim, "MinimumNodesViolation").len(), 2);
    assert_eq!(violations, 1);
}

#[test]
fn alert_payloads_never_carry_secrets() {
    let failed = bus::Envelope::root(
        "executor",
        ScalingActionFailed {
            action: ScalingAction::ScaleUp,
            node_name: Some("k3s-worker-3".into()),
            error: "create failed: https://admin:hunter2@registry.local/v2 token=abc123 K3S_TOKEN=K10xyz password: p4ss Bearer eyJhbGci".into(),
            retryable: true,
        },
        bus::Metadata::new("k3s-lab", "local"),
    );
    let alert = handlers::alerts::alert_for(&failed).unwrap();
    for format in [
        handlers::alerts::Format::Json,
        handlers::alerts::Format::Slack,
    ] {
        let body = handlers::alerts::payload(&alert, format).to_string();
        for secret in ["hunter2", "abc123", "K10xyz", "p4ss", "eyJhbGci", "admin:"] {
            assert!(!body.contains(secret), "{secret} leaked in {body}");
        }
        assert!(body.contains("registry.local"));
        assert!(body.contains("k3s-worker-3"));
    }
    let slack = handlers::alerts::payload(&alert, handlers::alerts::Format::Slack);
    assert_eq!(slack["attachments"][0]["color"], "warning");
    assert!(slack["text"]
        .as_str()
        .unwrap()
        .contains("ScalingActionFailed"));
}

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
    sim.observe("pod_watcher", pending(vec![pod("a", 500, 1 << 20)], 1));
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
fn the_executor_maps_commands_to_facts() {
    use handlers::traits::{ActionError, FakeNodeOps, FakeWorkerPool, RecordingNotifier};
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.execute = false;
    sim.observe(
        "cli",
        ManualScaleRequested {
            target_workers: 4,
            reason: "test".into(),
        },
    );
    let pool = FakeWorkerPool::default();
    pool.fail_create.lock().unwrap().push((
        "k3s-worker-4".into(),
        ActionError::retryable("engine busy, auth=token=s3cret"),
    ));
    let nodes = FakeNodeOps::default();
    let notifier = RecordingNotifier::default();
    let done = block_on(handlers::executor::execute(
        &sim.commands,
        &pool,
        &nodes,
        &notifier,
        sim.now,
    ));
    let types: Vec<_> = done.facts.iter().map(|f| f.event_type()).collect();
    assert_eq!(types, ["NodeCreated", "ScalingActionFailed"]);
    let started = first(&sim.log, "ScaleUpStarted");
    assert!(done
        .facts
        .iter()
        .all(|f| f.causation_id == Some(started.event_id)));
    let Event::ScalingActionFailed(f) = &done.facts[1].event else {
        unreachable!()
    };
    assert!(f.retryable && !f.error.contains("s3cret"));
    assert_eq!(pool.calls(), ["create k3s-worker-3", "create k3s-worker-4"]);
    assert!(!notifier.alerts().is_empty());
    // Running the same commands again reports the same facts (same ids).
    let again = block_on(handlers::executor::execute(
        &sim.commands,
        &pool,
        &nodes,
        &notifier,
        sim.now,
    ));
    assert_eq!(
        again.facts.iter().map(|f| f.event_id).collect::<Vec<_>>(),
        done.facts.iter().map(|f| f.event_id).collect::<Vec<_>>()
    );
}

/// Polls a future that never waits (the fakes are synchronous).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[test]
fn a_failed_node_deletion_is_retried_by_the_next_observation_and_the_scale_down_completes() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    sim.execute = false;
    sim.observe(
        "operator",
        ScaleDownDecision {
            current_workers: 3,
            target_workers: 2,
            nodes: vec!["k3s-worker-3".into()],
            reason: "test".into(),
        },
    );
    let started = first(&sim.log, "ScaleDownStarted").clone();
    let cordoned = bus::Envelope::caused_by(
        &started,
        "executor",
        NodeCordoned {
            node_name: "k3s-worker-3".into(),
        },
    )
    .with_timestamp(sim.now);
    sim.publish(cordoned.clone());
    let drained = bus::Envelope::caused_by(
        &cordoned,
        "executor",
        NodeDrained {
            node_name: "k3s-worker-3".into(),
            evicted_pods: 2,
        },
    )
    .with_timestamp(sim.now);
    sim.publish(drained.clone());
    // The container went, deleting the Node failed.
    sim.world.containers.remove("k3s-worker-3");
    sim.publish(
        bus::Envelope::caused_by(
            &drained,
            "executor",
            ScalingActionFailed {
                action: ScalingAction::ScaleDown,
                node_name: Some("k3s-worker-3".into()),
                error: "apiserver unavailable".into(),
                retryable: true,
            },
        )
        .with_timestamp(sim.now),
    );
    assert!(
        commands(&sim, "uncordon").is_empty(),
        "a removed container is not rolled back"
    );
    sim.observe_cluster();
    assert_eq!(
        commands(&sim, "delete_node"),
        ["k3s-worker-3", "k3s-worker-3"]
    );
    assert!(events_of(&sim, "NodeUnexpectedlyLost").is_empty());
    // Once the Node is gone the record sees it, and the action completes.
    sim.world.nodes.remove("k3s-worker-3");
    sim.observe_cluster();
    assert_eq!(events_of(&sim, "ScalingActionCompleted").len(), 1);
    assert!(sim.model.decisions.actions.is_empty());
    assert_eq!(sim.model.current_workers(), 2);
}

#[test]
fn a_failed_drain_puts_the_node_back_into_service() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(3);
    sim.execute = false;
    sim.observe(
        "operator",
        ScaleDownDecision {
            current_workers: 3,
            target_workers: 2,
            nodes: vec!["k3s-worker-3".into()],
            reason: "test".into(),
        },
    );
    let started = first(&sim.log, "ScaleDownStarted").clone();
    let cordoned = bus::Envelope::caused_by(
        &started,
        "executor",
        NodeCordoned {
            node_name: "k3s-worker-3".into(),
        },
    )
    .with_timestamp(sim.now);
    sim.publish(cordoned.clone());
    sim.publish(
        bus::Envelope::caused_by(
            &cordoned,
            "executor",
            ScalingActionFailed {
                action: ScalingAction::ScaleDown,
                node_name: Some("k3s-worker-3".into()),
                error: "pdb: cannot evict default/db-0".into(),
                retryable: true,
            },
        )
        .with_timestamp(sim.now),
    );
    assert_eq!(commands(&sim, "uncordon"), ["k3s-worker-3"]);
    let b = first(&sim.log, "ScaleDownBlocked");
    let Event::ScaleDownBlocked(b) = &b.event else {
        unreachable!()
    };
    assert_eq!(
        (b.reason.as_str(), b.node_name.as_deref()),
        ("pdb", Some("k3s-worker-3"))
    );
    assert_eq!(
        sim.model.worker("k3s-worker-3").unwrap().state,
        handlers::WorkerState::Ready
    );
    assert!(
        sim.model.decisions.actions.is_empty(),
        "no action left in progress to block the next scale-down"
    );
    assert_eq!(sim.model.current_workers(), 3);
}

#[test]
fn pending_pods_that_no_new_worker_can_help_are_reported_not_ignored() {
    let mut policy = Policy::default();
    policy.limits.max_nodes = 3;
    let mut sim = Simulation::new(policy, t0()).with_workers(3);
    sim.observe(
        "pending_pods_watcher",
        pending(vec![pod("a", 500, 1 << 20)], 1),
    );
    sim.observe(
        "pending_pods_watcher",
        pending(vec![pod("huge", 8000, 1 << 20)], 1),
    );
    let errors: Vec<String> = events_of(&sim, "ScalingActionFailed")
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScalingActionFailed(f) => Some(f.error.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("max_nodes_reached"));
    assert!(errors[1].starts_with("max_nodes_reached") || errors[1].starts_with("pods_too_large"));
    assert!(commands(&sim, "create_worker").is_empty());

    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.observe(
        "pending_pods_watcher",
        pending(vec![pod("huge", 8000, 1 << 20)], 1),
    );
    let f = first(&sim.log, "ScalingActionFailed");
    let Event::ScalingActionFailed(f) = &f.event else {
        unreachable!()
    };
    assert_eq!(
        f.error,
        "pods_too_large: default/huge fit no worker of the template"
    );
    assert!(decision_targets(&sim).is_empty());
}

#[test]
fn what_if_with_a_higher_maximum_shortens_the_time_pods_wait() {
    let mut tight = Policy::default();
    tight.limits.max_nodes = 2;
    let mut sim = Simulation::new(tight, t0()).with_workers(2);
    sim.advance(Duration::from_secs(30));
    let pods = (0..4)
        .map(|i| pod(&format!("p{i}"), 1500, 1 << 20))
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
        Some("ScalingActionFailed")
    );
    assert_eq!(
        pair.replayed.as_ref().and_then(|d| d.target_workers),
        Some(6)
    );
    assert!(pair.changed);
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

#[test]
fn a_lost_workers_exited_container_and_node_are_removed_once_its_replacement_is_in() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    // `docker kill`: the events watcher reports the loss; the exited container and the NotReady Node
    // (with its node-password secret) stay behind.
    sim.world.nodes.insert("k3s-worker-2".into(), false);
    let last_seen = sim.now;
    sim.observe(
        "docker_events_watcher",
        NodeUnexpectedlyLost {
            node_name: "k3s-worker-2".into(),
            last_seen,
            cause: "container_killed".into(),
        },
    );
    assert_eq!(commands(&sim, "create_worker"), ["k3s-worker-3"]);
    // Not while the replacement is being provisioned: the dead Node's pods are not pushed out early.
    sim.observe_cluster();
    assert!(commands(&sim, "remove_worker").is_empty());
    assert!(commands(&sim, "delete_node").is_empty());
    sim.advance(Duration::from_secs(60));
    assert_eq!(sim.model.current_workers(), 2);
    sim.observe_cluster();
    assert_eq!(commands(&sim, "remove_worker"), ["k3s-worker-2"]);
    assert_eq!(commands(&sim, "delete_node"), ["k3s-worker-2"]);
    sim.advance(Duration::from_secs(10));
    assert!(!sim.world.containers.contains("k3s-worker-2"));
    assert!(!sim.world.nodes.contains_key("k3s-worker-2"));
    let last = sim.observe_cluster();
    assert!(
        events_of(&sim, "ClusterStateSynced")
            .iter()
            .any(|e| e.causation_id == Some(last.event_id)),
        "the record agrees with the world again: {:?}",
        sim.types()
    );
    assert_eq!(commands(&sim, "remove_worker"), ["k3s-worker-2"], "once");
}

/// Root envelopes at a clock that steps forward before each one (for tests that drive a model and
/// one handler directly, to put entries in an order the simulation would not produce).
struct Clock {
    now: chrono::DateTime<chrono::Utc>,
    step: chrono::Duration,
    metadata: bus::Metadata,
}

impl Clock {
    fn new(step_secs: i64) -> Self {
        Self {
            now: t0(),
            step: chrono::Duration::seconds(step_secs),
            metadata: bus::Metadata::new("lab", "local"),
        }
    }

    fn at(&mut self, event: impl Into<Event>) -> bus::Envelope {
        self.now += self.step;
        bus::Envelope::root("test", event, self.metadata.clone()).with_timestamp(self.now)
    }
}

/// Kubernetes and Docker both show `names`, all Ready.
fn all_ready(names: &[&str]) -> ClusterObserved {
    ClusterObserved {
        k8s_nodes: names
            .iter()
            .map(|n| ObservedNode {
                name: (*n).into(),
                ready: true,
                scale_down_disabled: false,
            })
            .collect(),
        docker_containers: names.iter().map(|n| (*n).to_string()).collect(),
    }
}

/// The facts of `victim`'s removal after its `ScaleDownStarted`, in order, down from `previous` workers.
fn removal_of(victim: &str, previous: u32) -> [Event; 4] {
    [
        NodeCordoned {
            node_name: victim.into(),
        }
        .into(),
        NodeDrained {
            node_name: victim.into(),
            evicted_pods: 0,
        }
        .into(),
        NodeRemoved {
            node_name: victim.into(),
        }
        .into(),
        ScalingActionCompleted {
            action: ScalingAction::ScaleDown,
            count: 1,
            previous_workers: previous,
            new_workers: previous - 1,
            duration: 3.0,
            nodes: vec![victim.into()],
        }
        .into(),
    ]
}

#[test]
fn a_sync_report_that_lands_after_a_scale_down_began_does_not_silence_the_next_one() {
    // Under load the StateSynchronizer's report of an observation made at three workers is appended
    // after a ScaleDownStarted that raced it. Once the worker is gone, the next observation must still
    // be reported (at two), not wait for `report_every`.
    let policy = Policy::default();
    let sync = handlers::sync::StateSynchronizer;
    let mut clock = Clock::new(1);
    let mut model = handlers::Model::new(&policy);
    let synced = |o: &handlers::Outcome| -> Vec<u32> {
        o.events
            .iter()
            .filter_map(|e| match &e.event {
                Event::ClusterStateSynced(s) => Some(s.db_workers),
                _ => None,
            })
            .collect()
    };

    let first = clock.at(all_ready(&["w1", "w2", "w3"]));
    model.apply(&first);
    let report = sync.handle(&model, &first, &policy, clock.now);
    assert_eq!(synced(&report), [3]);
    model.apply(&clock.at(ScaleDownStarted {
        count: 1,
        target_workers: 2,
        nodes: vec!["w3".into()],
    }));
    for e in &report.events {
        model.apply(e);
    }
    for e in removal_of("w3", 3) {
        model.apply(&clock.at(e));
    }
    assert!(model.decisions.actions.is_empty());
    let second = clock.at(all_ready(&["w1", "w2"]));
    model.apply(&second);
    assert_eq!(
        synced(&sync.handle(&model, &second, &policy, clock.now)),
        [2]
    );
}

#[test]
fn the_minimum_is_announced_once_the_scale_down_is_done_not_during_the_drain() {
    let policy = Policy::default();
    let listener = handlers::metrics_listener::MetricsListener;
    let mut clock = Clock::new(15);
    let mut model = handlers::Model::new(&policy);
    let min = policy.limits.min_nodes;
    let names: Vec<String> = (1..=min + 1).map(|i| format!("w{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    model.apply(&clock.at(all_ready(&name_refs)));
    let victim = names.last().cloned().expect("a worker");
    model.apply(&clock.at(ScaleDownStarted {
        count: 1,
        target_workers: min,
        nodes: vec![victim.clone()],
    }));
    let optimal = |model: &handlers::Model, sample: &bus::Envelope, now| {
        listener
            .handle(model, sample, &policy, now)
            .events
            .iter()
            .filter(|e| e.event_type() == "OptimalStateTrigger")
            .count()
    };
    // Low samples while the victim drains: the record counts `min` live workers, but one is leaving.
    for _ in 0..policy.thresholds.consecutive_periods + 1 {
        let sample = clock.at(metrics(min, 1.0, 1.0));
        model.apply(&sample);
        assert_eq!(model.current_workers(), min);
        assert_eq!(
            optimal(&model, &sample, clock.now),
            0,
            "not during the drain"
        );
    }
    for e in removal_of(&victim, min + 1) {
        model.apply(&clock.at(e));
    }
    let sample = clock.at(metrics(min, 1.0, 1.0));
    model.apply(&sample);
    assert_eq!(
        optimal(&model, &sample, clock.now),
        1,
        "announced once it is gone"
    );
}
