//! The event archive against a real redis-server: the leader's writer, archive + stream read as one
//! history by `events replay --what-if`, `events tail --since` and `explain`, a truncated archive
//! file reported and skipped, and `--plot`.

use std::path::Path;
use std::process::{Command, Output};

use autoscaler::archive::{self, History, Writer};
use bus::stream_id::StreamId;
use bus::testing::RedisServer;
use bus::RawEntry;

/// The stream of an end-to-end run and its config (see `events_cli.rs`): 38 entries, 3 decisions.
const LAB_STREAM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/lab-scale-up-crash.jsonl"
);
const LAB_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/lab-scale-up-crash.yaml"
);

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

async fn stream(server: &RedisServer) -> (bus::Bus, Vec<RawEntry>) {
    let bus = bus::connect(server.config("autoscaler_events"))
        .await
        .expect("connect");
    let all = bus.audit().query(&bus::Query::default()).await.unwrap();
    (bus, all)
}

/// Deletes the stream's first `n` entries, as `MAXLEN ~` trimming would.
fn trim_first(server: &RedisServer, entries: &[RawEntry], n: usize) {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let mut cmd = redis::cmd("XDEL");
    cmd.arg("autoscaler_events");
    for e in &entries[..n] {
        cmd.arg(&e.id);
    }
    let _: u64 = cmd.query(&mut conn).unwrap();
}

fn autoscaler(server: &RedisServer, archive_dir: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoscaler"));
    cmd.arg("--config")
        .arg(LAB_CONFIG)
        .args(args)
        .env("REDIS_URL", server.url())
        .env("RUST_LOG", "warn");
    if let Some(d) = archive_dir {
        cmd.env("AUTOSCALER__EVENTS__ARCHIVE__DIR", d);
    }
    cmd.output().expect("run the autoscaler binary")
}

fn what_if(server: &RedisServer, dir: Option<&Path>) -> (serde_json::Value, String) {
    let out = autoscaler(
        server,
        dir,
        &["events", "replay", "--what-if", "--from", "0-0", "--json"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let report =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("one JSON object");
    (report, stderr)
}

/// Three archive files (three leader tenures) holding the first 30 entries, the stream only the
/// last 14 (the archive and the stream overlap by 6).
async fn archived_history(server: &RedisServer, dir: &Path) -> Vec<RawEntry> {
    assert_eq!(load_lab_stream(server), 38);
    let (_bus, all) = stream(server).await;
    for part in [&all[0..10], &all[10..20], &all[20..30]] {
        // A new writer per tenure: it continues after the `position`, in a file of its own.
        let mut w = Writer::open(dir).expect("open the archive");
        // A member of its own for the first half, then the rest: several members a file.
        let (a, b) = part.split_at(4);
        assert_eq!(w.append(a).unwrap(), a.len());
        assert_eq!(w.append(b).unwrap(), b.len());
        // Entries already archived are not written again.
        assert_eq!(w.append(part).unwrap(), 0);
    }
    assert_eq!(archive::list(dir).unwrap().len(), 3);
    trim_first(server, &all, 24);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_files_and_the_stream_replay_as_one_history() {
    let server = RedisServer::start();
    let dir = tempfile::TempDir::new().expect("temp dir");
    let all = archived_history(&server, dir.path()).await;

    // The stream alone has lost the first decisions.
    let (alone, _) = what_if(&server, None);
    assert!(
        alone["recorded"]["decisions"].as_u64() < Some(3),
        "{alone:#}"
    );
    // Archive + stream: the whole run, every decision reproduced.
    let (report, stderr) = what_if(&server, Some(dir.path()));
    assert_eq!(report["recorded"]["decisions"], 3, "{report:#}");
    assert_eq!(report["replayed"]["decisions"], 3, "{report:#}");
    assert_eq!(report["decisions_changed"], 0, "{report:#}");
    assert!(!stderr.contains("warning"), "{stderr}");

    // The same history, entry by entry, once each and in order.
    let (bus, _) = stream(&server).await;
    let mut h = History::new(
        Some(dir.path()),
        Some(bus.audit()),
        StreamId { ms: 0, seq: 0 },
        None,
    );
    let mut ids = Vec::new();
    while let Some(page) = h.next_page().await.unwrap() {
        ids.extend(page.into_iter().map(|e| e.id));
    }
    assert!(h.take_problems().is_empty());
    let want: Vec<String> = all.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, want);

    // A range inside the archive stops there; one across archive and stream spans both.
    let mut h = History::new(
        Some(dir.path()),
        Some(bus.audit()),
        StreamId::parse(&all[12].id).unwrap(),
        Some(StreamId::parse(&all[33].id).unwrap()),
    );
    let mut got = Vec::new();
    while let Some(page) = h.next_page().await.unwrap() {
        got.extend(page.into_iter().map(|e| e.id));
    }
    assert_eq!(got, want[12..=33].to_vec());

    // `events tail --since` reads both too.
    let out = autoscaler(
        &server,
        Some(dir.path()),
        &["events", "tail", "--since", "0-0", "--json"],
    );
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 38);
    assert_eq!(lines[0]["stream_id"], all[0].id.as_str());

    // `explain` finds an event only the archive still has, with its chain.
    let first_decision = all
        .iter()
        .take(24)
        .find(|e| e.get_str("event_type").as_deref() == Some("AutoScaleUpToMinimum"))
        .expect("the fixture starts with a scale-up to the minimum");
    let id = first_decision.get_str("event_id").unwrap();
    let out = autoscaler(&server, None, &["explain", &id]);
    assert!(!out.status.success(), "trimmed from the stream");
    let out = autoscaler(&server, Some(dir.path()), &["explain", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("MinimumNodesViolation"), "{text}");
    assert!(text.contains("AutoScaleUpToMinimum"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_archive_file_is_reported_and_skipped() {
    let server = RedisServer::start();
    let dir = tempfile::TempDir::new().expect("temp dir");
    let all = archived_history(&server, dir.path()).await;
    let files = archive::list(dir.path()).unwrap();
    // The middle file cut short, as by a crash or a full disk.
    let middle = &files[1].path;
    let bytes = std::fs::read(middle).unwrap();
    std::fs::write(middle, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let (report, stderr) = what_if(&server, Some(dir.path()));
    assert!(
        stderr.contains("damaged") && stderr.contains(&middle.display().to_string()),
        "{stderr}"
    );
    assert!(report["observations"].as_u64().is_some(), "{report:#}");

    let (bus, _) = stream(&server).await;
    let mut h = History::new(
        Some(dir.path()),
        Some(bus.audit()),
        StreamId { ms: 0, seq: 0 },
        None,
    );
    let mut ids = Vec::new();
    while let Some(page) = h.next_page().await.unwrap() {
        ids.extend(page.into_iter().map(|e| e.id));
    }
    let problems = h.take_problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("skipped the rest"), "{problems:?}");
    // The first file whole, the middle one up to the damage, the third one and the stream whole.
    let want: Vec<String> = all.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids[..10], want[..10]);
    assert!(ids.len() < 38 && ids.len() >= 28, "{} entries", ids.len());
    assert_eq!(ids[ids.len() - 18..], want[20..]);
    for w in ids.windows(2) {
        assert!(StreamId::parse(&w[0]) < StreamId::parse(&w[1]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_writer_archives_the_stream_as_lines_zcat_and_a_json_parser_read() {
    let server = RedisServer::start();
    let dir = tempfile::TempDir::new().expect("temp dir");
    assert_eq!(load_lab_stream(&server), 38);
    let (bus, all) = stream(&server).await;
    let mut w = Writer::open(dir.path()).unwrap();
    let mut warned = false;
    assert_eq!(
        archive::flush(&bus.audit(), &mut w, &mut warned)
            .await
            .unwrap(),
        38
    );
    // Nothing new: nothing written; a reopened writer continues after its position.
    assert_eq!(
        archive::flush(&bus.audit(), &mut w, &mut warned)
            .await
            .unwrap(),
        0
    );
    let mut w = Writer::open(dir.path()).unwrap();
    assert_eq!(w.last(), StreamId::parse(&all[37].id));
    assert_eq!(
        archive::flush(&bus.audit(), &mut w, &mut warned)
            .await
            .unwrap(),
        0
    );
    let files = archive::list(dir.path()).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].path.file_name().unwrap().to_string_lossy();
    assert!(
        name.starts_with("events-20") && name.ends_with(".jsonl.gz"),
        "{name}"
    );
    // Standard tools read it: zcat, then any JSON parser (jq's job).
    let out = Command::new("zcat")
        .arg(&files[0].path)
        .output()
        .expect("zcat (gzip) must be installed for this test");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 38);
    for (l, e) in lines.iter().zip(&all) {
        assert_eq!(l["stream_id"], e.id.as_str());
        assert_eq!(l["event_type"], e.get_str("event_type").unwrap().as_str());
        assert!(l["data"].is_object() && l["metadata"].is_object(), "{l}");
    }
    // And each line decodes to the same event as the stream entry.
    let (back, problem) = archive::read_file(&files[0].path);
    assert!(problem.is_none());
    for (b, e) in back.iter().zip(&all) {
        assert_eq!(b.id, e.id);
        assert_eq!(b.decode().unwrap(), e.decode().unwrap());
    }
}

#[test]
fn plot_writes_an_svg_of_the_expected_size_with_both_runs() {
    let server = RedisServer::start();
    load_lab_stream(&server);
    let dir = tempfile::TempDir::new().expect("temp dir");
    let file = dir.path().join("what-if.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_autoscaler"))
        .arg("--config")
        .arg(LAB_CONFIG)
        .args(["events", "replay", "--what-if", "--from", "0-0", "--plot"])
        .arg(&file)
        .env("REDIS_URL", server.url())
        .env("AUTOSCALER__LIMITS__MAX_NODES", "3")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&file).expect("the plot file");
    assert_well_formed(&svg);
    let root = &svg[svg.find("<svg").expect("an <svg> element")..];
    let head = &root[..root.find('>').unwrap()];
    assert!(
        head.contains(&format!("width=\"{}\"", autoscaler::cli::plot::WIDTH))
            && head.contains(&format!("height=\"{}\"", autoscaler::cli::plot::HEIGHT)),
        "{head}"
    );
    // The two runs' lines in their colours, the decisions as marks, the captions' figures.
    assert!(
        svg.contains("rgb(70,110,200)") || svg.contains("#466EC8"),
        "recorded colour"
    );
    assert!(
        svg.contains("rgb(230,120,30)") || svg.contains("#E6781E"),
        "what-if colour"
    );
    assert!(svg.contains("<circle"), "decision marks");
    assert!(svg.contains("node-min"), "the caption's figures");
    assert!(svg.matches("<polyline").count() >= 4, "four lines");
}

/// Every tag closed in order (no XML parser in the dependencies; this is what a viewer needs).
fn assert_well_formed(svg: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let close = rest.find('>').expect("an unclosed tag");
        let tag = &rest[..close];
        rest = &rest[close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().unwrap_or_default();
            stack.push(name.to_string());
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}
