//! `autoscaler events …` as a user runs it: the real binary against a real redis-server.

use std::process::{Command, Output};

use bus::testing::RedisServer;

const PENDING: &str =
    r#"{"pending_count":3,"waiting_time":60,"affected_deployments":["app1","app2"]}"#;

fn autoscaler(server: &RedisServer, args: &[&str]) -> Output {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config.yaml");
    Command::new(env!("CARGO_BIN_EXE_autoscaler"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("REDIS_URL", server.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the autoscaler binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

type Entries = Vec<(String, Vec<(String, String)>)>;

fn xrange(server: &RedisServer, key: &str) -> Entries {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap()
}

#[test]
fn published_pending_pods_show_the_design_fields_in_xrange_and_in_tail() {
    let server = RedisServer::start();
    let out = autoscaler(
        &server,
        &[
            "events",
            "publish",
            "PendingPodsDetected",
            "--data",
            PENDING,
        ],
    );
    assert!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = stdout(&out);
    let (stream_id, event_id) = printed
        .trim()
        .split_once(' ')
        .expect("`<stream id> <event id>`");

    let entries = xrange(&server, "autoscaler_events");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, stream_id);
    let fields = &entries[0].1;
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "event_id",
            "event_type",
            "timestamp",
            "source",
            "data",
            "metadata",
            "correlation_id",
            "causation_id",
            "v"
        ]
    );
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).unwrap().1.as_str();
    assert_eq!(get("event_id"), event_id);
    assert_eq!(get("event_type"), "PendingPodsDetected");
    assert_eq!(get("correlation_id"), event_id);
    assert_eq!(get("causation_id"), "");
    assert_eq!(get("v"), "1");
    let data: serde_json::Value = serde_json::from_str(get("data")).unwrap();
    assert_eq!(data["pending_count"], 3);
    assert_eq!(data["waiting_time"], 60.0);
    assert_eq!(
        data["affected_deployments"],
        serde_json::json!(["app1", "app2"])
    );
    let metadata: serde_json::Value = serde_json::from_str(get("metadata")).unwrap();
    assert!(metadata["cluster_id"].is_string() && metadata["region"].is_string());

    let tail = autoscaler(&server, &["events", "tail"]);
    assert!(tail.status.success());
    let line = stdout(&tail);
    assert!(line.contains("PendingPodsDetected"), "{line}");
    assert!(line.contains("pending_count=3"), "{line}");
    assert!(line.contains("affected_deployments=[app1,app2]"), "{line}");
    assert!(line.contains(&event_id[..8]), "{line}");

    let json = autoscaler(
        &server,
        &["events", "tail", "--json", "--type", "PendingPodsDetected"],
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    assert_eq!(v["event_id"], event_id);
    assert_eq!(v["data"]["pending_count"], 3);
}

#[test]
fn publishing_an_unknown_type_or_bad_data_exits_2_and_writes_nothing() {
    let server = RedisServer::start();
    let out = autoscaler(
        &server,
        &["events", "publish", "PendingPodsFound", "--data", PENDING],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown event type `PendingPodsFound`"));
    let out = autoscaler(
        &server,
        &[
            "events",
            "publish",
            "PendingPodsDetected",
            "--data",
            r#"{"pending_count":"three"}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(xrange(&server, "autoscaler_events").is_empty());
}

#[test]
fn a_caused_event_names_its_cause_and_tail_shows_the_arrow() {
    let server = RedisServer::start();
    let out = autoscaler(
        &server,
        &[
            "events",
            "publish",
            "PendingPodsDetected",
            "--data",
            PENDING,
        ],
    );
    let cause = stdout(&out).split_whitespace().nth(1).unwrap().to_string();
    let decision = r#"{"current_workers":2,"target_workers":3,"reason":"pending_pods"}"#;
    let out = autoscaler(
        &server,
        &[
            "events",
            "publish",
            "ScaleUpDecision",
            "--data",
            decision,
            "--source",
            "ScalingDecisionEngine",
            "--cause",
            &cause,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tail = stdout(&autoscaler(
        &server,
        &["events", "tail", "--type", "ScaleUpDecision"],
    ));
    assert_eq!(tail.lines().count(), 1);
    assert!(tail.contains(&format!("← {}", &cause[..8])), "{tail}");
}

#[test]
fn undecodable_entries_are_shown_not_fatal_and_dlq_commands_work() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: String = redis::cmd("XADD")
        .arg("autoscaler_events")
        .arg("*")
        .arg("f")
        .arg("v")
        .query(&mut conn)
        .unwrap();
    let tail = autoscaler(&server, &["events", "tail"]);
    assert!(tail.status.success());
    assert!(stdout(&tail).contains("undecodable"), "{}", stdout(&tail));

    let fields = [
        ("event_id", "6f1c1d2e-0000-4000-8000-000000000001"),
        ("event_type", "NodeReady"),
        ("timestamp", "2025-12-16T11:20:00.000Z"),
        ("source", "test"),
        ("data", r#"{"node_name":"k3s-worker-1"}"#),
        ("metadata", r#"{"cluster_id":"c","region":"r"}"#),
        ("correlation_id", "6f1c1d2e-0000-4000-8000-000000000001"),
        ("causation_id", ""),
        ("v", "1"),
        ("original_id", "1-0"),
        ("group", "NodeManager"),
        ("error", "boom"),
        ("deliveries", "5"),
        ("failed_at", "2025-12-16T11:21:00.000Z"),
    ];
    let mut cmd = redis::cmd("XADD");
    cmd.arg("autoscaler_events:dlq").arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    let dl_id: String = cmd.query(&mut conn).unwrap();
    let list = stdout(&autoscaler(&server, &["events", "dlq", "list"]));
    assert!(
        list.contains(&dl_id) && list.contains("group=NodeManager") && list.contains("error: boom"),
        "{list}"
    );
    let retry = autoscaler(&server, &["events", "dlq", "retry", &dl_id]);
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    assert!(
        stdout(&retry).contains("for group NodeManager only"),
        "{}",
        stdout(&retry)
    );
    assert!(xrange(&server, "autoscaler_events:dlq").is_empty());
    let back = xrange(&server, "autoscaler_events");
    assert_eq!(back.len(), 2);
    let retried: Vec<(String, String)> = back[1].1.clone();
    assert_eq!(
        retried.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        bus::envelope::FIELDS
            .iter()
            .copied()
            .chain([bus::RETRY_FOR])
            .collect::<Vec<_>>(),
        "the original fields and retry_for come back"
    );
    assert_eq!(retried[9].1, "NodeManager");
    let tail = stdout(&autoscaler(&server, &["events", "tail"]));
    assert!(tail.contains("retried for NodeManager only"), "{tail}");
    // Retrying it again finds nothing: exit 1, nothing written.
    assert_eq!(
        autoscaler(&server, &["events", "dlq", "retry", &dl_id])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(xrange(&server, "autoscaler_events").len(), 2);

    // --all-groups: the original fields only.
    let mut cmd = redis::cmd("XADD");
    cmd.arg("autoscaler_events:dlq").arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    let dl_id: String = cmd.query(&mut conn).unwrap();
    let retry = autoscaler(&server, &["events", "dlq", "retry", "--all-groups", &dl_id]);
    assert!(
        stdout(&retry).contains("for every group"),
        "{}",
        stdout(&retry)
    );
    let back = xrange(&server, "autoscaler_events");
    assert_eq!(back.len(), 3);
    assert_eq!(back[2].1.len(), 9, "only the original fields come back");
    assert_eq!(
        autoscaler(&server, &["events", "dlq", "purge"])
            .status
            .code(),
        Some(2)
    );
    assert!(autoscaler(&server, &["events", "dlq", "purge", "--yes"])
        .status
        .success());
}

#[test]
fn replay_is_a_dry_run_unless_executed_and_refuses_while_consumers_are_active() {
    let server = RedisServer::start();
    let mut ids = Vec::new();
    for n in 0..3 {
        let data = format!(r#"{{"node_name":"k3s-worker-{n}"}}"#);
        let out = autoscaler(
            &server,
            &["events", "publish", "NodeReady", "--data", &data],
        );
        ids.push(stdout(&out).split_whitespace().next().unwrap().to_string());
    }
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("autoscaler_events")
        .arg("G")
        .arg("0")
        .query(&mut conn)
        .unwrap();
    // A consumer that just read (and acked) everything: active.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("G")
        .arg("c1")
        .arg("STREAMS")
        .arg("autoscaler_events")
        .arg(">")
        .query(&mut conn)
        .unwrap();
    let _: u64 = redis::cmd("XACK")
        .arg("autoscaler_events")
        .arg("G")
        .arg(&ids)
        .query(&mut conn)
        .unwrap();

    let dry = autoscaler(
        &server,
        &["events", "replay", "--group", "G", "--from", &ids[1]],
    );
    assert!(dry.status.success());
    let text = stdout(&dry);
    assert!(text.contains("dry run: 2 entries"), "{text}");
    assert!(
        text.contains("k3s-worker-1")
            && text.contains("k3s-worker-2")
            && !text.contains("k3s-worker-0"),
        "{text}"
    );

    let refused = autoscaler(
        &server,
        &[
            "events",
            "replay",
            "--group",
            "G",
            "--from",
            &ids[1],
            "--execute",
        ],
    );
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}{}",
        stdout(&refused),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("active consumers"));

    let forced = autoscaler(
        &server,
        &[
            "events",
            "replay",
            "--group",
            "G",
            "--from",
            &ids[1],
            "--execute",
            "--force",
        ],
    );
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let again: Vec<(String, Entries)> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("G")
        .arg("c1")
        .arg("STREAMS")
        .arg("autoscaler_events")
        .arg(">")
        .query(&mut conn)
        .unwrap();
    let got: Vec<String> = again[0].1.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(got, ids[1..].to_vec());
}

/// The stream of an end-to-end run (a `kill -9` during a scale-up, the restarted process finishing
/// it) and the configuration it was recorded under: `fixtures/lab-scale-up-crash.{jsonl,yaml}`.
const LAB_STREAM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/lab-scale-up-crash.jsonl"
);
const LAB_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/lab-scale-up-crash.yaml"
);

/// Appends the fixture's entries (flat stream fields, one JSON object a line) to the stream.
fn load_lab_stream(server: &RedisServer) -> usize {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let text = std::fs::read_to_string(LAB_STREAM).expect("the fixture");
    let mut n = 0;
    for line in text.lines() {
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).expect("a JSON object");
        let mut cmd = redis::cmd("XADD");
        cmd.arg("autoscaler_events").arg("*");
        for (k, v) in &fields {
            cmd.arg(k).arg(v.as_str().expect("string fields"));
        }
        let _: String = cmd.query(&mut conn).unwrap();
        n += 1;
    }
    n
}

/// `events replay --what-if --json` over the whole stream under the fixture's config (plus `env`).
fn what_if_json(server: &RedisServer, env: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoscaler"));
    cmd.arg("--config")
        .arg(LAB_CONFIG)
        .args(["events", "replay", "--what-if", "--from", "0-0", "--json"])
        .env("REDIS_URL", server.url())
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the autoscaler binary");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout(&out).trim()).expect("one JSON object")
}

#[test]
fn what_if_of_a_lab_stream_under_its_config_reproduces_every_decision() {
    let server = RedisServer::start();
    assert_eq!(load_lab_stream(&server), 38);
    let report = what_if_json(&server, &[]);
    assert_eq!(report["decisions_changed"], 0, "{report:#}");
    assert_eq!(report["recorded"]["decisions"], 3, "{report:#}");
    assert_eq!(report["replayed"]["decisions"], 3, "{report:#}");
    let pairs = report["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), 3);
    for p in pairs {
        assert_eq!(p["recorded"], p["replayed"], "{p:#}");
        assert_eq!(p["changed"], false);
    }
    // The readable form says the same.
    let text = autoscaler_with(
        &server,
        LAB_CONFIG,
        &["events", "replay", "--what-if", "--from", "0-0"],
    );
    assert!(
        text.contains("3 decisions recorded, 3 replayed, 0 changed"),
        "{text}"
    );
}

#[test]
fn what_if_of_a_lab_stream_with_a_lower_max_nodes_blocks_the_last_scale_up() {
    let server = RedisServer::start();
    load_lab_stream(&server);
    let report = what_if_json(&server, &[("AUTOSCALER__LIMITS__MAX_NODES", "3")]);
    assert_eq!(report["decisions_changed"], 1, "{report:#}");
    let changed: Vec<&serde_json::Value> = report["pairs"]
        .as_array()
        .expect("pairs")
        .iter()
        .filter(|p| p["changed"] == true)
        .collect();
    assert_eq!(changed.len(), 1, "{report:#}");
    let p = changed[0];
    assert_eq!(p["root_type"], "PendingPodsDetected");
    assert_eq!(p["recorded"]["event_type"], "ScaleUpDecision");
    assert_eq!(p["recorded"]["target_workers"], 4);
    assert_eq!(p["replayed"]["event_type"], "ScaleUpBlocked", "{p:#}");
    assert_eq!(p["replayed"]["reason"], "max_nodes_reached");
    assert_eq!(p["replayed"]["pods"].as_array().map(Vec::len), Some(1));
    // One worker fewer for the rest of the run.
    let minutes = |side: &str| report[side]["node_minutes"].as_f64().expect("node_minutes");
    assert!(minutes("replayed") < minutes("recorded"), "{report:#}");
}

fn autoscaler_with(server: &RedisServer, config: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_autoscaler"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("REDIS_URL", server.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the autoscaler binary");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}
