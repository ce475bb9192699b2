//! Publishing: batches, idempotency across connections, trimming.

mod common;

use std::sync::Arc;

use bus::testing::RedisServer;
use common::*;

#[tokio::test]
async fn a_batch_is_published_in_order_with_one_id_per_event() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "batch")).await;
    let events: Vec<_> = (0..100).map(numbered).collect();
    let ids = bus.publisher().publish_batch(&events).await.unwrap();
    assert_eq!(ids.len(), 100);
    let got = bus.audit().query(&bus::Query::default()).await.unwrap();
    let numbers: Vec<usize> = got
        .iter()
        .map(|e| number_of(&e.decode().unwrap()))
        .collect();
    assert_eq!(numbers, (0..100).collect::<Vec<_>>());
    assert_eq!(got.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
}

#[tokio::test]
async fn a_hundred_concurrent_idempotent_publishes_of_one_key_over_ten_connections_write_one_entry()
{
    let server = RedisServer::start();
    let mut publishers = Vec::new();
    for _ in 0..10 {
        publishers.push(connect(config(&server, "idem")).await.publisher());
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let p = publishers[i % 10].clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            p.publish_idempotent("scale-up:k3s-worker-3", &numbered(i))
                .await
                .unwrap()
        }));
    }
    let mut written = 0;
    for t in tasks {
        if t.await.unwrap().is_some() {
            written += 1;
        }
    }
    assert_eq!(written, 1, "exactly one publish wins");
    let bus = connect(config(&server, "idem")).await;
    assert_eq!(bus.audit().len().await.unwrap(), 1);
    // Another key is independent.
    assert!(bus
        .publisher()
        .publish_idempotent("other", &numbered(0))
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn an_idempotency_key_can_be_used_again_after_its_ttl() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "ttl");
    cfg.idempotency_ttl = std::time::Duration::from_millis(200);
    let p = connect(cfg).await.publisher();
    assert!(p
        .publish_idempotent("k", &numbered(1))
        .await
        .unwrap()
        .is_some());
    assert!(p
        .publish_idempotent("k", &numbered(2))
        .await
        .unwrap()
        .is_none());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(p
        .publish_idempotent("k", &numbered(3))
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn trimming_keeps_the_stream_near_max_stream_length() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "trim");
    cfg.max_len = 1000;
    let bus = connect(cfg).await;
    let p = bus.publisher();
    for b in 0..100 {
        let events: Vec<_> = (0..100).map(|i| numbered(b * 100 + i)).collect();
        p.publish_batch(&events).await.unwrap();
    }
    for i in 0..50 {
        p.publish(&numbered(10_000 + i)).await.unwrap();
    }
    let len = bus.audit().len().await.unwrap();
    // `MAXLEN ~` trims whole radix-tree nodes (100 entries each by default): never below the limit, at most
    // one node above it.
    assert!((1000..=1100).contains(&len), "XLEN {len} is not near 1000");
}
