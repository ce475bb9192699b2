//! Access to Redis: TLS (`rediss://`, a CA made by the test, a client certificate the server requires)
//! and ACL users with passwords from the URL or a file, against real `redis-server`s. Every path of the
//! bus goes through the same settings: publish, the consumers' own XREADGROUP reader, acks, audit.

mod common;

use std::time::Duration;

use bus::testing::{RedisOptions, RedisServer};
use bus::{handler_fn, Delivery};
use common::{numbered, wait_until};
use tokio::sync::oneshot;

/// Publishes three entries and has a consumer group handle them: proves commands, the reader and the
/// ack script all work over `config`'s connection.
async fn round_trip(config: bus::BusConfig) {
    let bus = bus::connect(config).await.expect("connects");
    bus.publisher()
        .publish_batch(&(0..3).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();
    let consumer = bus.consumer();
    consumer.ensure_group("G").await.unwrap();
    let stats = consumer.stats().clone();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        consumer
            .run(
                handler_fn(|_d: Delivery| async { Ok(Vec::new()) }),
                "G",
                "c1",
                async {
                    let _ = stop_rx.await;
                },
            )
            .await
    });
    wait_until(Duration::from_secs(20), "3 entries acked", || async {
        stats.acks("G").acked == 3
    })
    .await;
    let _ = stop_tx.send(());
    task.await.unwrap().unwrap();
    assert_eq!(
        bus.audit()
            .query(&bus::Query::default())
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_and_a_required_client_certificate() {
    let server = RedisServer::start_with(RedisOptions {
        tls: true,
        tls_client_certs: true,
        ..RedisOptions::default()
    });
    assert!(server.url().starts_with("rediss://"), "{}", server.url());
    round_trip(server.config("tls")).await;

    // Without the client certificate the server refuses the handshake.
    let mut no_client_cert = server.config("tls");
    no_client_cert.access.tls_cert_file = None;
    no_client_cert.access.tls_key_file = None;
    let refused = match bus::connect(no_client_cert).await {
        Ok(bus) => bus.audit().len().await.err().map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    assert!(refused.is_some(), "a client without a certificate got in");

    // Without the test CA the server's certificate is not trusted.
    let mut no_ca = server.config("tls");
    no_ca.access.tls_ca_file = None;
    let untrusted = match bus::connect(no_ca).await {
        Ok(bus) => bus.audit().len().await.err().map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    assert!(
        untrusted.is_some(),
        "a certificate of an unknown CA was trusted"
    );
}

/// `rediss://` with the server's own certificate checked but no client certificate asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_only_a_ca_file() {
    let server = RedisServer::start_with(RedisOptions {
        tls: true,
        ..RedisOptions::default()
    });
    let mut config = server.config("tls-ca");
    config.access.tls_cert_file = None;
    config.access.tls_key_file = None;
    round_trip(config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_from_the_url_or_from_username_and_password_file() {
    let admin_password = "admin-pw-1";
    let server = RedisServer::start_with(RedisOptions {
        password: Some(admin_password.into()),
        ..RedisOptions::default()
    });
    let admin = bus::connect(server.config("acl")).await.unwrap();
    let mut conn = admin.connection();
    let _: () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                "writer",
                "on",
                ">writer-pw-2",
                "~acl",
                "~acl:*",
                "+@all",
            ][..],
        )
        .query_async(&mut conn)
        .await
        .unwrap();

    // User and password in the URL.
    round_trip(server.config_for(&server.url_as("writer", "writer-pw-2"), "acl")).await;

    // User from the config, password from a file (with a trailing newline, as editors write it).
    let dir = std::env::temp_dir().join(format!("bus-acl-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("password");
    std::fs::write(&file, "writer-pw-2\n").unwrap();
    let mut config = server.config_for(&format!("redis://127.0.0.1:{}/", server.port()), "acl");
    config.access.username = Some("writer".into());
    config.access.password_file = Some(file.clone());
    let bus = bus::connect(config).await.unwrap();
    bus.publisher().publish(&numbered(9)).await.unwrap();

    // A wrong password is refused, and the error does not show it.
    let wrong = server.config_for(&server.url_as("writer", "not-the-pw-3"), "acl");
    let err = match bus::connect(wrong).await {
        Ok(bus) => bus.audit().len().await.unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains("not-the-pw-3"), "{err}");
    assert!(
        err.contains("WRONGPASS") || err.contains("authentication failed"),
        "{err}"
    );

    // A missing password file is named, and nothing of the URL's password shows.
    let mut missing = server.config_for(&server.url_as("writer", "url-pw-4"), "acl");
    missing.access.password_file = Some(dir.join("nope"));
    let err = bus::connect(missing)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("password file"), "{err}");
    assert!(!err.contains("url-pw-4"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
