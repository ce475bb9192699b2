//! Property tests over random observation sequences, driven through the whole decision core with a
//! simulated world (1,000 cases each).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bus::event::*;
use bus::Event;
use common::{command_kind, t0, PodBuilder};
use handlers::simulate::Simulation;
use handlers::{Model, Policy};
use proptest::prelude::*;

/// One thing that happens in the world.
#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Metrics {
        cpu: f64,
        mem: f64,
    },
    /// A steady load: a sample every 15 s.
    Steady {
        cpu: f64,
        mem: f64,
        samples: u32,
    },
    Pending {
        count: u32,
        cpu_millis: Option<u64>,
    },
    Kill(usize),
    Observe,
    Interrupt(usize),
    Degrade(usize),
    Manual(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..180).prop_map(Op::Advance),
        4 => (0.0f64..100.0, 0.0f64..100.0).prop_map(|(cpu, mem)| Op::Metrics { cpu, mem }),
        2 => (prop_oneof![0.0f64..30.0, 80.0f64..100.0], 0.0f64..40.0, 1u32..40)
            .prop_map(|(cpu, mem, samples)| Op::Steady { cpu, mem, samples }),
        2 => (0u32..12, prop::option::of(100u64..2500)).prop_map(|(count, cpu_millis)| Op::Pending { count, cpu_millis }),
        1 => (0usize..8).prop_map(Op::Kill),
        2 => Just(Op::Observe),
        1 => (0usize..8).prop_map(Op::Interrupt),
        1 => (0usize..8).prop_map(Op::Degrade),
        1 => (0u32..9).prop_map(Op::Manual),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    (1u32..4, 0u32..4, 1u32..3, 1u32..4, 60u64..400).prop_map(
        |(min, extra, step, periods, under)| {
            let mut p = Policy::default();
            p.limits.min_nodes = min;
            p.limits.max_nodes = min + extra;
            p.scaling.scale_up_step = step;
            p.thresholds.consecutive_periods = periods;
            p.scaling.underutilized_for = Duration::from_secs(under);
            p
        },
    )
}

fn scenario() -> impl Strategy<Value = (Policy, u32, Vec<Op>)> {
    policy().prop_flat_map(|p| {
        let (min, max) = (p.limits.min_nodes, p.limits.max_nodes);
        (Just(p), min..=max, prop::collection::vec(op(), 1..40))
    })
}

fn sample(sim: &Simulation, workers: u32, cpu: f64, mem: f64) -> MetricsSampled {
    let nodes = sim
        .model
        .live()
        .enumerate()
        .map(|(i, n)| NodeUsage {
            node_name: n.name.clone(),
            cpu: (cpu + i as f64 * 3.0).min(100.0),
            memory: mem,
        })
        .collect();
    MetricsSampled {
        workers,
        cpu_avg: cpu,
        memory_avg: mem,
        source: "docker_stats".into(),
        nodes,
    }
}

fn nth_live(sim: &Simulation, i: usize) -> Option<String> {
    let live: Vec<String> = sim.model.live().map(|w| w.name.clone()).collect();
    if live.is_empty() {
        None
    } else {
        Some(live[i % live.len()].clone())
    }
}

/// Runs `ops`; `redeliver` re-delivers every root observation right after it was handled, as a
/// consumer group does after a crash. Calls `check` after every step.
fn run(
    policy: &Policy,
    workers: u32,
    ops: &[Op],
    redeliver: bool,
    mut check: impl FnMut(&Simulation),
) -> Simulation {
    let mut sim = Simulation::new(policy.clone(), t0()).with_workers(workers);
    check(&sim);
    for op in ops {
        let published = match op {
            Op::Advance(s) => {
                sim.advance(Duration::from_secs(*s));
                None
            }
            Op::Steady { cpu, mem, samples } => {
                for _ in 0..*samples {
                    sim.advance(Duration::from_secs(15));
                    let w = sim.model.current_workers();
                    let s = sample(&sim, w, *cpu, *mem);
                    let e = sim.observe("metrics_collector", s);
                    if redeliver {
                        sim.redeliver(&e);
                    }
                    check(&sim);
                }
                None
            }
            Op::Metrics { cpu, mem } => {
                let w = sim.model.current_workers();
                let nodes = sim
                    .model
                    .live()
                    .enumerate()
                    .map(|(i, n)| NodeUsage {
                        node_name: n.name.clone(),
                        cpu: (cpu + i as f64 * 3.0).min(100.0),
                        memory: *mem,
                    })
                    .collect();
                Some(sim.observe(
                    "metrics_collector",
                    MetricsSampled {
                        workers: w,
                        cpu_avg: *cpu,
                        memory_avg: *mem,
                        source: "docker_stats".into(),
                        nodes,
                    },
                ))
            }
            Op::Pending { count, cpu_millis } => {
                let pods = match cpu_millis {
                    Some(c) => (0..*count)
                        .map(|i| {
                            PodBuilder::new(&format!("p{i}"))
                                .cpu(*c)
                                .memory_mi(64)
                                .build()
                        })
                        .collect(),
                    None => vec![],
                };
                Some(sim.observe(
                    "pending_pods_watcher",
                    PendingPodsDetected {
                        pending_count: *count,
                        waiting_time: 1.0,
                        affected_deployments: vec![],
                        pods,
                    },
                ))
            }
            Op::Kill(i) => {
                if let Some(n) = nth_live(&sim, *i) {
                    sim.kill(&n);
                }
                None
            }
            Op::Observe => Some(sim.observe_cluster()),
            Op::Interrupt(i) => nth_live(&sim, *i).map(|n| {
                sim.observe(
                    "docker_events",
                    NodeInterruptionNotice {
                        node_name: n,
                        cause: "docker_stop".into(),
                    },
                )
            }),
            Op::Degrade(i) => nth_live(&sim, *i).map(|n| {
                let at = sim.now;
                sim.observe(
                    "node_watcher",
                    NodeHealthDegraded {
                        node_name: n,
                        status: "NotReady".into(),
                        last_check: at,
                    },
                )
            }),
            Op::Manual(t) => Some(sim.observe(
                "cli",
                ManualScaleRequested {
                    target_workers: *t,
                    reason: "prop".into(),
                },
            )),
        };
        if redeliver {
            let before = sim.log.len();
            if let Some(e) = published {
                sim.redeliver(&e);
            }
            // Another replica publishing the same decisions under other ids.
            let decisions: Vec<bus::Envelope> = sim.log[before.min(sim.log.len())..]
                .iter()
                .chain(sim.log.iter().rev().take(8))
                .filter(|e| is_decision(e))
                .cloned()
                .collect();
            for d in decisions {
                let key = format!("dup:{}", d.event_id);
                let mut copy = d.clone();
                copy.event_id = uuid::Uuid::nil();
                sim.publish(copy.with_deterministic_id(&key));
            }
        }
        check(&sim);
    }
    sim.advance(Duration::from_secs(900));
    check(&sim);
    sim
}

fn is_decision(e: &bus::Envelope) -> bool {
    matches!(
        e.event,
        Event::ScaleUpDecision(_)
            | Event::ScaleDownDecision(_)
            | Event::AutoScaleUpToMinimum(_)
            | Event::EmergencyScaleUp(_)
    ) && e.causation_id.is_some()
}

/// 1,000 cases, or `PROPTEST_CASES` when set (a longer hunt: `PROPTEST_CASES=20000`).
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1000);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_decided_target_stays_within_min_and_max((policy, workers, ops) in scenario()) {
        let (min, max) = (policy.limits.min_nodes, policy.limits.max_nodes);
        let sim = run(&policy, workers, &ops, false, |_| {});
        for e in &sim.log {
            let target = match &e.event {
                Event::ScaleUpDecision(d) => Some(d.target_workers),
                Event::ScaleDownDecision(d) => Some(d.target_workers),
                Event::AutoScaleUpToMinimum(d) => Some(d.target_workers),
                Event::EmergencyScaleUp(d) => Some(d.target_workers),
                _ => None,
            };
            if let Some(t) = target {
                prop_assert!(t >= min && t <= max, "{} target {} outside [{}, {}]", e.event_type(), t, min, max);
            }
        }
    }

    #[test]
    fn never_more_than_max_workers_counting_those_being_created((policy, workers, ops) in scenario()) {
        let max = policy.limits.max_nodes;
        let mut worst = 0;
        run(&policy, workers, &ops, false, |sim| {
            worst = worst.max(sim.model.planned_workers());
        });
        prop_assert!(worst <= max, "planned {} > max {}", worst, max);
    }

    #[test]
    fn no_scale_down_is_decided_while_pods_are_pending((policy, workers, ops) in scenario()) {
        let sim = run(&policy, workers, &ops, false, |_| {});
        let mut shadow = Model::new(&policy);
        for e in &sim.log {
            if matches!(e.event, Event::ScaleDownDecision(_)) {
                prop_assert_eq!(shadow.pending_count(), 0, "ScaleDownDecision while pods pending");
            }
            shadow.apply(e);
        }
    }

    #[test]
    fn a_duplicated_event_causes_no_extra_action((policy, workers, ops) in scenario()) {
        let once = run(&policy, workers, &ops, false, |_| {});
        let twice = run(&policy, workers, &ops, true, |_| {});
        // Actions are what the NodeManager starts and the commands it issues. (A redelivered
        // observation is judged against the model as it is now, so it may add a status event such as
        // ClusterStateSynced; a duplicated decision may add a start naming the same workers — never
        // another worker or another removal.)
        let starts = |s: &Simulation| {
            s.log
                .iter()
                .filter_map(|e| match &e.event {
                    Event::ScaleUpStarted(x) => Some(("up", x.nodes.clone())),
                    Event::ScaleDownStarted(x) => Some(("down", x.nodes.clone())),
                    _ => None,
                })
                .collect::<BTreeSet<_>>()
        };
        prop_assert_eq!(starts(&once), starts(&twice));
        let actions = |s: &Simulation| {
            s.commands
                .iter()
                .filter(|c| c.command.kind() != command_kind("notify"))
                .map(|c| (c.command.kind(), c.command.node().unwrap_or("").to_string()))
                .collect::<BTreeSet<_>>()
        };
        prop_assert_eq!(actions(&once), actions(&twice));
        prop_assert_eq!(once.world.containers, twice.world.containers);
    }

    #[test]
    fn every_action_is_caused_by_a_chain_that_ends_at_an_observation((policy, workers, ops) in scenario()) {
        let sim = run(&policy, workers, &ops, false, |_| {});
        let by_id: BTreeMap<_, _> = sim.log.iter().map(|e| (e.event_id, e)).collect();
        let root_of = |mut id: uuid::Uuid| -> Option<&bus::Envelope> {
            for _ in 0..10_000 {
                let e = by_id.get(&id)?;
                match e.causation_id {
                    None => return Some(e),
                    Some(c) => id = c,
                }
            }
            None
        };
        for e in &sim.log {
            let root = root_of(e.event_id);
            prop_assert!(root.is_some(), "{} has a broken chain", e.event_type());
            let root = root.unwrap();
            prop_assert_eq!(e.correlation_id, root.event_id, "{} correlation", e.event_type());
            prop_assert!(!handlers::is_handler_source(&root.source) || root.event_type() == "MinimumNodesViolation",
                "{} roots at a decision {}", e.event_type(), root.event_type());
        }
        for c in &sim.commands {
            prop_assert!(by_id.contains_key(&c.cause.event_id), "{} caused by an unpublished event", c.command.kind());
            prop_assert!(root_of(c.cause.event_id).is_some());
        }
    }
}

/// The properties above are only worth something if the random scenarios reach the interesting
/// rules: every kind of decision and block must appear across a few hundred of them.
#[test]
fn random_scenarios_reach_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..300 {
        let (policy, workers, ops) = scenario().new_tree(&mut runner).unwrap().current();
        let sim = run(&policy, workers, &ops, false, |_| {});
        for e in &sim.log {
            let key = match &e.event {
                Event::ScaleDownBlocked(b) => format!("ScaleDownBlocked:{}", b.reason),
                other => other.event_type().to_string(),
            };
            *seen.entry(key).or_default() += 1;
        }
    }
    for wanted in [
        "ScaleUpDecision",
        "ScaleDownDecision",
        "AutoScaleUpToMinimum",
        "MinimumNodesViolation",
        "MinimumNodesRestored",
        "ScaleUpStarted",
        "ScaleDownStarted",
        "ScalingActionCompleted",
        "NodeUnexpectedlyLost",
        "ResourcePressureAlert",
        "UnderutilizationWarning",
        "OptimalStateTrigger",
        "ClusterStateSynced",
        "ScaleDownBlocked:pending_pods",
        "ScaleDownBlocked:cooldown",
    ] {
        assert!(
            seen.contains_key(wanted),
            "{wanted} never happened: {seen:?}"
        );
    }
}

proptest! {
    #![proptest_config(config())]

    /// The workers' index of active names (kept in step with every change) is the one rebuilt from
    /// the record (deserializing rebuilds it), after every step.
    #[test]
    fn the_workers_index_follows_every_change((policy, workers, ops) in scenario()) {
        run(&policy, workers, &ops, true, |sim| {
            let w = &sim.model.workers;
            let json = serde_json::to_value(w).expect("workers serialize");
            let back: handlers::model::Workers =
                serde_json::from_value(json).expect("workers deserialize");
            assert_eq!(&back, w);
        });
    }

    /// Two replicas folding the same observations publish the same events with the same ids, so the
    /// bus's idempotent publish keeps one of each.
    #[test]
    fn two_replicas_fed_the_same_observations_decide_the_same((policy, workers, ops) in scenario()) {
        let a = run(&policy, workers, &ops, false, |_| {});
        let b = run(&policy, workers, &ops, false, |_| {});
        prop_assert_eq!(&a.log, &b.log);
        prop_assert_eq!(
            a.commands.iter().map(|c| c.id()).collect::<Vec<_>>(),
            b.commands.iter().map(|c| c.id()).collect::<Vec<_>>()
        );
        prop_assert_eq!(&a.model, &b.model);
    }
}

/// Found by `a_duplicated_event_causes_no_extra_action`: a late copy of an `EmergencyScaleUp` wiped out
/// the losses that came after the original, so the next emergency was never decided.
#[test]
fn a_late_copy_of_an_emergency_does_not_forget_later_losses() {
    let mut policy = Policy::default();
    policy.limits.max_nodes = 4;
    policy.thresholds.consecutive_periods = 1;
    policy.scaling.underutilized_for = Duration::from_secs(277);
    let ops = vec![
        Op::Kill(0),
        Op::Steady {
            cpu: 86.86,
            mem: 0.0,
            samples: 8,
        },
        Op::Kill(1),
        Op::Observe,
        Op::Kill(0),
        Op::Observe,
        Op::Kill(0),
        Op::Observe,
    ];
    let starts = |s: &Simulation| {
        s.log
            .iter()
            .filter_map(|e| match &e.event {
                Event::ScaleUpStarted(x) => Some(x.nodes.clone()),
                _ => None,
            })
            .collect::<BTreeSet<_>>()
    };
    let once = run(&policy, 2, &ops, false, |_| {});
    let twice = run(&policy, 2, &ops, true, |_| {});
    assert_eq!(starts(&once), starts(&twice));
    assert!(starts(&twice).contains(&vec![
        "k3s-worker-7".to_string(),
        "k3s-worker-8".to_string()
    ]));
}
