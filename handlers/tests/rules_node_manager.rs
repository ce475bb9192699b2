//! The NodeManager's rules (and the executor that carries out its commands): provisioning, timeouts
//! and retries, draining, interruptions, failed steps.

mod common;

use std::time::Duration;

use bus::event::*;
use bus::Event;
use common::*;
use handlers::simulate::Simulation;
use handlers::Policy;

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
            pool: None,
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
            pool: None,
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
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
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
            pool: None,
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
            pool: None,
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
            pool: None,
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
