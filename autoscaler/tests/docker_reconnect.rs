//! Engine outages, simulated with a Unix-socket proxy in front of the real engine that the test takes
//! down and brings back: pool calls fail as retryable and open the circuit breaker, the events watcher
//! reconnects and reports, from a fresh listing, what happened while it was away. `/readyz` answers 503
//! while the engine, or a real `redis-server` the test stops, is away, and 200 again after.

mod docker_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use autoscaler::docker::proxy::EngineProxy;
use autoscaler::docker::{
    self, CreateWorker, DockerError, DockerEventsWatcher, DockerWorkerPool, PoolConfig,
};
use bollard::query_parameters::{KillContainerOptions, RemoveContainerOptions};
use bus::event::Event;
use bus::{Envelope, Metadata};
use docker_support::TestEnv;
use tokio::sync::{mpsc, oneshot};

fn summary(e: &Envelope) -> String {
    match &e.event {
        Event::NodeCreated(c) => format!("NodeCreated {}", c.node_name),
        Event::NodeInterruptionNotice(n) => {
            format!("NodeInterruptionNotice {} {}", n.node_name, n.cause)
        }
        Event::NodeUnexpectedlyLost(l) => {
            format!("NodeUnexpectedlyLost {} {}", l.node_name, l.cause)
        }
        other => other.event_type().to_string(),
    }
}

async fn next(rx: &mut mpsc::Receiver<Envelope>) -> String {
    let e = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no event from the watcher in time")
        .expect("watcher channel closed");
    summary(&e)
}

fn socket_path(id: &str) -> PathBuf {
    Path::new(&std::env::temp_dir()).join(format!("k3sas-{id}.sock"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_outage_opens_the_breaker_and_the_watcher_reports_what_it_missed() {
    let env = TestEnv::new("outage").await;
    let mut proxy = EngineProxy::start(socket_path(&env.id));
    let direct = DockerWorkerPool::new(env.docker.clone(), env.config());
    let req = |e: &str| CreateWorker {
        name: None,
        requested_by: e.to_string(),
        extra_labels: BTreeMap::new(),
        pool: None,
    };
    let w1 = direct.create(&req("evt-1")).await.unwrap();
    let w2 = direct.create(&req("evt-2")).await.unwrap();
    let w3 = direct.create(&req("evt-3")).await.unwrap();

    // The autoscaler's view of the engine goes through the proxy.
    let proxied = DockerWorkerPool::connect(PoolConfig {
        host: proxy.uri(),
        timeout: Duration::from_secs(3),
        breaker_failures: 2,
        breaker_cool_off: Duration::from_secs(1),
        ..env.config()
    })
    .await
    .unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let watcher = DockerEventsWatcher::for_pool(&proxied, Metadata::new("lab-test", "local"))
        .with_reconnect_backoff(Duration::from_millis(100), Duration::from_millis(500));
    let task = tokio::spawn(watcher.run(tx, async {
        let _ = stop_rx.await;
    }));

    // Live: a kill by another actor arrives (and shows the watcher is subscribed).
    env.docker
        .kill_container(
            &w3.name,
            Some(KillContainerOptions {
                signal: "SIGKILL".into(),
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        format!("NodeInterruptionNotice {} docker_kill", w3.name)
    );
    assert_eq!(
        next(&mut rx).await,
        format!("NodeUnexpectedlyLost {} container_killed", w3.name)
    );

    // The engine goes away.
    proxy.down();
    let err = proxied.list_workers().await.unwrap_err();
    assert!(err.retryable(), "{err}");
    assert!(
        matches!(
            err,
            DockerError::Unreachable { .. } | DockerError::CircuitOpen { .. }
        ),
        "{err}"
    );
    let err = proxied.list_workers().await.unwrap_err();
    assert!(matches!(err, DockerError::CircuitOpen { .. }), "{err}");
    assert!(err.retryable());

    // Meanwhile, out of the watcher's sight: w1 is killed, w2 removed.
    env.docker
        .kill_container(
            &w1.name,
            Some(KillContainerOptions {
                signal: "SIGKILL".into(),
            }),
        )
        .await
        .unwrap();
    env.docker
        .remove_container(
            &w2.name,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                link: false,
            }),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The engine is back: the watcher re-lists and reports both, w3 (already reported) not again.
    proxy.up();
    assert_eq!(
        next(&mut rx).await,
        format!("NodeUnexpectedlyLost {} container_crash", w1.name)
    );
    assert_eq!(
        next(&mut rx).await,
        format!("NodeUnexpectedlyLost {} container_destroyed", w2.name)
    );
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        panic!("nothing else expected, got {}", summary(&extra));
    }

    // After the cool-off the breaker lets a probe through and closes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let listed = proxied.list_workers().await.unwrap();
    assert_eq!(listed.len(), 2, "w1 and w3 remain, stopped");

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("watcher stops on shutdown")
        .unwrap()
        .unwrap();
    for w in [&w1, &w2, &w3] {
        direct.remove_worker(&w.name).await.unwrap();
    }
}

/// One `GET` over a fresh connection: (status code, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// Polls `/readyz` until it answers `code` with a body containing `text`, failing after a minute.
async fn wait_readyz(addr: std::net::SocketAddr, code: u16, text: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (got, body) = get(addr, "/readyz").await;
        if got == code && body.contains(text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {code} {text:?}; last {got} {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_false_while_redis_or_the_engine_is_away_and_true_again_after() {
    use autoscaler::readiness::{self, Readiness};
    use tokio_util::sync::CancellationToken;

    let env = TestEnv::new("readyz").await;
    let mut proxy = EngineProxy::start(socket_path(&env.id));
    let docker = docker::connect(&proxy.uri(), Duration::from_secs(5))
        .await
        .unwrap();
    let mut redis = bus::testing::RedisServer::start();
    let bus = bus::connect(redis.config("readyz")).await.unwrap();

    let ready = Arc::new(Readiness::new());
    let stop = CancellationToken::new();
    let probes = readiness::Probes {
        redis: bus.connection(),
        docker,
        timeout: Duration::from_secs(1),
    };
    tokio::spawn(readiness::watch(
        ready.clone(),
        probes,
        Duration::from_millis(100),
        stop.clone(),
    ));
    let state = autoscaler::http::HttpState {
        metrics: Arc::new(autoscaler::metrics::Metrics::new()),
        ready: ready.clone(),
        status: Arc::new(|| Box::pin(async { serde_json::Value::Null })),
    };
    let (bound_tx, bound_rx) = oneshot::channel();
    let http_stop = stop.clone();
    tokio::spawn(autoscaler::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        state,
        http_stop.cancelled_owned(),
        Some(bound_tx),
    ));
    let addr = bound_rx.await.unwrap();

    wait_readyz(addr, 503, "not started").await;
    ready.set_started(true);
    wait_readyz(addr, 200, "ready").await;

    // Redis stops: not ready; the same port serves again: ready again.
    redis.kill();
    wait_readyz(addr, 503, "redis unreachable").await;
    redis.restart();
    wait_readyz(addr, 200, "ready").await;

    // The engine goes away and comes back.
    proxy.down();
    wait_readyz(addr, 503, "docker engine unreachable").await;
    proxy.up();
    wait_readyz(addr, 200, "ready").await;

    stop.cancel();
}
