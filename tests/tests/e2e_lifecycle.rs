//! A worker's whole life end to end: removed when the load goes, replaced when lost (one or several at
//! once), and replaced *before* its pods move when someone stops it. Real Redis, real Docker, the lab
//! cluster, `autoscaler run` as a real process.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::{Envelope, Event};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::Api;
use tests::{deployment, find, trail, Lab, LabOptions};

/// How long the cluster may take to settle after a change.
const SETTLE: Duration = Duration::from_secs(90);

fn ready_nodes(events: &[Envelope]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::NodeReady(r) => Some(r.node_name.clone()),
            _ => None,
        })
        .collect()
}

/// This lab's Kubernetes Nodes and `<node>.node-password.k3s` secrets.
fn nodes_and_secrets(lab: &Lab) -> (BTreeSet<String>, BTreeSet<String>) {
    let names = |out: String, suffix: &str| -> BTreeSet<String> {
        out.split_whitespace()
            .filter_map(|s| s.strip_suffix(suffix))
            .filter(|n| n.starts_with(&lab.prefix))
            .map(str::to_string)
            .collect()
    };
    let nodes = names(
        lab.kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"]),
        "",
    );
    (nodes, lab.node_password_secrets())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_load_removed_scales_down_to_the_minimum_and_cleans_up_everything() {
    let lab = Lab::start(LabOptions {
        min_nodes: 1,
        max_nodes: 4,
        ..LabOptions::default()
    })
    .await;
    lab.settled(0, 1..=1, SETTLE).await;

    // Three pods of 700m: two more workers.
    lab.kubectl_apply(&deployment("web", 3));
    lab.wait_running("web", 3, Duration::from_secs(90)).await;
    // At least three workers (a worker seen Ready before its pod is bound can make a later report ask
    // for one more; the scale-down below removes it all the same).
    let events = lab.settled(0, 3..=4, SETTLE).await;
    let grown: BTreeSet<String> = ready_nodes(&events);
    assert!(grown.len() >= 3, "{}", trail(&events));
    let before = events.len();

    // The load goes: the workers idle below the threshold for `underutilized_for` (6 s here).
    lab.kubectl(&["delete", "deployment", "web"]);
    let events = lab
        .wait_for_events(
            "back at the minimum, announced",
            Duration::from_secs(120),
            |ev| find(ev, before, "OptimalStateTrigger", |_| true).is_some(),
        )
        .await;

    // The chain of the first removal: UnderutilizationWarning → ScaleDownDecision → ScaleDownStarted →
    // NodeCordoned → NodeDrained → NodeRemoved, each caused by the one before. (Warnings repeat while the
    // underuse lasts; the decision comes once it has lasted `underutilized_for`.)
    let (d, decision) = find(&events, before, "ScaleDownDecision", |_| true)
        .unwrap_or_else(|| panic!("ScaleDownDecision\n{}", trail(&events)));
    let cause = events[before..d]
        .iter()
        .find(|e| Some(e.event_id) == decision.causation_id)
        .unwrap_or_else(|| panic!("the decision's cause\n{}", trail(&events)));
    assert_eq!(
        cause.event_type(),
        "UnderutilizationWarning",
        "{}",
        trail(&events)
    );
    let (s, started) = find(&events, d, "ScaleDownStarted", |e| {
        e.causation_id == Some(decision.event_id)
    })
    .unwrap_or_else(|| {
        panic!(
            "ScaleDownStarted caused by the decision\n{}",
            trail(&events)
        )
    });
    let Event::ScaleDownStarted(down) = &started.event else {
        unreachable!()
    };
    let victim = down.nodes.first().cloned().expect("a node to remove");
    let of_victim = |e: &Envelope| e.event.node_name() == Some(victim.as_str());
    let (c, _) = find(&events, s, "NodeCordoned", of_victim)
        .unwrap_or_else(|| panic!("{victim} cordoned\n{}", trail(&events)));
    let (dr, _) = find(&events, c, "NodeDrained", of_victim)
        .unwrap_or_else(|| panic!("{victim} drained\n{}", trail(&events)));
    find(&events, dr, "NodeRemoved", of_victim)
        .unwrap_or_else(|| panic!("{victim} removed\n{}", trail(&events)));
    let (o, optimal) = find(&events, before, "OptimalStateTrigger", |_| true).expect("optimal");
    let Event::OptimalStateTrigger(at_min) = &optimal.event else {
        unreachable!()
    };
    assert_eq!(at_min.current_workers, 1, "{}", trail(&events));
    // Both extra workers were removed before the minimum was announced.
    let removed: BTreeSet<String> = events[before..o]
        .iter()
        .filter_map(|e| match &e.event {
            Event::NodeRemoved(r) => Some(r.node_name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(removed.len(), grown.len() - 1, "{}", trail(&events));

    // And the world agrees: one container, one Node, one node-password secret, the same worker.
    let last_removal = events[..o]
        .iter()
        .rposition(|e| matches!(e.event, Event::NodeRemoved(_)))
        .unwrap_or(before);
    let settled = lab.settled(last_removal, 1..=1, SETTLE).await;
    let containers: BTreeSet<String> = lab
        .worker_containers()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let (nodes, secrets) = nodes_and_secrets(&lab);
    assert_eq!(containers.len(), 1, "{containers:?}\n{}", trail(&settled));
    assert_eq!(nodes, containers, "Nodes vs containers");
    assert_eq!(secrets, containers, "node-password secrets vs containers");
    for gone in &removed {
        assert!(grown.contains(gone));
        assert!(!containers.contains(gone), "{gone}'s container is gone");
    }
    lab.assert_replay_identity().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_two_workers_killed_together_make_an_emergency_scale_up() {
    let lab = Lab::start(LabOptions {
        min_nodes: 3,
        max_nodes: 5,
        ..LabOptions::default()
    })
    .await;
    let events = lab.settled(0, 3..=3, SETTLE).await;
    let workers: Vec<String> = ready_nodes(&events).into_iter().collect();
    let victims = &workers[..2];
    let before = events.len();
    let out = std::process::Command::new("docker")
        .arg("kill")
        .args(victims)
        .output()
        .expect("docker kill");
    assert!(out.status.success(), "docker kill {victims:?}");

    let events = lab
        .wait_for_events(
            "the minimum restored after the emergency",
            Duration::from_secs(120),
            |ev| {
                find(ev, before, "EmergencyScaleUp", |_| true)
                    .is_some_and(|(e, _)| find(ev, e, "MinimumNodesRestored", |_| true).is_some())
            },
        )
        .await;
    for v in victims {
        find(&events, before, "NodeUnexpectedlyLost", |e| {
            e.event.node_name() == Some(v.as_str())
        })
        .unwrap_or_else(|| panic!("{v} reported lost\n{}", trail(&events)));
    }
    let (e, emergency) = find(&events, before, "EmergencyScaleUp", |_| true).expect("emergency");
    let Event::EmergencyScaleUp(up) = &emergency.event else {
        unreachable!()
    };
    assert_eq!(
        (up.lost_count, up.target_workers),
        (2, 3),
        "back to the minimum, counting a replacement already on its way once\n{}",
        trail(&events)
    );
    // Two replacements in all (`docker kill` signals first, so one may have been started for the
    // interruption before the losses were known), both Ready; exactly the minimum runs.
    let restored = lab.settled(e, 3..=3, SETTLE).await;
    let started: BTreeSet<String> = restored[before..]
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpStarted(s) => Some(s.nodes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        started.len(),
        2,
        "two workers created, no more\n{}",
        trail(&restored)
    );
    for n in &started {
        assert!(!victims.contains(n));
        find(&restored, before, "NodeReady", |r| {
            r.event.node_name() == Some(n.as_str())
        })
        .unwrap_or_else(|| panic!("{n} Ready\n{}", trail(&restored)));
    }
    let mut running = lab.running_workers();
    running.sort();
    let mut expected: Vec<String> = started.into_iter().collect();
    expected.push(workers[2].clone());
    expected.sort();
    assert_eq!(running, expected, "{}", trail(&restored));
    lab.assert_replay_identity().await;
}

/// Pod name and when a watch saw it deleted.
type Deletions = Arc<Mutex<Vec<(String, DateTime<Utc>)>>>;

/// `docker stop` sends SIGTERM: the events watcher reports an interruption, the NodeManager starts a
/// replacement first and moves the pods only once it is Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_stopped_workers_replacement_is_ready_before_its_pods_are_evicted() {
    let lab = Lab::start(LabOptions {
        min_nodes: 2,
        max_nodes: 4,
        // No scale-down while the test watches.
        underutilized_for: Duration::from_secs(600),
        ..LabOptions::default()
    })
    .await;
    let events = lab.settled(0, 2..=2, SETTLE).await;
    let original = ready_nodes(&events);
    lab.kubectl_apply(&deployment("web", 2));
    let pods = lab.wait_running("web", 2, Duration::from_secs(60)).await;
    let victim = pods[0].1.clone();
    let victim_pods: BTreeSet<String> = pods
        .iter()
        .filter(|(_, n)| *n == victim)
        .map(|(p, _)| p.clone())
        .collect();

    // When each of the victim's pods disappears, as a watch of the API server sees it.
    let client = autoscaler::kube::connect_kubeconfig(&lab.env.kubeconfig)
        .await
        .expect("kube client");
    let deleted: Deletions = Arc::default();
    let watch = {
        let deleted = deleted.clone();
        let api: Api<Pod> = Api::default_namespaced(client);
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            while let Some(ev) = stream.next().await {
                if let Ok(watcher::Event::Delete(p)) = ev {
                    let name = p.metadata.name.unwrap_or_default();
                    deleted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((name, Utc::now()));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = lab.events().await.len();

    let out = std::process::Command::new("docker")
        .args(["stop", "-t", "30", &victim])
        .output()
        .expect("docker stop");
    assert!(out.status.success(), "docker stop {victim}");

    // The pods end up Running elsewhere.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let now = lab.running_pods("web");
        if now.len() == 2 && now.iter().all(|(_, n)| *n != victim) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "web not moved off {victim}: {now:?}\n{}\n{}",
            trail(&lab.events().await),
            lab.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    watch.abort();
    let events = lab.events().await;

    let (n, notice) = find(&events, before, "NodeInterruptionNotice", |e| {
        e.event.node_name() == Some(victim.as_str())
    })
    .unwrap_or_else(|| panic!("an interruption notice for {victim}\n{}", trail(&events)));
    let (s, started) = find(&events, n, "ScaleUpStarted", |e| {
        e.causation_id == Some(notice.event_id)
    })
    .unwrap_or_else(|| panic!("a replacement started for the notice\n{}", trail(&events)));
    let Event::ScaleUpStarted(rep) = &started.event else {
        unreachable!()
    };
    let replacement = rep.nodes.first().cloned().expect("a replacement");
    assert!(!original.contains(&replacement));
    let (_, ready) = find(&events, s, "NodeReady", |e| {
        e.event.node_name() == Some(replacement.as_str())
    })
    .unwrap_or_else(|| panic!("{replacement} Ready\n{}", trail(&events)));

    let deleted = deleted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let first_eviction = deleted
        .iter()
        .filter(|(p, _)| victim_pods.contains(p))
        .map(|(_, t)| *t)
        .min()
        .unwrap_or_else(|| {
            panic!("{victim}'s pods {victim_pods:?} were never deleted: {deleted:?}")
        });
    assert!(
        ready.timestamp < first_eviction,
        "{replacement} Ready at {} but {victim}'s first pod went at {first_eviction}\n{}",
        ready.timestamp,
        trail(&events)
    );
    println!(
        "{replacement} Ready {} ms before {victim}'s first pod was evicted",
        (first_eviction - ready.timestamp).num_milliseconds()
    );
    // Once the victim is drained and removed, and the record agrees (the replacement and the other).
    lab.settled(s, 2..=2, SETTLE).await;
    lab.assert_replay_identity().await;
}

/// The warm pool end to end: a scaled-down worker is stopped and kept (`WarmPoolEntered`), outlives
/// `max_node_provision_time` without the StateSynchronizer taking it for an orphan, and the next
/// scale-up starts it under its own name; its agent registers anew and the pod runs there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_warm_worker_outlives_the_provision_time_and_is_the_next_scale_up() {
    let lab = Lab::start(LabOptions {
        min_nodes: 1,
        max_nodes: 3,
        warm_pool: 1,
        max_node_provision_time: Duration::from_secs(20),
        ..LabOptions::default()
    })
    .await;
    lab.settled(0, 1..=1, SETTLE).await;

    // Two pods of 700m on 1-CPU workers: a second worker.
    lab.kubectl_apply(&deployment("web", 2));
    lab.wait_running("web", 2, Duration::from_secs(90)).await;
    lab.settled(0, 2..=2, SETTLE).await;

    // The load goes: one worker is drained and kept stopped.
    lab.kubectl(&["delete", "deployment", "web"]);
    let events = lab
        .wait_for_events("a worker kept warm", SETTLE, |ev| {
            ev.iter().any(|e| e.event_type() == "WarmPoolEntered")
        })
        .await;
    let second = events
        .iter()
        .find_map(|e| match &e.event {
            Event::WarmPoolEntered(w) => Some(w.node_name.clone()),
            _ => None,
        })
        .expect("WarmPoolEntered");
    let warm_at = events.len();
    let (nodes, secrets) = nodes_and_secrets(&lab);
    assert!(
        !nodes.contains(&second) && !secrets.contains(&second),
        "{nodes:?} {secrets:?}"
    );
    assert!(
        lab.worker_containers()
            .iter()
            .any(|(n, state)| *n == second && state == "exited"),
        "{:?}",
        lab.worker_containers()
    );

    // Longer than `max_node_provision_time` (20 s), with observations: still kept.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let events = lab.events().await;
    assert!(
        !events[warm_at..]
            .iter()
            .any(|e| e.event.node_name() == Some(second.as_str())
                && e.event_type() != "ClusterObserved"),
        "the warm worker was touched:\n{}",
        trail(&events[warm_at..])
    );
    assert!(lab.worker_containers().iter().any(|(n, _)| *n == second));

    // The next scale-up starts it under its own name; its pod runs there.
    lab.kubectl_apply(&deployment("web", 2));
    let pods = lab.wait_running("web", 2, Duration::from_secs(90)).await;
    assert!(pods.iter().any(|(_, node)| *node == second), "{pods:?}");
    let events = lab.events().await;
    assert!(
        events[warm_at..].iter().any(|e| matches!(&e.event, Event::WarmPoolLeft(l) if l.node_name == second && l.reason == "started")),
        "{}",
        trail(&events[warm_at..])
    );
    let third = format!("{}3", lab.prefix);
    assert!(
        !events
            .iter()
            .any(|e| matches!(&e.event, Event::ScaleUpStarted(s) if s.nodes.contains(&third))),
        "a new name was used:\n{}",
        trail(&events[warm_at..])
    );
    lab.assert_replay_identity().await;
}

/// The `ScaleUpDecision`s of `reason`, as (stream index, target).
fn ups_of(events: &[Envelope], reason: &str) -> Vec<(usize, u32)> {
    events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match &e.event {
            Event::ScaleUpDecision(d) if d.reason == reason => Some((i, d.target_workers)),
            Event::AutoScaleUpToMinimum(d) if d.reason == reason => Some((i, d.target_workers)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_buffer_of_one_keeps_an_empty_worker_ready_and_refills_it() {
    let lab = Lab::start(LabOptions {
        min_nodes: 1,
        max_nodes: 4,
        buffer_nodes: 1,
        ..LabOptions::default()
    })
    .await;
    // The minimum's worker is empty: it is the spare one.
    lab.settled(0, 1..=1, SETTLE).await;
    assert!(ups_of(&lab.events().await, "capacity_buffer").is_empty());

    // A pod takes it: the buffer buys a spare ahead of demand.
    lab.kubectl_apply(&deployment("web", 1));
    lab.wait_running("web", 1, Duration::from_secs(60)).await;
    let events = lab
        .wait_for_events("a capacity_buffer scale-up to 2", SETTLE, |ev| {
            ups_of(ev, "capacity_buffer").iter().any(|(_, t)| *t == 2)
        })
        .await;
    let mark = events.len();
    lab.settled(mark, 2..=2, SETTLE).await;

    // The next pod runs on the spare worker at once (no create for it), and the buffer refills.
    let before = lab.running_workers();
    lab.kubectl(&["scale", "deployment", "web", "--replicas=2"]);
    let pods = lab.wait_running("web", 2, Duration::from_secs(30)).await;
    assert!(
        pods.iter().all(|(_, node)| before.contains(node)),
        "both pods on workers that were Ready before: {pods:?} {before:?}"
    );
    let events = lab
        .wait_for_events("a capacity_buffer scale-up to 3", SETTLE, |ev| {
            ups_of(ev, "capacity_buffer").iter().any(|(_, t)| *t == 3)
        })
        .await;
    let mark = events.len();
    lab.settled(mark, 3..=3, SETTLE).await;

    // It stays empty and Ready: nothing more is bought, nothing removed.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let events = lab.events().await;
    assert!(
        !events[mark..]
            .iter()
            .any(|e| matches!(e.event_type(), "ScaleDownDecision" | "ScaleUpDecision")),
        "{}",
        trail(&events[mark..])
    );
    assert_eq!(lab.running_workers().len(), 3);
    assert_eq!(
        ups_of(&events, "capacity_buffer").len(),
        2,
        "one decision per refill"
    );

    // The load goes: underused workers are removed down to the minimum, whose empty worker is
    // the spare one; the buffer keeps it (it does not hold more than it asks for).
    lab.kubectl(&["delete", "deployment", "web"]);
    let events = lab.settled(mark, 1..=1, SETTLE).await;
    assert_eq!(ups_of(&events, "capacity_buffer").len(), 2);
    lab.assert_replay_identity().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_schedule_window_raises_the_minimum_and_then_lowers_it() {
    // A window opening 20 s from now for 40 s (six cron fields: seconds first, UTC).
    let opens = Utc::now() + chrono::Duration::seconds(20);
    let cron = opens.format("%-S %-M %-H * * *").to_string();
    let lab = Lab::start(LabOptions {
        min_nodes: 1,
        max_nodes: 4,
        schedules: vec![(cron, Duration::from_secs(40), 3)],
        ..LabOptions::default()
    })
    .await;
    lab.settled(0, 1..=1, SETTLE).await;
    let events = lab
        .wait_for_events("the window opened", Duration::from_secs(60), |ev| {
            ev.iter()
                .any(|e| e.event_type() == "ScheduledMinimumStarted")
        })
        .await;
    let (at, started) = find(&events, 0, "ScheduledMinimumStarted", |_| true).expect("started");
    assert!(started.causation_id.is_none());
    assert!(
        (started.timestamp - opens).num_seconds().abs() <= 5,
        "published at {} for {opens}",
        started.timestamp
    );
    lab.settled(at, 3..=3, SETTLE).await;
    let events = lab.events().await;
    assert!(
        !ups_of(&events, "schedule").is_empty(),
        "{}",
        trail(&events[at..])
    );
    assert!(
        !events[at..]
            .iter()
            .any(|e| e.event_type() == "MinimumNodesViolation"),
        "a window is no violation:\n{}",
        trail(&events[at..])
    );

    // Closed: the cluster goes back to its configured minimum.
    let events = lab
        .wait_for_events("the window closed", Duration::from_secs(60), |ev| {
            ev.iter().any(|e| e.event_type() == "ScheduledMinimumEnded")
        })
        .await;
    let (end, _) = find(&events, 0, "ScheduledMinimumEnded", |_| true).expect("ended");
    assert!(
        !events[at..end]
            .iter()
            .any(|e| e.event_type() == "ScaleDownDecision"),
        "no scale-down inside the window:\n{}",
        trail(&events[at..end])
    );
    lab.settled(end, 1..=1, SETTLE).await;
    lab.assert_replay_identity().await;
}
