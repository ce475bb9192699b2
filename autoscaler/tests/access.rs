//! The least-privilege Redis users of `docs/ACCESS.md`, exactly as documented, on a real TLS
//! `redis-server` (certificates made by the test, client certificates required): the autoscaler's user
//! runs consumer groups, scripts and the leader lease; the auditor's user reads (`events tail`,
//! `explain`, `status`, `events replay --what-if`, with the real binary) and is refused on XADD.

use std::process::{Command, Output};
use std::time::Duration;

use bus::testing::{RedisOptions, RedisServer};
use bus::{handler_fn, Delivery, HandlerError};

const ADMIN_PASSWORD: &str = "admin-Pw-0";
const AUTOSCALER_PASSWORD: &str = "autoscaler-Pw-1";
const AUDITOR_PASSWORD: &str = "auditor-Pw-2";

/// The `ACL SETUSER` lines of docs/ACCESS.md, with the test's passwords.
fn documented_acl_lines() -> Vec<String> {
    let doc = include_str!("../../docs/ACCESS.md");
    let lines: Vec<String> = doc
        .lines()
        .filter(|l| l.starts_with("ACL SETUSER "))
        .map(|l| {
            l.replace("<autoscaler-password>", AUTOSCALER_PASSWORD)
                .replace("<auditor-password>", AUDITOR_PASSWORD)
        })
        .collect();
    assert_eq!(lines.len(), 2, "docs/ACCESS.md documents two users");
    lines
}

/// What the ACL refused so far (`ACL LOG`), for failure messages.
async fn acl_log(server: &RedisServer) -> String {
    let admin = bus::connect(server.config("autoscaler_events"))
        .await
        .unwrap();
    let mut conn = admin.connection();
    let log: redis::Value = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut conn)
        .await
        .unwrap();
    format!("{log:?}")
}

async fn apply_acl(server: &RedisServer) {
    let admin = bus::connect(server.config("autoscaler_events"))
        .await
        .expect("the admin connects");
    let mut conn = admin.connection();
    for line in documented_acl_lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let _: () = redis::cmd(words[0])
            .arg(&words[1..])
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{line}: {e}"));
    }
}

/// The real binary as a user runs it, connecting as `user` over TLS with the test's certificates.
fn autoscaler(server: &RedisServer, user: &str, password: &str, args: &[&str]) -> Output {
    let certs = server.certs().expect("a TLS server");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config.yaml");
    Command::new(env!("CARGO_BIN_EXE_autoscaler"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("REDIS_URL", server.url_as(user, password))
        .env("AUTOSCALER__EVENTS__EVENT_BUS__TLS__CA_FILE", &certs.ca)
        .env(
            "AUTOSCALER__EVENTS__EVENT_BUS__TLS__CERT_FILE",
            &certs.client_cert,
        )
        .env(
            "AUTOSCALER__EVENTS__EVENT_BUS__TLS__KEY_FILE",
            &certs.client_key,
        )
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the autoscaler binary")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_users_work_over_tls_and_the_auditor_cannot_write() {
    let server = RedisServer::start_with(RedisOptions {
        tls: true,
        tls_client_certs: true,
        password: Some(ADMIN_PASSWORD.into()),
        ..RedisOptions::default()
    });
    apply_acl(&server).await;

    // ---- the autoscaler's user: what `autoscaler run` does --------------------------------------
    let mut cfg = server.config_for(
        &server.url_as("autoscaler", AUTOSCALER_PASSWORD),
        "autoscaler_events",
    );
    cfg.max_deliveries = 2;
    let bus = bus::connect(cfg).await.expect("the autoscaler connects");
    let publisher = bus.publisher();
    let meta = bus::Metadata::new("k3s-lab", "local");
    let pending = bus::Envelope::root(
        "test",
        bus::Event::from_value(
            "PendingPodsDetected",
            serde_json::json!({"pending_count": 1, "waiting_time": 5, "affected_deployments": ["web"]}),
        )
        .unwrap(),
        meta.clone(),
    );
    publisher
        .publish_idempotent(&format!("event:{}", pending.event_id), &pending)
        .await
        .unwrap();
    let poison = bus::Envelope::root(
        "test",
        bus::Event::from_value("NodeReady", serde_json::json!({"node_name": "poison"})).unwrap(),
        meta.clone(),
    );
    publisher.publish(&poison).await.unwrap();

    // A group whose handler answers with an output (the ack script), fails the poison once (the
    // retry script) and then dead-letters it.
    let consumer = bus.consumer();
    consumer
        .ensure_group("ScalingDecisionEngine")
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        consumer
            .run(
                handler_fn(move |d: Delivery| {
                    async move {
                        if d.envelope.event_type() != "PendingPodsDetected" {
                            if d.envelope.event.node_name() != Some("poison") {
                                return Ok(Vec::new());
                            }
                            return Err(HandlerError::retry_after(
                                Duration::from_millis(50),
                                "poison",
                            ));
                        }
                        let out = bus::Envelope::caused_by(
                            &d.envelope,
                            "ScalingDecisionEngine",
                            bus::Event::from_value(
                                "ScaleUpDecision",
                                serde_json::json!({"current_workers": 2, "target_workers": 3, "reason": "pending_pods"}),
                            )
                            .unwrap(),
                        );
                        Ok(vec![out])
                    }
                }),
                "ScalingDecisionEngine",
                "replica-a",
                async {
                    let _ = stop_rx.await;
                },
            )
            .await
    });
    let audit = bus.audit();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let settled = || async {
        let pending = audit
            .group("ScalingDecisionEngine")
            .await
            .unwrap()
            .map_or(1, |g| g.pending);
        let decided = audit
            .query(&bus::Query {
                types: vec!["ScaleUpDecision".into()],
                ..bus::Query::default()
            })
            .await
            .unwrap()
            .len();
        pending == 0 && decided == 1 && audit.dlq_len().await.unwrap() == 1
    };
    while !settled().await {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "the group did not settle: {:?}, dlq {:?}; ACL LOG {}",
                audit.group("ScalingDecisionEngine").await,
                audit.dlq_len().await,
                acl_log(&server).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    task.await.unwrap().unwrap();
    // The leader lease and its fencing epoch.
    let mut conn = bus.connection();
    let token = autoscaler::leader::try_acquire(
        &mut conn,
        "autoscaler_events",
        "replica-a",
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert!(token.is_some());
    autoscaler::leader::release(&mut conn, "autoscaler_events", "replica-a")
        .await
        .unwrap();
    // Operators' writes with the binary: a publish and a rewind of the group.
    let o = autoscaler(
        &server,
        "autoscaler",
        AUTOSCALER_PASSWORD,
        &[
            "events",
            "publish",
            "ManualScaleRequested",
            "--data",
            r#"{"target_workers":3,"reason":"test"}"#,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = autoscaler(
        &server,
        "autoscaler",
        AUTOSCALER_PASSWORD,
        &[
            "events",
            "replay",
            "--group",
            "ScalingDecisionEngine",
            "--from",
            "0",
            "--execute",
            "--force",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));

    // ---- the auditor's user ---------------------------------------------------------------------
    let auditor = |args: &[&str]| autoscaler(&server, "auditor", AUDITOR_PASSWORD, args);
    let o = auditor(&["events", "tail"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("PendingPodsDetected"),
        "{}",
        text(&o)
    );
    let o = auditor(&["explain", &pending.event_id.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ScaleUpDecision"),
        "explain shows what the event led to: {}",
        text(&o)
    );
    let o = auditor(&["status", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status --json");
    let redis_errors: Vec<&serde_json::Value> = doc["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e.as_str().is_some_and(|s| s.starts_with("redis")))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        redis_errors.is_empty(),
        "status as the auditor: {redis_errors:?}\n{}",
        text(&o)
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains(AUDITOR_PASSWORD),
        "status shows the password"
    );
    let o = auditor(&["events", "replay", "--what-if", "--from", "0"]);
    assert!(o.status.success(), "{}", text(&o));

    // Writes are refused with Redis's own message, and the password is not in it.
    let o = auditor(&[
        "events",
        "publish",
        "ManualScaleRequested",
        "--data",
        r#"{"target_workers":3,"reason":"x"}"#,
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    // redis-rs spells Redis's NOPERM as `NoPerm: this user has no permissions to run the 'xadd' command`.
    assert!(
        stderr.to_lowercase().contains("noperm") && stderr.contains("'xadd'"),
        "{}",
        text(&o)
    );
    assert!(!stderr.contains(AUDITOR_PASSWORD), "{}", text(&o));
    let mut as_auditor = bus::connect(server.config_for(
        &server.url_as("auditor", AUDITOR_PASSWORD),
        "autoscaler_events",
    ))
    .await
    .unwrap()
    .connection();
    let xadd: redis::RedisResult<String> = redis::cmd("XADD")
        .arg(&["autoscaler_events", "*", "k", "v"][..])
        .query_async(&mut as_auditor)
        .await;
    let err = xadd.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("noperm"), "{err}");
    // No key outside the stream's, even to read.
    let other: redis::RedisResult<Option<String>> = redis::cmd("GET")
        .arg("other-key")
        .query_async(&mut as_auditor)
        .await;
    assert!(other
        .unwrap_err()
        .to_string()
        .to_lowercase()
        .contains("noperm"));
}
