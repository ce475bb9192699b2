//! The leader lease against a real redis-server: one leader at a time, takeover after the TTL, a higher
//! fencing token for every new tenure, and a graceful release that hands over at once.

use std::time::Duration;

use autoscaler::leader::{self, Leadership};
use bus::testing::RedisServer;
use redis::aio::ConnectionManager;
use tokio::sync::watch;

async fn conn(server: &RedisServer) -> ConnectionManager {
    let client = redis::Client::open(server.url()).expect("url");
    ConnectionManager::new(client)
        .await
        .expect("connect to the test redis-server")
}

#[tokio::test]
async fn only_one_replica_leads_and_another_takes_over_after_the_ttl() {
    let server = RedisServer::start();
    let mut a = conn(&server).await;
    let mut b = conn(&server).await;
    let ttl = Duration::from_millis(600);

    let ta = leader::try_acquire(&mut a, "s", "replica-a", ttl)
        .await
        .unwrap();
    let tb = leader::try_acquire(&mut b, "s", "replica-b", ttl)
        .await
        .unwrap();
    assert!(ta.is_some(), "the first replica takes the free lease");
    assert_eq!(tb, None, "the second does not while the lease is held");
    // Renewal keeps the same token.
    assert_eq!(
        leader::try_acquire(&mut a, "s", "replica-a", ttl)
            .await
            .unwrap(),
        ta
    );

    // replica-a dies (stops renewing): replica-b takes over once the TTL ran out, with a higher token.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let tb = leader::try_acquire(&mut b, "s", "replica-b", ttl)
        .await
        .unwrap();
    assert!(
        tb.is_some() && tb > ta,
        "takeover after the TTL with a higher fencing token: {ta:?} -> {tb:?}"
    );
    assert_eq!(
        leader::try_acquire(&mut a, "s", "replica-a", ttl)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_graceful_leader_releases_the_lease_for_the_next_replica() {
    let server = RedisServer::start();
    let ttl = Duration::from_secs(30);
    let (tx, mut rx) = watch::channel(Leadership::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(leader::run(
        conn(&server).await,
        "s".into(),
        "replica-a".into(),
        ttl,
        tx,
        async move {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| l.leader))
        .await
        .expect("replica-a becomes leader")
        .unwrap();
    let mut b = conn(&server).await;
    assert_eq!(
        leader::try_acquire(&mut b, "s", "replica-b", ttl)
            .await
            .unwrap(),
        None
    );
    stop_tx.send(()).unwrap();
    task.await.unwrap();
    // No need to wait 30 s: the lease was released.
    assert!(leader::try_acquire(&mut b, "s", "replica-b", ttl)
        .await
        .unwrap()
        .is_some());
}
