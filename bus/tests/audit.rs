//! Audit and admin queries: type and time filters, follow, dead-letter retry and purge, group rewind.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::stream_id::{parse_position, StreamId};
use bus::testing::RedisServer;
use bus::{handler_fn, Delivery, Envelope, HandlerError, Query, RetryTo, RETRY_FOR};
use common::*;

/// `XREADGROUP` of one stream: [(stream, [(id, [(field, value)])])].
type XReadReply = Vec<(String, Vec<(String, Vec<(String, String)>)>)>;

#[tokio::test]
async fn queries_filter_by_type_by_id_range_and_keep_the_newest() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "q")).await;
    let p = bus.publisher();
    let mut ids = Vec::new();
    for i in 0..30 {
        let e = if i % 3 == 0 {
            envelope_of(sample("ScaleUpDecision"))
        } else {
            numbered(i)
        };
        ids.push(p.publish(&e).await.unwrap());
    }
    let audit = bus.audit();
    let ups = audit
        .query(&Query {
            types: vec!["ScaleUpDecision".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ups.len(), 10);
    let from_tenth = audit
        .query(&Query {
            start: ids[10].clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(from_tenth.len(), 20);
    let newest = audit
        .query(&Query {
            count: Some(4),
            newest: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        newest.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        ids[26..].to_vec()
    );
    // A time position maps to the ids written at or after it.
    let first_ms = StreamId::parse(&ids[0]).unwrap().time().unwrap();
    let pos = parse_position(
        &bus::envelope::format_timestamp(first_ms),
        chrono::Utc::now(),
    )
    .unwrap();
    let all = audit
        .query(&Query {
            start: pos.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_sees_entries_published_after_it_started() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "follow")).await;
    bus.publisher().publish(&numbered(0)).await.unwrap();
    let mut follower = bus.audit().follow("$").await.unwrap();
    let p = bus.publisher();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.publish(&numbered(1)).await.unwrap();
        p.publish(&numbered(2)).await.unwrap();
    });
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < 2 && tokio::time::Instant::now() < deadline {
        for e in follower.next_batch().await.unwrap() {
            got.push(number_of(&e.decode().unwrap()));
        }
    }
    assert_eq!(got, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_dead_letter_is_back_on_the_stream_with_its_original_fields_and_gone_from_the_dlq(
) {
    let server = RedisServer::start();
    let bus = connect(config(&server, "retry")).await;
    let e = numbered(42);
    bus.publisher().publish(&e).await.unwrap();
    let consumer = bus.consumer();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let handler = handler_fn(|_d: Delivery| async {
            Err::<Vec<Envelope>, _>(HandlerError::dead_letter("nope"))
        });
        consumer
            .run(handler, "G", "c1", async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    let audit = bus.audit();
    wait_until(Duration::from_secs(5), "dead-lettered", || async {
        audit.dlq_len().await.unwrap() == 1
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();

    let dl = audit.dlq(1).await.unwrap().remove(0);
    let new_id = audit
        .dlq_retry(&dl.id, RetryTo::AllGroups)
        .await
        .unwrap()
        .stream_id;
    assert_eq!(audit.dlq_len().await.unwrap(), 0);
    let back = audit
        .query(&Query {
            start: new_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].decode().unwrap(), e);
    assert_eq!(back[0].fields.len(), bus::envelope::FIELDS.len());
    // Retrying the same dead letter again finds nothing.
    assert!(matches!(
        audit.dlq_retry(&dl.id, RetryTo::AllGroups).await,
        Err(bus::BusError::NoSuchEntry { .. })
    ));
}

/// Two groups see each event; "Failing" dead-letters while `broken` is set, "Steady" never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_dead_letter_goes_to_the_group_that_failed_it_unless_all_groups_are_asked_for() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "target")).await;
    let broken = Arc::new(AtomicBool::new(true));
    let seen: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for group in ["Failing", "Steady"] {
        let consumer = bus.consumer();
        consumer.ensure_group(group).await.unwrap();
        let (broken, seen, mut rx) = (broken.clone(), seen.clone(), rx.clone());
        let name = group.to_string();
        tasks.push(tokio::spawn(async move {
            let me = name.clone();
            let handler = handler_fn(move |d: Delivery| {
                let failed = me == "Failing" && broken.load(Ordering::SeqCst);
                if !failed {
                    let mut seen = seen.lock().unwrap();
                    seen.entry(me.clone())
                        .or_default()
                        .push(number_of(&d.envelope));
                }
                async move {
                    if failed {
                        Err(HandlerError::dead_letter("broken"))
                    } else {
                        Ok(Vec::<Envelope>::new())
                    }
                }
            });
            consumer
                .run(handler, &name, "c1", async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        }));
    }
    let audit = bus.audit();
    let seen_by =
        |group: &'static str| seen.lock().unwrap().get(group).cloned().unwrap_or_default();
    // Settled: nothing pending and everything delivered, in both groups.
    let settled = || async {
        let groups = audit.groups().await.unwrap();
        groups.len() == 2 && groups.iter().all(|g| g.pending == 0 && g.lag == Some(0))
    };
    let one_dead_letter = || async { audit.dlq_len().await.unwrap() == 1 };

    let seven = numbered(7);
    bus.publisher().publish(&seven).await.unwrap();
    wait_until(
        Duration::from_secs(5),
        "7 dead-lettered by Failing",
        one_dead_letter,
    )
    .await;
    wait_until(Duration::from_secs(5), "both groups settled", settled).await;
    assert_eq!(seen_by("Steady"), vec![7]);

    // Still broken: the retry fails again and is back in the DLQ.
    let dl = audit.dlq(1).await.unwrap().remove(0);
    let r = audit.dlq_retry(&dl.id, RetryTo::Group).await.unwrap();
    assert_eq!(r.group.as_deref(), Some("Failing"));
    wait_until(
        Duration::from_secs(5),
        "the retry dead-lettered again",
        one_dead_letter,
    )
    .await;
    wait_until(Duration::from_secs(5), "both groups settled", settled).await;

    // Fixed: the second retry is handled by Failing; Steady acknowledges it without handling it.
    broken.store(false, Ordering::SeqCst);
    let dl = audit.dlq(1).await.unwrap().remove(0);
    let r = audit.dlq_retry(&dl.id, RetryTo::Group).await.unwrap();
    wait_until(Duration::from_secs(5), "both groups settled", settled).await;
    assert_eq!(seen_by("Failing"), vec![7]);
    assert_eq!(seen_by("Steady"), vec![7]);
    assert_eq!(audit.dlq_len().await.unwrap(), 0);
    // The original fields and one `retry_for`, however often it was retried.
    let back = audit
        .query(&Query {
            start: r.stream_id.clone(),
            end: r.stream_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(back[0].fields.len(), bus::envelope::FIELDS.len() + 1);
    assert_eq!(back[0].get_str(RETRY_FOR).as_deref(), Some("Failing"));
    assert_eq!(back[0].decode().unwrap(), seven);

    // --all-groups: both handle it again.
    broken.store(true, Ordering::SeqCst);
    bus.publisher().publish(&numbered(8)).await.unwrap();
    wait_until(
        Duration::from_secs(5),
        "8 dead-lettered by Failing",
        one_dead_letter,
    )
    .await;
    broken.store(false, Ordering::SeqCst);
    let dl = audit.dlq(1).await.unwrap().remove(0);
    let r = audit.dlq_retry(&dl.id, RetryTo::AllGroups).await.unwrap();
    assert_eq!(r.group, None);
    wait_until(Duration::from_secs(5), "both groups settled", settled).await;
    assert_eq!(seen_by("Failing"), vec![7, 8]);
    assert_eq!(seen_by("Steady"), vec![7, 8, 8]);

    stop.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn purge_empties_the_dlq_and_says_how_many_it_held() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "purge")).await;
    for _ in 0..3 {
        let _: String = raw(
            &server.url(),
            redis::cmd("XADD")
                .arg("purge:dlq")
                .arg("*")
                .arg("f")
                .arg("v"),
        )
        .await;
    }
    assert_eq!(bus.audit().dlq_purge().await.unwrap(), 3);
    assert_eq!(bus.audit().dlq_len().await.unwrap(), 0);
}

#[tokio::test]
async fn rewinding_a_group_redelivers_from_the_chosen_entry_and_group_info_shows_lag() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "rewind")).await;
    let ids = bus
        .publisher()
        .publish_batch(&(0..10).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();
    bus.consumer().ensure_group("G").await.unwrap();
    let audit = bus.audit();
    // Read and ack everything as c1.
    let read: redis::Value = raw(
        &server.url(),
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("G")
            .arg("c1")
            .arg("STREAMS")
            .arg("rewind")
            .arg(">"),
    )
    .await;
    drop(read);
    let _: u64 = raw(
        &server.url(),
        redis::cmd("XACK").arg("rewind").arg("G").arg(&ids),
    )
    .await;
    let g = audit.group("G").await.unwrap().unwrap();
    assert_eq!((g.pending, g.lag), (0, Some(0)));
    assert_eq!(g.consumers.len(), 1);
    assert_eq!(g.consumers[0].name, "c1");

    let from = StreamId::parse(&ids[6]).unwrap().previous().unwrap();
    audit.rewind("G", &from.to_string()).await.unwrap();
    let again: XReadReply = raw(
        &server.url(),
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("G")
            .arg("c1")
            .arg("STREAMS")
            .arg("rewind")
            .arg(">"),
    )
    .await;
    let got: Vec<String> = again[0].1.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(got, ids[6..].to_vec());
    assert!(matches!(
        audit.rewind("nope", "0").await,
        Err(bus::BusError::NoSuchGroup { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_consumer_on_a_quiet_stream_is_seen_as_active_and_not_after_it_stops() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "quiet")).await;
    let consumer = bus.consumer();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let handler = handler_fn(|_d: Delivery| async { Ok(Vec::new()) });
        consumer
            .run(handler, "G", "replica-1", async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    let audit = bus.audit();
    wait_until(Duration::from_secs(5), "replica-1 is listed", || async {
        audit
            .group("G")
            .await
            .unwrap()
            .is_some_and(|g| g.consumers.iter().any(|c| c.name == "replica-1"))
    })
    .await;
    // Well past BLOCK with nothing to read: Redis 7.0 alone would not list it at all.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let g = audit.group("G").await.unwrap().unwrap();
    let c = g.consumers.iter().find(|c| c.name == "replica-1").unwrap();
    assert!(c.active_within(Duration::from_millis(1400)), "{c:?}");
    stop.send(()).unwrap();
    task.await.unwrap();
    let g = audit.group("G").await.unwrap().unwrap();
    assert!(g.consumers.iter().all(|c| c.heartbeat_ms_ago.is_none()));
}
