//! A pool on a second Docker engine, end to end: a real `dockerd` in a network namespace of its own
//! ([`SecondEngine`]), whose workers (host networking there) reach the lab's API server through a
//! forwarder on the namespace's veth. The pool scales up and down there; then the engine is
//! stopped with a worker on it, and the pods it ran are placed on the other pool, on the machine's
//! engine. The machine's own `docker0` bridge is checked intact at the end. The autoscaler reaches
//! the engine over SSH in the first scenario and over TCP with TLS in the second.

use std::net::SocketAddr;
use std::time::Duration;

use bus::Event;
use tests::second_engine::{docker0_intact, Forward, Reach, SecondEngine};
use tests::{deployment, find, Lab, LabDockerHost, LabOptions, LabPool};

/// What the config says the server is before the forwarder's port is known.
const PLACEHOLDER: &str = "http://k3s-url-of-the-edge-host";

fn edge_workers(lab: &Lab, engine: &SecondEngine) -> Vec<String> {
    lab.worker_containers_on(&engine.host())
        .into_iter()
        .filter(|(_, state)| state == "running")
        .map(|(n, _)| n)
        .collect()
}

/// Waits up to 90 s for `done`; panics with the trail.
async fn wait_until(lab: &Lab, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !done() {
        if std::time::Instant::now() > deadline {
            let events = lab.events().await;
            panic!(
                "{what}: not within 90 s\n{}\n{}",
                tests::trail(&events[events.len().saturating_sub(80)..]),
                lab.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Over TLS, neither side takes the other's word: a client certificate of another CA is refused by
/// the engine, an engine certificate of another CA by the client (and that error says why; the
/// engine's refusal comes after a TLS 1.3 handshake, as a connection closed).
async fn tls_strangers_are_turned_away(url: &str, certs: &bus::testing::TestCerts) {
    use autoscaler::docker::{connect_with, EngineAccess, EngineTls};
    let dir =
        std::env::temp_dir().join(format!("k3sa-strangers-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let stranger = bus::testing::TestCerts::make(&dir);
    let with = |ca: &std::path::Path, ours: &bus::testing::TestCerts| EngineAccess {
        tls: Some(EngineTls {
            ca: ca.to_path_buf(),
            cert: ours.client_cert.clone(),
            key: ours.client_key.clone(),
        }),
        ssh_key: None,
    };
    for (who, access, why) in [
        (
            "our certificate of another CA",
            with(&certs.ca, &stranger),
            "",
        ),
        (
            "the engine's certificate, of a CA we do not trust",
            with(&stranger.ca, certs),
            "certificate",
        ),
    ] {
        let err = connect_with(url, &access, Duration::from_secs(5))
            .await
            .map(|_| ())
            .expect_err(who);
        let text = err.to_string();
        assert!(text.contains(why), "{who}: {text}");
        eprintln!("TLS, {who}: {text}");
    }
    connect_with(url, &with(&certs.ca, certs), Duration::from_secs(5))
        .await
        .expect("the engine's own CA and client certificate");
    let _ = std::fs::remove_dir_all(&dir);
}

/// How the second engine goes away.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Away {
    /// `dockerd` stopped: it stops its containers, and its event stream says so. Reached over SSH.
    Stopped,
    /// Every process on the host killed at once: the engine just stops answering, and the Node
    /// goes NotReady when its heartbeats stop. Reached over TCP with TLS.
    PoweredOff,
}

impl Away {
    fn reach(self) -> Reach {
        match self {
            Away::Stopped => Reach::Ssh,
            Away::PoweredOff => Reach::Tls,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_pool_on_a_second_engine_scales_there_and_its_stopped_engine_is_replaced() {
    scenario(Away::Stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_pool_on_a_second_engine_whose_host_loses_power_is_replaced_on_the_other() {
    scenario(Away::PoweredOff).await;
}

async fn scenario(away: Away) {
    // The lab image first: the second engine gets a copy (it can pull nothing).
    let docker = autoscaler::docker::connect("", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("the end-to-end tests need the Docker engine: {e}"));
    autoscaler::docker::image::ensure_lab_image(
        &docker,
        &tests::autoscaler_binary(),
        "k3s-autoscaler-lab:e2e",
    )
    .await
    .expect("lab image");
    let mut engine = tokio::task::block_in_place(|| {
        SecondEngine::start_with("k3s-autoscaler-lab:e2e", away.reach())
    });

    if let Some(certs) = engine.certs() {
        tls_strangers_are_turned_away(&engine.url(), certs).await;
    }

    // Pods go to `edge` first (priority), to `general` when edge cannot take them.
    let mut lab = Lab::start(LabOptions {
        min_nodes: 1,
        max_nodes: 4,
        replicas: 0,
        expander: "priority".into(),
        docker_hosts: vec![LabDockerHost {
            name: "edge".into(),
            host: engine.url(),
            network: "host".into(),
            k3s_url: PLACEHOLDER.into(),
            tls: engine.certs().cloned(),
            ssh_key_file: engine.ssh_key(),
        }],
        pools: vec![
            LabPool {
                name: "general".into(),
                min_nodes: 1,
                max_nodes: 3,
                cpu: 1.0,
                memory: "1Gi".into(),
                ..LabPool::default()
            },
            LabPool {
                name: "edge".into(),
                min_nodes: 0,
                max_nodes: 2,
                cpu: 1.0,
                memory: "1Gi".into(),
                priority: 10,
                docker_host: Some("edge".into()),
                ..LabPool::default()
            },
        ],
        ..LabOptions::default()
    })
    .await;
    // The edge host's workers reach the lab server through the namespace's veth.
    let api: SocketAddr = lab
        .env
        .host_url
        .trim_start_matches("http://")
        .parse()
        .expect("the lab server's loopback address");
    let forward = Forward::start(SocketAddr::new(engine.gateway().into(), 0), api).await;
    let url = format!("http://{}", forward.local_addr());
    let config = std::fs::read_to_string(&lab.config).expect("config");
    std::fs::write(&lab.config, config.replace(PLACEHOLDER, &url)).expect("config");
    lab.spawn_replica(0, false);

    // The general pool's minimum, on the machine's engine.
    lab.wait_for_events("the minimum of 1 worker", Duration::from_secs(90), |ev| {
        find(ev, 0, "MinimumNodesRestored", |_| true).is_some()
    })
    .await;
    // The cluster's minimum may have been met on edge (the expander's first choice) before the
    // general pool's own: that worker is then one too many, and scaled down.
    wait_until(&lab, "no edge worker while nothing needs one", || {
        edge_workers(&lab, &engine).is_empty()
    })
    .await;

    // The general worker gets a pod of its own (700m of its 1 CPU), so the next pod needs a new
    // worker.
    lab.kubectl_apply(&deployment("base", 1));
    lab.wait_running("base", 1, Duration::from_secs(60)).await;
    // Scale up there: a pod the expander sends to edge runs on a worker of the second engine.
    lab.kubectl_apply(&deployment("web", 1));
    let pods = lab.wait_running("web", 1, Duration::from_secs(120)).await;
    let edge = edge_workers(&lab, &engine);
    assert_eq!(edge.len(), 1, "one edge worker: {edge:?}\n{}", lab.logs());
    assert_eq!(pods[0].1, edge[0], "the pod runs on the edge worker");
    assert!(
        !lab.worker_containers().iter().any(|(n, _)| n == &edge[0]),
        "the edge worker is not on the machine's engine"
    );
    // `status` names each worker's host.
    let status = std::process::Command::new(tests::autoscaler_binary())
        .arg("--config")
        .arg(&lab.config)
        .args(["status", "--json"])
        .output()
        .expect("autoscaler status");
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}\n{}",
            String::from_utf8_lossy(&status.stderr)
        )
    });
    let hosts: Vec<(String, String)> = doc["workers"]["docker"]
        .as_array()
        .expect("docker workers")
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap_or_default().to_string(),
                w["host"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        hosts.contains(&(edge[0].clone(), "edge".to_string())),
        "status: {hosts:?}"
    );

    // Scale down there: the pods go (the rule reads the cluster's average), the edge worker is
    // removed from the second engine; general keeps its minimum.
    lab.kubectl(&["scale", "deployment/web", "--replicas=0"]);
    lab.kubectl(&["scale", "deployment/base", "--replicas=0"]);
    let first = edge[0].clone();
    lab.wait_for_events("the edge worker removed", Duration::from_secs(120), |ev| {
        find(
            ev,
            0,
            "NodeRemoved",
            |e| matches!(&e.event, Event::NodeRemoved(r) if r.node_name == first),
        )
        .is_some()
    })
    .await;
    wait_until(&lab, "the edge worker's container gone", || {
        !lab.worker_containers_on(&engine.host())
            .iter()
            .any(|(n, _)| n == &first)
    })
    .await;

    // Up there again, then the engine goes away with the worker.
    lab.kubectl(&["scale", "deployment/base", "--replicas=1"]);
    lab.wait_running("base", 1, Duration::from_secs(60)).await;
    lab.kubectl(&["scale", "deployment/web", "--replicas=1"]);
    let pods = lab.wait_running("web", 1, Duration::from_secs(120)).await;
    let edge = edge_workers(&lab, &engine);
    assert_eq!(edge.len(), 1, "one edge worker: {edge:?}");
    assert_eq!(pods[0].1, edge[0]);
    let lost = edge[0].clone();
    tokio::task::block_in_place(|| match away {
        Away::Stopped => engine.stop(),
        Away::PoweredOff => engine.power_off(),
    });
    let stopped = std::time::Instant::now();

    // The pod is placed on the general pool, on the machine's engine.
    let mut moved = String::new();
    wait_until(&lab, "the pod placed on another worker", || {
        let running = lab.running_pods("web");
        match running.iter().find(|(_, n)| n != &lost) {
            Some((_, node)) => {
                moved = node.clone();
                true
            }
            None => false,
        }
    })
    .await;
    assert!(
        moved.contains("general"),
        "the pod moved to a general worker: {moved}"
    );
    assert!(lab
        .worker_containers()
        .iter()
        .any(|(n, s)| n == &moved && s == "running"));
    let events = lab.events().await;
    // The lost worker is on the stream, once, and no create on the dead engine went through.
    let lost_reports: Vec<_> = events
        .iter()
        .filter(|e| matches!(&e.event, Event::NodeUnexpectedlyLost(l) if l.node_name == lost))
        .collect();
    assert_eq!(lost_reports.len(), 1, "{}", tests::trail(&events));
    eprintln!(
        "edge engine {away:?}: the pod ran on {moved} {:.1?} later; {lost} reported lost once: {}",
        stopped.elapsed(),
        tests::trail(
            &lost_reports
                .iter()
                .map(|e| (*e).clone())
                .collect::<Vec<_>>()
        )
    );
    // The dead engine's pool backs off: its failed creates are said a few times, not per report.
    let failures = events
        .iter()
        .filter(|e| matches!(&e.event, Event::ScalingActionFailed(_)))
        .count();
    assert!(
        failures <= 3,
        "{failures} failures\n{}",
        tests::trail(&events)
    );
    eprintln!("edge engine {away:?}: {failures} ScalingActionFailed on the stream");
    let observed_down = events.iter().any(|e| {
        matches!(&e.event, Event::ClusterObserved(o) if o.unreachable.iter().any(|h| h.host == "edge"))
    });
    assert!(
        observed_down,
        "an observation names the edge host as unreachable"
    );
    if away == Away::PoweredOff {
        // Nobody saw the containers stop: the StateSynchronizer judged the worker lost with its
        // host once its Node was NotReady.
        assert!(
            matches!(&lost_reports[0].event, Event::NodeUnexpectedlyLost(l) if l.cause == "host_unreachable"),
            "{}",
            tests::trail(&events)
        );
    }
    // The recorded config reproduces every decision, the lost host's included.
    lab.assert_replay_identity().await;
    drop(forward);
    drop(lab);
    drop(engine);
    docker0_intact().expect("the machine's docker0 after the second engine");
}
