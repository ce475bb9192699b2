//! The StateSynchronizer's rules: orphans, lost workers' leftovers, trigger de-duplication, reports.

mod common;

use std::time::Duration;

use bus::event::*;
use bus::Event;
use common::*;
use handlers::simulate::Simulation;
use handlers::Policy;

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
                NodeBuilder::new("k3s-worker-1").build(),
                NodeBuilder::new("k3s-worker-2").build(),
                NodeBuilder::new("stale-node").not_ready().build(),
            ],
            docker_containers: vec![
                "k3s-worker-1".into(),
                "k3s-worker-2".into(),
                "k3s-worker-8".into(),
            ],
            unreachable: Vec::new(),
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

/// An observation in which one Docker host did not answer (`docker.hosts`).
fn observed_with_host_down(sim: &Simulation, listed: &[&str], ready: bool) -> ClusterObserved {
    ClusterObserved {
        k8s_nodes: sim
            .world
            .nodes
            .keys()
            .map(|n| {
                let b = NodeBuilder::new(n);
                if ready || listed.contains(&n.as_str()) {
                    b.build()
                } else {
                    b.not_ready().build()
                }
            })
            .collect(),
        docker_containers: listed.iter().map(|c| c.to_string()).collect(),
        unreachable: vec![UnreachableHost {
            host: "edge".into(),
            pools: vec!["default".into()],
            error: "docker engine at tcp://10.0.0.2:2375 unreachable".into(),
        }],
    }
}

#[test]
fn a_worker_on_a_host_that_does_not_answer_is_lost_only_once_its_node_is_not_ready() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    // The engine does not answer, but the Nodes are Ready: the workers run, only their engine is
    // out of reach. Nothing is lost, nothing removed.
    let obs = observed_with_host_down(&sim, &[], true);
    sim.observe("state_observer", obs);
    assert!(events_of(&sim, "NodeUnexpectedlyLost").is_empty());
    assert!(commands(&sim, "delete_node").is_empty());
    assert!(commands(&sim, "remove_worker").is_empty());
    // The Nodes go NotReady: the host is gone with its workers, each lost once, with the cause.
    sim.advance(Duration::from_secs(20));
    let obs = observed_with_host_down(&sim, &[], false);
    sim.observe("state_observer", obs.clone());
    sim.advance(Duration::from_secs(5));
    sim.observe("state_observer", obs);
    let lost: Vec<(String, String)> = events_of(&sim, "NodeUnexpectedlyLost")
        .iter()
        .map(|e| match &e.event {
            Event::NodeUnexpectedlyLost(l) => (l.node_name.clone(), l.cause.clone()),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        lost,
        [
            ("k3s-worker-1".to_string(), "host_unreachable".to_string()),
            ("k3s-worker-2".to_string(), "host_unreachable".to_string()),
        ]
    );
}

#[test]
fn a_pool_whose_host_does_not_answer_stays_in_backoff_while_other_hosts_answer() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.world.engine_down = true;
    sim.observe(
        "pending_pods_watcher",
        pending(vec![PodBuilder::new("a").cpu(500).memory_mi(1).build()], 1),
    );
    sim.advance(Duration::from_secs(10));
    assert!(
        sim.model.provision.backoff.contains_key("default"),
        "{:?}",
        sim.log.iter().map(|e| e.event_type()).collect::<Vec<_>>()
    );
    sim.advance(Duration::from_secs(1));
    let obs = observed_with_host_down(&sim, &["k3s-worker-1", "k3s-worker-2"], true);
    sim.observe("state_observer", obs);
    assert_eq!(
        sim.model.provision.backoff["default"].engine_answered, None,
        "an observation the pool's engine did not answer does not end its backoff"
    );
    // One its engine answers does.
    sim.advance(Duration::from_secs(1));
    sim.world.engine_down = false;
    sim.observe_cluster();
    assert!(sim.model.provision.backoff["default"]
        .engine_answered
        .is_some());
}
