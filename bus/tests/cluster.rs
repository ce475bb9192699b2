//! The bus on a real Redis Cluster of three primaries (`redis-cli --cluster create` on loopback): two
//! streams with different hash tags, on different primaries, used at once — publish, idempotent publish,
//! consumer groups with handler outputs (the outputs-and-ack script), dead letters and their retry,
//! heartbeats, audit paging and follow — and every key of a stream in its slot's node.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::testing::RedisCluster;
use bus::{handler_fn, Delivery, Envelope, HandlerError, RetryTo};
use common::*;
use redis::AsyncCommands;

/// Two hash tags whose slots two different primaries serve.
fn tags_on_two_primaries(cluster: &RedisCluster) -> [(String, u16); 2] {
    let mut first: Option<(String, u16)> = None;
    for i in 0..64 {
        let tag = format!("lab-{i}");
        let Some(owner) = cluster.owner_of(&format!("{{{tag}}}")) else {
            panic!("no owner for {{{tag}}}");
        };
        match &first {
            None => first = Some((tag, owner)),
            Some((t, o)) if *o != owner => return [(t.clone(), *o), (tag, owner)],
            Some(_) => {}
        }
    }
    panic!("64 tags all on one primary");
}

/// Everything one autoscaler does with its stream, on `stream` (which carries a hash tag).
async fn one_lab(cluster_cfg: bus::BusConfig) -> bus::Bus {
    let bus = connect(cluster_cfg).await;
    let publisher = bus.publisher();

    // Plain and pipelined publishes, and an idempotent one that yields one entry for two calls.
    publisher.publish(&numbered(0)).await.unwrap();
    publisher
        .publish_batch(&(1..100).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();
    let once = envelope_of(sample("NodeReady"));
    assert!(publisher
        .publish_idempotent("ready:n-1", &once)
        .await
        .unwrap()
        .is_some());
    assert!(publisher
        .publish_idempotent("ready:n-1", &once)
        .await
        .unwrap()
        .is_none());
    // A trigger for the handler's output, and a poison entry for the DLQ.
    publisher
        .publish(&envelope_of(sample("PendingPodsDetected")))
        .await
        .unwrap();
    publisher
        .publish(&envelope_of(sample("NodeRemoved")))
        .await
        .unwrap();

    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        handler_fn(move |d: Delivery| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().insert(d.stream_id.clone());
                match d.envelope.event_type() {
                    "NodeRemoved" => Err(HandlerError::dead_letter("poison for the test")),
                    // Twice the same output id: the script writes it once.
                    "PendingPodsDetected" => Ok(vec![
                        Envelope::caused_by(&d.envelope, "G", sample("ScaleUpDecision"))
                            .with_deterministic_id("decision"),
                        Envelope::caused_by(&d.envelope, "G", sample("ScaleUpDecision"))
                            .with_deterministic_id("decision"),
                    ]),
                    _ => Ok(Vec::new()),
                }
            }
        })
    };
    let consumer = bus.consumer();
    let stats = consumer.stats().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        consumer
            .run(handler, "G", "c1", async {
                let _ = stop_rx.await;
            })
            .await
    });
    // 100 numbered + 1 idempotent + trigger + poison + the one decision.
    wait_until(Duration::from_secs(20), "every entry handled", || async {
        seen.lock().unwrap().len() == 104
    })
    .await;
    let audit = bus.audit();
    wait_until(Duration::from_secs(10), "one dead letter", || async {
        audit.dlq_len().await.unwrap() == 1
    })
    .await;
    let hb_key = format!("{}:consumers:G", bus.config().stream);
    let heartbeats: std::collections::HashMap<String, i64> =
        bus.connection().hgetall(&hb_key).await.unwrap();
    assert!(heartbeats.contains_key("c1"), "{heartbeats:?}");

    // The dead letter goes back to its group and is dead-lettered again (the handler still refuses).
    let dl = audit.dlq(1).await.unwrap().remove(0);
    assert_eq!(dl.error, "poison for the test");
    let retried = audit.dlq_retry(&dl.id, RetryTo::Group).await.unwrap();
    assert_eq!(retried.group.as_deref(), Some("G"));
    wait_until(
        Duration::from_secs(10),
        "the retried entry handled",
        || async { seen.lock().unwrap().contains(&retried.stream_id) },
    )
    .await;
    wait_until(Duration::from_secs(10), "dead-lettered again", || async {
        audit.dlq_len().await.unwrap() == 1
    })
    .await;

    // A follower sees what is published after it started.
    let mut follower = audit.follow("$").await.unwrap();
    let last = publisher.publish(&numbered(1000)).await.unwrap();
    let mut followed = Vec::new();
    while !followed.iter().any(|e: &bus::RawEntry| e.id == last) {
        followed.extend(follower.next_batch().await.unwrap());
    }
    wait_until(
        Duration::from_secs(10),
        "the followed entry handled",
        || async { seen.lock().unwrap().contains(&last) },
    )
    .await;
    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    // 100 numbered, the idempotent one, the trigger, the decision, the followed one (not the poison).
    assert_eq!(stats.totals("G").handled, 104);

    // Paging reads the whole stream, page by page, each entry once.
    let mut pages = audit.pages("-", "+").with_page_size(7);
    let mut ids = Vec::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        ids.extend(page.into_iter().map(|e| e.id));
    }
    let decisions = decisions(&audit).await;
    assert_eq!(decisions.len(), 1, "the output is written once");
    // 104 entries, the retried one and the followed one.
    assert_eq!(ids.len(), 106);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    assert_eq!(audit.len().await.unwrap(), 106);
    let group = audit.group("G").await.unwrap().expect("group G");
    assert_eq!(group.pending, 0, "every entry acked");
    bus
}

/// The stream's `ScaleUpDecision`s.
async fn decisions(audit: &bus::Audit) -> Vec<bus::RawEntry> {
    let q = bus::Query {
        types: vec!["ScaleUpDecision".into()],
        ..bus::Query::default()
    };
    audit.query(&q).await.unwrap()
}

/// The keys of the node on `port`.
async fn keys_on(port: u16) -> Vec<String> {
    raw(
        &format!("redis://127.0.0.1:{port}/"),
        redis::cmd("KEYS").arg("*"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_labs_share_a_redis_cluster_each_stream_with_all_its_keys_on_its_own_primary() {
    let cluster = RedisCluster::start();
    let [(tag_a, owner_a), (tag_b, owner_b)] = tags_on_two_primaries(&cluster);
    let stream_a = format!("{{{tag_a}}}:autoscaler_events");
    let stream_b = format!("{{{tag_b}}}:autoscaler_events");
    let (a, b) = tokio::join!(
        one_lab(cluster.config(&stream_a)),
        one_lab(cluster.config(&stream_b))
    );

    // The streams, DLQs and idempotency keys (the heartbeats were checked while the consumers ran; a
    // graceful stop deletes them): each on its tag's primary, none elsewhere.
    for (bus, owner, tag) in [(&a, owner_a, &tag_a), (&b, owner_b, &tag_b)] {
        let stream = &bus.config().stream;
        let here = keys_on(owner).await;
        for expected in [
            stream.clone(),
            format!("{stream}:dlq"),
            format!("{stream}:idem:ready:n-1"),
            format!("{stream}:idem:event:{}", uuid_of_decision(bus).await),
        ] {
            assert!(
                here.contains(&expected),
                "{expected} not on {owner}: {here:?}"
            );
        }
        for port in cluster.ports().into_iter().filter(|p| *p != owner) {
            let there = keys_on(port).await;
            assert!(
                there.iter().all(|k| !k.contains(&format!("{{{tag}}}"))),
                "keys of {{{tag}}} on {port}: {there:?}"
            );
        }
    }
}

/// The event id of the stream's one `ScaleUpDecision` (its idempotency key is `event:<id>`).
async fn uuid_of_decision(bus: &bus::Bus) -> String {
    let e = decisions(&bus.audit()).await.remove(0);
    e.decode().unwrap().event_id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_a_hash_tag_is_refused_on_a_cluster_before_anything_is_written() {
    let cluster = RedisCluster::start();
    let Err(e) = bus::connect(cluster.config("autoscaler_events")).await else {
        panic!("an untagged stream connected on a cluster");
    };
    assert!(e.to_string().contains("hash tag"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_slot_moves_to_another_primary_meanwhile_loses_and_repeats_nothing() {
    let cluster = Arc::new(RedisCluster::start());
    let [(tag, from), _] = tags_on_two_primaries(&cluster);
    let to = cluster
        .ports()
        .into_iter()
        .find(|p| *p != from)
        .expect("another primary");
    let stream = format!("{{{tag}}}:autoscaler_events");
    let bus = connect(cluster.config(&stream)).await;

    // A group that answers each PendingPodsDetected with one decision (the outputs-and-ack script).
    let handled: Arc<Mutex<Vec<(String, std::time::Instant)>>> = Arc::default();
    let handler = {
        let handled = handled.clone();
        handler_fn(move |d: Delivery| {
            let handled = handled.clone();
            async move {
                let at = std::time::Instant::now();
                handled.lock().unwrap().push((d.stream_id.clone(), at));
                Ok(match d.envelope.event_type() {
                    "PendingPodsDetected" => {
                        vec![
                            Envelope::caused_by(&d.envelope, "G", sample("ScaleUpDecision"))
                                .with_deterministic_id(&d.stream_id),
                        ]
                    }
                    _ => Vec::new(),
                })
            }
        })
    };
    let consumer = bus.consumer();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let consuming = tokio::spawn(async move {
        consumer
            .run(handler, "G", "c1", async {
                let _ = stop_rx.await;
            })
            .await
    });
    // Publishes all along, on two publishers: plain entries on one; idempotent ones (two keys: the
    // stream and its idem key) and triggers on the other. A command over two keys of a slot half
    // moved is refused with TRYAGAIN (retried until the slot has moved); a plain XADD follows ASK.
    let publishing = |kind: usize| {
        let publisher = bus.publisher();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (0..150).filter(|i| (i % 3 == 0) == (kind == 0)) {
                let id = match i % 3 {
                    0 => publisher.publish(&numbered(i)).await,
                    1 => publisher
                        .publish_idempotent(&format!("n-{i}"), &numbered(i))
                        .await
                        .map(|id| id.expect("a new key")),
                    _ => {
                        publisher
                            .publish(&envelope_of(sample("PendingPodsDetected")))
                            .await
                    }
                };
                let id = id.unwrap_or_else(|e| panic!("publish {i} while the slot moves: {e}"));
                ids.push((id, i % 3 == 0, std::time::Instant::now()));
                tokio::time::sleep(Duration::from_millis(if kind == 0 { 20 } else { 40 })).await;
            }
            ids
        })
    };
    let (plain, others) = (publishing(0), publishing(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moving = cluster.clone();
    let key = stream.clone();
    let started = std::time::Instant::now();
    let stream_moved = tokio::task::spawn_blocking(move || {
        moving.migrate_slot(&key, to, Duration::from_millis(150))
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("moving the slot: {e}"));
    let slot_moved = std::time::Instant::now();
    assert_eq!(cluster.owner_of(&stream), Some(to), "the slot moved");
    let mut published = plain.await.unwrap();
    published.extend(others.await.unwrap());
    let in_half_moved = |at: &std::time::Instant| *at > stream_moved && *at < slot_moved;
    let plain_half = published
        .iter()
        .filter(|(_, plain, at)| *plain && in_half_moved(at))
        .count();
    let published: HashMap<String, bool> = published
        .into_iter()
        .map(|(id, plain, _)| (id, plain))
        .collect();

    // Every entry handled once, every decision written once, nothing pending.
    let expected = published.len() + 50;
    wait_until(Duration::from_secs(20), "every entry handled", || async {
        handled.lock().unwrap().len() >= expected
    })
    .await;
    let audit = bus.audit();
    wait_until(Duration::from_secs(10), "every entry acked", || async {
        audit
            .group("G")
            .await
            .ok()
            .flatten()
            .is_some_and(|g| g.pending == 0)
    })
    .await;
    stop_tx.send(()).unwrap();
    consuming.await.unwrap().unwrap();
    let handled = handled.lock().unwrap().clone();
    // While the stream was on the new node and the slot still the old one's, reads went on (after an
    // `ASK`, to the new node), not only once the slot had moved.
    let half_moved = handled
        .iter()
        .filter(|(id, at)| published.get(id) == Some(&true) && in_half_moved(at))
        .count();
    assert!(
        half_moved > 0,
        "of the {plain_half} plain entries published in the {:?} the slot was half moved, none handled then",
        slot_moved - stream_moved
    );
    let unique: HashSet<&String> = handled.iter().map(|(id, _)| id).collect();
    assert_eq!(unique.len(), handled.len(), "an entry handled twice");
    assert!(published.keys().all(|id| unique.contains(id)));
    let decisions = decisions(&audit).await;
    assert_eq!(decisions.len(), 50, "one decision per trigger");
    assert_eq!(
        audit.len().await.unwrap(),
        200,
        "150 published, 50 decisions"
    );
    eprintln!(
        "slot of {stream} moved {from} -> {to} in {:.1?} while 150 entries were published: {} handled, each once, {half_moved} plain ones in the {:.1?} the slot was half moved ({plain_half} published then)",
        slot_moved - started,
        handled.len(),
        slot_moved - stream_moved
    );
}
