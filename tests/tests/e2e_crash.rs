//! Crashes end to end: `kill -9` of `autoscaler run` in the middle of a scale-up and of a
//! scale-down, and of the leader of two replicas; and, for contrast, a SIGTERM in the middle of a drain. Real Redis, real Docker containers running the lab's
//! node agent, the lab cluster, and `autoscaler run` as real processes.
//!
//! After a crash the restarted process (same replica id, so the same consumer name: it first reads its
//! own pending entries) must finish or repair the action: no duplicate, orphaned or half-removed
//! worker, and every event acknowledged by every consumer group (or dead-lettered).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use bus::{Envelope, Event, Query};
use tests::{deployment, find, trail, Lab, LabOptions, LabTopology};

const STREAM: &str = "autoscaler_events";
const HANDLERS: [&str; 5] = [
    "MetricsListener",
    "ScalingDecisionEngine",
    "NodeManager",
    "MinimumNodeEnforcer",
    "StateSynchronizer",
];

/// A small bare pod bound to `node`, labelled `app: guard` (a PDB below keeps it from being evicted).
fn guard_pod(node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: guard-{node}
  labels: {{app: guard}}
  annotations:
    lab.k3s-autoscaler/cpu-usage: "1"
    lab.k3s-autoscaler/memory-usage: "1048576"
spec:
  nodeName: {node}
  containers:
  - name: app
    image: registry.invalid/guard
    resources:
      requests: {{cpu: "10m", memory: "16Mi"}}
"#
    )
}

/// The placement period of tests whose drain a PodDisruptionBudget holds: with a current
/// placement the scale-down simulation sees the exhausted budget and never starts that drain
/// (`ScaleDownBlocked pdb`), so these tests keep the placement from following the guard pods.
const HELD_DRAIN_PLACEMENT: Duration = Duration::from_secs(6 * 3600);

/// No guard pod may be evicted while this exists.
const GUARD_PDB: &str = r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: guard
spec:
  maxUnavailable: 0
  selector:
    matchLabels: {app: guard}
"#;

/// Every decodable event, through one connection (fast enough to poll every few tens of ms).
async fn events_of(bus: &bus::Bus) -> Vec<Envelope> {
    bus.audit()
        .query(&Query::default())
        .await
        .expect("XRANGE")
        .iter()
        .filter_map(|e| e.decode().ok())
        .collect()
}

/// A worker Node as the API server shows it.
#[derive(Debug, Clone, PartialEq)]
struct NodeView {
    name: String,
    ready: bool,
    unschedulable: bool,
}

fn worker_nodes(lab: &Lab) -> Vec<NodeView> {
    let out = lab.kubectl(&["get", "nodes", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("nodes as JSON");
    let mut nodes: Vec<NodeView> = v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|n| {
            let name = n["metadata"]["name"].as_str()?.to_string();
            if !name.starts_with(&lab.prefix) {
                return None;
            }
            let ready = n["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            let unschedulable = n["spec"]["unschedulable"].as_bool().unwrap_or(false);
            Some(NodeView {
                name,
                ready,
                unschedulable,
            })
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// Docker, Kubernetes and k3s's secrets agree on exactly `workers` workers, all running, Ready and
/// schedulable: no duplicate, orphaned or half-removed worker.
fn world_consistent(lab: &Lab, workers: usize) -> Result<BTreeSet<String>, String> {
    let containers = lab.worker_containers();
    let nodes = worker_nodes(lab);
    let secrets = lab.node_password_secrets();
    let report = format!("containers {containers:?}\nnodes {nodes:?}\nsecrets {secrets:?}");
    let names: BTreeSet<String> = containers.iter().map(|(n, _)| n.clone()).collect();
    if names.len() != containers.len() {
        return Err(format!("two containers for one name\n{report}"));
    }
    if let Some((n, s)) = containers.iter().find(|(_, s)| s != "running") {
        return Err(format!(
            "container {n} is {s} (left half-removed?)\n{report}"
        ));
    }
    let node_names: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
    if names != node_names {
        return Err(format!(
            "containers and Nodes differ (orphans: containers without Node {:?}, Nodes without container {:?})\n{report}",
            names.difference(&node_names).collect::<Vec<_>>(),
            node_names.difference(&names).collect::<Vec<_>>()
        ));
    }
    if secrets != node_names {
        return Err(format!("node-password secrets and Nodes differ\n{report}"));
    }
    if let Some(n) = nodes.iter().find(|n| !n.ready || n.unschedulable) {
        return Err(format!(
            "node {} is not Ready and schedulable: {n:?}\n{report}",
            n.name
        ));
    }
    if names.len() != workers {
        return Err(format!(
            "{} workers, expected {workers}\n{report}",
            names.len()
        ));
    }
    Ok(names)
}

/// Polls until [`world_consistent`] holds, or panics with the last disagreement.
async fn wait_consistent(lab: &Lab, workers: usize, within: Duration) -> BTreeSet<String> {
    let deadline = Instant::now() + within;
    loop {
        match world_consistent(lab, workers) {
            Ok(names) => return names,
            Err(e) if Instant::now() > deadline => {
                let events = lab.events().await;
                panic!(
                    "the world did not settle at {workers} consistent workers: {e}\n{}\n{}",
                    trail(&events),
                    lab.logs()
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Waits until every consumer group has read every entry (lag 0) and acknowledged it (pending 0), then
/// returns the dead letters (printed). Each group's snapshot proves that every event up to it was
/// handled or dead-lettered by that group.
async fn all_acked(lab: &Lab, within: Duration) -> Vec<bus::audit::DeadLetter> {
    let bus = lab.bus().await;
    let audit = bus.audit();
    let deadline = Instant::now() + within;
    loop {
        let groups = audit.groups().await.expect("XINFO GROUPS");
        let names: BTreeSet<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let all_groups = HANDLERS.iter().all(|h| names.contains(h));
        let done = groups.iter().all(|g| g.pending == 0 && g.lag == Some(0));
        if all_groups && done {
            for g in &groups {
                println!(
                    "group {:<22} pending {} lag {:?} last {}",
                    g.name, g.pending, g.lag, g.last_delivered_id
                );
            }
            break;
        }
        if Instant::now() > deadline {
            let list: Vec<String> = groups
                .iter()
                .map(|g| {
                    format!(
                        "{} pending {} lag {:?} consumers {:?}",
                        g.name, g.pending, g.lag, g.consumers
                    )
                })
                .collect();
            panic!(
                "consumer groups did not catch up (pending 0, lag 0) within {within:?}:\n{}\n{}",
                list.join("\n"),
                lab.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let dlq = audit.dlq(1000).await.expect("XRANGE dlq");
    for d in &dlq {
        println!(
            "DLQ {} original {} group {} deliveries {} error {}",
            d.id, d.original_id, d.group, d.deliveries, d.error
        );
    }
    dlq
}

/// The event types after index `from`, in order, samples left out (printed for the record).
fn chain(events: &[Envelope], from: usize) -> String {
    events
        .iter()
        .skip(from)
        .map(|e| e.event_type())
        .filter(|t| *t != "MetricsSampled")
        .collect::<Vec<_>>()
        .join(" ")
}

/// No worker was reported lost after index `from`: our own actions, finished after a crash, are not
/// losses.
fn assert_no_loss(events: &[Envelope], from: usize) {
    assert!(
        find(events, from, "NodeUnexpectedlyLost", |_| true).is_none(),
        "a worker was reported lost\n{}",
        trail(&events[from..])
    );
}

/// The lines of a replica's log that say something went wrong (printed for the record).
fn log_warnings(lab: &Lab, i: usize) -> Vec<String> {
    std::fs::read_to_string(lab.dir.join(format!("replica-{i}.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .map(str::to_string)
        .collect()
}

/// A two-worker lab the moment a scale-up to four is under way.
struct ScaleUpUnderWay {
    /// The stream index from which the scale-up's events come.
    from: usize,
    /// The worker containers before it.
    before: Vec<(String, String)>,
    /// What showed it was under way.
    cause: String,
    /// The stream at that moment.
    at_kill: Vec<bus::Envelope>,
}

/// Settles `lab` at two workers, applies four pods of 700m on 1-CPU workers (two pending, two
/// more workers needed), and returns as soon as the scale-up is under way: a new worker container
/// exists (the executor is creating, and nothing of it may be on the stream yet) or its
/// `ScaleUpStarted` is on the stream.
async fn scale_up_under_way(lab: &Lab) -> ScaleUpUnderWay {
    let from = lab.settled(0, 2..=2, Duration::from_secs(90)).await.len();
    let before = lab.worker_containers();
    assert_eq!(before.len(), 2, "{before:?}");
    lab.kubectl_apply(&deployment("web", 4));
    let bus = lab.bus().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = events_of(&bus).await;
        let containers = lab.worker_containers();
        let cause = if containers.len() > before.len() {
            Some(format!("a new container {containers:?}"))
        } else if find(&events, from, "ScaleUpStarted", |_| true).is_some() {
            Some("ScaleUpStarted on the stream".to_string())
        } else {
            None
        };
        if let Some(cause) = cause {
            return ScaleUpUnderWay {
                from,
                before,
                cause,
                at_kill: events,
            };
        }
        assert!(
            Instant::now() < deadline,
            "no scale-up began\n{}\n{}",
            trail(&events),
            lab.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kill_9_during_a_scale_up_is_finished_by_the_restarted_process() {
    let mut lab = Lab::start(LabOptions {
        // No scale-down while the test counts workers.
        underutilized_for: Duration::from_secs(600),
        ..LabOptions::default()
    })
    .await;
    let started = Instant::now();
    let ScaleUpUnderWay {
        from,
        before,
        cause,
        at_kill,
    } = scale_up_under_way(&lab).await;
    lab.kill_replica(0);
    let kill_index = at_kill.len();
    let seen: Vec<&str> = at_kill
        .iter()
        .skip(from)
        .map(|e| e.event_type())
        .filter(|t| {
            matches!(
                *t,
                "ScaleUpDecision" | "ScaleUpStarted" | "NodeCreated" | "NodeReady"
            )
        })
        .collect();
    println!("killed replica-0 on {cause}; on the stream then: {seen:?}");
    println!(
        "containers right after the kill: {:?}",
        lab.worker_containers()
    );
    let ready_before_kill = find(&at_kill, from, "ScaleUpDecision", |_| true)
        .and_then(|(d, _)| find(&at_kill, d, "NodeReady", |_| true));
    assert!(
        ready_before_kill.is_none(),
        "the kill came too late: a new worker was already Ready\n{}",
        trail(&at_kill)
    );

    lab.spawn_replica(0, false);

    // The restarted process finishes the scale-up: four workers, no more, each with its Node.
    let events = lab
        .wait_for_events(
            "the scale-up to complete after the restart",
            Duration::from_secs(120),
            |ev| {
                find(
                    ev,
                    from,
                    "ScalingActionCompleted",
                    |e| matches!(&e.event, Event::ScalingActionCompleted(c) if c.new_workers == 4),
                )
                .is_some()
            },
        )
        .await;
    let names = wait_consistent(&lab, 4, Duration::from_secs(60)).await;
    println!("workers after the restart: {names:?}");
    lab.settled(kill_index, 4..=4, Duration::from_secs(60))
        .await;

    // One scale-up to the target, however often the decision was handled.
    let starts: Vec<(u32, Vec<String>)> = events
        .iter()
        .skip(from)
        .filter_map(|e| match &e.event {
            Event::ScaleUpStarted(s) => Some((s.target_workers, s.nodes.clone())),
            _ => None,
        })
        .collect();
    println!("ScaleUpStarted: {starts:?}");
    let created: BTreeSet<String> = starts.iter().flat_map(|(_, n)| n.clone()).collect();
    let new: BTreeSet<String> = names
        .iter()
        .filter(|n| !before.iter().any(|(b, _)| b == *n))
        .cloned()
        .collect();
    assert!(
        new.is_subset(&created),
        "every new worker was named by a ScaleUpStarted: new {new:?}, named {created:?}\n{}",
        trail(&events)
    );

    // And the pods run.
    lab.wait_running("web", 4, Duration::from_secs(60)).await;

    let events = lab.events().await;
    println!("after the settling: {}", chain(&events, from));
    assert_no_loss(&events, from);
    let dlq = all_acked(&lab, Duration::from_secs(30)).await;
    assert!(
        dlq.is_empty(),
        "a crash must not dead-letter events: {} dead letters",
        dlq.len()
    );
    // Still four a little later: nothing left to repair, no late duplicate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    world_consistent(&lab, 4).unwrap_or_else(|e| panic!("{e}"));
    for w in log_warnings(&lab, 0) {
        println!("log: {w}");
    }
    lab.assert_replay_identity().await;
    println!("scale-up crash test took {:?}", started.elapsed());
}

/// The sentinels' `down-after-milliseconds` in a sentinel lab.
const DOWN_AFTER: Duration = Duration::from_secs(1);

/// The bus's Redis primary dies (SIGKILL) in the middle of a scale-up; the sentinels promote its
/// replica; the autoscaler follows the new primary within their failover time plus a few seconds and
/// finishes: four workers, no orphan, no duplicate (docs/TOPOLOGY.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_the_bus_primary_dies_during_a_scale_up_and_the_autoscaler_follows_the_promoted_replica(
) {
    let mut lab = Lab::start(LabOptions {
        underutilized_for: Duration::from_secs(600),
        topology: LabTopology::Sentinel,
        ..LabOptions::default()
    })
    .await;
    let started = Instant::now();
    // Kill the primary as soon as the scale-up is under way, as the kill -9 test kills the autoscaler.
    let ScaleUpUnderWay {
        from,
        cause,
        at_kill,
        ..
    } = scale_up_under_way(&lab).await;
    let Some(sentinels) = lab.redis.sentinels() else {
        panic!("a sentinel lab")
    };
    let old = tokio::task::block_in_place(|| sentinels.kill_master());
    let killed_at = Instant::now();
    let killed_wall = chrono::Utc::now();
    let new = tokio::task::block_in_place(|| sentinels.wait_failover(old, Duration::from_secs(30)));
    let promoted_after = killed_at.elapsed();
    println!(
        "killed the primary ({old}) on {cause} ({} events then); the sentinels promoted {new} after {promoted_after:?}",
        at_kill.len()
    );

    // The autoscaler publishes on the new primary: an event it stamped after the kill is there.
    let follow_bound = DOWN_AFTER + Duration::from_secs(10);
    let events = lab
        .wait_for_events(
            "an event published after the failover",
            follow_bound,
            |ev| ev.iter().any(|e| e.timestamp > killed_wall),
        )
        .await;
    let followed_after = killed_at.elapsed();
    let first_after = events
        .iter()
        .filter(|e| e.timestamp > killed_wall)
        .map(|e| e.event_type())
        .take(5)
        .collect::<Vec<_>>();
    println!(
        "the autoscaler published on the new primary after {followed_after:?}: {first_after:?}"
    );
    let lost_from_window = at_kill
        .iter()
        .filter(|e| !events.iter().any(|n| n.event_id == e.event_id))
        .map(|e| e.event_type())
        .collect::<Vec<_>>();
    println!("events seen before the kill and missing on the new primary: {lost_from_window:?}");

    // It finishes the scale-up: four workers, each with its Node, no more.
    lab.wait_for_events(
        "the scale-up to complete on the new primary",
        Duration::from_secs(120),
        |ev| {
            find(
                ev,
                from,
                "ScalingActionCompleted",
                |e| matches!(&e.event, Event::ScalingActionCompleted(c) if c.new_workers == 4),
            )
            .is_some()
        },
    )
    .await;
    let names = wait_consistent(&lab, 4, Duration::from_secs(60)).await;
    println!("workers after the failover: {names:?}");
    lab.settled(from, 4..=4, Duration::from_secs(60)).await;
    lab.wait_running("web", 4, Duration::from_secs(60)).await;
    let dlq = all_acked(&lab, Duration::from_secs(30)).await;
    assert!(
        dlq.is_empty(),
        "{} dead letters after the failover",
        dlq.len()
    );
    // Still four a little later: nothing left to repair, no late duplicate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    world_consistent(&lab, 4).unwrap_or_else(|e| panic!("{e}"));
    for w in log_warnings(&lab, 0) {
        println!("log: {w}");
    }
    // Not asserted here (open, see docs/TOPOLOGY.md): replay identity. In 3 of 8 runs the `NodeCreated` of the
    // worker being created when the primary died never reached the stream, and the what-if replay then
    // took the next scale-up decision one `PendingPodsDetected` earlier than the run did. A failing run's
    // log: the executor started the worker, its `NodeCreated` + XACK script failed (no primary), the
    // redelivered `ScaleUpDecision` did not create or report it again (its `ScaleUpStarted` was on the
    // stream); the leader stepped down 0.1 s after the start, stopping the Docker events watcher whose
    // `NodeCreated` would have covered it. Not specific to Sentinel: any bus outage at that moment.
    // The consumer now publishes a failed settle's outputs with the redelivery (bus `Unsettled`):
    // 3 of 3 runs since kept every `NodeCreated` and replay identity; too few to assert it yet.
    let created: BTreeSet<String> = lab
        .events()
        .await
        .iter()
        .filter_map(|e| match &e.event {
            Event::NodeCreated(c) => Some(c.node_name.clone()),
            _ => None,
        })
        .collect();
    println!("workers with a NodeCreated on the stream: {created:?}");
    println!("bus failover test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kill_9_during_a_scale_down_drain_leaves_no_half_removed_worker() {
    scale_down_crash(KillAt::Drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kill_9_right_after_a_scale_down_decision_leaves_no_half_removed_worker() {
    scale_down_crash(KillAt::Decision).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kill_9_during_a_drain_that_cannot_finish_puts_the_worker_back_in_service() {
    scale_down_crash(KillAt::DrainKept).await;
}

/// The bound of a graceful shutdown: `scaling.drain_timeout` (30 s in the harness) + 30 s.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_sigterm_during_a_drain_waits_for_the_drain_to_finish() {
    // A SIGTERM while a PodDisruptionBudget holds a scale-down's drain: the process stops reading but
    // carries the drain on; the budget is lifted 5 s later, the drain finishes, and only then does the
    // process exit, within the bound, saying all in-flight work finished.
    let mut lab = Lab::start(LabOptions {
        placement_interval: HELD_DRAIN_PLACEMENT,
        ..LabOptions::default()
    })
    .await;
    let started = Instant::now();
    let (from, _) = three_workers_then_no_load(&lab, true).await;

    let bus = lab.bus().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let victim = loop {
        let events = events_of(&bus).await;
        if let Some((_, e)) = find(&events, from, "NodeCordoned", |_| true) {
            break e.event.node_name().unwrap_or_default().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no scale-down began\n{}\n{}",
            trail(&events),
            lab.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Let the drain meet the budget, then ask the process to stop in the middle of it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at_term = events_of(&bus).await;
    assert!(
        find(&at_term, from, "NodeDrained", |_| true).is_none(),
        "the drain should still be blocked\n{}",
        trail(&at_term)
    );
    lab.terminate_replica(0);
    let termed = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        lab.replica_exited(0),
        None,
        "still draining 5 s after the SIGTERM\n{}",
        lab.logs()
    );
    lab.kubectl(&["delete", "pdb", "guard"]);
    let status = lab.wait_replica_exit(0, SHUTDOWN_BOUND).await;
    let took = termed.elapsed();
    println!("SHUTDOWN: replica-0 exited {took:?} after SIGTERM ({status}); the budget was lifted 5 s after it");
    assert!(status.success(), "{status}\n{}", lab.logs());
    assert!(
        took >= Duration::from_secs(5),
        "it waited for the drain: {took:?}"
    );

    // The drain, the delivery in flight at the SIGTERM, finished before the exit and its facts were
    // published with its ack. The removal that follows from `NodeDrained` is a delivery of its own,
    // read by the next process.
    let events = lab.events().await;
    assert!(
        find(&events, from, "NodeDrained", |e| {
            e.event.node_name() == Some(victim.as_str())
        })
        .is_some(),
        "NodeDrained for {victim} before the exit\n{}\n{}",
        trail(&events),
        lab.logs()
    );
    let log = std::fs::read_to_string(lab.dir.join("replica-0.log")).unwrap_or_default();
    for l in log
        .lines()
        .filter(|l| l.contains("shutting down") || l.contains("stopped"))
    {
        println!("log: {l}");
    }
    assert!(
        log.contains("stopped: all in-flight work finished"),
        "the shutdown finished everything\n{log}"
    );

    // A new process finishes the removal: a consistent world of two.
    let restart_index = events.len();
    lab.spawn_replica(0, false);
    lab.wait_for_events(
        "the removal after the restart",
        Duration::from_secs(60),
        |ev| {
            find(ev, from, "NodeRemoved", |e| {
                e.event.node_name() == Some(victim.as_str())
            })
            .is_some()
        },
    )
    .await;
    let names = wait_consistent(&lab, 2, Duration::from_secs(60)).await;
    println!("workers after the restart: {names:?} (restart at event {restart_index})");
    assert!(!names.contains(&victim));
    let dlq = all_acked(&lab, Duration::from_secs(30)).await;
    assert!(dlq.is_empty(), "{} dead letters", dlq.len());
    lab.assert_replay_identity().await;
    println!("sigterm test took {:?}", started.elapsed());
}

/// Where a scale-down is hit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KillAt {
    /// As soon as the `ScaleDownDecision` is on the stream: the NodeManager is about to act or acting
    /// (cordon, drain and removal of an empty node take a moment only, so the exact step varies).
    Decision,
    /// In the middle of the drain: a PodDisruptionBudget holds it (up to the 30 s drain timeout). The
    /// budget is lifted before the restart, so the worker is then removed.
    Drain,
    /// As `Drain`, but the budget stays: the restarted process's drain times out and the worker must be
    /// put back into service (uncordoned, kept), not left cordoned. It restarts with a 5 s drain timeout
    /// and no further scale-down (`underutilized_for: 600s`), so the end state holds still.
    DrainKept,
}

/// From the lab's minimum of two, up to three workers (three pods of 700m need three 1-CPU
/// workers), then the load removed: a scale-down is next. `guarded`: every worker first gets a
/// small pod that a PodDisruptionBudget keeps from being evicted, so the drain of the chosen worker
/// waits. Returns where on the stream the unloading began, and the three workers.
async fn three_workers_then_no_load(lab: &Lab, guarded: bool) -> (usize, BTreeSet<String>) {
    lab.settled(0, 2..=2, Duration::from_secs(90)).await;
    lab.kubectl_apply(&deployment("web", 3));
    let events = lab
        .wait_for_events("the scale-up to three", Duration::from_secs(90), |ev| {
            find(
                ev,
                0,
                "ScalingActionCompleted",
                |e| matches!(&e.event, Event::ScalingActionCompleted(c) if c.new_workers == 3),
            )
            .is_some()
        })
        .await;
    let workers = wait_consistent(lab, 3, Duration::from_secs(60)).await;
    if guarded {
        lab.kubectl_apply(GUARD_PDB);
        for w in &workers {
            lab.kubectl_apply(&guard_pod(w));
        }
    }
    let from = events.len();
    lab.kubectl(&["delete", "deployment", "web"]);
    (from, workers)
}

async fn scale_down_crash(kill_at: KillAt) {
    let guarded = matches!(kill_at, KillAt::Drain | KillAt::DrainKept);
    let mut lab = Lab::start(LabOptions {
        placement_interval: if guarded {
            HELD_DRAIN_PLACEMENT
        } else {
            LabOptions::default().placement_interval
        },
        ..LabOptions::default()
    })
    .await;
    let started = Instant::now();
    let (from, workers) = three_workers_then_no_load(&lab, guarded).await;

    let bus = lab.bus().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let wanted = match kill_at {
        KillAt::Decision => "ScaleDownDecision",
        KillAt::Drain | KillAt::DrainKept => "NodeCordoned",
    };
    let (victim, at_kill) = loop {
        let events = events_of(&bus).await;
        if let Some((_, e)) = find(&events, from, wanted, |_| true) {
            let victim = match &e.event {
                Event::ScaleDownDecision(d) => d.nodes.first().cloned().unwrap_or_default(),
                other => other.node_name().unwrap_or_default().to_string(),
            };
            break (victim, events);
        }
        assert!(
            Instant::now() < deadline,
            "no scale-down began\n{}\n{}",
            trail(&events),
            lab.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let at_kill = if guarded {
        // Let the drain meet the budget once, then crash in the middle of it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let events = events_of(&bus).await;
        assert!(
            find(&events, from, "NodeDrained", |_| true).is_none()
                && find(&events, from, "ScalingActionFailed", |_| true).is_none(),
            "the drain should still be blocked\n{}",
            trail(&events)
        );
        events
    } else {
        at_kill
    };
    lab.kill_replica(0);
    let kill_index = at_kill.len();
    let victim_node = worker_nodes(&lab).into_iter().find(|n| n.name == victim);
    let victim_container = lab
        .worker_containers()
        .into_iter()
        .find(|(n, _)| *n == victim);
    let seen: Vec<&str> = at_kill
        .iter()
        .skip(from)
        .map(|e| e.event_type())
        .filter(|t| t.starts_with("ScaleDown") || t.starts_with("Node"))
        .collect();
    println!(
        "killed replica-0 ({kill_at:?}) during the removal of {victim}: on the stream then {seen:?}; \
         right after the kill its Node {victim_node:?}, its container {victim_container:?}"
    );
    if guarded {
        assert!(
            victim_node.is_some_and(|n| n.unschedulable),
            "{victim} is cordoned when the process dies\n{}",
            trail(&at_kill)
        );
        assert!(
            victim_container.is_some(),
            "its container still exists when the process dies"
        );
    }
    if kill_at == KillAt::Drain {
        // An operator lifts the budget while the autoscaler is down.
        lab.kubectl(&["delete", "pdb", "guard"]);
    }
    // The stream up to the kill, and the configuration it was recorded under (changed below).
    let mut first_stretch = None;
    if kill_at == KillAt::DrainKept {
        let until = lab.bus().await.audit().last_id().await.expect("XREVRANGE");
        let first_config = lab.dir.join("config-before-restart.yaml");
        std::fs::copy(&lab.config, &first_config).expect("copy the config");
        first_stretch = until.map(|u| (first_config, u));
        let config = std::fs::read_to_string(&lab.config).expect("config");
        assert!(config.contains("drain_timeout: 30s") && config.contains("underutilized_for: 6s"));
        let config = config
            .replace("drain_timeout: 30s", "drain_timeout: 5s")
            .replace("underutilized_for: 6s", "underutilized_for: 600s");
        std::fs::write(&lab.config, config).expect("config");
    }
    lab.spawn_replica(0, false);

    if kill_at == KillAt::DrainKept {
        // Kept: the drain fails on the budget, the node is uncordoned, the blocked reason says why.
        let events = lab
            .wait_for_events(
                "the scale-down to be called off after the restart",
                Duration::from_secs(60),
                |ev| {
                    find(ev, kill_index, "ScaleDownBlocked", |e| {
                        matches!(&e.event, Event::ScaleDownBlocked(b) if b.node_name.as_deref() == Some(victim.as_str()))
                    })
                    .is_some()
                },
            )
            .await;
        let (_, blocked) = find(&events, kill_index, "ScaleDownBlocked", |e| {
            matches!(&e.event, Event::ScaleDownBlocked(b) if b.node_name.as_deref() == Some(victim.as_str()))
        })
        .expect("blocked");
        let Event::ScaleDownBlocked(b) = &blocked.event else {
            unreachable!()
        };
        assert_eq!(b.reason, "pdb", "{b:?}");
        assert!(
            find(&events, from, "NodeRemoved", |e| e.event.node_name()
                == Some(victim.as_str()))
            .is_none(),
            "{}",
            trail(&events)
        );
        let names = wait_consistent(&lab, 3, Duration::from_secs(30)).await;
        assert_eq!(names, workers, "the same three workers, all in service");
        let guards = lab.kubectl(&[
            "get",
            "pods",
            "-l",
            "app=guard",
            "-o",
            "jsonpath={.items[*].spec.nodeName}",
        ]);
        assert!(
            guards.split_whitespace().any(|n| n == victim),
            "the victim's pod is still there: {guards}"
        );
        let events = lab.events().await;
        println!("after the load went: {}", chain(&events, from));
        assert_no_loss(&events, from);
        let dlq = all_acked(&lab, Duration::from_secs(30)).await;
        assert!(
            dlq.is_empty(),
            "a crash must not dead-letter events: {} dead letters",
            dlq.len()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        world_consistent(&lab, 3).unwrap_or_else(|e| panic!("{e}"));
        // The restart changed `underutilized_for` and `drain_timeout`: no one configuration made the
        // whole stream, so the identity holds for the stretch the first one recorded (up to the kill).
        let (first_config, until) = first_stretch.expect("entries before the kill");
        lab.assert_replay_identity_until(&first_config, &until)
            .await;
        println!(
            "scale-down crash test ({kill_at:?}) took {:?}",
            started.elapsed()
        );
        return;
    }

    // Fully removed: drained, container and Node (and its secret) gone, the action completed.
    let events = lab
        .wait_for_events(
            "the scale-down to complete after the restart",
            Duration::from_secs(90),
            |ev| {
                find(ev, from, "ScalingActionCompleted", |e| {
                    matches!(&e.event, Event::ScalingActionCompleted(c) if c.nodes.contains(&victim))
                })
                .is_some()
            },
        )
        .await;
    let (r, _) = find(&events, from, "NodeRemoved", |e| {
        e.event.node_name() == Some(victim.as_str())
    })
    .unwrap_or_else(|| panic!("NodeRemoved for {victim}\n{}", trail(&events)));
    assert!(
        find(&events, from, "NodeDrained", |e| {
            e.event.node_name() == Some(victim.as_str())
        })
        .is_some_and(|(d, _)| d < r),
        "drained before removed\n{}",
        trail(&events)
    );
    if kill_at == KillAt::Drain {
        assert!(r >= kill_index, "removed after the restart");
    }
    let names = wait_consistent(&lab, 2, Duration::from_secs(60)).await;
    assert!(!names.contains(&victim));
    let survivors: BTreeSet<String> = workers.iter().filter(|w| **w != victim).cloned().collect();
    assert_eq!(
        names, survivors,
        "the other two workers are kept, and no new one"
    );
    lab.settled(r, 2..=2, Duration::from_secs(60)).await;
    if kill_at == KillAt::Drain {
        let guards = lab.kubectl(&[
            "get",
            "pods",
            "-l",
            "app=guard",
            "-o",
            "jsonpath={.items[*].spec.nodeName}",
        ]);
        assert!(
            !guards.split_whitespace().any(|n| n == victim),
            "the victim's pod was evicted: {guards}"
        );
    }

    let events = lab.events().await;
    println!("after the load went: {}", chain(&events, from));
    assert_no_loss(&events, from);
    let dlq = all_acked(&lab, Duration::from_secs(30)).await;
    assert!(
        dlq.is_empty(),
        "a crash must not dead-letter events: {} dead letters",
        dlq.len()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    world_consistent(&lab, 2).unwrap_or_else(|e| panic!("{e}"));
    lab.assert_replay_identity().await;
    for w in log_warnings(&lab, 0) {
        println!("log: {w}");
    }
    println!(
        "scale-down crash test ({kill_at:?}) took {:?}",
        started.elapsed()
    );
}

/// The holder of the lease (`replica-<i>|<token>`), if any.
async fn leader(bus: &bus::Bus) -> Option<(String, u64)> {
    let mut conn = bus.connection();
    let holder = autoscaler::leader::current_holder(&mut conn, STREAM)
        .await
        .expect("GET the lease")?;
    let (replica, token) = holder.split_once('|')?;
    Some((replica.to_string(), token.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kill_9_of_the_leader_hands_over_within_the_lease_ttl() {
    /// `leader.lease_ttl` of the harness's configuration.
    const LEASE_TTL: Duration = Duration::from_secs(3);
    let mut lab = Lab::start(LabOptions {
        replicas: 2,
        ..LabOptions::default()
    })
    .await;
    let started = Instant::now();
    let text = std::fs::read_to_string(&lab.config).expect("config");
    assert!(
        text.contains(&format!("lease_ttl: {}s", LEASE_TTL.as_secs())),
        "the harness's lease TTL changed: {text}"
    );
    let events = lab.settled(0, 2..=2, Duration::from_secs(90)).await;
    let bus = lab.bus().await;
    let (old, old_token) = leader(&bus).await.expect("a leader");
    let old_index: usize = old
        .strip_prefix("replica-")
        .and_then(|i| i.parse().ok())
        .expect("replica-<i>");
    let other = format!("replica-{}", 1 - old_index);
    println!("leader: {old} (token {old_token}); killing it");

    lab.kill_replica(old_index);
    let killed = Instant::now();
    let (new, new_token, takeover) = loop {
        if let Some((r, t)) = leader(&bus).await {
            if r != old {
                break (r, t, killed.elapsed());
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "nobody took over the lease\n{}",
            lab.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("TAKEOVER: {new} leads (token {new_token}) {takeover:?} after the kill -9 of {old}");
    assert_eq!(new, other);
    assert!(new_token > old_token, "a new fencing token");
    // The dead leader renewed at most a renew period (ttl/3) before dying, so its lease expires within
    // the TTL; the other replica tries every ttl/3; allow half a second for scheduling on a busy machine.
    assert!(
        takeover <= LEASE_TTL + LEASE_TTL / 3 + Duration::from_millis(500),
        "takeover took {takeover:?}, lease TTL {LEASE_TTL:?}"
    );

    // Observations continue on the new leader: a worker killed at the minimum is noticed and replaced.
    let victim = wait_consistent(&lab, 2, Duration::from_secs(30))
        .await
        .into_iter()
        .next()
        .expect("a worker");
    let before = lab.events().await.len().max(events.len());
    let out = Command::new("docker")
        .args(["kill", &victim])
        .output()
        .expect("docker kill");
    assert!(out.status.success());
    let killed_worker = Instant::now();
    let events = lab
        .wait_for_events(
            "the killed worker to be replaced by the new leader",
            Duration::from_secs(90),
            |ev| {
                find(ev, before, "NodeUnexpectedlyLost", |e| {
                    e.event.node_name() == Some(victim.as_str())
                })
                .and_then(|(l, _)| find(ev, l, "MinimumNodesRestored", |_| true))
                .is_some()
            },
        )
        .await;
    println!(
        "the lost worker {victim} was replaced {:?} after its docker kill",
        killed_worker.elapsed()
    );
    let (_, lost) = find(&events, before, "NodeUnexpectedlyLost", |e| {
        e.event.node_name() == Some(victim.as_str())
    })
    .expect("lost");
    println!(
        "NodeUnexpectedlyLost from {} with metadata {:?}",
        lost.source,
        serde_json::to_value(&lost.metadata).ok()
    );
    // Observations carry the fencing token of the tenure that made them.
    let token_of = |e: &Envelope| {
        e.metadata
            .extra
            .get("leader_token")
            .and_then(|t| t.as_u64())
    };
    assert_eq!(
        token_of(lost),
        Some(new_token),
        "the loss was observed in the new tenure"
    );
    let (_, first_obs) = find(&events, 0, "MetricsSampled", |_| true).expect("a sample");
    assert_eq!(
        token_of(first_obs),
        Some(old_token),
        "the first tenure's token"
    );
    let names = wait_consistent(&lab, 2, Duration::from_secs(60)).await;
    assert!(!names.contains(&victim), "{names:?}");

    // The old leader comes back as a follower: the lease stays where it is.
    lab.spawn_replica(old_index, false);
    tokio::time::sleep(LEASE_TTL + Duration::from_secs(1)).await;
    let (holder, token) = leader(&bus).await.expect("a leader");
    assert_eq!(
        (holder.as_str(), token),
        (new.as_str(), new_token),
        "the restarted replica does not take the lease back"
    );
    // The restarted replica (same consumer name) drains what it had pending when it was killed.
    let dlq = all_acked(&lab, Duration::from_secs(30)).await;
    assert!(dlq.is_empty(), "{} dead letters", dlq.len());
    lab.assert_replay_identity().await;
    println!("leader takeover test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kill_9_of_the_replica_carrying_out_a_scale_up_is_repaired_by_the_other() {
    // Two replicas, no restart: the dead one's deliveries are claimed by the other once its heartbeat is
    // 5 s old (bus::consumer::DEAD_AFTER). The claimed decision is judged against the other's current
    // record, which already holds the ScaleUpStarted published before acting, so it asks for nothing
    // again; the leader's NodeManager timer creates a worker named but never reported created again
    // after handlers::node_manager::RECREATE_AFTER (10 s), idempotently.
    let mut lab = Lab::start(LabOptions {
        replicas: 2,
        underutilized_for: Duration::from_secs(600),
        ..LabOptions::default()
    })
    .await;
    let started = Instant::now();
    let from = lab.settled(0, 2..=2, Duration::from_secs(90)).await.len();
    lab.kubectl_apply(&deployment("web", 4));
    let bus = lab.bus().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Kill the replica whose NodeManager holds the decision, as soon as the ScaleUpStarted it publishes
    // before acting is on the stream: the worker it names is then not (or only half) created.
    let (victim, new) = loop {
        let events = events_of(&bus).await;
        if let Some((_, started)) = find(&events, from, "ScaleUpStarted", |_| true) {
            let group = bus
                .audit()
                .group("NodeManager")
                .await
                .expect("XINFO")
                .expect("the NodeManager group");
            if let Some(c) = group.consumers.iter().find(|c| c.pending > 0) {
                let i: usize = c
                    .name
                    .strip_prefix("replica-")
                    .and_then(|i| i.parse().ok())
                    .expect("replica-<i>");
                let Event::ScaleUpStarted(s) = &started.event else {
                    unreachable!()
                };
                break (i, s.nodes.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no scale-up began\n{}",
            lab.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let holder = leader(&bus).await;
    lab.kill_replica(victim);
    let killed = Instant::now();
    println!(
        "killed replica-{victim} while it created {new:?} (leader then: {holder:?}); containers {:?}",
        lab.worker_containers()
    );
    let names = wait_consistent(&lab, 4, Duration::from_secs(150)).await;
    println!(
        "four consistent workers {:?} after the kill: {names:?}",
        killed.elapsed()
    );
    let events = lab.events().await;
    println!("chain: {}", chain(&events, from));
    assert_no_loss(&events, from);
    // The dead replica's unacknowledged deliveries are claimed by the other one: a late copy of a
    // decision must change nothing.
    let dlq = all_acked(&lab, Duration::from_secs(100)).await;
    assert!(dlq.is_empty(), "{} dead letters", dlq.len());
    println!("all acknowledged {:?} after the kill", killed.elapsed());
    let events = lab.events().await;
    println!("chain: {}", chain(&events, from));
    assert_no_loss(&events, from);
    tokio::time::sleep(Duration::from_secs(3)).await;
    world_consistent(&lab, 4).unwrap_or_else(|e| panic!("{e}"));
    lab.assert_replay_identity().await;
    println!("took {:?}", started.elapsed());
}
