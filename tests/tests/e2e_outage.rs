//! A 60 s Docker engine outage while a pod is pending, end to end: the autoscaler reaches the real
//! engine through an [`EngineProxy`] the test takes down (the machine's engine, and the workers on
//! it, keep running). The pool backs off instead of deciding anew on every pending-pods report, the
//! stream says why a few times at most, no worker name is used up by creates that never reached the
//! engine, and the scale-up finishes soon after the engine is back.

use std::time::Duration;

use autoscaler::docker::proxy::EngineProxy;
use bus::event::ScalingAction;
use bus::{Envelope, Event};
use chrono::{DateTime, Utc};
use tests::{deployment, find, trail, Lab, LabOptions};

/// How long the engine is away.
const OUTAGE: Duration = Duration::from_secs(60);

fn after(events: &[Envelope], t: DateTime<Utc>) -> Vec<&Envelope> {
    events.iter().filter(|e| e.timestamp >= t).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_docker_outage_with_a_pending_pod_backs_off_and_recovers_under_the_same_name() {
    let socket = std::env::temp_dir().join(format!(
        "k3s-autoscaler-engine-{}.sock",
        uuid::Uuid::new_v4().simple()
    ));
    let mut proxy = EngineProxy::start(socket);
    let lab = Lab::start(LabOptions {
        docker_host: proxy.uri(),
        ..LabOptions::default()
    })
    .await;
    // The two minimum workers, Ready and agreed on.
    lab.wait_for_events("the minimum of 2 workers", Duration::from_secs(90), |ev| {
        find(ev, 0, "MinimumNodesRestored", |_| true).is_some_and(|(r, _)| {
            find(ev, r, "ClusterStateSynced", |e| {
                matches!(&e.event, Event::ClusterStateSynced(s) if s.db_workers == 2 && s.docker_containers == 2)
            })
            .is_some()
        })
    })
    .await;

    // The engine goes away; then three pods of 700m on 1-CPU workers: two run, one is pending.
    proxy.down();
    let cut = Utc::now();
    lab.kubectl_apply(&deployment("web", 3));
    lab.wait_for_events(
        "the pending pod's first failed create",
        Duration::from_secs(30),
        |ev| {
            after(ev, cut).iter().any(|e| {
                matches!(&e.event, Event::ScalingActionFailed(f) if f.action == ScalingAction::ScaleUp)
            })
        },
    )
    .await;
    // `status` reads the record from the stream: the pool's backoff is there, though the engine
    // is not.
    let status = std::process::Command::new(tests::autoscaler_binary())
        .arg("--config")
        .arg(&lab.config)
        .arg("status")
        .env_remove("REDIS_URL")
        .env_remove("KUBECONFIG")
        .output()
        .expect("autoscaler status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("backoff  pool default provider_unavailable: 1 failed create(s)"),
        "status during the outage:\n{text}\n{}",
        String::from_utf8_lossy(&status.stderr)
    );
    tokio::time::sleep(OUTAGE).await;
    proxy.up();
    let back = Utc::now();

    let events = lab
        .wait_for_events(
            "the scale-up to finish within 30 s of the engine's return",
            Duration::from_secs(30),
            |ev| {
                after(ev, back).iter().any(|e| {
                    matches!(&e.event, Event::ScalingActionCompleted(c) if c.action == ScalingAction::ScaleUp)
                })
            },
        )
        .await;
    let during: Vec<&Envelope> = events
        .iter()
        .filter(|e| e.timestamp >= cut && e.timestamp < back)
        .collect();
    let said: Vec<&&Envelope> = during
        .iter()
        .filter(|e| {
            matches!(
                &e.event,
                Event::ScalingActionFailed(_) | Event::ScaleUpBlocked(_)
            )
        })
        .collect();
    let owned: Vec<Envelope> = during.iter().map(|e| (*e).clone()).collect();
    assert!(
        said.len() <= 5,
        "{} failed or blocked entries during the outage:\n{}",
        said.len(),
        trail(&owned)
    );
    assert!(
        during.iter().any(
            |e| matches!(&e.event, Event::ScaleUpBlocked(b) if b.reason == "provider_unavailable")
        ),
        "the outage is said as provider_unavailable:\n{}",
        trail(&owned)
    );
    let completed = after(&events, back)
        .into_iter()
        .find(|e| matches!(&e.event, Event::ScalingActionCompleted(c) if c.action == ScalingAction::ScaleUp))
        .map(|e| (e.timestamp - back).num_milliseconds());
    println!(
        "outage {}s: {} failed/blocked entries, scale-up completed {completed:?} ms after the engine's return\n{}",
        OUTAGE.as_secs(),
        said.len(),
        trail(&owned)
    );
    let decisions = during
        .iter()
        .filter(|e| e.event_type() == "ScaleUpDecision")
        .count();
    assert!(decisions <= 2, "{decisions} decisions:\n{}", trail(&owned));

    // One name for the whole scale-up: the failed creates never reached the engine.
    let mut names: Vec<String> = after(&events, cut)
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpStarted(s) => Some(s.nodes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        [format!("{}3", lab.prefix)],
        "{}",
        trail(&events[events.len().saturating_sub(60)..])
    );

    // And the pods run.
    lab.wait_running("web", 3, Duration::from_secs(60)).await;
    lab.assert_replay_identity().await;
}
