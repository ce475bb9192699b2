//! The what-if replay of a long recorded history beside a bare read of the same entries.
//!
//! `cargo bench -p autoscaler --bench replay` (sizes: `BENCH_EVENTS`, default `200000,1000000`).
//! A real redis-server gets a synthetic history written by the stream contract (the handlers'
//! simulation of 3 workers: a metrics sample every 15 s with per-node figures, the cluster
//! observation every minute, a burst of pending pods and a quiet spell every 2 hours, and what the
//! handlers decided on them). Each measurement runs in a child process of its own, so its peak RSS
//! (`VmHWM`) is its own:
//! - `read`: the entries paged through (`XRANGE … COUNT 512`), as `events replay` reads them;
//! - `decode`: the same, each entry decoded into an event;
//! - `what-if`: the same, through `handlers::replay::WhatIf` under the recorded policy, as
//!   `autoscaler events replay --what-if` does it;
//! - and, for reference, `redis-cli XRANGE s - + > /dev/null` (one reply of everything).

use std::process::Command;
use std::time::{Duration, Instant};

use autoscaler::archive::History;
use bus::event::{MetricsSampled, NodeUsage, PendingPodsDetected};
use bus::stream_id::StreamId;
use bus::testing::RedisServer;
use chrono::{DateTime, Utc};
use handlers::simulate::Simulation;
use handlers::{Handler, Policy};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STREAM: &str = "autoscaler_events";

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T00:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn sample(workers: u32, cpu: f64) -> MetricsSampled {
    let nodes: Vec<NodeUsage> = (1..=workers)
        .map(|i| NodeUsage {
            node_name: format!("k3s-worker-{i}"),
            cpu: cpu + f64::from(i),
            memory: cpu * 0.8 + f64::from(i),
        })
        .collect();
    MetricsSampled {
        workers,
        cpu_avg: cpu + 2.0,
        memory_avg: cpu * 0.8 + 2.0,
        source: "pod_requests".into(),
        nodes,
    }
}

/// Writes about `n` entries of a simulated history to the stream.
async fn write_history(server: &RedisServer, n: usize) -> (usize, f64) {
    let mut config = server.config(STREAM);
    config.max_len = n * 2;
    let bus = bus::connect(config).await.expect("connect");
    let publisher = bus.publisher();
    let mut sim = Simulation::new(Policy::default(), start()).with_workers(3);
    let mut written = 0;
    let mut step = 0u64;
    while written < n {
        sim.advance(Duration::from_secs(15));
        step += 1;
        // A 2-hour cycle: steady load, a burst of pending pods, then a quiet spell.
        let phase = step % 480;
        let cpu = if phase >= 400 { 8.0 } else { 45.0 };
        let w = sim.model.current_workers();
        sim.observe("metrics_collector", sample(w, cpu));
        if step.is_multiple_of(4) {
            sim.observe_cluster();
        }
        if phase == 100 {
            sim.observe(
                "pending_pods_watcher",
                PendingPodsDetected {
                    pending_count: 2,
                    waiting_time: 5.0,
                    affected_deployments: vec!["web".into()],
                    pods: Vec::new(),
                },
            );
        }
        if phase == 104 {
            sim.observe(
                "pending_pods_watcher",
                PendingPodsDetected {
                    pending_count: 0,
                    waiting_time: 0.0,
                    affected_deployments: Vec::new(),
                    pods: Vec::new(),
                },
            );
        }
        if sim.log.len() >= 2048 {
            let batch: Vec<_> = sim.log.drain(..).collect();
            written += batch.len();
            publisher.publish_batch(&batch).await.expect("XADD");
        }
    }
    let batch: Vec<_> = sim.log.drain(..).collect();
    written += batch.len();
    publisher.publish_batch(&batch).await.expect("XADD");
    (written, (sim.now - start()).num_minutes() as f64 / 1440.0)
}

/// The peak resident set of this process, in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One measurement, in this (child) process: prints `entries seconds peak_mb`.
async fn child(mode: &str, url: &str) {
    let bus = bus::connect(bus::BusConfig::new(url, STREAM))
        .await
        .expect("connect");
    let policy = Policy::default();
    let handlers = Handler::ALL;
    let began = Instant::now();
    let mut history = History::new(None, Some(bus.audit()), StreamId { ms: 0, seq: 0 }, None);
    let mut replay = handlers::replay::WhatIf::new(&policy, &handlers);
    let mut n = 0usize;
    let mut bytes = 0usize;
    // The time spent on the pages (decoding, replaying; the what-if decodes on its reader task),
    // apart from waiting for them.
    let mut busy = Duration::ZERO;
    if mode == "what-if" {
        // As `events replay --what-if` does it: read and decoded a couple of pages ahead on a
        // task of their own, beside the replay.
        let mut pages = history.decoded(2, |_| {});
        while let Some(page) = pages.recv().await {
            let page = page.expect("XRANGE");
            n += page.len();
            let t = Instant::now();
            for e in page {
                replay.push(e);
            }
            busy += t.elapsed();
        }
    } else {
        while let Some(page) = history.next_page().await.expect("XRANGE") {
            n += page.len();
            let t = Instant::now();
            match mode {
                "read" => bytes += page.iter().map(|e| e.fields.len()).sum::<usize>(),
                _ => bytes += page.iter().filter_map(|e| e.decode().ok()).count(),
            }
            busy += t.elapsed();
        }
    }
    let t = Instant::now();
    let report = replay.finish();
    busy += t.elapsed();
    let secs = began.elapsed().as_secs_f64();
    // The work is used, so none of it is optimised away.
    let used = bytes + report.pairs.len();
    println!(
        "{n} {secs} {} {used} {} {} {}",
        peak_rss_mb(),
        report.decisions_changed,
        report.recorded.decisions,
        busy.as_secs_f64()
    );
}

/// `BENCH_PLOT=FILE`: the first day replayed under a minimum of 4 workers and a 10-minute
/// underutilisation wait, drawn (the README's picture).
async fn plot(url: &str, file: &str) {
    let bus = bus::connect(bus::BusConfig::new(url, STREAM))
        .await
        .expect("connect");
    let mut policy = Policy::default();
    policy.limits.min_nodes = 4;
    policy.scaling.underutilized_for = Duration::from_secs(600);
    let handlers = Handler::ALL;
    // The entries were all written just now: the day is told by their timestamps.
    let end = start() + chrono::Duration::hours(24);
    let mut history = History::new(None, Some(bus.audit()), StreamId { ms: 0, seq: 0 }, None);
    let mut replay = handlers::replay::WhatIf::new(&policy, &handlers);
    'pages: while let Some(page) = history.next_page().await.expect("XRANGE") {
        for e in page.iter().filter_map(|e| e.decode().ok()) {
            if e.timestamp > end {
                break 'pages;
            }
            replay.push(e);
        }
    }
    let report = replay.finish();
    autoscaler::cli::plot::write(&report, std::path::Path::new(file)).expect("the plot");
    println!("plot of the first day under min_nodes 4: {file}");
    print!(
        "{}",
        report
            .render()
            .lines()
            .rev()
            .take(7)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
}

struct Measured {
    entries: usize,
    secs: f64,
    peak_mb: f64,
    changed: usize,
    decisions: usize,
    /// Of `secs`, the time spent on the pages rather than waiting for them.
    busy: f64,
}

fn measure(mode: &str, url: &str) -> Measured {
    let exe = std::env::current_exe().expect("the bench binary");
    let out = Command::new(exe)
        .args(["--child", mode, url])
        .output()
        .expect("run the child");
    assert!(
        out.status.success(),
        "{mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    let num = |i: usize| {
        f.get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Measured {
        entries: num(0) as usize,
        secs: num(1),
        peak_mb: num(2),
        changed: num(4) as usize,
        decisions: num(5) as usize,
        busy: num(6),
    }
}

fn redis_cli_read(server: &RedisServer) -> Option<f64> {
    let began = Instant::now();
    let out = Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "XRANGE", STREAM, "-", "+"])
        .stdout(std::process::Stdio::null())
        .status()
        .ok()?;
    out.success().then(|| began.elapsed().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let (mode, url) = (&args[i + 1], &args[i + 2]);
        rt.block_on(child(mode, url));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let sizes: Vec<usize> = std::env::var("BENCH_EVENTS")
        .unwrap_or_else(|_| "200000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for n in sizes {
        let server = RedisServer::start();
        let began = Instant::now();
        let (written, days) = rt.block_on(write_history(&server, n));
        println!(
            "\n{written} entries written in {:.1} s (a simulated {days:.1} days of 3 workers)",
            began.elapsed().as_secs_f64(),
        );
        let url = server.url();
        let row = |what: &str, m: &Measured, base: f64| {
            println!(
                "{what:<34} {:>8} entries {:>7.2} s {:>9.0} events/s  peak RSS {:>6.1} MB  {:>5.2}x the read  ({:.2} s on the pages)",
                m.entries,
                m.secs,
                m.entries as f64 / m.secs,
                m.peak_mb,
                m.secs / base,
                m.busy
            );
        };
        let read = measure("read", &url);
        row("bare read (XRANGE COUNT 512)", &read, read.secs);
        let decode = measure("decode", &url);
        row("read + decode", &decode, read.secs);
        let what_if = measure("what-if", &url);
        row("what-if replay (recorded policy)", &what_if, read.secs);
        println!(
            "{:<34} {} decisions recorded, {} changed",
            "  identity", what_if.decisions, what_if.changed
        );
        if let Ok(file) = std::env::var("BENCH_PLOT") {
            rt.block_on(plot(&url, &file));
        }
        if let Some(secs) = redis_cli_read(&server) {
            println!(
                "{:<34} {:>8} entries {secs:>7.2} s {:>9.0} events/s  (one reply, for reference)",
                "redis-cli XRANGE - + > /dev/null",
                written,
                written as f64 / secs
            );
        }
    }
}
