//! The consumer-group runtime against a real redis-server: claims, retries, dead letters, restarts,
//! shutdown.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::testing::RedisServer;
use bus::{handler_fn, Delivery, Envelope, HandlerError};
use common::*;
use tokio::sync::oneshot;

type Calls = Arc<Mutex<HashMap<String, u32>>>;

fn count(calls: &Calls, d: &Delivery) {
    *calls
        .lock()
        .unwrap()
        .entry(d.stream_id.clone())
        .or_default() += 1;
}

fn calls_len(calls: &Calls) -> usize {
    calls.lock().unwrap().len()
}

/// Runs a consumer in a task; returns the task, its stats and a shutdown trigger.
fn spawn_consumer<H: bus::GroupHandler>(
    bus: &bus::Bus,
    handler: H,
    group: &str,
    name: &str,
) -> (tokio::task::JoinHandle<()>, bus::Stats, oneshot::Sender<()>) {
    let consumer = bus.consumer();
    let stats = consumer.stats().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let (group, name) = (group.to_string(), name.to_string());
    let task = tokio::spawn(async move {
        consumer
            .run(handler, &group, &name, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (task, stats, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_consumer_killed_mid_batch_are_handled_by_another_none_lost_none_acked_twice()
{
    let server = RedisServer::start();
    let mut cfg = config(&server, "kill");
    cfg.concurrency = 16;
    cfg.batch_size = 16;
    cfg.claim_idle = Duration::from_millis(300);
    let bus = connect(cfg).await;
    let ids = bus
        .publisher()
        .publish_batch(&(0..50).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();

    // A handles most entries but hangs on every fifth: those are in flight, un-acked, when A is killed.
    let a_calls: Calls = Calls::default();
    let hanging = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (a_calls, hanging) = (a_calls.clone(), hanging.clone());
        handler_fn(move |d: Delivery| {
            let (a_calls, hanging) = (a_calls.clone(), hanging.clone());
            async move {
                count(&a_calls, &d);
                if number_of(&d.envelope).is_multiple_of(5) {
                    hanging.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                Ok(Vec::new())
            }
        })
    };
    let (a, a_stats, _a_stop) = spawn_consumer(&bus, handler, "G", "consumer-a");
    wait_until(
        Duration::from_secs(10),
        "A acked 40 and hangs on 10",
        || async { a_stats.acks("G").acked == 40 && hanging.load(Ordering::SeqCst) == 10 },
    )
    .await;
    a.abort();
    let _ = a.await;
    assert_eq!(pending(&server.url(), "kill", "G").await, 10);

    let b_calls: Calls = Calls::default();
    let handler = {
        let b_calls = b_calls.clone();
        handler_fn(move |d: Delivery| {
            let b_calls = b_calls.clone();
            async move {
                count(&b_calls, &d);
                Ok(Vec::new())
            }
        })
    };
    let (b, b_stats, b_stop) = spawn_consumer(&bus, handler, "G", "consumer-b");
    wait_until(
        Duration::from_secs(10),
        "B handled A's 10 entries",
        || async { b_stats.acks("G").acked == 10 },
    )
    .await;
    b_stop.send(()).unwrap();
    b.await.unwrap();

    let a_calls = a_calls.lock().unwrap().clone();
    let b_calls = b_calls.lock().unwrap().clone();
    let a_acked: HashSet<&String> = a_calls
        .keys()
        .filter(|id| !b_calls.contains_key(*id))
        .collect();
    // None lost: every entry was handled by A (and acked) or by B.
    for id in &ids {
        assert!(
            a_calls.contains_key(id) || b_calls.contains_key(id),
            "{id} lost"
        );
    }
    // B handled exactly the 10 A never acked, each once; nothing A acked came again.
    assert_eq!(b_calls.len(), 10);
    assert!(b_calls.values().all(|&n| n == 1));
    assert_eq!(a_acked.len(), 40);
    // None acked twice: every XACK removed a pending entry, 50 in all.
    assert_eq!(a_stats.acks("G").misses + b_stats.acks("G").misses, 0);
    assert_eq!(a_stats.acks("G").acked + b_stats.acks("G").acked, 50);
    assert_eq!(pending(&server.url(), "kill", "G").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_lands_in_the_dlq_after_max_deliveries_with_its_reason_and_delivery_count() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "poison");
    cfg.max_deliveries = 3;
    cfg.claim_idle = Duration::from_millis(150);
    let bus = connect(cfg).await;
    let id = bus.publisher().publish(&numbered(7)).await.unwrap();
    let calls: Calls = Calls::default();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (calls, attempts) = (calls.clone(), attempts.clone());
        handler_fn(move |d: Delivery| {
            count(&calls, &d);
            attempts.lock().unwrap().push(d.deliveries);
            async { Err::<Vec<Envelope>, _>(HandlerError::retry("boom: node agent unreachable")) }
        })
    };
    let (task, stats, stop) = spawn_consumer(&bus, handler, "NodeManager", "c1");
    let audit = bus.audit();
    wait_until(
        Duration::from_secs(10),
        "the entry is dead-lettered",
        || async { audit.dlq_len().await.unwrap() == 1 },
    )
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();

    assert_eq!(*attempts.lock().unwrap(), vec![1, 2, 3]);
    let dl = &audit.dlq(10).await.unwrap()[0];
    assert_eq!(dl.original_id, id);
    assert_eq!(dl.group, "NodeManager");
    assert_eq!(dl.error, "boom: node agent unreachable");
    assert_eq!(dl.deliveries, 3);
    assert!(!dl.failed_at.is_empty());
    // The original fields come first and still decode.
    assert_eq!(number_of(&dl.entry.decode().unwrap()), 7);
    let c = stats.counters("NodeManager", "NodeReady");
    assert_eq!((c.failed, c.dead_lettered, c.handled), (2, 1, 0));
    assert_eq!(pending(&server.url(), "poison", "NodeManager").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_asking_for_a_dead_letter_gets_one_at_once() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "dl-now")).await;
    bus.publisher().publish(&numbered(1)).await.unwrap();
    let handler = handler_fn(|_d: Delivery| async {
        Err::<Vec<Envelope>, _>(HandlerError::dead_letter("target_workers above max_nodes"))
    });
    let (task, _stats, stop) = spawn_consumer(&bus, handler, "G", "c1");
    let audit = bus.audit();
    wait_until(Duration::from_secs(5), "dead-lettered", || async {
        audit.dlq_len().await.unwrap() == 1
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let dl = &audit.dlq(1).await.unwrap()[0];
    assert_eq!(dl.deliveries, 1);
    assert_eq!(dl.error, "target_workers above max_nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_malformed_entries_go_to_the_dlq_and_every_valid_one_is_handled() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "malformed");
    cfg.max_len = 100_000;
    let bus = connect(cfg).await;
    let valid = numbered(0).to_fields();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        // Interleaved: one valid, one malformed, of five kinds.
        let mut cmd = redis::cmd("XADD");
        cmd.arg("malformed").arg("*");
        for (k, v) in numbered(i).to_fields() {
            cmd.arg(k).arg(v);
        }
        pipe.add_command(cmd).ignore();
        let mut bad: Vec<(String, Vec<u8>)> = valid
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone().into_bytes()))
            .collect();
        match i % 5 {
            0 => bad[4].1 = b"{not json".to_vec(),
            1 => bad[1].1 = b"NoSuchEvent".to_vec(),
            2 => {
                bad.remove(0);
            }
            3 => bad[4].1 = vec![0xff, 0xfe, 0x00],
            _ => bad = vec![("f".into(), b"v".to_vec())],
        }
        let mut cmd = redis::cmd("XADD");
        cmd.arg("malformed").arg("*");
        for (k, v) in bad {
            cmd.arg(k).arg(v);
        }
        pipe.add_command(cmd).ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();

    let calls: Calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        handler_fn(move |d: Delivery| {
            count(&calls, &d);
            async { Ok(Vec::new()) }
        })
    };
    let (task, stats, stop) = spawn_consumer(&bus, handler, "G", "c1");
    let audit = bus.audit();
    wait_until(
        Duration::from_secs(30),
        "1000 handled and 1000 dead letters",
        || async { calls_len(&calls) == 1000 && audit.dlq_len().await.unwrap() == 1000 },
    )
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let numbers: HashSet<usize> = audit
        .query(&bus::Query {
            types: vec!["NodeReady".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.decode().ok())
        .map(|e| number_of(&e))
        .collect();
    assert_eq!(numbers.len(), 1000);
    assert!(calls.lock().unwrap().values().all(|&n| n == 1));
    let dls = audit.dlq(2000).await.unwrap();
    assert!(dls
        .iter()
        .all(|d| d.error.starts_with("undecodable entry:") && d.deliveries == 1));
    assert!(dls
        .iter()
        .any(|d| d.error.contains("unknown event type `NoSuchEvent`")));
    assert!(dls
        .iter()
        .any(|d| d.error.contains("missing field `event_id`")));
    assert_eq!(stats.totals("G").dead_lettered, 1000);
    assert_eq!(pending(&server.url(), "malformed", "G").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_resume_after_redis_restarts_and_handle_everything_published_after_it() {
    let mut server = RedisServer::start();
    let bus = connect(config(&server, "restart")).await;
    let publisher = bus.publisher();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let handler = {
        let seen = seen.clone();
        handler_fn(move |d: Delivery| {
            seen.lock().unwrap().insert(number_of(&d.envelope));
            async { Ok(Vec::new()) }
        })
    };
    let (task, _stats, stop) = spawn_consumer(&bus, handler, "G", "c1");
    for i in 0..20 {
        publisher.publish(&numbered(i)).await.unwrap();
    }
    wait_until(
        Duration::from_secs(5),
        "20 handled before the restart",
        || async { seen.lock().unwrap().len() == 20 },
    )
    .await;

    tokio::task::block_in_place(|| server.restart());

    // The first commands after the restart may fail while the connection is re-established.
    for i in 100..120 {
        let e = numbered(i);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while let Err(err) = publisher.publish(&e).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publish after restart: {err}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    wait_until(
        Duration::from_secs(20),
        "the 20 published after the restart are handled",
        || async {
            let seen = seen.lock().unwrap();
            (100..120).all(|i| seen.contains(&i))
        },
    )
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_and_acks_in_flight_work() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "shutdown")).await;
    bus.publisher()
        .publish_batch(&(0..10).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (started, finished) = (started.clone(), finished.clone());
        handler_fn(move |_d: Delivery| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(Vec::new())
            }
        })
    };
    let (task, stats, stop) = spawn_consumer(&bus, handler, "G", "c1");
    wait_until(Duration::from_secs(5), "all 10 in flight", || async {
        started.load(Ordering::SeqCst) == 10
    })
    .await;
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    stop.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(finished.load(Ordering::SeqCst), 10);
    assert_eq!(stats.acks("G").acked, 10);
    assert_eq!(pending(&server.url(), "shutdown", "G").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_first_drains_its_own_pending_list() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "drain");
    // No claim would pick these up during the test: only the pending-list drain can.
    cfg.claim_idle = Duration::from_secs(3600);
    let bus = connect(cfg).await;
    bus.publisher()
        .publish_batch(&(0..5).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();
    // Deliver them to c1 and never ack, as if c1 crashed.
    let _: redis::Value = raw(
        &server.url(),
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg("drain")
            .arg("G")
            .arg("0"),
    )
    .await;
    let _: redis::Value = raw(
        &server.url(),
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("G")
            .arg("c1")
            .arg("STREAMS")
            .arg("drain")
            .arg(">"),
    )
    .await;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let attempts = attempts.clone();
        handler_fn(move |d: Delivery| {
            attempts.lock().unwrap().push(d.deliveries);
            async { Ok(Vec::new()) }
        })
    };
    let (task, stats, stop) = spawn_consumer(&bus, handler, "G", "c1");
    wait_until(
        Duration::from_secs(5),
        "the 5 pending entries are handled",
        || async { stats.acks("G").acked == 5 },
    )
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(*attempts.lock().unwrap(), vec![2; 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_outputs_are_published_with_its_cause_and_the_input_is_acked() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "outputs")).await;
    let input = envelope_of(sample("PendingPodsDetected"));
    bus.publisher().publish(&input).await.unwrap();
    let handler = handler_fn(|d: Delivery| async move {
        if d.envelope.event_type() != "PendingPodsDetected" {
            return Ok(Vec::new());
        }
        Ok(vec![Envelope::caused_by(
            &d.envelope,
            "ScalingDecisionEngine",
            sample("ScaleUpDecision"),
        )
        .with_deterministic_id(&format!(
            "decision-of-{}",
            d.envelope.event_id
        ))])
    });
    let (task, stats, stop) = spawn_consumer(&bus, handler, "ScalingDecisionEngine", "c1");
    wait_until(
        Duration::from_secs(5),
        "the decision and its own delivery are handled",
        || async { stats.totals("ScalingDecisionEngine").handled == 2 },
    )
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let entries = bus.audit().query(&bus::Query::default()).await.unwrap();
    assert_eq!(entries.len(), 2);
    let decision = entries[1].decode().unwrap();
    assert_eq!(decision.event_type(), "ScaleUpDecision");
    assert_eq!(decision.causation_id, Some(input.event_id));
    assert_eq!(decision.correlation_id, input.correlation_id);
    assert_eq!(
        pending(&server.url(), "outputs", "ScalingDecisionEngine").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_with_an_event_id_already_published_is_not_published_again() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "dedup")).await;
    // Two inputs that mean the same thing: the handler derives the same output id from both.
    for _ in 0..2 {
        bus.publisher()
            .publish(&envelope_of(sample("PendingPodsDetected")))
            .await
            .unwrap();
    }
    let handler = handler_fn(|d: Delivery| async move {
        if d.envelope.event_type() != "PendingPodsDetected" {
            return Ok(Vec::new());
        }
        Ok(vec![Envelope::caused_by(
            &d.envelope,
            "ScalingDecisionEngine",
            sample("ScaleUpDecision"),
        )
        .with_deterministic_id("one-decision-for-both")])
    });
    let (task, stats, stop) = spawn_consumer(&bus, handler, "ScalingDecisionEngine", "c1");
    wait_until(
        Duration::from_secs(5),
        "both inputs and the one decision are handled",
        || async { stats.totals("ScalingDecisionEngine").handled == 3 },
    )
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let entries = bus.audit().query(&bus::Query::default()).await.unwrap();
    let decisions = entries
        .iter()
        .filter(|e| {
            e.decode()
                .is_ok_and(|d| d.event_type() == "ScaleUpDecision")
        })
        .count();
    assert_eq!(decisions, 1, "the second copy of the output is suppressed");
    assert_eq!(
        pending(&server.url(), "dedup", "ScalingDecisionEngine").await,
        0,
        "both inputs are acked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reads_with_the_urls_password_and_database() {
    let server = RedisServer::start();
    let _: () = raw(
        &server.url(),
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg("s3cret"),
    )
    .await;
    // Database 3, behind a password: the consumer's own reader connection must AUTH and SELECT.
    let mut cfg = config(&server, "authed");
    cfg.url = format!("redis://:s3cret@127.0.0.1:{}/3", server.port());
    let bus = connect(cfg).await;
    bus.publisher()
        .publish_batch(&(0..5).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let handler = {
        let seen = seen.clone();
        handler_fn(move |_d: Delivery| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Ok(Vec::new()) }
        })
    };
    let (task, stats, stop) = spawn_consumer(&bus, handler, "G", "c1");
    // Published after the consumer reached its blocking read, so the reader connection delivers them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    bus.publisher()
        .publish_batch(&(5..10).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "all 10 handled", || async {
        seen.load(Ordering::SeqCst) == 10
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(stats.acks("G").acked, 10);
    // The entries are in database 3, not 0.
    let url3 = format!("redis://:s3cret@127.0.0.1:{}/3", server.port());
    let url0 = format!("redis://:s3cret@127.0.0.1:{}/0", server.port());
    let len3: usize = raw(&url3, redis::cmd("XLEN").arg("authed")).await;
    let len0: usize = raw(&url0, redis::cmd("XLEN").arg("authed")).await;
    assert_eq!((len3, len0), (10, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_entries_are_claimed_once_its_heartbeat_stops_not_after_claim_idle() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "dead");
    // Far beyond the test: only the heartbeat can tell that A is gone.
    cfg.claim_idle = Duration::from_secs(3600);
    let bus = connect(cfg).await;
    bus.publisher()
        .publish_batch(&(0..5).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();
    // A takes all five and never finishes them; then its task is dropped, as a kill -9 would end it
    // (no shutdown, no ack, the heartbeat stops).
    let taken = Arc::new(AtomicUsize::new(0));
    let hang = {
        let taken = taken.clone();
        handler_fn(move |_d: Delivery| {
            taken.fetch_add(1, Ordering::SeqCst);
            async {
                std::future::pending::<()>().await;
                Ok(Vec::new())
            }
        })
    };
    let (a, _, _stop_a) = spawn_consumer(&bus, hang, "G", "a");
    wait_until(Duration::from_secs(5), "A holds all five", || async {
        taken.load(Ordering::SeqCst) == 5
    })
    .await;
    // A live consumer with a handler running longer than DEAD_AFTER keeps its entries.
    let calls: Calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        handler_fn(move |d: Delivery| {
            count(&calls, &d);
            async { Ok(Vec::new()) }
        })
    };
    let (b, stats, stop_b) = spawn_consumer(&bus, handler, "G", "b");
    tokio::time::sleep(bus::consumer::DEAD_AFTER + Duration::from_secs(3)).await;
    assert_eq!(calls_len(&calls), 0, "A is alive: nothing is taken from it");

    a.abort();
    let _ = a.await;
    let killed = std::time::Instant::now();
    wait_until(
        bus::consumer::DEAD_AFTER + Duration::from_secs(10),
        "B handles A's five",
        || async { calls_len(&calls) == 5 },
    )
    .await;
    let took = killed.elapsed();
    stop_b.send(()).unwrap();
    b.await.unwrap();
    assert_eq!(stats.acks("G").acked, 5);
    assert_eq!(pending(&server.url(), "dead", "G").await, 0);
    assert!(
        took < Duration::from_secs(60),
        "claimed {took:?} after the kill, long before claim_idle"
    );
}

/// Every call of a handler: (consumer, entry number, delivery count, when).
type Seen = Arc<Mutex<Vec<(&'static str, usize, u32, std::time::Instant)>>>;

/// A handler that records its calls in `seen` and fails the first delivery of each entry with what
/// `fail` says for its number (`None`: succeed).
fn fails_first(
    name: &'static str,
    seen: &Seen,
    fail: fn(usize) -> Option<HandlerError>,
) -> impl bus::GroupHandler {
    let seen = seen.clone();
    handler_fn(move |d: Delivery| {
        let n = number_of(&d.envelope);
        seen.lock()
            .unwrap()
            .push((name, n, d.deliveries, std::time::Instant::now()));
        let result = match fail(n) {
            Some(e) if d.deliveries == 1 => Err(e),
            _ => Ok(Vec::new()),
        };
        async move { result }
    })
}

/// The calls for entry `n`: (consumer, delivery count, when).
fn calls_of(seen: &Seen, n: usize) -> Vec<(&'static str, u32, std::time::Instant)> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|c| c.1 == n)
        .map(|c| (c.0, c.2, c.3))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_handled_again_after_its_delay_long_before_claim_idle() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "retry-delay");
    // No claim would pick the entries up during the test: only the consumer's own retry can.
    cfg.claim_idle = Duration::from_secs(3600);
    let bus = connect(cfg).await;
    // Entry 0 fails with a plain retry (1 s after a first delivery), entry 1 asks for 300 ms.
    let seen = Seen::default();
    let handler = fails_first("c1", &seen, |n| match n {
        0 => Some(HandlerError::retry("node agent unreachable")),
        _ => Some(HandlerError::retry_after(
            Duration::from_millis(300),
            "drain in progress",
        )),
    });
    let (task, stats, stop) = spawn_consumer(&bus, handler, "G", "c1");
    bus.publisher()
        .publish_batch(&(0..2).map(numbered).collect::<Vec<_>>())
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "both entries acked", || async {
        stats.acks("G").acked == 2
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();

    for (n, delay) in [(0, Duration::from_secs(1)), (1, Duration::from_millis(300))] {
        let calls = calls_of(&seen, n);
        let counts: Vec<u32> = calls.iter().map(|c| c.1).collect();
        assert_eq!(
            counts,
            [1, 2],
            "entry {n}: delivered twice, the retry counted"
        );
        let gap = calls[1].2 - calls[0].2;
        assert!(
            gap >= delay.mul_f64(0.9) && gap < delay + Duration::from_secs(1),
            "entry {n} retried {gap:?} after its failure, its delay is {delay:?}"
        );
    }
    let c = stats.totals("G");
    assert_eq!((c.handled, c.failed, c.dead_lettered), (2, 2, 0));
    assert_eq!(pending(&server.url(), "retry-delay", "G").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_always_asking_to_retry_after_a_delay_is_dead_lettered_after_max_deliveries() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "retry-poison");
    cfg.max_deliveries = 3;
    cfg.claim_idle = Duration::from_secs(3600);
    let bus = connect(cfg).await;
    let id = bus.publisher().publish(&numbered(7)).await.unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let attempts = attempts.clone();
        handler_fn(move |d: Delivery| {
            attempts.lock().unwrap().push(d.deliveries);
            async {
                Err::<Vec<Envelope>, _>(HandlerError::retry_after(
                    Duration::from_millis(100),
                    "cluster busy",
                ))
            }
        })
    };
    let (task, stats, stop) = spawn_consumer(&bus, handler, "G", "c1");
    let audit = bus.audit();
    wait_until(
        Duration::from_secs(5),
        "the entry is dead-lettered",
        || async { audit.dlq_len().await.unwrap() == 1 },
    )
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();

    assert_eq!(*attempts.lock().unwrap(), vec![1, 2, 3]);
    let dl = &audit.dlq(10).await.unwrap()[0];
    assert_eq!(dl.original_id, id);
    assert_eq!(dl.error, "cluster busy");
    assert_eq!(dl.deliveries, 3);
    let c = stats.counters("G", "NodeReady");
    assert_eq!((c.failed, c.dead_lettered, c.handled), (2, 1, 0));
    assert_eq!(pending(&server.url(), "retry-poison", "G").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_waiting_for_its_retry_is_not_claimed_by_another_consumer() {
    let server = RedisServer::start();
    let mut cfg = config(&server, "retry-own");
    // Far shorter than the retry's delay: were the entry left idle, B (or A's own XAUTOCLAIM) would take it.
    cfg.claim_idle = Duration::from_millis(300);
    let bus = connect(cfg).await;
    let seen = Seen::default();
    let fail = |_| Some(HandlerError::retry_after(Duration::from_secs(2), "wait"));
    let (a, _a_stats, stop_a) = spawn_consumer(&bus, fails_first("a", &seen, fail), "G", "a");
    bus.publisher().publish(&numbered(0)).await.unwrap();
    wait_until(Duration::from_secs(5), "A fails the entry once", || async {
        !calls_of(&seen, 0).is_empty()
    })
    .await;
    let (b, b_stats, stop_b) = spawn_consumer(&bus, fails_first("b", &seen, fail), "G", "b");
    wait_until(
        Duration::from_secs(10),
        "the entry is handled again",
        || async { calls_of(&seen, 0).len() >= 2 },
    )
    .await;
    // Time for a stray claim to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_a.send(()).unwrap();
    stop_b.send(()).unwrap();
    a.await.unwrap();
    b.await.unwrap();

    let calls = calls_of(&seen, 0);
    let who: Vec<(&str, u32)> = calls.iter().map(|c| (c.0, c.1)).collect();
    assert_eq!(who, [("a", 1), ("a", 2)], "only A, once per delivery");
    let gap = calls[1].2 - calls[0].2;
    assert!(
        gap >= Duration::from_millis(1800),
        "retried after {gap:?}, before its delay"
    );
    assert_eq!(b_stats.totals("G"), bus::Counters::default());
    assert_eq!(pending(&server.url(), "retry-own", "G").await, 0);
}

/// A handler that acts (an executor) reports its fact on the first delivery only; when the
/// outputs-and-ack script fails then (Redis refuses writes longer than the command timeout), the
/// consumer keeps those outputs and publishes them with the redelivery's: the fact is not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_a_failed_settle_left_behind_go_out_with_the_redelivery() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "kept")).await;
    let input = envelope_of(sample("ScaleUpDecision"));
    bus.publisher().publish(&input).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let url = server.url();
    let handler = {
        let calls = calls.clone();
        handler_fn(move |d: Delivery| {
            let calls = calls.clone();
            let url = url.clone();
            async move {
                if d.envelope.event_type() != "ScaleUpDecision" {
                    return Ok(Vec::new());
                }
                let started =
                    Envelope::caused_by(&d.envelope, "NodeManager", sample("ScaleUpStarted"))
                        .with_deterministic_id(&format!("started-{}", d.envelope.event_id));
                if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                    // Already acted: a rerun decides the same, and reports nothing again.
                    return Ok(vec![started]);
                }
                // Writes refused for longer than the bus's 5 s command timeout: the settle fails.
                let _: () = raw(
                    &url,
                    redis::cmd("CLIENT").arg("PAUSE").arg(7000).arg("WRITE"),
                )
                .await;
                let fact = Envelope::caused_by(&started, "executor", sample("NodeCreated"))
                    .with_deterministic_id(&format!("created-{}", d.envelope.event_id));
                Ok(vec![started, fact])
            }
        })
    };
    let (task, _stats, stop) = spawn_consumer(&bus, handler, "NodeManager", "c1");
    wait_until(
        Duration::from_secs(40),
        "the fact on the stream",
        || async {
            bus.audit()
                .query(&bus::Query::default())
                .await
                .is_ok_and(|es| {
                    es.iter()
                        .any(|e| e.decode().is_ok_and(|e| e.event_type() == "NodeCreated"))
                })
        },
    )
    .await;
    wait_until(Duration::from_secs(20), "the input acked", || async {
        pending(&server.url(), "kept", "NodeManager").await == 0
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(calls.load(Ordering::SeqCst) >= 2, "the settle failed once");
    let types: Vec<&'static str> = bus
        .audit()
        .query(&bus::Query::default())
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.decode().ok())
        .map(|e| e.event_type())
        .collect();
    assert_eq!(types, ["ScaleUpDecision", "ScaleUpStarted", "NodeCreated"]);
}
