//! Worker start-up on the real engine: create + start of a new worker vs start of a warm (stopped)
//! one, at the pool level (what a scale-up waits for) and as the raw engine calls.
//!
//! `cargo bench -p autoscaler --bench docker_pool` (runs: `BENCH_RUNS`, default 12). Prints p50, p90,
//! min and max in milliseconds. Everything it creates carries a test label and is removed at the end,
//! also on panic.

#[path = "../tests/docker_support/mod.rs"]
mod docker_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use autoscaler::docker::{CreateWorker, DockerWorkerPool, PoolConfig};
use bollard::query_parameters::{StartContainerOptions, StopContainerOptions};
use docker_support::TestEnv;

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{what:<44} n={:<3} p50={:>7.1} ms  p90={:>7.1} ms  min={:>7.1} ms  max={:>7.1} ms",
        samples.len(),
        ms(pick(0.5)),
        ms(pick(0.9)),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
}

async fn run(runs: usize) {
    let env = TestEnv::new("bench").await;
    let config = PoolConfig {
        warm_pool: runs as u32,
        ..env.config()
    };
    let pool = DockerWorkerPool::new(env.docker.clone(), config.clone());
    let req = |i: usize| CreateWorker {
        name: Some(format!("{}{}", config.name_prefix, i + 1)),
        requested_by: format!("bench-{i}"),
        extra_labels: BTreeMap::new(),
        pool: None,
    };

    // Warm-up: the first container on a fresh image pays for layer set-up.
    let w = pool.create(&req(1000)).await.expect("warm-up create");
    pool.remove_worker(&w.name).await.expect("warm-up remove");

    let mut create_start = Vec::with_capacity(runs);
    for i in 0..runs {
        let t = Instant::now();
        pool.create(&req(i)).await.expect("create");
        create_start.push(t.elapsed());
    }
    let mut warm_start = Vec::with_capacity(runs);
    for i in 0..runs {
        let name = req(i).name.unwrap_or_default();
        pool.stop_worker(&name).await.expect("stop");
        let t = Instant::now();
        pool.start_worker(&name).await.expect("warm start");
        warm_start.push(t.elapsed());
    }

    // The raw engine calls, without the pool's volume, inspect and bookkeeping.
    let mut raw_create_start = Vec::with_capacity(runs);
    let mut raw_start = Vec::with_capacity(runs);
    for i in 0..runs {
        let name = format!("{}raw{i}", config.name_prefix);
        let body = pool.container_body(&name, &req(i)).expect("body");
        let t = Instant::now();
        env.docker
            .create_container(
                Some(bollard::query_parameters::CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .expect("raw create");
        env.docker
            .start_container(&name, None::<StartContainerOptions>)
            .await
            .expect("raw start");
        raw_create_start.push(t.elapsed());
        env.docker
            .stop_container(
                &name,
                Some(StopContainerOptions {
                    t: Some(5),
                    signal: None,
                }),
            )
            .await
            .expect("raw stop");
        let t = Instant::now();
        env.docker
            .start_container(&name, None::<StartContainerOptions>)
            .await
            .expect("raw warm start");
        raw_start.push(t.elapsed());
    }

    println!("docker_pool: worker start-up on the local engine ({runs} runs each)");
    report("pool: create + start (new worker)", &mut create_start);
    report("pool: start of a warm (stopped) worker", &mut warm_start);
    report("engine: create + start", &mut raw_create_start);
    report("engine: start of a stopped container", &mut raw_start);

    for i in 0..runs {
        let name = req(i).name.unwrap_or_default();
        pool.remove_worker(&name).await.expect("remove");
        // The raw ones carry the pool's labels; removing them also removes the state volumes the
        // engine created for them on the fly (those have no test label for the guard to find).
        let raw = format!("{}raw{i}", config.name_prefix);
        pool.remove_worker(&raw).await.expect("remove raw");
    }
    drop(env);
}

fn main() {
    // `cargo bench` passes `--bench`; there are no other options.
    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12usize)
        .max(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(runs));
}
