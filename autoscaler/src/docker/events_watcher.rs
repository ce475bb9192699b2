//! [`DockerEventsWatcher`]: the engine's event stream, filtered to this cluster's managed containers,
//! turned into node-lifecycle events.
//!
//! | engine event (not caused by the pool)   | event published                                        |
//! |-----------------------------------------|--------------------------------------------------------|
//! | `start` of a worker not running before   | `NodeCreated { node_name, container_id }`              |
//! | `kill` with SIGTERM (what `docker stop` sends first) | `NodeInterruptionNotice { cause: "docker_stop" }` |
//! | `kill` with another signal               | `NodeInterruptionNotice { cause: "docker_kill" }`      |
//! | `stop` not preceded by a `kill`          | `NodeInterruptionNotice { cause: "docker_stop" }`      |
//! | `oom`                                    | `NodeUnexpectedlyLost { cause: "container_oom" }`      |
//! | `die` after a `docker_kill` notice       | `NodeUnexpectedlyLost { cause: "container_killed" }`   |
//! | `die` after a `docker_stop` notice       | `NodeUnexpectedlyLost { cause: "container_stopped" }`  |
//! | `die` otherwise, exit code 0 / non-zero  | `NodeUnexpectedlyLost { cause: "container_exited" / "container_crash" }` |
//! | `destroy` of a worker not reported lost  | `NodeUnexpectedlyLost { cause: "container_destroyed" }`|
//!
//! De-duplication: per container incarnation there is at most one notice and one loss. `docker kill`
//! (kill → die) and `docker stop` (kill(SIGTERM) → die → stop) each give one `NodeInterruptionNotice`
//! followed by one `NodeUnexpectedlyLost`; `docker rm -f` adds no second loss for its `destroy`; an
//! `oom` followed by `die` is one loss. Events caused by the pool itself (its [`PoolIntents`]) are not
//! reported: the NodeManager that called the pool reports those.
//!
//! After the stream fails (engine restart, socket gone) the watcher reconnects with exponential
//! backoff, re-lists the managed containers and reports what changed while it was away: a worker that
//! vanished (`container_destroyed`) or stopped (cause from its inspected exit state), and one that
//! appeared running (`NodeCreated`). It subscribes with `since` the moment of each listing, so no event
//! falls between the list and the stream; replayed events older than the listing are skipped (this
//! compares the engine's clock with ours: right for a local engine).
//!
//! With several replicas, every replica's watcher sees every event; run it on the leader only, or rely
//! on the consumers' idempotence.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use bus::event::{Event, NodeCreated, NodeInterruptionNotice, NodeUnexpectedlyLost};
use bus::{Envelope, Metadata};
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use primitives::Backoff;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::intents::PoolIntents;
use super::pool::{inspect_container, list_managed, managed_filters, DockerWorkerPool, Worker};
use super::{Engine, Result, LABEL_POOL};

/// The `source` of the envelopes this watcher emits.
pub const SOURCE: &str = "docker_events_watcher";

/// Engine actions the watcher subscribes to.
const ACTIONS: [&str; 6] = ["start", "kill", "stop", "die", "oom", "destroy"];

/// What the watcher knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tracked {
    /// The container id of the current incarnation.
    id: String,
    running: bool,
    /// The cause of the interruption notice already reported for this incarnation.
    interrupted: Option<&'static str>,
    /// A loss was reported (or the container was already stopped when first seen).
    lost: bool,
}

/// The watcher's state machine: engine observations in, catalogue events out. Pure, so the
/// de-duplication rules are tested without an engine.
#[derive(Debug, Default)]
pub struct Tracker {
    /// By container name (= node name).
    containers: HashMap<String, Tracked>,
}

/// The engine's `signal` attribute means SIGTERM (numeric or by name).
fn is_sigterm(signal: Option<&str>) -> bool {
    matches!(signal, Some("15" | "SIGTERM" | "TERM"))
}

/// The cause of a loss seen only through an inspect (after a reconnect).
fn cause_from_state(w: &Worker) -> &'static str {
    if w.oom_killed {
        "container_oom"
    } else {
        match w.exit_code {
            Some(0) | None => "container_exited",
            Some(_) => "container_crash",
        }
    }
}

fn lost(name: &str, at: DateTime<Utc>, cause: &str) -> Event {
    Event::NodeUnexpectedlyLost(NodeUnexpectedlyLost {
        node_name: name.to_string(),
        last_seen: at,
        cause: cause.to_string(),
    })
}

/// `pool`: the container's pool label (engine events carry a container's labels among their
/// attributes); the default pool's is left out, as the pool's own `NodeCreated` leaves it out.
fn created(name: &str, id: &str, pool: Option<&String>) -> Event {
    Event::NodeCreated(NodeCreated {
        node_name: name.to_string(),
        container_id: (!id.is_empty()).then(|| id.to_string()),
        pool: pool
            .filter(|p| p.as_str() != handlers::policy::DEFAULT_POOL)
            .cloned(),
    })
}

fn notice(name: &str, cause: &str) -> Event {
    Event::NodeInterruptionNotice(NodeInterruptionNotice {
        node_name: name.to_string(),
        cause: cause.to_string(),
    })
}

impl Tracker {
    /// Starts tracking from a listing, reporting nothing: what was running is running, what was
    /// stopped before the watcher started is not news.
    pub fn seed(&mut self, workers: &[Worker]) {
        self.containers = workers
            .iter()
            .map(|w| {
                let running = w.state.is_running();
                (
                    w.name.clone(),
                    Tracked {
                        id: w.id.clone(),
                        running,
                        interrupted: None,
                        lost: !running,
                    },
                )
            })
            .collect();
    }

    /// One engine event. `expected` says whether the pool caused it.
    pub fn on_event(
        &mut self,
        action: &str,
        name: &str,
        id: &str,
        attributes: &HashMap<String, String>,
        expected: bool,
        at: DateTime<Utc>,
    ) -> Vec<Event> {
        // Only a `start` introduces a container: any other event about one the watcher never saw
        // running (a replay after a reconnect, a container that never started) says nothing new.
        if action != "start" && !self.containers.contains_key(name) {
            return Vec::new();
        }
        let entry = self
            .containers
            .entry(name.to_string())
            .or_insert_with(|| Tracked {
                id: id.to_string(),
                running: false,
                interrupted: None,
                lost: false,
            });
        if entry.id != id && !id.is_empty() {
            // A new container under a known name: a new incarnation.
            *entry = Tracked {
                id: id.to_string(),
                running: false,
                interrupted: None,
                lost: false,
            };
        }
        let mut out = Vec::new();
        match action {
            "start" => {
                let was_running = entry.running;
                *entry = Tracked {
                    id: id.to_string(),
                    running: true,
                    interrupted: None,
                    lost: false,
                };
                if !expected && !was_running {
                    out.push(created(name, id, attributes.get(LABEL_POOL)));
                }
            }
            "kill" | "stop"
                if !expected && entry.running && entry.interrupted.is_none() && !entry.lost =>
            {
                let cause = if action == "stop"
                    || is_sigterm(attributes.get("signal").map(String::as_str))
                {
                    "docker_stop"
                } else {
                    "docker_kill"
                };
                entry.interrupted = Some(cause);
                out.push(notice(name, cause));
            }
            "oom" if !expected && !entry.lost => {
                entry.lost = true;
                out.push(lost(name, at, "container_oom"));
            }
            "die" => {
                entry.running = false;
                if !expected && !entry.lost {
                    entry.lost = true;
                    let cause = match entry.interrupted {
                        Some("docker_kill") => "container_killed",
                        Some(_) => "container_stopped",
                        None => match attributes.get("exitCode").map(String::as_str) {
                            Some("0") => "container_exited",
                            _ => "container_crash",
                        },
                    };
                    out.push(lost(name, at, cause));
                }
                // Expected or not, this incarnation's run is over.
                entry.lost = true;
            }
            "destroy" => {
                let was = self.containers.remove(name);
                let already_lost = was.map(|t| t.lost).unwrap_or(false);
                if !expected && !already_lost {
                    out.push(lost(name, at, "container_destroyed"));
                }
            }
            _ => {}
        }
        out
    }

    /// A fresh listing after a reconnect: reports what changed while the watcher was away. `inspected`
    /// holds full states for the workers whose run ended (for the cause); `expected` says whether the
    /// pool caused an action on a worker.
    pub fn on_relist(
        &mut self,
        workers: &[Worker],
        inspected: &HashMap<String, Worker>,
        expected: impl Fn(&str, &str) -> bool,
        at: DateTime<Utc>,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        let listed: HashMap<&str, &Worker> = workers.iter().map(|w| (w.name.as_str(), w)).collect();
        let mut names: Vec<String> = self.containers.keys().cloned().collect();
        names.sort();
        for name in names {
            let Some(t) = self.containers.get(&name).cloned() else {
                continue;
            };
            match listed.get(name.as_str()) {
                None => {
                    self.containers.remove(&name);
                    if !t.lost && !expected(&name, "destroy") {
                        out.push(lost(&name, at, "container_destroyed"));
                    }
                }
                Some(w) if w.id != t.id => {
                    if !t.lost && !expected(&name, "destroy") {
                        out.push(lost(&name, at, "container_destroyed"));
                    }
                    self.containers.remove(&name);
                }
                Some(w) => {
                    let running = w.state.is_running();
                    if t.running && !running && !t.lost && !expected(&name, "die") {
                        let full = inspected.get(&name).unwrap_or(w);
                        out.push(lost(&name, at, cause_from_state(full)));
                    }
                    if let Some(e) = self.containers.get_mut(&name) {
                        if running && !t.running {
                            *e = Tracked {
                                id: w.id.clone(),
                                running: true,
                                interrupted: None,
                                lost: false,
                            };
                            if !expected(&name, "start") {
                                out.push(created(&name, &w.id, w.labels.get(LABEL_POOL)));
                            }
                        } else if !running {
                            e.running = false;
                            e.lost = true;
                        }
                    }
                }
            }
        }
        for w in workers {
            if self.containers.contains_key(&w.name) {
                continue;
            }
            let running = w.state.is_running();
            self.containers.insert(
                w.name.clone(),
                Tracked {
                    id: w.id.clone(),
                    running,
                    interrupted: None,
                    lost: !running,
                },
            );
            if running && !expected(&w.name, "start") {
                out.push(created(&w.name, &w.id, w.labels.get(LABEL_POOL)));
            }
        }
        out
    }

    /// Names of tracked containers whose run would be reported ended by this listing, to inspect
    /// them for the cause before [`Tracker::on_relist`].
    pub fn ended_in(&self, workers: &[Worker]) -> Vec<String> {
        workers
            .iter()
            .filter(|w| !w.state.is_running())
            .filter(|w| {
                self.containers
                    .get(&w.name)
                    .is_some_and(|t| t.running && !t.lost && t.id == w.id)
            })
            .map(|w| w.name.clone())
            .collect()
    }
}

/// Watches the engine's events about this cluster's workers; see the module doc.
pub struct DockerEventsWatcher {
    /// The engine client (its breaker and timeout guard the listings).
    engine: Engine,
    /// Only this cluster's containers are watched.
    cluster_id: String,
    /// The pool's own actions, not to be reported.
    intents: Arc<PoolIntents>,
    /// The process-wide removal intents of the executors (drain + remove in flight), also not reported.
    shared: Option<crate::intents::RemovalIntents>,
    /// Metadata of the emitted envelopes.
    metadata: Metadata,
    /// First reconnect delay.
    reconnect_initial: Duration,
    /// Longest reconnect delay.
    reconnect_max: Duration,
}

impl DockerEventsWatcher {
    /// A watcher of `pool`'s cluster that ignores `pool`'s own actions.
    pub fn for_pool(pool: &DockerWorkerPool, metadata: Metadata) -> Self {
        Self::new(
            pool.engine().clone(),
            pool.config().cluster_id.clone(),
            pool.intents(),
            metadata,
        )
    }

    /// A watcher of `cluster_id`'s containers that ignores the actions recorded in `intents`.
    pub fn new(
        engine: Engine,
        cluster_id: String,
        intents: Arc<PoolIntents>,
        metadata: Metadata,
    ) -> Self {
        Self {
            engine,
            cluster_id,
            intents,
            shared: None,
            metadata,
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
        }
    }

    /// Also treats the workers the executors are removing (`crate::intents`) as expected to stop.
    pub fn with_shared_intents(mut self, shared: crate::intents::RemovalIntents) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Whether the engine event `action` on `name` was caused by this process.
    fn expects(&self, name: &str, action: &str) -> bool {
        self.intents.expects(name, action)
            || (action != "start" && self.shared.as_ref().is_some_and(|s| s.is_removing(name)))
    }

    /// Sets the reconnect backoff (tests shorten it).
    pub fn with_reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_initial = initial;
        self.reconnect_max = max;
        self
    }

    /// Runs until `shutdown` completes or `tx`'s receiver is dropped. Engine failures are logged and
    /// retried with backoff, never returned.
    pub async fn run(
        self,
        tx: mpsc::Sender<Envelope>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        let mut tracker = Tracker::default();
        let mut backoff = Backoff::new(self.reconnect_initial, self.reconnect_max);
        let mut seeded = false;
        loop {
            // Subscribe from the moment of the listing, so nothing between list and subscribe is
            // missed; events before that moment (the engine replays whole seconds) are already in the
            // listing and are skipped.
            let listed_at = Utc::now();
            let since = listed_at.timestamp();
            let not_before = listed_at.timestamp_nanos_opt().unwrap_or(i64::MIN);
            let listed = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                r = self.relist(&tracker) => r,
            };
            match listed {
                Ok((workers, inspected)) => {
                    if seeded {
                        let events = tracker.on_relist(
                            &workers,
                            &inspected,
                            |n, a| self.expects(n, a),
                            bus::envelope::now_millis(),
                        );
                        info!(
                            workers = workers.len(),
                            missed = events.len(),
                            "re-listed managed workers after reconnect"
                        );
                        if !self.emit(&tx, events).await {
                            return Ok(());
                        }
                    } else {
                        tracker.seed(&workers);
                        seeded = true;
                        info!(workers = workers.len(), cluster_id = %self.cluster_id, "watching Docker events");
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, ?delay, "cannot list managed workers; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            }

            let mut filters = managed_filters(&self.cluster_id);
            filters.insert("type".into(), vec!["container".into()]);
            filters.insert(
                "event".into(),
                ACTIONS.iter().map(|a| a.to_string()).collect(),
            );
            let mut stream = self.engine.docker().events(Some(EventsOptions {
                since: Some(since.to_string()),
                until: None,
                filters: Some(filters),
            }));
            loop {
                let item = tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    item = stream.next() => item,
                };
                match item {
                    Some(Ok(message)) => {
                        backoff.reset();
                        if message.time_nano.is_some_and(|t| t < not_before) {
                            continue;
                        }
                        let events = self.on_message(&mut tracker, &message);
                        if !self.emit(&tx, events).await {
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %super::describe(&e), "Docker event stream failed; reconnecting");
                        break;
                    }
                    None => {
                        warn!("Docker event stream ended; reconnecting");
                        break;
                    }
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn relist(&self, tracker: &Tracker) -> Result<(Vec<Worker>, HashMap<String, Worker>)> {
        let workers = list_managed(&self.engine, &self.cluster_id).await?;
        let mut inspected = HashMap::new();
        for name in tracker.ended_in(&workers) {
            if let Some(w) = inspect_container(&self.engine, &name).await? {
                inspected.insert(name, w);
            }
        }
        Ok((workers, inspected))
    }

    fn on_message(&self, tracker: &mut Tracker, m: &EventMessage) -> Vec<Event> {
        let Some(action) = m.action.as_deref() else {
            return Vec::new();
        };
        let empty = HashMap::new();
        let actor = m.actor.as_ref();
        let attributes = actor.and_then(|a| a.attributes.as_ref()).unwrap_or(&empty);
        let Some(name) = attributes.get("name") else {
            return Vec::new();
        };
        let id = actor.and_then(|a| a.id.as_deref()).unwrap_or_default();
        let at = m
            .time_nano
            .map(|ns| Utc.timestamp_nanos(ns))
            .or_else(|| m.time.and_then(|s| Utc.timestamp_opt(s, 0).single()))
            .map(bus::envelope::truncate_millis)
            .unwrap_or_else(bus::envelope::now_millis);
        let expected = self.expects(name, action);
        debug!(worker = %name, action, expected, "Docker event");
        tracker.on_event(action, name, id, attributes, expected, at)
    }

    /// Sends events as root envelopes; `false` when nobody listens any more.
    async fn emit(&self, tx: &mpsc::Sender<Envelope>, events: Vec<Event>) -> bool {
        for event in events {
            info!(
                event_type = event.event_type(),
                node = event.node_name().unwrap_or(""),
                "node lifecycle event from Docker"
            );
            let envelope = Envelope::root(SOURCE, event, self.metadata.clone());
            if tx.send(envelope).await.is_err() {
                warn!("event receiver dropped; Docker events watcher stops");
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::pool::WorkerState;
    use super::*;
    use std::collections::BTreeMap;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::NodeCreated(c) => format!("NodeCreated:{}", c.node_name),
                Event::NodeInterruptionNotice(n) => format!("Notice:{}", n.cause),
                Event::NodeUnexpectedlyLost(l) => format!("Lost:{}", l.cause),
                other => other.event_type().to_string(),
            })
            .collect()
    }

    fn worker(name: &str, id: &str, state: WorkerState) -> Worker {
        Worker {
            name: name.into(),
            id: id.into(),
            state,
            labels: BTreeMap::new(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            oom_killed: false,
            restart_count: 0,
        }
    }

    /// One engine event of a test script: action, attributes, caused by the pool.
    type Step<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);

    fn run(t: &mut Tracker, steps: &[Step<'_>]) -> Vec<String> {
        let now = Utc::now();
        let mut out = Vec::new();
        for (action, a, expected) in steps {
            out.extend(t.on_event(action, "w1", "id1", &attrs(a), *expected, now));
        }
        names(&out)
    }

    #[test]
    fn docker_kill_gives_one_notice_then_one_loss() {
        let mut t = Tracker::default();
        t.seed(&[worker("w1", "id1", WorkerState::Running)]);
        let got = run(
            &mut t,
            &[
                ("kill", &[("signal", "9")], false),
                ("die", &[("exitCode", "137")], false),
            ],
        );
        assert_eq!(got, vec!["Notice:docker_kill", "Lost:container_killed"]);
    }

    #[test]
    fn docker_stop_sequence_gives_one_notice_then_one_loss() {
        let mut t = Tracker::default();
        t.seed(&[worker("w1", "id1", WorkerState::Running)]);
        let got = run(
            &mut t,
            &[
                ("kill", &[("signal", "15")], false),
                ("die", &[("exitCode", "0")], false),
                ("stop", &[], false),
            ],
        );
        assert_eq!(got, vec!["Notice:docker_stop", "Lost:container_stopped"]);
    }

    #[test]
    fn docker_rm_force_and_oom_are_one_loss_each() {
        let mut t = Tracker::default();
        t.seed(&[worker("w1", "id1", WorkerState::Running)]);
        let got = run(
            &mut t,
            &[
                ("kill", &[("signal", "9")], false),
                ("die", &[("exitCode", "137")], false),
                ("destroy", &[], false),
            ],
        );
        assert_eq!(got, vec!["Notice:docker_kill", "Lost:container_killed"]);

        let mut t = Tracker::default();
        t.seed(&[worker("w1", "id1", WorkerState::Running)]);
        let got = run(
            &mut t,
            &[("oom", &[], false), ("die", &[("exitCode", "137")], false)],
        );
        assert_eq!(got, vec!["Lost:container_oom"]);
    }

    #[test]
    fn docker_crash_and_restart_by_policy_are_loss_then_created() {
        let mut t = Tracker::default();
        t.seed(&[worker("w1", "id1", WorkerState::Running)]);
        let got = run(
            &mut t,
            &[("die", &[("exitCode", "2")], false), ("start", &[], false)],
        );
        assert_eq!(got, vec!["Lost:container_crash", "NodeCreated:w1"]);
    }

    #[test]
    fn a_worker_started_by_someone_else_is_created_in_its_pool_label() {
        let mut t = Tracker::default();
        let now = Utc::now();
        let pool_of = |out: Vec<Event>| match out.as_slice() {
            [Event::NodeCreated(c)] => c.pool.clone(),
            other => panic!("{other:?}"),
        };
        let start = |t: &mut Tracker, name: &str, pool: &str| {
            t.on_event(
                "start",
                name,
                name,
                &attrs(&[(LABEL_POOL, pool)]),
                false,
                now,
            )
        };
        assert_eq!(
            pool_of(start(&mut t, "w-highmem-2", "highmem")),
            Some("highmem".into())
        );
        // The default pool is left out, as the pool's own NodeCreated leaves it out.
        assert_eq!(pool_of(start(&mut t, "w-3", "default")), None);
        // A listing after a reconnect: from the container's labels.
        let mut listed = worker("w-gpu-1", "id9", WorkerState::Running);
        listed.labels.insert(LABEL_POOL.into(), "gpu".into());
        let mut t = Tracker::default();
        let out = t.on_relist(&[listed], &HashMap::new(), |_, _| false, now);
        assert_eq!(pool_of(out), Some("gpu".into()));
    }

    #[test]
    fn docker_pool_own_actions_are_not_reported() {
        let mut t = Tracker::default();
        let got = run(
            &mut t,
            &[
                ("start", &[], true),
                ("kill", &[("signal", "15")], true),
                ("die", &[("exitCode", "0")], true),
                ("stop", &[], true),
                ("destroy", &[], true),
            ],
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn docker_replayed_start_of_a_running_worker_is_not_news() {
        let mut t = Tracker::default();
        t.seed(&[worker("w1", "id1", WorkerState::Running)]);
        assert!(run(&mut t, &[("start", &[], false)]).is_empty());
        // A worker stopped before the watcher started: its replayed die is not news either.
        let mut t = Tracker::default();
        t.seed(&[worker("w1", "id1", WorkerState::Exited)]);
        assert!(run(&mut t, &[("die", &[("exitCode", "0")], false)]).is_empty());
    }

    #[test]
    fn docker_events_of_containers_never_seen_running_are_ignored() {
        let mut t = Tracker::default();
        let got = run(
            &mut t,
            &[
                ("kill", &[("signal", "9")], false),
                ("die", &[("exitCode", "137")], false),
                ("destroy", &[], false),
            ],
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn docker_relist_reports_what_was_missed() {
        let mut t = Tracker::default();
        t.seed(&[
            worker("w1", "id1", WorkerState::Running),
            worker("w2", "id2", WorkerState::Running),
            worker("w3", "id3", WorkerState::Running),
        ]);
        let now_list = vec![
            // w1 vanished; w2 exited (OOM per inspect); w3 still runs; w4 is new.
            worker("w2", "id2", WorkerState::Exited),
            worker("w3", "id3", WorkerState::Running),
            worker("w4", "id4", WorkerState::Running),
        ];
        assert_eq!(t.ended_in(&now_list), vec!["w2".to_string()]);
        let mut w2 = worker("w2", "id2", WorkerState::Exited);
        w2.oom_killed = true;
        let inspected = HashMap::from([("w2".to_string(), w2)]);
        let got = names(&t.on_relist(&now_list, &inspected, |_, _| false, Utc::now()));
        assert_eq!(
            got,
            vec![
                "Lost:container_destroyed",
                "Lost:container_oom",
                "NodeCreated:w4"
            ]
        );
        // Nothing changed: nothing reported.
        assert!(t
            .on_relist(&now_list, &HashMap::new(), |_, _| false, Utc::now())
            .is_empty());
    }
}
