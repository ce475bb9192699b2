//! Capacity that is ready before it is needed: an unschedulable pod → the pod Running, RUNS times
//! each with a cold create, a warm start and a buffer worker, p50/p99 side by side in one run.
//!
//! `cargo bench -p tests --bench capacity` (add `--profile dev` to reuse the test build). Real Redis,
//! real Docker, the lab cluster, `autoscaler run`:
//! - **cold**: a lab with a warm pool of RUNS + 1; the minimum's worker runs a filler pod, and each measured
//!   pod (700m of a 1-CPU worker) needs a new worker, created as a new container;
//! - **warm**: the same lab after its pods are deleted: the scale-downs keep the RUNS workers stopped
//!   in the warm pool, and each measured pod's worker is one of them, started under its own name;
//! - **buffer**: a lab with `workers.buffer: {nodes: 1}`: each measured pod lands on the spare Ready
//!   worker, and the next run waits until the buffer has refilled.
//!
//! The clock starts as the pod's create request leaves, and stops when the API shows it Running
//! (polled every 20 ms through the kube client).

use std::time::{Duration, Instant};

use bus::Event;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use tests::{bench_pod, percentile, Lab, LabOptions};

const RUNS: usize = 20;

async fn pods_api(lab: &Lab) -> Api<Pod> {
    let client = autoscaler::kube::connect_kubeconfig(&lab.env.kubeconfig)
        .await
        .expect("a kube client for the lab");
    Api::default_namespaced(client)
}

/// Creates pod `name` and returns the seconds until it is Running.
async fn time_to_running(pods: &Api<Pod>, name: &str) -> f64 {
    let manifest: Pod = serde_yaml::from_str(&bench_pod(name)).expect("pod manifest");
    let clock = Instant::now();
    pods.create(&PostParams::default(), &manifest)
        .await
        .expect("create the pod");
    loop {
        let running = pods
            .get(name)
            .await
            .ok()
            .and_then(|p| p.status?.phase)
            .is_some_and(|phase| phase == "Running");
        if running {
            return clock.elapsed().as_secs_f64();
        }
        assert!(
            clock.elapsed() < Duration::from_secs(120),
            "{name} not Running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a lab, waits for its minimum worker and puts the filler pod on it.
async fn lab_with_filler(options: LabOptions) -> (Lab, Api<Pod>) {
    let lab = Lab::start(options).await;
    lab.settled(0, 1..=1, Duration::from_secs(90)).await;
    let pods = pods_api(&lab).await;
    time_to_running(&pods, "filler").await;
    (lab, pods)
}

/// A run slower than this prints the events it saw.
const SLOW: f64 = 10.0;

/// The worker names the NodeManager asked for (warm starts keep theirs).
fn named(events: &[bus::Envelope]) -> usize {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpStarted(s) => Some(s.nodes.clone()),
            _ => None,
        })
        .flatten()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

fn in_order(runs: &[f64]) -> String {
    runs.iter()
        .map(|t| format!("{t:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn count(events: &[bus::Envelope], ty: &str) -> usize {
    events.iter().filter(|e| e.event_type() == ty).count()
}

fn summary(label: &str, mut runs: Vec<f64>) -> String {
    runs.sort_by(f64::total_cmp);
    format!(
        "  {label:<7} p50 {:>7.3} s   p99 {:>7.3} s   min {:>7.3} s   max {:>7.3} s",
        percentile(&runs, 50.0),
        percentile(&runs, 99.0),
        runs.first().copied().unwrap_or(f64::NAN),
        runs.last().copied().unwrap_or(f64::NAN),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Cold, then warm, in one lab. One cold pod more than measured: after the load goes, the
    // scale-downs stop at two workers (the filler's and an empty one: one fewer would cross
    // `cpu_low` on average), so an unmeasured pod takes the empty one before the warm runs.
    let (lab, pods) = lab_with_filler(LabOptions {
        min_nodes: 1,
        max_nodes: RUNS as u32 + 2,
        warm_pool: RUNS as u32 + 1,
        ..LabOptions::default()
    })
    .await;
    let mut cold = Vec::new();
    for run in 0..=RUNS {
        let from = lab.events().await.len();
        let t = time_to_running(&pods, &format!("cold-{run}")).await;
        if t > SLOW {
            let events = lab.events().await;
            eprintln!(
                "cold-{run} took {t:.3} s:\n{}",
                tests::trail(&events[from..])
            );
        }
        if run < RUNS {
            cold.push(t);
        }
    }
    let events = lab.events().await;
    let created = named(&events);
    let warm_left = count(&events, "WarmPoolLeft");
    assert_eq!(
        warm_left, 0,
        "no warm worker yet: every cold run created one"
    );

    // The load goes: the measured workers are drained and kept stopped.
    for run in 0..=RUNS {
        pods.delete(
            &format!("cold-{run}"),
            &DeleteParams::default().grace_period(0),
        )
        .await
        .expect("delete a pod");
    }
    lab.wait_for_events(
        "the measured workers kept warm",
        Duration::from_secs(900),
        |ev| count(ev, "WarmPoolEntered") >= RUNS,
    )
    .await;
    let mark = lab.events().await.len();
    lab.settled(mark, 2..=2, Duration::from_secs(120)).await;
    time_to_running(&pods, "absorber").await;
    let mut warm = Vec::new();
    for run in 0..RUNS {
        warm.push(time_to_running(&pods, &format!("warm-{run}")).await);
    }
    let events = lab.events().await;
    let started_warm = count(&events, "WarmPoolLeft");
    let created_after = named(&events);
    drop(lab);

    // A buffer of one spare worker.
    let (lab, pods) = lab_with_filler(LabOptions {
        min_nodes: 1,
        max_nodes: RUNS as u32 + 2,
        buffer_nodes: 1,
        underutilized_for: Duration::from_secs(3600),
        ..LabOptions::default()
    })
    .await;
    let mut buffer = Vec::new();
    let mut landed_on_spare = 0;
    for run in 0..RUNS {
        // The spare worker is Ready (the buffer has refilled): 1 filler + `run` pods + 1 spare.
        let workers = run as u32 + 2;
        lab.settled(0, workers..=workers, Duration::from_secs(90))
            .await;
        let before = lab.running_workers();
        let name = format!("buffer-{run}");
        buffer.push(time_to_running(&pods, &name).await);
        let node = pods
            .get(&name)
            .await
            .ok()
            .and_then(|p| p.spec?.node_name)
            .unwrap_or_default();
        landed_on_spare += usize::from(before.contains(&node));
    }
    let events = lab.events().await;
    let refills = events
        .iter()
        .filter(|e| matches!(&e.event, Event::ScaleUpDecision(d) if d.reason == "capacity_buffer"))
        .count();
    drop(lab);

    let (cold_runs, warm_runs, buffer_runs) = (cold.clone(), warm.clone(), buffer.clone());
    println!("unschedulable pod -> pod Running, {RUNS} runs each (lab workers: 1 CPU, pods 700m)");
    println!("{}", summary("cold", cold));
    println!("{}", summary("warm", warm));
    println!("{}", summary("buffer", buffer));
    println!(
        "  cold: {created} worker names (the minimum's included), no warm start; warm runs: {started_warm} warm starts, {} new names",
        created_after - created
    );
    println!("  each run, in order: cold {}", in_order(&cold_runs));
    println!("                      warm {}", in_order(&warm_runs));
    println!("                      buffer {}", in_order(&buffer_runs));
    println!(
        "  buffer: {landed_on_spare} of {RUNS} pods ran on a worker that was Ready before they were created; {refills} capacity_buffer decisions"
    );
}
