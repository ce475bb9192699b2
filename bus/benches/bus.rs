//! `cargo bench -p bus`: the bus against a real redis-server, in one run:
//! - the raw pipelined XADD rate of `redis-benchmark -P 32` on the same server (the ceiling);
//! - the bus's publish rate: one event per call (sequential, and 32 callers), and batches of 100;
//! - end-to-end rate: publish → handler → ack, one group, 4 consumers;
//! - publish → handler latency p50/p99 at a steady 1,000 events/s for 5 s.
//!
//! Targets: end-to-end ≥ 25 % of the raw pipelined XADD rate; p99 ≤ 2 ms.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus::testing::RedisServer;
use bus::{handler_fn, BusConfig, Delivery, Envelope, Event, Metadata};
use hdrhistogram::Histogram;
use serde_json::json;

/// The allocator the `autoscaler` binary runs with, so the client-side figures are the binary's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const E2E_EVENTS: u64 = 100_000;
const CONSUMERS: usize = 4;
/// Publishing tasks of the end-to-end run (batches of 100 each, on the shared multiplexed connection).
const PUBLISHERS: usize = 2;
/// Consumers of the latency run: one handler's group as it runs in production (one replica).
const LATENCY_CONSUMERS: usize = 1;

fn event(i: u64) -> Envelope {
    let data = json!({"workers": 3, "cpu_avg": 41.5, "memory_avg": 37.25, "source": "docker_stats",
                      "nodes": [{"node_name": format!("k3s-worker-{}", i % 8), "cpu": 41.5, "memory": 37.25}]});
    let e = Event::from_value("MetricsSampled", data).expect("sample event");
    Envelope::root("metrics_collector", e, Metadata::new("bench", "local"))
}

fn config(server: &RedisServer, stream: &str) -> BusConfig {
    let mut c = BusConfig::new(server.url(), stream);
    c.max_len = 1_000_000;
    // Overridable for experiments: BUS_BENCH_BATCH, BUS_BENCH_CONCURRENCY.
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    c.batch_size = env("BUS_BENCH_BATCH", 256);
    c.concurrency = env("BUS_BENCH_CONCURRENCY", 256);
    c.block = Duration::from_secs(2);
    c
}

/// `redis-benchmark -P 32 -n 200000 -q XADD <stream> [args…] * <fields…>`: entries/s.
fn raw_xadd_rate(port: u16, stream: &str, fields: &[String]) -> Option<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-P", "32", "-n", "200000", "-q"])
        .args(["XADD", stream, "*"])
        .args(fields)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            eprintln!("redis-benchmark not runnable ({e}): apt-get install -y redis-tools");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // `-q` rewrites one line with \r; the last piece holds the final figure.
    let last = text
        .split(['\r', '\n'])
        .rev()
        .find(|l| l.contains("requests per second"))?;
    let rate = last
        .rsplit(": ")
        .next()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(rate)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let server = RedisServer::start();
    println!(
        "bus benchmark against redis-server on 127.0.0.1:{}",
        server.port()
    );

    let raw = raw_xadd_rate(server.port(), "benchstream", &["f".into(), "v".into()]);
    match raw {
        Some(r) => println!("raw XADD, redis-benchmark -P 32 -n 200000:      {r:>10.0} entries/s"),
        None => println!("raw XADD: redis-benchmark output not understood"),
    }
    // The same, with a real entry: the 9 fields of an event (~400 bytes) instead of `f v`.
    let fields: Vec<String> = event(0)
        .to_fields()
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect();
    let raw_full = raw_xadd_rate(server.port(), "benchstream_full", &fields);
    if let Some(r) = raw_full {
        println!("raw XADD of a real 9-field event entry, same flags: {r:>10.0} entries/s");
    }

    // `BUS_BENCH=e2e` runs only the end-to-end parts; `BUS_BENCH=bus-e2e` only the bus's (for profiling).
    let part = std::env::var("BUS_BENCH").unwrap_or_default();
    let only_e2e = part == "e2e" || part == "bus-e2e";

    if !only_e2e {
        publish_rates(&server).await;
    }
    let bare = if part == "bus-e2e" {
        None
    } else {
        bare_redis(&server, raw).await
    };
    end_to_end(&server, raw, raw_full, bare).await;
    if !only_e2e {
        latency(&server).await;
    }
}

async fn publish_rates(server: &RedisServer) {
    let bus = bus::connect(config(server, "bench_publish"))
        .await
        .expect("connect");
    let p = bus.publisher();
    let events: Vec<Envelope> = (0..20_000).map(event).collect();
    let t = Instant::now();
    for e in &events {
        p.publish(e).await.expect("publish");
    }
    let single = events.len() as f64 / t.elapsed().as_secs_f64();
    println!("bus publish, one call at a time:                 {single:>10.0} events/s");

    let t = Instant::now();
    let mut tasks = Vec::new();
    for chunk in events.chunks(events.len() / 32) {
        let (p, chunk) = (p.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for e in &chunk {
                p.publish(e).await.expect("publish");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let concurrent = events.len() as f64 / t.elapsed().as_secs_f64();
    println!("bus publish, one event per call, 32 callers:     {concurrent:>10.0} events/s");

    let batch_events: Vec<Envelope> = (0..200_000).map(event).collect();
    let t = Instant::now();
    for chunk in batch_events.chunks(100) {
        p.publish_batch(chunk).await.expect("publish_batch");
    }
    let batched = batch_events.len() as f64 / t.elapsed().as_secs_f64();
    println!("bus publish_batch, 100 per batch:                {batched:>10.0} events/s");
    drop(batch_events);
}

/// The end-to-end run's work without the bus: the same entries, encoded before the clock starts, XADDed
/// in pipelines of 100 by 2 tasks; 4 consumers each looping XREADGROUP COUNT 256 BLOCK + XACK of the ids,
/// nothing decoded but the ids, no handler. What redis-rs and the server alone reach on this machine for
/// the 9-field event entry: a ceiling for any bus, beside the raw `f v` one.
async fn bare_redis(server: &RedisServer, raw: Option<f64>) -> Option<f64> {
    let stream = "bench_bare";
    let bus = bus::connect(config(server, stream)).await.expect("connect");
    let mut conn = bus.connection();
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", stream, "Bare", "$", "MKSTREAM"])
        .query_async(&mut conn)
        .await
        .expect("XGROUP CREATE");
    let acked = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for i in 0..CONSUMERS {
        let mut reader = bus.blocking_connection().await.expect("connect");
        let acked = acked.clone();
        consumers.push(tokio::spawn(async move {
            let name = format!("bare-{i}");
            while acked.load(Ordering::Relaxed) < E2E_EVENTS {
                let reply: redis::Value = redis::cmd("XREADGROUP")
                    .arg(&[
                        "GROUP", "Bare", &name, "COUNT", "256", "BLOCK", "100", "STREAMS", stream,
                        ">",
                    ])
                    .query_async(&mut reader)
                    .await
                    .expect("XREADGROUP");
                let ids = bare_ids(&reply);
                if ids.is_empty() {
                    continue;
                }
                let n: u64 = redis::cmd("XACK")
                    .arg(stream)
                    .arg("Bare")
                    .arg(&ids)
                    .query_async(&mut reader)
                    .await
                    .expect("XACK");
                acked.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    let entries: Vec<Vec<(&'static str, String)>> =
        (0..E2E_EVENTS).map(|i| event(i).to_fields()).collect();
    let parts: Vec<Vec<Vec<(&'static str, String)>>> = entries
        .chunks(entries.len() / PUBLISHERS)
        .map(<[_]>::to_vec)
        .collect();
    let cpu = CpuMeter::start(&bus).await;
    let t = Instant::now();
    let mut publishers = Vec::new();
    for part in parts {
        let mut conn = bus.connection();
        publishers.push(tokio::spawn(async move {
            // `XADD … MAXLEN ~ max_len`, as the bus writes.
            use redis::streams::{StreamAddOptions, StreamTrimStrategy, StreamTrimmingMode};
            let opts = StreamAddOptions::default().trim(StreamTrimStrategy::maxlen(
                StreamTrimmingMode::Approx,
                1_000_000,
            ));
            for batch in part.chunks(100) {
                let mut pipe = redis::pipe();
                for fields in batch {
                    pipe.xadd_options(stream, "*", fields, &opts);
                }
                let _: Vec<String> = pipe.query_async(&mut conn).await.expect("XADD");
            }
        }));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::Relaxed) < E2E_EVENTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let done = acked.load(Ordering::Relaxed);
    let rate = done as f64 / t.elapsed().as_secs_f64();
    let cpu = cpu.per_event(&bus, done).await;
    for c in consumers {
        c.await.expect("consumer");
    }
    println!(
        "bare redis-rs, same entries, XADD → XREADGROUP → XACK, no bus, {CONSUMERS} consumers: {rate:>10.0} events/s{}\n  CPU per event: {}",
        raw.map(|r| format!(" = {:.1} % of the raw pipelined XADD rate", 100.0 * rate / r))
            .unwrap_or_default(),
        cpu.text
    );
    (done == E2E_EVENTS).then_some(rate)
}

/// The entry ids of an `XREADGROUP` reply: `[[stream, [[id, fields], …]]]`.
fn bare_ids(reply: &redis::Value) -> Vec<Vec<u8>> {
    use redis::Value;
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    streams
        .iter()
        .filter_map(|s| match s {
            Value::Array(pair) => pair.get(1),
            _ => None,
        })
        .flat_map(|entries| match entries {
            Value::Array(entries) => entries.as_slice(),
            _ => &[],
        })
        .filter_map(|e| match e {
            Value::Array(e) => match e.first() {
                Some(Value::BulkString(id)) => Some(id.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

async fn end_to_end(
    server: &RedisServer,
    raw: Option<f64>,
    raw_full: Option<f64>,
    bare: Option<f64>,
) {
    let bus = bus::connect(config(server, "bench_e2e"))
        .await
        .expect("connect");
    let handled = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut consumers = Vec::new();
    let mut stats = Vec::new();
    for i in 0..CONSUMERS {
        let consumer = bus.consumer();
        stats.push(consumer.stats().clone());
        let handled = handled.clone();
        let mut stop = stop_rx.clone();
        consumer.ensure_group("Bench").await.expect("group");
        consumers.push(tokio::spawn(async move {
            let handler = handler_fn(move |_d: Delivery| {
                handled.fetch_add(1, Ordering::Relaxed);
                async { Ok(Vec::new()) }
            });
            consumer
                .run(handler, "Bench", &format!("bench-{i}"), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .expect("run");
        }));
    }
    // Events are built before the clock starts: the figure is the bus's, not the fixture's.
    let all: Vec<Envelope> = (0..E2E_EVENTS).map(event).collect();
    let parts: Vec<Vec<Envelope>> = all
        .chunks(all.len() / PUBLISHERS)
        .map(<[_]>::to_vec)
        .collect();
    drop(all);
    let cpu = CpuMeter::start(&bus).await;
    let t = Instant::now();
    let mut publishers = Vec::new();
    for part in parts {
        let p = bus.publisher();
        publishers.push(tokio::spawn(async move {
            for batch in part.chunks(100) {
                p.publish_batch(batch).await.expect("publish_batch");
            }
        }));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    let published_in = t.elapsed();
    let acked = || stats.iter().map(|s| s.acks("Bench").acked).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked() < E2E_EVENTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let e2e_time = t.elapsed();
    let e2e = acked() as f64 / e2e_time.as_secs_f64();
    let cpu = cpu.per_event(&bus, acked()).await;
    println!(
        "end to end, publish → handler → ack, 1 group, {CONSUMERS} consumers, {PUBLISHERS} publishers: {e2e:>10.0} events/s \
         ({} handled, {} acked in {:.2} s; publishing took {:.2} s)",
        handled.load(Ordering::Relaxed),
        acked(),
        e2e_time.as_secs_f64(),
        published_in.as_secs_f64()
    );
    println!("  CPU per event: {}", cpu.text);
    // Redis is single-threaded and shares the 2 cores with the client: neither bound can be beaten.
    let ceiling = (1e6 / cpu.server_us).min(cores() * 1e6 / (cpu.client_us + cpu.server_us));
    println!(
        "  CPU-bound ceiling on this machine ({} cores): {ceiling:.0} events/s; this run reached {:.0} % of it",
        cores(),
        100.0 * e2e / ceiling
    );
    if let Some(r) = raw {
        let share = 100.0 * e2e / r;
        println!(
            "  = {share:.1} % of the raw pipelined XADD rate (target ≥ 25 %): {}",
            if share >= 25.0 { "met" } else { "NOT met" }
        );
        // What the server alone allows: XADD + XREADGROUP + XACK of the 9-field event entry,
        // with a client that cost nothing and a core of its own.
        let server_only = 1e6 / cpu.server_us;
        println!(
            "  the redis-server's own CPU per event bounds it at {server_only:.0} events/s = {:.1} % of that raw rate",
            100.0 * server_only / r
        );
    }
    if let Some(b) = bare {
        println!(
            "  = {:.1} % of the bare redis-rs rate of the same work",
            100.0 * e2e / b
        );
    }
    if let Some(r) = raw_full {
        println!(
            "  = {:.1} % of the raw pipelined XADD rate of the same 9-field entries",
            100.0 * e2e / r
        );
    }
    let _ = stop_tx.send(true);
    for c in consumers {
        c.await.expect("consumer");
    }

    // The consuming side alone: a new group drains the 100,000 entries now on the stream.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut consumers = Vec::new();
    let mut stats = Vec::new();
    for i in 0..CONSUMERS {
        let consumer = bus.consumer();
        stats.push(consumer.stats().clone());
        let mut stop = stop_rx.clone();
        consumer.ensure_group("Drain").await.expect("group");
        consumers.push(tokio::spawn(async move {
            let handler = handler_fn(|_d: Delivery| async { Ok(Vec::new()) });
            consumer
                .run(handler, "Drain", &format!("drain-{i}"), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .expect("run");
        }));
    }
    let cpu = CpuMeter::start(&bus).await;
    let t = Instant::now();
    let acked = || stats.iter().map(|s| s.acks("Drain").acked).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked() < E2E_EVENTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let drain = acked() as f64 / t.elapsed().as_secs_f64();
    let cpu = cpu.per_event(&bus, acked()).await;
    println!(
        "consume only, a backlog of {E2E_EVENTS} → handler → ack, {CONSUMERS} consumers: {drain:>10.0} events/s\n  CPU per event: {}",
        cpu.text
    );
    let _ = stop_tx.send(true);
    for c in consumers {
        c.await.expect("consumer");
    }
}

/// CPU time of this process (all threads) and of the redis-server, to tell which side a run was bound by.
struct CpuMeter {
    client: Duration,
    server: Duration,
    commands: Vec<(String, u64, u64)>,
}

impl CpuMeter {
    async fn start(bus: &bus::Bus) -> Self {
        Self {
            client: own_cpu(),
            server: server_cpu(bus).await,
            commands: command_stats(bus).await,
        }
    }

    async fn per_event(self, bus: &bus::Bus, events: u64) -> CpuPerEvent {
        let client = own_cpu().saturating_sub(self.client);
        let server = server_cpu(bus).await.saturating_sub(self.server);
        let us = |d: Duration| d.as_secs_f64() * 1e6 / events.max(1) as f64;
        // Which commands the server spent its time on: calls and µs per event.
        let mut commands = String::new();
        for (name, calls, usec) in command_stats(bus).await {
            let (c0, u0) = self
                .commands
                .iter()
                .find(|(n, _, _)| *n == name)
                .map_or((0, 0), |(_, c, u)| (*c, *u));
            let (calls, usec) = (calls - c0.min(calls), usec - u0.min(usec));
            if calls > 0 && usec * 20 >= events {
                commands.push_str(&format!(
                    "\n    {name:<12} {calls:>8} calls, {:>6.1} events/call, {:.2} µs/event",
                    events as f64 / calls as f64,
                    usec as f64 / events.max(1) as f64
                ));
            }
        }
        CpuPerEvent {
            client_us: us(client),
            server_us: us(server),
            text: format!(
                "client {:.1} µs, redis-server {:.1} µs (CPU s: client {:.2}, server {:.2}){commands}",
                us(client),
                us(server),
                client.as_secs_f64(),
                server.as_secs_f64()
            ),
        }
    }
}

struct CpuPerEvent {
    client_us: f64,
    server_us: f64,
    text: String,
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// user + system time of this process, from /proc/self/stat (clock ticks of 10 ms).
fn own_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state: utime is the 12th of them.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

/// (command, calls, usec) of `INFO commandstats`.
async fn command_stats(bus: &bus::Bus) -> Vec<(String, u64, u64)> {
    let mut conn = bus.connection();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    // cmdstat_xadd:calls=100,usec=570,usec_per_call=5.70,…
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok())
            };
            Some((name.to_string(), field("calls")?, field("usec")?))
        })
        .collect()
}

/// used_cpu_user + used_cpu_sys of the server (`INFO cpu`).
async fn server_cpu(bus: &bus::Bus) -> Duration {
    let mut conn = bus.connection();
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    let secs: f64 = info
        .lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| {
            l.split_once(':')
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        })
        .sum();
    Duration::from_secs_f64(secs)
}

/// Publish → handler latency at a steady 1,000 events/s.
async fn latency(server: &RedisServer) {
    let bus = bus::connect(config(server, "bench_latency"))
        .await
        .expect("connect");
    let base = Instant::now();
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).expect("histogram"),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut consumers = Vec::new();
    for i in 0..LATENCY_CONSUMERS {
        let consumer = bus.consumer();
        consumer.ensure_group("Latency").await.expect("group");
        let hist = hist.clone();
        let mut stop = stop_rx.clone();
        consumers.push(tokio::spawn(async move {
            let handler = handler_fn(move |d: Delivery| {
                let sent = d
                    .envelope
                    .metadata
                    .extra
                    .get("sent_us")
                    .and_then(|v| v.as_u64());
                if let Some(sent) = sent {
                    let now = base.elapsed().as_micros() as u64;
                    let mut h = hist.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = h.record(now.saturating_sub(sent).max(1));
                }
                async { Ok(Vec::new()) }
            });
            consumer
                .run(handler, "Latency", &format!("lat-{i}"), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .expect("run");
        }));
    }
    // Let the consumers reach their blocking reads.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = bus.publisher();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        tick.tick().await;
        let mut e = event(sent);
        e.metadata
            .extra
            .insert("sent_us".into(), json!(base.elapsed().as_micros() as u64));
        p.publish(&e).await.expect("publish");
        sent += 1;
    }
    let rate = sent as f64 / t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(true);
    for c in consumers {
        c.await.expect("consumer");
    }
    let h = hist.lock().unwrap_or_else(|p| p.into_inner());
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "latency publish → handler, {LATENCY_CONSUMERS} consumer, {rate:.0} events/s for 5 s ({} of {sent} seen): \
         p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (target p99 ≤ 2 ms: {})",
        h.len(),
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        if h.value_at_quantile(0.99) <= 2000 {
            "met"
        } else {
            "NOT met"
        }
    );
}
