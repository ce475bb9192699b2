//! `events tail`, `explain`, `status` and `events replay --what-if`, with the real binary, on a Redis
//! Cluster of three primaries holding two labs' streams (different hash tags) and through Redis
//! Sentinel; and the leader lease on a cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use bus::testing::{RedisCluster, RedisSentinels};

/// The stream of an end-to-end run and the configuration it was recorded under (as in `events_cli.rs`).
const LAB_STREAM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/lab-scale-up-crash.jsonl"
);
const LAB_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/lab-scale-up-crash.yaml"
);

/// The fixture's configuration with `stream` and the bus lines `bus` (mode, url, …), written into `dir`.
fn config_in(dir: &Path, name: &str, stream: &str, bus: &str) -> PathBuf {
    let text = std::fs::read_to_string(LAB_CONFIG).expect("the fixture config");
    let url_line = "      url: \"redis://127.0.0.1:6379\" # REDIS_URL overrides it\n";
    assert!(text.contains(url_line), "the fixture's url line changed");
    let text = text.replace(url_line, bus).replace(
        "stream_name: \"autoscaler_events\"",
        &format!("stream_name: \"{stream}\""),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the config");
    path
}

fn autoscaler(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autoscaler"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the autoscaler binary")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Writes the fixture's entries to the stream of `config` (through the bus: a cluster-aware connection).
async fn load(config: bus::BusConfig) -> usize {
    let bus = bus::connect(config).await.expect("connect");
    let mut conn = bus.connection();
    let stream = bus.config().stream.clone();
    let text = std::fs::read_to_string(LAB_STREAM).expect("the fixture");
    let mut n = 0;
    for line in text.lines() {
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).expect("a JSON object");
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*");
        for (k, v) in &fields {
            cmd.arg(k).arg(v.as_str().expect("string fields"));
        }
        let _: String = cmd.query_async(&mut conn).await.expect("XADD");
        n += 1;
    }
    n
}

/// What a user runs against a lab's stream: all of it must work and see that lab's history only.
fn the_read_commands_work(config: &Path, entries: usize) {
    let tail = ok(&autoscaler(
        config,
        &["events", "tail", "--since", "0-0", "--json"],
    ));
    assert_eq!(tail.lines().count(), entries, "entries `events tail` shows");
    let first_decision: serde_json::Value = tail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .find(|e| e["event_type"] == "ScaleUpDecision")
        .expect("a ScaleUpDecision in the fixture");
    let id = first_decision["event_id"].as_str().expect("event_id");
    let explained = ok(&autoscaler(config, &["explain", id]));
    assert!(explained.contains("ScaleUpDecision"), "{explained}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&autoscaler(config, &["status", "--json"]))).expect("JSON");
    let redis_errors: Vec<&serde_json::Value> = status["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e.as_str().is_some_and(|s| s.starts_with("redis")))
                .collect()
        })
        .unwrap_or_default();
    assert!(redis_errors.is_empty(), "{status:#}");
    let report: serde_json::Value = serde_json::from_str(
        ok(&autoscaler(
            config,
            &["events", "replay", "--what-if", "--from", "0-0", "--json"],
        ))
        .trim(),
    )
    .expect("one JSON object");
    assert_eq!(report["recorded"]["decisions"], 3, "{report:#}");
    assert_eq!(report["decisions_changed"], 0, "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_labs_on_one_redis_cluster_are_read_by_tail_explain_status_and_replay() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let dir = tempfile::TempDir::new().expect("temp dir");
    let ports = cluster.ports();
    let bus_lines = format!(
        "      url: \"redis://127.0.0.1:{}\"\n      mode: cluster\n      cluster_nodes: [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n",
        ports[0], ports[1], ports[2]
    );
    let mut configs = Vec::new();
    for (lab, extra) in [("lab-a", 0), ("lab-b", 5)] {
        let stream = format!("{{{lab}}}:autoscaler_events");
        let n = load(cluster.config(&stream)).await;
        // lab-b has a few more entries, so a command reading the wrong stream shows.
        for _ in 0..extra {
            let bus = bus::connect(cluster.config(&stream))
                .await
                .expect("connect");
            let e = bus::Envelope::root(
                "test",
                bus::Event::from_value("NodeReady", serde_json::json!({"node_name": "x"}))
                    .expect("event"),
                bus::Metadata::new("test", "local"),
            );
            bus.publisher().publish(&e).await.expect("publish");
        }
        configs.push((
            config_in(dir.path(), &format!("{lab}.yaml"), &stream, &bus_lines),
            n + extra,
        ));
    }
    for (config, entries) in &configs {
        tokio::task::block_in_place(|| the_read_commands_work(config, *entries));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_commands_work_through_sentinel() {
    let set = tokio::task::block_in_place(|| RedisSentinels::start(Duration::from_secs(1)));
    let dir = tempfile::TempDir::new().expect("temp dir");
    let n = load(set.config("autoscaler_events")).await;
    let sentinels = set
        .sentinel_addresses()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let bus_lines = format!(
        "      url: \"redis://sentinel-named-master\"\n      mode: sentinel\n      sentinels: [{sentinels}]\n      sentinel_master: \"{}\"\n",
        bus::testing::SENTINEL_MASTER
    );
    let config = config_in(dir.path(), "sentinel.yaml", "autoscaler_events", &bus_lines);
    tokio::task::block_in_place(|| the_read_commands_work(&config, n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_per_lab_on_a_redis_cluster() {
    use autoscaler::leader;
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let ttl = Duration::from_secs(5);
    for lab in ["{lab-a}:events", "{lab-b}:events"] {
        let bus = bus::connect(cluster.config(lab)).await.expect("connect");
        let (mut a, mut b) = (bus.connection(), bus.connection());
        let ta = leader::try_acquire(&mut a, lab, "replica-a", ttl)
            .await
            .expect("acquire on a cluster");
        let tb = leader::try_acquire(&mut b, lab, "replica-b", ttl)
            .await
            .expect("acquire on a cluster");
        assert!(ta.is_some() && tb.is_none(), "{lab}: {ta:?} {tb:?}");
        let holder = leader::current_holder(&mut a, lab).await.expect("GET");
        assert!(holder.is_some_and(|h| h.starts_with("replica-a|")));
        leader::release(&mut a, lab, "replica-a")
            .await
            .expect("release");
        assert!(leader::try_acquire(&mut b, lab, "replica-b", ttl)
            .await
            .expect("acquire")
            .is_some());
    }
}
