//! `autoscaler run`, step by step: `start` (shared state), `connect`, `build_adapters`,
//! `spawn_consumers` (the handlers' consumer groups), `spawn_leader_work` (leadership, observers,
//! gauges), `spawn_http`, then on the given shutdown future `shut_down`: every task started is
//! tracked ([`Tasks`]) and waited for, up to [`in_flight_bound`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use handlers::Model;
use primitives::Backoff;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;

use super::adapters::{Adapters, DockerWorkers, KubeNodes};
use super::group_runner::GroupRunner;
use super::observers::{supervise, Observers};
use super::projection::Projection;
use super::tasks::{Stopped, Tasks};
use super::{bus_config, host_configs, metadata, policy, sink};
use crate::config::Settings;
use crate::docker::{DockerHosts, DockerWorkerPool, Host};
use crate::http::{self, HttpState};
use crate::intents::RemovalIntents;
use crate::kube::KubeNodeOps;
use crate::leader::{self, Leadership};
use crate::metrics::Metrics;
use crate::readiness::{self, Readiness};
use crate::webhooks::{Webhook, Webhooks};

/// Retries `connect` with backoff until it succeeds or `stop` is cancelled: an outage at start-up is
/// waited out, not crashed on.
async fn connect_retrying<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    stop: &CancellationToken,
    mut connect: impl FnMut() -> F,
) -> Option<T> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let delay = match connect().await {
            Ok(v) => return Some(v),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "cannot connect to {what}");
                delay
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// What every step of [`run`] shares.
struct Shared {
    settings: Arc<Settings>,
    policy: Arc<handlers::Policy>,
    metrics: Arc<Metrics>,
    /// This replica's consumer name and lease holder name.
    replica: String,
    /// Nodes this process is removing, so the watchers do not report them.
    intents: RemovalIntents,
    /// `/readyz`.
    ready: Arc<Readiness>,
    /// Every task started, for the shutdown to wait for.
    tasks: Tasks,
    /// Cancelled when the shutdown begins.
    stop: CancellationToken,
}

/// The connections `connect` made.
struct Connections {
    /// For publishing, reading and the lease.
    bus: bus::Bus,
    /// For the handlers' consumer groups (one delivery at a time, claimed late: see `connect`).
    handler_bus: bus::Bus,
    pool: Arc<DockerHosts>,
    /// The default engine's client, for `/readyz` (the other hosts' outages only back their pools
    /// off).
    default_docker: bollard::Docker,
    kube: kube::Client,
}

/// The longest one piece of in-flight work may take: a delivery or a tick may carry out a whole drain
/// (bounded by `scaling.drain_timeout`), then stop and delete the worker. It is how long another
/// consumer waits before claiming a handler's delivery, and how long a shutdown waits for in-flight
/// work before it gives up (a restart, or another replica, repairs what was cut short).
pub fn in_flight_bound(settings: &Settings) -> Duration {
    settings.autoscaler.scaling.drain_timeout + Duration::from_secs(30)
}

/// Runs the autoscaler until `shutdown` resolves, then waits for in-flight work up to
/// [`in_flight_bound`]. `bound` receives the HTTP address once serving.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    let shared = start(settings, shutdown);
    let Some(conns) = connect(&shared).await? else {
        return Ok(());
    };
    let adapters = build_adapters(&shared, &conns)?;
    // Observations flow through one channel into the stream.
    let (tx, rx) = mpsc::channel(sink::SINK_CAPACITY);
    shared.tasks.spawn(
        "publish sink",
        sink::drain(rx, conns.bus.publisher(), shared.metrics.clone()),
    );
    spawn_consumers(&shared, &conns, adapters.clone()).await?;
    shared.ready.set_started(true);
    spawn_readiness_probe(&shared, &conns);
    spawn_leader_work(&shared, &conns, adapters, tx);
    spawn_http(&shared, &conns, bound)?;
    shared.stop.cancelled().await;
    shut_down(&shared).await;
    Ok(())
}

/// The shared state, the metrics' limits, the start-up log line, and the task that turns `shutdown`
/// into the stop token.
fn start(settings: Settings, shutdown: impl Future<Output = ()> + Send + 'static) -> Shared {
    let tasks = Tasks::new();
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tasks.spawn("shutdown signal", async move {
            shutdown.await;
            stop.cancel();
        });
    }
    let settings = Arc::new(settings);
    let a = &settings.autoscaler;
    let metrics = Arc::new(Metrics::new());
    metrics.workers_min.set(i64::from(a.limits.min_nodes));
    metrics.workers_max.set(i64::from(a.limits.max_nodes));
    let replica = replica_id();
    tracing::info!(
        replica = %replica,
        cluster_id = %a.cluster_id,
        stream = %a.events.event_bus.stream_name,
        dry_run = a.dry_run,
        handlers = ?a.events.handlers,
        "autoscaler starting"
    );
    Shared {
        policy: Arc::new(policy(&settings)),
        settings,
        metrics,
        replica,
        intents: RemovalIntents::new(),
        ready: Arc::new(Readiness::new()),
        tasks,
        stop,
    }
}

/// Redis, the Docker engine (adopting its managed workers) and Kubernetes, each retried until it
/// answers; `None` if the shutdown came first.
async fn connect(shared: &Shared) -> anyhow::Result<Option<Connections>> {
    let (settings, stop) = (&shared.settings, &shared.stop);
    let a = &settings.autoscaler;
    let Some(bus) = connect_retrying("Redis", stop, || bus::connect(bus_config(settings))).await
    else {
        return Ok(None);
    };
    // Handlers decide one delivery at a time, in stream order, and a delivery may carry out a whole
    // drain: give it longer than the drain before another consumer may claim it.
    let mut handler_config = bus_config(settings);
    handler_config.concurrency = 1;
    handler_config.claim_idle = handler_config.claim_idle.max(in_flight_bound(settings));
    let handler_bus = bus::connect(handler_config)
        .await
        .context("connecting the handlers' bus")?;

    let mut hosts = host_configs(settings)
        .context("reading the k3s token file")?
        .into_iter();
    let Some((name, pools, default_cfg)) = hosts.next() else {
        anyhow::bail!("no Docker engine configured");
    };
    // The default engine is waited for; the others are connected when first needed
    // (`docker::hosts`), so one that is down does not keep the autoscaler from starting.
    let Some(pool) = connect_retrying("the Docker engine", stop, || {
        DockerWorkerPool::connect(default_cfg.clone())
    })
    .await
    else {
        return Ok(None);
    };
    match pool.adopt().await {
        Ok(workers) => tracing::info!(adopted = workers.len(), "docker: adopted managed workers"),
        Err(e) => tracing::warn!(error = %e, "docker: cannot list managed workers yet"),
    }
    let default_docker = pool.engine().docker().clone();
    let mut all = vec![Host::connected(name, pools, pool)];
    all.extend(hosts.map(|(name, pools, cfg)| Host::new(name, pools, cfg)));
    let pool = Arc::new(DockerHosts::new(all, a.workers.name_prefix.clone()));
    for h in pool.hosts().iter().skip(1) {
        if let Err(e) = h.pool().await {
            tracing::warn!(host = %h.name, address = %h.address(), error = %e, "docker: host does not answer yet; its pools wait");
        }
    }
    let Some(kube) =
        connect_retrying("Kubernetes", stop, || crate::kube::connect(&a.kubernetes)).await
    else {
        return Ok(None);
    };
    Ok(Some(Connections {
        bus,
        handler_bus,
        pool,
        default_docker,
        kube,
    }))
}

/// The adapters the executors act through; `None` in a dry run.
fn build_adapters(shared: &Shared, conns: &Connections) -> anyhow::Result<Option<Arc<Adapters>>> {
    let a = &shared.settings.autoscaler;
    if a.dry_run {
        tracing::warn!("dry run: decisions are published marked dry_run; nothing is changed");
        return Ok(None);
    }
    let mut targets = Vec::new();
    for (i, w) in a.alerts.webhooks.iter().enumerate() {
        let Some(format) = handlers::alerts::Format::parse(&w.format) else {
            continue;
        };
        let headers = crate::webhooks::resolve_headers(&w.headers, |k| std::env::var(k).ok())
            .map_err(|e| anyhow::anyhow!("alerts.webhooks[{i}]: {e}"))?;
        targets.push(Webhook {
            url: w.url.clone(),
            format,
            headers,
        });
    }
    Ok(Some(Arc::new(Adapters {
        workers: DockerWorkers {
            pool: conns.pool.clone(),
            intents: shared.intents.clone(),
        },
        nodes: KubeNodes {
            ops: KubeNodeOps::new(conns.kube.clone(), a.scaling.drain_timeout),
            intents: shared.intents.clone(),
        },
        alerts: Webhooks::new(targets).context("loading the TLS roots for webhooks")?,
    })))
}

/// The handlers, one consumer group each, counted into the metrics.
async fn spawn_consumers(
    shared: &Shared,
    conns: &Connections,
    adapters: Option<Arc<Adapters>>,
) -> anyhow::Result<()> {
    let stats = delivery_stats(shared.metrics.clone());
    for name in &shared.settings.autoscaler.events.handlers {
        let Some(handler) = handlers::Handler::from_name(name) else {
            anyhow::bail!("unknown handler {name}");
        };
        let consumer = conns.handler_bus.consumer().with_stats(stats.clone());
        consumer
            .ensure_group(name)
            .await
            .with_context(|| format!("creating consumer group {name}"))?;
        let runner = GroupRunner {
            handler,
            policy: shared.policy.clone(),
            projection: Mutex::new(Projection::new(
                Model::new(&shared.policy),
                conns.handler_bus.audit(),
            )),
            adapters: adapters.clone(),
            publisher: conns.handler_bus.publisher(),
            metrics: shared.metrics.clone(),
        };
        let group = name.clone();
        let consumer_name = shared.replica.clone();
        let token = shared.stop.clone();
        shared.tasks.spawn(format!("consumer {name}"), async move {
            if let Err(e) = consumer
                .run(runner, &group, &consumer_name, token.cancelled_owned())
                .await
            {
                tracing::error!(group, error = %e, "consumer stopped with an error");
            }
        });
    }
    Ok(())
}

/// The bus's per-delivery outcomes as metrics.
fn delivery_stats(metrics: Arc<Metrics>) -> bus::Stats {
    bus::Stats::with_observer(
        move |group: &str, event_type: &str, outcome: bus::DeliveryOutcome| {
            let labels = crate::metrics::GroupTypeLabels {
                group: group.to_string(),
                event_type: event_type.to_string(),
            };
            match outcome {
                bus::DeliveryOutcome::Handled => {
                    metrics.events_handled.get_or_create(&labels).inc();
                }
                bus::DeliveryOutcome::Failed => {
                    metrics.events_failed.get_or_create(&labels).inc();
                }
                bus::DeliveryOutcome::DeadLettered => {
                    metrics
                        .events_dead_lettered
                        .get_or_create(&crate::metrics::GroupLabel {
                            group: group.to_string(),
                        })
                        .inc();
                }
            }
        },
    )
}

/// Leadership, the leader's observers (which publish through `tx`), and the gauges.
fn spawn_leader_work(
    shared: &Shared,
    conns: &Connections,
    adapters: Option<Arc<Adapters>>,
    tx: mpsc::Sender<bus::Envelope>,
) {
    let (settings, tasks, stop) = (&shared.settings, &shared.tasks, &shared.stop);
    let a = &settings.autoscaler;
    let (lead_tx, lead_rx) = watch::channel(Leadership::default());
    tasks.spawn(
        "leader lease",
        leader::run(
            conns.bus.connection(),
            a.events.event_bus.stream_name.clone(),
            shared.replica.clone(),
            a.leader.lease_ttl,
            lead_tx,
            stop.clone().cancelled_owned(),
        ),
    );
    tasks.spawn(
        "leader gauge",
        leader_gauge(shared.metrics.clone(), lead_rx.clone()),
    );
    let observers = Observers {
        settings: settings.clone(),
        policy: shared.policy.clone(),
        metadata: metadata(settings),
        pool: conns.pool.clone(),
        kube: conns.kube.clone(),
        intents: shared.intents.clone(),
        bus: conns.bus.clone(),
        adapters,
        tx,
        tasks: tasks.clone(),
    };
    tasks.spawn(
        "observer supervisor",
        supervise(observers, lead_rx, stop.clone()),
    );
    // Gauges read from Redis and the record, refreshed in the background.
    tasks.spawn(
        "gauges",
        refresh_gauges(
            conns.bus.clone(),
            shared.policy.clone(),
            shared.metrics.clone(),
            stop.clone(),
        ),
    );
}

/// Shows whether this replica leads, until the lease task is gone.
async fn leader_gauge(metrics: Arc<Metrics>, mut rx: watch::Receiver<Leadership>) {
    loop {
        metrics.leader.set(i64::from(rx.borrow_and_update().leader));
        if rx.changed().await.is_err() {
            break;
        }
    }
}

/// Keeps `/readyz` following Redis and the Docker engine.
fn spawn_readiness_probe(shared: &Shared, conns: &Connections) {
    let probes = readiness::Probes {
        redis: conns.bus.connection(),
        docker: conns.default_docker.clone(),
        timeout: readiness::PROBE_EVERY,
    };
    shared.tasks.spawn(
        "readiness probe",
        readiness::watch(
            shared.ready.clone(),
            probes,
            readiness::PROBE_EVERY,
            shared.stop.clone(),
        ),
    );
}

/// The HTTP port: metrics, health, readiness and the status report.
fn spawn_http(
    shared: &Shared,
    conns: &Connections,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    let listen: SocketAddr = shared
        .settings
        .autoscaler
        .http
        .listen
        .parse()
        .context("http.listen")?;
    let state = HttpState {
        metrics: shared.metrics.clone(),
        ready: shared.ready.clone(),
        status: status_fn(shared.settings.clone(), conns),
    };
    let stop = shared.stop.clone().cancelled_owned();
    shared.tasks.spawn("http", async move {
        if let Err(e) = http::serve(listen, state, stop, bound).await {
            tracing::warn!(error = %e, "http server failed");
        }
    });
    Ok(())
}

/// `/status`: the status report over this process's connections.
fn status_fn(settings: Arc<Settings>, conns: &Connections) -> http::StatusFn {
    let (bus, pool, kube) = (conns.bus.clone(), conns.pool.clone(), conns.kube.clone());
    Arc::new(move || {
        let settings = settings.clone();
        let bus = bus.clone();
        let pool = pool.clone();
        let kube = kube.clone();
        Box::pin(async move {
            crate::status::collect(crate::status::Sources {
                settings: &settings,
                bus: Some(&bus),
                pool: Some(&pool),
                kube: Some(&kube),
            })
            .await
        })
    })
}

/// Not ready any more; then every task (consumers finishing their deliveries, tickers their commands,
/// the sink what they publish) gets up to [`in_flight_bound`] to end.
async fn shut_down(shared: &Shared) {
    let bound = in_flight_bound(&shared.settings);
    tracing::info!(bound = ?bound, running = ?shared.tasks.running(), "shutting down: finishing in-flight work");
    shared.ready.set_started(false);
    let began = std::time::Instant::now();
    match shared.tasks.shut_down(bound).await {
        Stopped::All => tracing::info!(
            waited = ?began.elapsed(),
            "stopped: all in-flight work finished"
        ),
        Stopped::AtBound(still) => tracing::warn!(
            waited = ?began.elapsed(),
            still_running = ?still,
            "stopped at the shutdown bound; the work still running is cut short (a restart repairs it)"
        ),
    }
}

/// This replica's stable name: `AUTOSCALER_REPLICA_ID`, else the hostname, so a restarted replica reads
/// its own pending entries first.
pub fn replica_id() -> String {
    if let Ok(id) = std::env::var("AUTOSCALER_REPLICA_ID") {
        if !id.is_empty() {
            return id;
        }
    }
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "autoscaler".to_string())
}

/// Workers by state (from the record), DLQ length, pending and lag per group, every few seconds.
async fn refresh_gauges(
    bus: bus::Bus,
    policy: Arc<handlers::Policy>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let audit = bus.audit();
    let mut projection = Projection::new(Model::new(&policy), audit.clone());
    let mut every = tokio::time::interval(Duration::from_secs(5));
    // States shown before: set back to 0 when no worker is in them any more.
    let mut seen: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if projection.catch_up_all().await.is_ok() {
            let mut counts: std::collections::BTreeMap<String, i64> =
                seen.iter().map(|s| (s.clone(), 0)).collect();
            for w in projection.model().workers.values() {
                let state = if w.warm && w.state.is_gone() {
                    "warm".to_string()
                } else {
                    state_label(w.state)
                };
                *counts.entry(state).or_default() += 1;
            }
            seen.extend(counts.keys().cloned());
            for (state, n) in counts {
                metrics
                    .workers
                    .get_or_create(&crate::metrics::StateLabel { state })
                    .set(n);
            }
            pool_gauges(projection.model(), &policy, &metrics);
        }
        if let Ok(n) = audit.dlq_len().await {
            metrics.dlq_length.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Ok(groups) = audit.groups().await {
            for g in groups {
                let label = crate::metrics::GroupLabel { group: g.name };
                metrics
                    .group_pending
                    .get_or_create(&label)
                    .set(i64::try_from(g.pending).unwrap_or(i64::MAX));
                if let Some(lag) = g.lag {
                    metrics
                        .group_lag
                        .get_or_create(&label)
                        .set(i64::try_from(lag).unwrap_or(i64::MAX));
                }
            }
        }
    }
}

/// Per pool: warm workers, capacity buffers, minimums in effect; and the open schedule windows.
fn pool_gauges(model: &Model, policy: &handlers::Policy, metrics: &Metrics) {
    use crate::metrics::PoolLabel;
    let usage = handlers::buffer::Usage::of(model);
    metrics
        .workers_min
        .set(i64::from(model.schedules.cluster_min(policy)));
    metrics
        .schedule_windows_open
        .set(i64::try_from(model.schedules.open.len()).unwrap_or(i64::MAX));
    for pool in policy.node_pools().iter() {
        let label = PoolLabel {
            pool: pool.name.clone(),
        };
        metrics
            .warm_workers
            .get_or_create(&label)
            .set(i64::from(model.workers.warm_in(&pool.name)));
        metrics
            .pool_min
            .get_or_create(&label)
            .set(i64::from(model.schedules.pool_min(policy, &pool.name)));
        if pool.buffer.is_empty() {
            continue;
        }
        if let Some(spare) = handlers::buffer::spare(model, &usage, pool) {
            metrics
                .buffer_spare_workers
                .get_or_create(&label)
                .set(i64::from(spare.nodes));
            metrics
                .buffer_shortfall_workers
                .get_or_create(&label)
                .set(i64::from(handlers::buffer::shortfall(pool, &spare)));
        }
    }
}

/// A worker state as a metric label (`not_ready`, `ready`, …).
pub fn state_label(state: handlers::WorkerState) -> String {
    let name = format!("{state:?}");
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use bus::placement::{PartSize, Placement, PlacementTracker};
    use bus::scheduling::{NodeSpec, PodSpec, Resources};

    use super::*;

    #[test]
    fn pool_gauges_show_the_buffer_and_the_minimum_in_effect() {
        let mut policy = handlers::Policy::default();
        policy.limits.min_nodes = 1;
        policy.workers.buffer.nodes = 2;
        let mut sim =
            handlers::simulate::Simulation::new(policy.clone(), chrono::Utc::now()).with_workers(2);
        let node = |name: &str| NodeSpec {
            name: name.into(),
            pool: Some("default".into()),
            allocatable: Resources::new(2000, 2 << 30, 110),
            ready: true,
            ..NodeSpec::default()
        };
        let mut pod = PodSpec::new("default", "web-1");
        pod.cpu_millis = 500;
        pod.node_name = Some("k3s-worker-1".into());
        let state = Placement::from_state(
            ["k3s-worker-1", "k3s-worker-2"]
                .iter()
                .map(|n| (n.to_string(), node(n)))
                .collect(),
            [(pod.pod_ref(), pod)].into_iter().collect(),
        );
        for part in PlacementTracker::new().snapshot("s", state, PartSize { nodes: 4, pods: 4 }) {
            sim.observe("placement_observer", part);
        }
        // The buffer buys one more; the record before it is carried out: one spare of two.
        let mut model = Model::new(&policy);
        for e in sim
            .log
            .iter()
            .filter(|e| e.event_type() != "ScaleUpDecision")
        {
            model.apply(e);
        }
        let metrics = Metrics::new();
        pool_gauges(&model, &policy, &metrics);
        let text = metrics.encode();
        for line in [
            "autoscaler_buffer_spare_workers{pool=\"default\"} 2",
            "autoscaler_buffer_shortfall_workers{pool=\"default\"} 0",
            "autoscaler_warm_workers{pool=\"default\"} 0",
            "autoscaler_pool_min_nodes{pool=\"default\"} 1",
            "autoscaler_workers_min 1",
            "autoscaler_schedule_windows_open 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
