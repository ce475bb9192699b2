//! A missing engine socket gives a clear error. Alone in its test binary, because it changes
//! `DOCKER_HOST` for the whole process.

use std::time::Duration;

use autoscaler::docker::{self, DockerWorkerPool, PoolConfig};

#[tokio::test]
async fn docker_missing_socket_gives_a_clear_error() {
    // Explicit host.
    let err = docker::connect("unix:///nonexistent.sock", Duration::from_secs(2))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot reach the Docker engine at unix:///nonexistent.sock: "),
        "{msg}"
    );
    assert!(err.retryable());

    // Through DOCKER_HOST, as an operator would misconfigure it, and through the pool.
    std::env::set_var("DOCKER_HOST", "unix:///nonexistent.sock");
    let err = DockerWorkerPool::connect(PoolConfig::default())
        .await
        .unwrap_err();
    std::env::remove_var("DOCKER_HOST");
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot reach the Docker engine at unix:///nonexistent.sock: "),
        "{msg}"
    );
    assert_eq!(err.kind(), "unreachable");
}

#[tokio::test]
async fn docker_a_tls_engine_whose_files_are_missing_names_the_file() {
    let access = docker::EngineAccess {
        tls: Some(docker::EngineTls {
            ca: "/nonexistent/ca.pem".into(),
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        }),
        ssh_key: None,
    };
    let err = docker::connect_with("tcp://127.0.0.1:9", &access, Duration::from_secs(2))
        .await
        .map(|_| ())
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/"), "{msg}");
    eprintln!("{msg}");
}
