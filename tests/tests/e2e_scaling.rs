//! The four scenarios the autoscaler was designed against (scale-down to the minimum, node failure,
//! resource pressure, pending pods), end to end: real Redis, real Docker containers running the lab's
//! node agent, the lab cluster, and `autoscaler run` as real processes.

use std::time::Duration;

use bus::Event;
use tests::{deployment, find, trail, Lab, LabOptions, LabTopology};

fn ready_nodes(events: &[bus::Envelope]) -> Vec<String> {
    let mut names: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::NodeReady(r) => Some(r.node_name.clone()),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Waits until the minimum is restored and a later sync agrees on `workers` workers.
async fn settled_at(lab: &Lab, workers: u32) -> Vec<bus::Envelope> {
    lab.wait_for_events(&format!("the cluster settled at {workers} workers"), Duration::from_secs(90), |ev| {
        let Some((r, _)) = find(ev, 0, "MinimumNodesRestored", |_| true) else {
            return false;
        };
        find(ev, r, "ClusterStateSynced", |e| {
            matches!(&e.event, Event::ClusterStateSynced(s) if s.db_workers == workers && s.k8s_nodes == workers && s.docker_containers == workers)
        })
        .is_some()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_pending_pods_scale_up_and_the_pods_run() {
    let lab = Lab::start(LabOptions::default()).await;
    settled_at(&lab, 2).await;

    // Four pods of 700m on 1-CPU workers: two fit on the two workers, two are pending.
    lab.kubectl_apply(&deployment("web", 4));
    let events = lab
        .wait_for_events(
            "the scale-up to complete and the state to sync",
            Duration::from_secs(120),
            |ev| {
                let Some((i, _)) = find(
                    ev,
                    0,
                    "PendingPodsDetected",
                    |e| matches!(&e.event, Event::PendingPodsDetected(p) if p.pending_count > 0),
                ) else {
                    return false;
                };
                let Some((j, _)) = find(ev, i, "ScalingActionCompleted", |_| true) else {
                    return false;
                };
                find(ev, j, "ClusterStateSynced", |_| true).is_some()
            },
        )
        .await;

    // The chain: PendingPodsDetected → ScaleUpDecision → ScaleUpStarted → NodeCreated, each caused by
    // the one before; then the new node Ready, the action completed, the state synced.
    let (i, pending) = find(
        &events,
        0,
        "PendingPodsDetected",
        |e| matches!(&e.event, Event::PendingPodsDetected(p) if p.pending_count > 0),
    )
    .expect("PendingPodsDetected");
    let (d, decision) = find(&events, i, "ScaleUpDecision", |e| {
        e.causation_id == Some(pending.event_id)
    })
    .unwrap_or_else(|| {
        panic!(
            "a ScaleUpDecision caused by the pending pods\n{}",
            trail(&events)
        )
    });
    let (s, started) = find(&events, d, "ScaleUpStarted", |e| {
        e.causation_id == Some(decision.event_id)
    })
    .unwrap_or_else(|| panic!("ScaleUpStarted caused by the decision\n{}", trail(&events)));
    let (c, created) = find(&events, s, "NodeCreated", |e| {
        e.causation_id == Some(started.event_id)
    })
    .unwrap_or_else(|| panic!("NodeCreated caused by ScaleUpStarted\n{}", trail(&events)));
    let Event::NodeCreated(created_node) = &created.event else {
        unreachable!()
    };
    assert_eq!(
        decision.correlation_id, pending.event_id,
        "the decision is in the pending pods' chain"
    );
    // The node agent registers within a second, often before the executor's NodeCreated is on the
    // stream (it is published with the ack of the decision): look after the decision.
    let _ = c;
    let (r, _) = find(&events, d, "NodeReady", |e| {
        e.event.node_name() == Some(created_node.node_name.as_str())
    })
    .unwrap_or_else(|| panic!("the created worker becomes Ready\n{}", trail(&events)));
    // NodeReady is the watcher's observation (a root); the completion continues the action's chain.
    let (k, _) = find(&events, r, "ScalingActionCompleted", |e| {
        e.causation_id == Some(started.event_id)
    })
    .unwrap_or_else(|| {
        panic!(
            "ScalingActionCompleted caused by ScaleUpStarted\n{}",
            trail(&events)
        )
    });
    find(&events, k, "ClusterStateSynced", |_| true).expect("synced");
    // The first pending pod is reported at once (target 3), the second with it once the batch closes
    // (target 4, counting the worker already on its way): two more workers in all, never more.
    let targets: Vec<u32> = events[i..]
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpDecision(d) => Some(d.target_workers),
            _ => None,
        })
        .collect();
    assert_eq!(
        targets.iter().max(),
        Some(&4),
        "two more workers for two pending 700m pods\n{}",
        trail(&events)
    );

    // And the pods run.
    lab.wait_running("web", 4, Duration::from_secs(60)).await;
    assert_eq!(lab.running_workers().len(), 4);
    lab.assert_replay_identity().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_killed_worker_at_the_minimum_is_replaced() {
    let lab = Lab::start(LabOptions::default()).await;
    let events = settled_at(&lab, 2).await;
    let victim = ready_nodes(&events)[0].clone();
    let before = events.len();
    let out = std::process::Command::new("docker")
        .args(["kill", &victim])
        .output()
        .expect("docker kill");
    assert!(out.status.success());

    let events = lab
        .wait_for_events(
            "the minimum to be restored",
            Duration::from_secs(90),
            |ev| find(ev, before, "MinimumNodesRestored", |_| true).is_some(),
        )
        .await;
    let (l, lost) = find(&events, before, "NodeUnexpectedlyLost", |e| {
        e.event.node_name() == Some(victim.as_str())
    })
    .unwrap_or_else(|| panic!("NodeUnexpectedlyLost for {victim}\n{}", trail(&events)));
    let (v, _) = find(&events, l, "MinimumNodesViolation", |e| {
        e.causation_id == Some(lost.event_id)
    })
    .unwrap_or_else(|| {
        panic!(
            "MinimumNodesViolation caused by the loss\n{}",
            trail(&events)
        )
    });
    let (a, _) = find(&events, v, "AutoScaleUpToMinimum", |_| true)
        .unwrap_or_else(|| panic!("AutoScaleUpToMinimum\n{}", trail(&events)));
    let (_, ready) = find(&events, a, "NodeReady", |e| {
        e.event.node_name() != Some(victim.as_str())
    })
    .unwrap_or_else(|| panic!("a replacement Ready\n{}", trail(&events)));
    let replacement = ready.event.node_name().unwrap_or_default().to_string();
    assert_ne!(replacement, victim);
    assert!(lab.running_workers().contains(&replacement));
    lab.assert_replay_identity().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_dry_run_publishes_decisions_and_creates_no_container() {
    let lab = Lab::start(LabOptions {
        dry_run: true,
        ..LabOptions::default()
    })
    .await;
    let events = lab
        .wait_for_events(
            "a decision to reach the minimum",
            Duration::from_secs(60),
            |ev| find(ev, 0, "AutoScaleUpToMinimum", |_| true).is_some(),
        )
        .await;
    let (_, decision) = find(&events, 0, "AutoScaleUpToMinimum", |_| true).expect("decision");
    assert!(
        decision.metadata.dry_run,
        "the decision is marked dry_run\n{}",
        trail(&events)
    );
    // Give a real executor every chance to act, then check nothing was created.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        lab.running_workers(),
        Vec::<String>::new(),
        "a dry run creates no container"
    );
    let events = lab.events().await;
    assert!(
        find(&events, 0, "NodeCreated", |_| true).is_none(),
        "{}",
        trail(&events)
    );
    lab.assert_replay_identity().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_three_replicas_and_100_identical_pending_events_make_one_scale_up() {
    let lab = Lab::start(LabOptions {
        replicas: 3,
        min_nodes: 1,
        max_nodes: 6,
        // No scale-down while the test counts workers.
        underutilized_for: Duration::from_secs(600),
        ..LabOptions::default()
    })
    .await;
    settled_at(&lab, 1).await;

    // One observation published 100 times at once over 10 connections, as racing replicas would (the
    // same event id): it lands once. 3 pods of 700m pending -> 3 more 1-CPU workers.
    let data = serde_json::json!({
        "pending_count": 3, "waiting_time": 5.0, "affected_deployments": ["burst"],
        "pods": [
            {"namespace": "default", "name": "burst-1", "cpu_millis": 700, "memory_bytes": 67108864},
            {"namespace": "default", "name": "burst-2", "cpu_millis": 700, "memory_bytes": 67108864},
            {"namespace": "default", "name": "burst-3", "cpu_millis": 700, "memory_bytes": 67108864}
        ]
    });
    let event = Event::from_value("PendingPodsDetected", data).expect("valid data");
    let envelope = bus::Envelope::root(
        "pending_pods_watcher",
        event,
        bus::Metadata::new(&lab.cluster_id, "local"),
    );
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let publisher = lab.bus().await.publisher();
        let envelope = envelope.clone();
        tasks.push(tokio::spawn(async move {
            let mut landed = 0;
            for _ in 0..10 {
                let key = format!("event:{}", envelope.event_id);
                if publisher
                    .publish_idempotent(&key, &envelope)
                    .await
                    .expect("publish")
                    .is_some()
                {
                    landed += 1;
                }
            }
            landed
        }));
    }
    let mut landed = 0;
    for t in tasks {
        landed += t.await.expect("publisher task");
    }
    assert_eq!(landed, 1, "100 identical publishes, one entry");

    // The target is 1 + 3 = 4 workers: exactly that many run, whatever the number of decisions.
    let events = lab
        .wait_for_events("four workers Ready", Duration::from_secs(120), |ev| {
            ready_nodes(ev).len() >= 4
        })
        .await;
    // The pods were made up, so no watcher will report them scheduled: say so, as the watcher does.
    let cleared = bus::Envelope::root(
        "pending_pods_watcher",
        Event::from_value("PendingPodsDetected", serde_json::json!({"pending_count": 0, "waiting_time": 0.0, "affected_deployments": []})).expect("valid"),
        bus::Metadata::new(&lab.cluster_id, "local"),
    );
    lab.bus()
        .await
        .publisher()
        .publish(&cleared)
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let running = lab.running_workers();
    assert_eq!(
        running.len(),
        4,
        "exactly one scale-up to the target: {running:?}\n{}",
        trail(&events)
    );
    let events = lab.events().await;
    let targets: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpDecision(d) => Some(d.target_workers),
            _ => None,
        })
        .collect();
    assert_eq!(
        targets,
        vec![4],
        "one decision, to the absolute target\n{}",
        trail(&events)
    );
    let copies = events
        .iter()
        .filter(|e| e.event_id == envelope.event_id)
        .count();
    assert_eq!(copies, 1);
    lab.assert_replay_identity().await;
}

/// Two labs autoscaled at once on one Redis Cluster of three primaries (`redis-cli --cluster create`),
/// each stream under its own hash tag: both scale up for their own pending pods, their streams never
/// mix, and each replays to the same decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_two_labs_scale_up_at_once_on_one_redis_cluster() {
    let cluster = tokio::task::block_in_place(bus::testing::RedisCluster::start);
    let nodes: Vec<String> = cluster
        .ports()
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let options = |tag: &str| LabOptions {
        topology: LabTopology::Cluster {
            nodes: nodes.clone(),
            tag: tag.into(),
        },
        // No scale-down while the test counts workers.
        underutilized_for: Duration::from_secs(600),
        ..LabOptions::default()
    };
    // `{lab-a}` hashes to slot 1191 and `{lab-b}` to 13508: the first and the third primary of the
    // cluster `redis-cli --cluster create` lays out. Started one after the other (they share the lab
    // image), then running together.
    let a = Lab::start(options("lab-a")).await;
    let b = Lab::start(options("lab-b")).await;
    let (sa, sb) = tokio::join!(
        a.settled(0, 2..=2, Duration::from_secs(120)),
        b.settled(0, 2..=2, Duration::from_secs(120))
    );
    let (from_a, from_b) = (sa.len(), sb.len());

    // Lab a needs two more workers, lab b one more.
    a.kubectl_apply(&deployment("web", 4));
    b.kubectl_apply(&deployment("web", 3));
    tokio::join!(
        a.settled(from_a, 4..=4, Duration::from_secs(120)),
        b.settled(from_b, 3..=3, Duration::from_secs(120))
    );
    tokio::join!(
        a.wait_running("web", 4, Duration::from_secs(60)),
        b.wait_running("web", 3, Duration::from_secs(60))
    );
    assert_eq!(a.running_workers().len(), 4);
    assert_eq!(b.running_workers().len(), 3);

    // Each stream holds its own lab's events only: every worker an event names is the lab's, and the
    // observations carry its cluster id (handler outputs carry none).
    for lab in [&a, &b] {
        let events = lab.events().await;
        let others: Vec<_> = events
            .iter()
            .filter(|e| {
                e.event
                    .node_name()
                    .is_some_and(|n| !n.starts_with(&lab.prefix))
                    || !(e.metadata.cluster_id.is_empty()
                        || e.metadata.cluster_id == lab.cluster_id)
            })
            .map(|e| (e.event_type(), e.event.node_name().map(str::to_string)))
            .collect();
        assert!(others.is_empty(), "{}: {others:?}", lab.cluster_id);
        assert_eq!(
            lab.bus().await.config().stream,
            lab.redis.stream(),
            "the lab's bus is its tagged stream"
        );
    }
    a.assert_replay_identity().await;
    b.assert_replay_identity().await;
}
