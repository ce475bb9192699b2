//! `explain` and the what-if replays.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bus::event::ScaleUpBlocked;
use bus::scheduling::{Resources, Taint, TaintEffect};
use bus::{Envelope, Event};
use common::*;
use handlers::policy::PoolTemplate;
use handlers::replay::{replay, replay_with_lookahead, what_if, Pair, WhatIf, WhatIfReport};
use handlers::simulate::Simulation;
use handlers::{Handler, Policy};
use proptest::prelude::*;

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

/// The pairs of the report whose root is a `PendingPodsDetected`.
fn pending_pairs(report: &WhatIfReport) -> Vec<&Pair> {
    report
        .pairs
        .iter()
        .filter(|p| p.root_type == event_type("PendingPodsDetected"))
        .collect()
}

/// The names of the workers that became Ready in `log`.
fn ready_in(log: &[Envelope]) -> Vec<String> {
    log.iter()
        .filter_map(|e| match &e.event {
            Event::NodeReady(r) => Some(r.node_name.clone()),
            _ => None,
        })
        .collect()
}

fn blocked_in(log: &[Envelope]) -> Vec<ScaleUpBlocked> {
    log.iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpBlocked(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn under_its_own_policy_the_replay_of_a_stream_is_the_stream() {
    // Scale-ups for pending pods, a worker killed, the load gone (scale-downs), the timers' checks:
    // the replay decides every output again and folds it where the recording has it.
    let policy = Policy::default();
    let mut sim = Simulation::new(policy.clone(), t0()).with_workers(2);
    sim.advance(Duration::from_secs(30));
    let pods = (0..3)
        .map(|i| {
            PodBuilder::new(&format!("web-{i}"))
                .cpu(1500)
                .memory_mi(64)
                .build()
        })
        .collect();
    sim.observe("pending_pods_watcher", pending(pods, 3));
    sim.advance(Duration::from_secs(60));
    sim.observe("pending_pods_watcher", pending(Vec::new(), 0));
    sim.kill("k3s-worker-1");
    sim.observe_cluster();
    sim.advance(Duration::from_secs(60));
    sim.observe_cluster();
    sample_for(&mut sim, 900, 5.0, 5.0);
    sim.observe_cluster();
    let recorded = sim.log.clone();
    assert!(!events_of(&sim, "ScaleUpDecision").is_empty());
    assert!(events_of(&sim, "ScaleDownDecision").len() >= 2);
    assert!(events_of(&sim, "NodeUnexpectedlyLost").len() == 1);

    let replayed = replay(&recorded, &policy, &Handler::ALL);
    let ids = |log: &[Envelope]| log.iter().map(|e| e.event_id).collect::<Vec<_>>();
    assert_eq!(
        ids(&replayed.log),
        ids(&recorded),
        "the same entries, in the same order"
    );
    for (r, e) in replayed.log.iter().zip(&recorded) {
        assert_eq!(r.event, e.event, "{}", e.event_type());
        assert_eq!(r.causation_id, e.causation_id, "{}", e.event_type());
        assert_eq!(r.timestamp, e.timestamp, "{}", e.event_type());
    }
    let report = what_if(&recorded, &policy);
    assert_eq!(report.decisions_changed, 0, "{}", report.render());
    assert_eq!(report.recorded.decisions, report.replayed.decisions);
    assert!(report.recorded.decisions >= 4, "{}", report.render());
}

#[test]
fn the_timers_fire_in_the_replay_where_they_fired_in_the_recording() {
    // An empty cluster: the minimum enforcer's timer finds the violation (a root keyed by the stream
    // position); one worker never becomes Ready: the NodeManager's timer times it out and retries.
    let policy = Policy::default();
    let mut sim = Simulation::new(policy.clone(), t0());
    sim.world.never_ready.insert("k3s-worker-2".into());
    sim.advance(Duration::from_secs(15));
    sim.observe_cluster();
    sim.advance(Duration::from_secs(900));
    sim.observe_cluster();
    let recorded = sim.log.clone();
    let timer_root = recorded
        .iter()
        .find(|e| e.source == "MinimumNodeEnforcer" && e.causation_id.is_none())
        .expect("the timer's violation");
    assert_eq!(timer_root.event_type(), "MinimumNodesViolation");
    let timeouts = events_of(&sim, "ScalingActionFailed");
    assert!(
        timeouts.iter().any(|e| e.source == "NodeManager"),
        "{:?}",
        sim.types()
    );

    let replayed = replay(&recorded, &policy, &Handler::ALL);
    let ids = |log: &[Envelope]| log.iter().map(|e| e.event_id).collect::<Vec<_>>();
    assert_eq!(ids(&replayed.log), ids(&recorded));
    assert_eq!(what_if(&recorded, &policy).decisions_changed, 0);

    // Under a higher minimum the same timer asks for more.
    let mut higher = policy.clone();
    higher.limits.min_nodes = 3;
    let report = what_if(&recorded, &higher);
    let first = report.pairs.first().expect("pairs");
    assert_eq!(first.root_id, timer_root.event_id, "{}", report.render());
    assert_eq!(
        first.replayed.as_ref().and_then(|d| d.target_workers),
        Some(3),
        "{}",
        report.render()
    );
}

#[test]
fn what_if_with_a_lower_max_nodes_makes_fewer_workers_and_blocks_the_rest() {
    // Recorded under max_nodes 6: four pods of 1500m on two 2-CPU workers made four more.
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.advance(Duration::from_secs(30));
    let pods = (0..4)
        .map(|i| {
            PodBuilder::new(&format!("web-{i}"))
                .cpu(1500)
                .memory_mi(64)
                .build()
        })
        .collect();
    sim.observe("pending_pods_watcher", pending(pods, 4));
    sim.advance(Duration::from_secs(120));
    sim.observe_cluster();
    let recorded = sim.log.clone();
    assert_eq!(decision_targets(&sim), [6]);
    assert_eq!(ready_in(&recorded).len(), 4);

    let mut lower = Policy::default();
    lower.limits.max_nodes = 4;
    let report = what_if(&recorded, &lower);
    let text = report.render();
    let pairs = pending_pairs(&report);
    assert_eq!(pairs.len(), 2, "{text}");
    let recorded_decision = pairs[0].recorded.as_ref().expect(&text);
    assert_eq!(
        (
            recorded_decision.event_type.as_str(),
            recorded_decision.target_workers
        ),
        ("ScaleUpDecision", Some(6))
    );
    let replayed_decision = pairs[0].replayed.as_ref().expect(&text);
    assert_eq!(
        (
            replayed_decision.event_type.as_str(),
            replayed_decision.target_workers
        ),
        ("ScaleUpDecision", Some(4))
    );
    // The two pods the cluster has no room for get a ScaleUpBlocked instead of workers.
    assert!(pairs[1].recorded.is_none() && pairs[1].changed, "{text}");
    let blocked = pairs[1].replayed.as_ref().expect(&text);
    assert_eq!(blocked.event_type, "ScaleUpBlocked");
    assert_eq!(blocked.reason.as_deref(), Some("max_nodes_reached"));
    assert_eq!(blocked.pods.len(), 2, "{text}");
    assert_eq!(report.decisions_changed, 2, "{text}");
    assert!(
        report.replayed.node_minutes < report.recorded.node_minutes,
        "{text}"
    );

    // The two workers both runs made are the recorded ones (same command, same facts); the two
    // only the recording made are not in the replay.
    let replayed = replay(&recorded, &lower, &Handler::ALL);
    assert_eq!(
        ready_in(&replayed.log),
        ["k3s-worker-3", "k3s-worker-4"],
        "{text}"
    );
    let created = |log: &[Envelope]| -> Vec<Envelope> {
        log.iter()
            .filter(|e| matches!(&e.event, Event::NodeCreated(c) if c.node_name == "k3s-worker-3"))
            .cloned()
            .collect()
    };
    assert_eq!(created(&replayed.log), created(&recorded));
}

/// The recorded world's Nodes, published as the placement observer does (one part, no pods).
fn observe_placement(sim: &mut Simulation, tag: &str) {
    let pools = sim.policy.node_pools().into_owned();
    let nodes: Vec<bus::scheduling::NodeSpec> = sim
        .world
        .nodes
        .iter()
        .map(|(name, ready)| {
            let mut n = pools[0].node(name.clone());
            n.ready = *ready;
            n
        })
        .collect();
    sim.observe(
        "placement_observer",
        bus::event::PlacementSnapshot {
            snapshot: tag.into(),
            part: 0,
            parts: 1,
            nodes,
            pods: Vec::new(),
        },
    );
}

#[test]
fn what_if_workers_only_the_replay_has_are_in_its_placement_and_can_be_removed() {
    // Recorded under max_nodes 2: the pods wait, then go; the placement is on the stream.
    let mut tight = Policy::default();
    tight.limits.max_nodes = 2;
    let mut sim = Simulation::new(tight, t0()).with_workers(2);
    observe_placement(&mut sim, "s0");
    let pods = (0..2)
        .map(|i| {
            PodBuilder::new(&format!("web-{i}"))
                .cpu(1500)
                .memory_mi(64)
                .build()
        })
        .collect();
    sim.observe("pending_pods_watcher", pending(pods, 2));
    sim.advance(Duration::from_secs(120));
    sim.observe("pending_pods_watcher", pending(Vec::new(), 0));
    for i in 1..=8 {
        sample_for(&mut sim, 150, 5.0, 5.0);
        observe_placement(&mut sim, &format!("s{i}"));
    }
    let recorded = sim.log.clone();
    assert!(events_of(&sim, "ScaleDownDecision").is_empty());

    // Under max_nodes 6 the replay makes two workers for the pods, and removes them once the
    // load is gone: its placement shows them (they are not "unknown" to the scale-down).
    let report = what_if(&recorded, &Policy::default());
    let text = report.render();
    let replayed = replay(&recorded, &Policy::default(), &Handler::ALL);
    assert_eq!(
        ready_in(&replayed.log),
        ["k3s-worker-3", "k3s-worker-4"],
        "{text}"
    );
    let removed: Vec<String> = replayed
        .log
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleDownDecision(d) => Some(d.nodes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    // Back at the minimum: two removed, none blocked for a node the placement does not know.
    assert_eq!(removed.len(), 2, "{text}");
    let unknown = replayed.log.iter().any(|e| {
        matches!(&e.event, Event::ScaleDownBlocked(b) if b.reason == "unknown_node"
            || b.detail.as_deref().is_some_and(|d| d.contains("not in the placement")))
    });
    assert!(!unknown, "{text}");
    let snapshots: Vec<Vec<String>> = replayed
        .log
        .iter()
        .filter_map(|e| match &e.event {
            Event::PlacementSnapshot(p) => Some(p.nodes.iter().map(|n| n.name.clone()).collect()),
            _ => None,
        })
        .collect();
    // The recorded snapshots show the simulated workers while they are there, and the last one
    // the two workers that stay.
    assert!(
        snapshots
            .iter()
            .any(|s| s.contains(&"k3s-worker-3".to_string())),
        "{snapshots:?}"
    );
    let last = snapshots.last().expect("snapshots");
    assert_eq!(last.len(), 2, "{snapshots:?}");
    assert!(last.iter().all(|n| !removed.contains(n)), "{snapshots:?}");
    assert!(
        report.replayed.node_minutes > report.recorded.node_minutes,
        "{text}"
    );
}

const GI: u64 = 1 << 30;

/// `general` (2 CPU, 2 GiB, 2..4) and, with `highmem`, a `highmem` pool (2 CPU, 8 GiB, labelled
/// `tier=highmem`, tainted `dedicated=highmem:NoSchedule`, 0..2); the cluster 2..6.
fn pools(highmem: bool) -> Policy {
    let mut pools = vec![PoolTemplate::new(
        "general",
        2,
        4,
        Resources::new(2000, 2 * GI, 110),
    )];
    if highmem {
        let mut p = PoolTemplate::new("highmem", 0, 2, Resources::new(2000, 8 * GI, 110));
        p.labels = BTreeMap::from([("tier".to_string(), "highmem".to_string())]);
        p.taints = vec![Taint::new("dedicated", "highmem", TaintEffect::NoSchedule)];
        pools.push(p);
    }
    Policy {
        pools,
        ..Policy::default()
    }
}

/// Two Ready `general` workers, then a pod that selects and tolerates `highmem`, reported
/// pending; recorded under `policy` for two minutes.
fn highmem_pod_recorded(policy: Policy) -> Vec<Envelope> {
    let mut sim = Simulation::new(policy, t0());
    for i in 1..=2 {
        let name = format!("k3s-worker-general-{i}");
        sim.world.containers.insert(name.clone());
        sim.world.nodes.insert(name, true);
    }
    sim.observe_cluster();
    sim.advance(Duration::from_secs(30));
    let db = PodBuilder::new("db")
        .cpu(500)
        .memory_bytes(4 * GI)
        .select("tier", "highmem")
        .tolerate("dedicated", "highmem")
        .build();
    sim.observe("pending_pods_watcher", pending(vec![db], 1));
    sim.advance(Duration::from_secs(120));
    sim.observe_cluster();
    sim.log
}

#[test]
fn what_if_without_a_pool_blocks_the_pods_only_it_could_run() {
    let recorded = highmem_pod_recorded(pools(true));
    assert_eq!(ready_in(&recorded), ["k3s-worker-highmem-1"]);
    assert_eq!(what_if(&recorded, &pools(true)).decisions_changed, 0);

    let report = what_if(&recorded, &pools(false));
    let text = report.render();
    let pairs = pending_pairs(&report);
    assert_eq!(pairs.len(), 1, "{text}");
    let (was, now) = (
        pairs[0].recorded.as_ref().expect(&text),
        pairs[0].replayed.as_ref().expect(&text),
    );
    assert_eq!(
        (was.event_type.as_str(), was.pool.as_deref()),
        ("ScaleUpDecision", Some("highmem"))
    );
    assert_eq!(
        (now.event_type.as_str(), now.reason.as_deref()),
        ("ScaleUpBlocked", Some("no_pool_fits"))
    );
    assert_eq!(now.pods, ["default/db"]);
    assert!(pairs[0].changed);
    // No worker in the replay, and the block names the predicate that failed.
    let replayed = replay(&recorded, &pools(false), &Handler::ALL);
    assert!(ready_in(&replayed.log).is_empty(), "{text}");
    let blocks = blocked_in(&replayed.log);
    assert_eq!(blocks.len(), 1);
    assert_eq!(
        blocks[0].predicates.get("general").map(String::as_str),
        Some("node_selector"),
        "{:?}",
        blocks[0]
    );
}

#[test]
fn what_if_with_a_pool_added_makes_the_worker_the_recording_could_not() {
    let recorded = highmem_pod_recorded(pools(false));
    assert!(ready_in(&recorded).is_empty());
    assert_eq!(blocked_in(&recorded).len(), 1);
    assert_eq!(what_if(&recorded, &pools(false)).decisions_changed, 0);

    let report = what_if(&recorded, &pools(true));
    let text = report.render();
    let pairs = pending_pairs(&report);
    assert_eq!(pairs.len(), 1, "{text}");
    let (was, now) = (
        pairs[0].recorded.as_ref().expect(&text),
        pairs[0].replayed.as_ref().expect(&text),
    );
    assert_eq!(
        (was.event_type.as_str(), was.reason.as_deref()),
        ("ScaleUpBlocked", Some("no_pool_fits"))
    );
    assert_eq!(
        (
            now.event_type.as_str(),
            now.pool.as_deref(),
            now.target_workers
        ),
        ("ScaleUpDecision", Some("highmem"), Some(3))
    );
    // The simulated world creates the worker and it becomes Ready: the scale-up completes.
    let replayed = replay(&recorded, &pools(true), &Handler::ALL);
    assert_eq!(ready_in(&replayed.log), ["k3s-worker-highmem-1"], "{text}");
    assert!(
        replayed
            .log
            .iter()
            .any(|e| e.event_type() == "ScalingActionCompleted"),
        "{text}"
    );
    assert!(
        report.replayed.node_minutes > report.recorded.node_minutes,
        "{text}"
    );
}

/// One thing that happens in a random history.
#[derive(Debug, Clone)]
enum Step {
    /// `n` pods of `cpu` millicores reported pending.
    Pending(u8, u64),
    /// No pod pending any more.
    Cleared,
    /// The `i`-th live worker's container dies (`docker kill`).
    Kill(usize),
    /// Utilisation samples for `secs` seconds.
    Load(f64, u64),
    /// Time passes, the cluster is observed.
    Wait(u64),
    /// The placement observer publishes a snapshot.
    Placement,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u8..5, prop_oneof![Just(300u64), Just(1500)]).prop_map(|(n, c)| Step::Pending(n, c)),
        Just(Step::Cleared),
        (0usize..4).prop_map(Step::Kill),
        (prop_oneof![Just(5.0), Just(50.0), Just(95.0)], 30u64..400)
            .prop_map(|(l, s)| Step::Load(l, s)),
        (5u64..400).prop_map(Step::Wait),
        Just(Step::Placement),
    ]
}

/// The stream of `steps` happening to a cluster of `workers` under `policy`.
fn history(policy: &Policy, workers: u32, steps: &[Step]) -> Vec<Envelope> {
    let mut sim = Simulation::new(policy.clone(), t0()).with_workers(workers);
    for (i, s) in steps.iter().enumerate() {
        match s {
            Step::Pending(n, cpu) => {
                let pods = (0..*n)
                    .map(|p| {
                        PodBuilder::new(&format!("p{i}-{p}"))
                            .cpu(*cpu)
                            .memory_mi(64)
                            .build()
                    })
                    .collect();
                sim.observe("pending_pods_watcher", pending(pods, u32::from(*n)));
            }
            Step::Cleared => {
                sim.observe("pending_pods_watcher", pending(Vec::new(), 0));
            }
            Step::Kill(k) => {
                let victim = sim.model.live().nth(*k).map(|w| w.name.clone());
                if let Some(v) = victim {
                    sim.kill(&v);
                    sim.observe_cluster();
                }
            }
            Step::Load(load, secs) => sample_for(&mut sim, *secs, *load, *load),
            Step::Wait(secs) => {
                sim.advance(Duration::from_secs(*secs));
                sim.observe_cluster();
            }
            Step::Placement => observe_placement(&mut sim, &format!("s{i}")),
        }
    }
    sim.log
}

/// A long history: waves of load and of pending pods, a worker lost now and then, a placement
/// snapshot every few waves (thousands of entries, far longer than a short look-ahead).
fn long_history(policy: &Policy, waves: usize) -> Vec<Envelope> {
    let mut steps = Vec::new();
    for w in 0..waves {
        steps.push(Step::Load(85.0, 120));
        steps.push(Step::Pending(2 + (w % 3) as u8, 1500));
        steps.push(Step::Wait(90));
        steps.push(Step::Cleared);
        steps.push(Step::Load(10.0, 900));
        if w % 4 == 1 {
            steps.push(Step::Kill(0));
        }
        if w % 5 == 2 {
            steps.push(Step::Placement);
        }
        steps.push(Step::Wait(60));
    }
    history(policy, 2, &steps)
}

#[test]
fn a_long_history_replays_as_itself_through_a_short_look_ahead() {
    let policy = Policy::default();
    let recorded = long_history(&policy, 12);
    assert!(recorded.len() > 1_500, "{} entries", recorded.len());
    // The shortest look-ahead there is (the timers' look-back + 1), far shorter than the history.
    let replayed = replay_with_lookahead(&recorded, &policy, &Handler::ALL, 1);
    let ids = |log: &[Envelope]| {
        log.iter()
            .map(|e| (e.event_id, e.event_type()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&replayed.log), ids(&recorded));
    for (r, e) in replayed.log.iter().zip(&recorded) {
        assert_eq!(r.event, e.event);
        assert_eq!(r.timestamp, e.timestamp);
    }
    let report = what_if(&recorded, &policy);
    assert_eq!(report.decisions_changed, 0, "{}", report.render());
    assert!(report.recorded.scale_actions >= 12, "{}", report.render());
    assert_eq!(report.recorded, report.replayed);
}

#[test]
fn a_long_what_if_through_a_short_look_ahead_decides_as_through_a_long_one() {
    let recorded = long_history(&Policy::default(), 12);
    let mut other = Policy::default();
    other.limits.max_nodes = 3;
    other.limits.min_nodes = 3;
    let whole = what_if(&recorded, &other);
    let mut short = WhatIf::with_lookahead(&other, &Handler::ALL, 300);
    for e in &recorded {
        short.push(e.clone());
    }
    let short = short.finish();
    assert!(whole.decisions_changed > 0, "{}", whole.render());
    assert_eq!(short.pairs, whole.pairs);
    assert_eq!(short.replayed, whole.replayed);
}

#[test]
fn the_summary_counts_peak_workers_scale_actions_and_pod_pending_seconds() {
    let policy = Policy::default();
    let mut sim = Simulation::new(policy.clone(), t0()).with_workers(2);
    let pods = (0..3)
        .map(|p| {
            PodBuilder::new(&format!("p{p}"))
                .cpu(1500)
                .memory_mi(64)
                .build()
        })
        .collect();
    sim.observe("pending_pods_watcher", pending(pods, 3));
    sim.advance(Duration::from_secs(60));
    sim.observe("pending_pods_watcher", pending(Vec::new(), 0));
    sample_for(&mut sim, 300, 10.0, 10.0);
    let report = what_if(&sim.log, &policy);
    let r = report.recorded;
    assert_eq!(r, report.replayed);
    // Three pods pending until their workers are Ready (the model counts them pending until
    // then), at most the minute until the watcher reported none: 3 pod-seconds per second.
    assert!(
        r.pending_seconds > 0.0 && r.pending_seconds <= 60.0,
        "{}",
        report.render()
    );
    assert!((r.pod_pending_seconds - 3.0 * r.pending_seconds).abs() < 1e-6);
    let scale_ups = events_of(&sim, "ScaleUpDecision").len();
    assert!(scale_ups >= 1);
    assert_eq!(
        r.scale_actions,
        scale_ups + events_of(&sim, "ScaleDownDecision").len()
    );
    let peak = report
        .recorded_timeline
        .workers
        .iter()
        .map(|(_, w)| *w)
        .max()
        .unwrap_or(0);
    assert_eq!(r.peak_workers, peak);
    assert!(peak > 2, "{:?}", report.recorded_timeline);
    // The pending series steps up to 3 and back to 0.
    let pending: Vec<u32> = report
        .recorded_timeline
        .pending_pods
        .iter()
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(pending.first(), Some(&3), "{pending:?}");
    assert_eq!(pending.last(), Some(&0), "{pending:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever happened, the replay under the policy that recorded it decides every output again
    /// and folds it where the recording has it: the same stream.
    #[test]
    fn under_its_own_policy_any_recorded_history_replays_as_itself(
        workers in 0u32..4,
        steps in prop::collection::vec(step(), 1..10),
    ) {
        let policy = Policy::default();
        let recorded = history(&policy, workers, &steps);
        let replayed = replay(&recorded, &policy, &Handler::ALL);
        let ids = |log: &[Envelope]| log.iter().map(|e| (e.event_id, e.event_type())).collect::<Vec<_>>();
        prop_assert_eq!(ids(&replayed.log), ids(&recorded));
        for (r, e) in replayed.log.iter().zip(&recorded) {
            prop_assert_eq!(&r.event, &e.event);
            prop_assert_eq!(r.timestamp, e.timestamp);
        }
        prop_assert_eq!(what_if(&recorded, &policy).decisions_changed, 0);
    }

    /// Under other limits the replay follows them: it never plans more workers than `max_nodes`
    /// (beyond those that were there), and under the recorded ones it changes nothing.
    #[test]
    fn under_other_limits_the_replay_keeps_them(
        workers in 0u32..3,
        steps in prop::collection::vec(step(), 1..10),
        min in 0u32..3,
        extra in 0u32..5,
    ) {
        let recorded = history(&Policy::default(), workers, &steps);
        let mut other = Policy::default();
        other.limits.min_nodes = min;
        other.limits.max_nodes = (min + extra).max(1);
        let replayed = replay(&recorded, &other, &Handler::ALL);
        let max = other.limits.max_nodes.max(workers);
        for e in &replayed.log {
            if let Event::ScaleUpStarted(s) = &e.event {
                prop_assert!(s.target_workers <= max, "{:?} above {}", s, max);
            }
        }
        // Every decision, recorded or replayed, is in a pair.
        let report = what_if(&recorded, &other);
        let sides = report.pairs.iter().fold((0, 0), |(a, b), p| {
            (a + usize::from(p.recorded.is_some()), b + usize::from(p.replayed.is_some()))
        });
        prop_assert_eq!(sides, (report.recorded.decisions, report.replayed.decisions));
    }
}

/// Found by the property above: a worker the recording created, being removed when the first
/// placement snapshot is taken, stays in the replayed snapshot (its pool's template stands in
/// for the recorded view the replay has not seen yet).
#[test]
fn a_worker_leaving_before_the_first_snapshot_is_in_the_replayed_one() {
    let policy = Policy::default();
    let steps = vec![Step::Pending(1, 300), Step::Load(5.0, 315), Step::Placement];
    let recorded = history(&policy, 3, &steps);
    let replayed = replay(&recorded, &policy, &Handler::ALL);
    assert_eq!(replayed.log.len(), recorded.len());
    for (r, e) in replayed.log.iter().zip(&recorded) {
        assert_eq!(r.event, e.event, "{}", e.event_type());
    }
}
