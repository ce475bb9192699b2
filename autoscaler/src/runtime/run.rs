//! `autoscaler run`, assembled: connections, the handlers' consumer groups, leadership and observers,
//! the HTTP port; graceful shutdown on the given future.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use handlers::Model;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;

use super::decider::Decider;
use super::observers::{supervise, Observers};
use super::projection::Projection;
use super::world::{DockerWorkers, KubeNodes, Webhook, Webhooks, World};
use super::{bus_config, metadata, policy, pool_config, replica_id, sink};
use crate::config::Settings;
use crate::docker::DockerWorkerPool;
use crate::http::{self, HttpState};
use crate::intents::Intents;
use crate::kube::KubeNodeOps;
use crate::leader::{self, Leadership};
use crate::metrics::Metrics;

/// What a running autoscaler exposes to its caller (the `lab` command, tests).
pub struct Running {
    /// The bound HTTP address.
    pub http: SocketAddr,
}

/// Retries `connect` with backoff until it succeeds or `stop` is cancelled: an outage at start-up is
/// waited out, not crashed on.
async fn connect_retrying<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    stop: &CancellationToken,
    mut connect: impl FnMut() -> F,
) -> Option<T> {
    let mut delay = Duration::from_millis(200);
    loop {
        match connect().await {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot connect to {what}");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Runs the autoscaler until `shutdown` resolves. `bound` receives the HTTP address once serving.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    let settings = Arc::new(settings);
    let a = &settings.autoscaler;
    let policy = Arc::new(policy(&settings));
    let metrics = Arc::new(Metrics::new());
    metrics.workers_min.set(i64::from(a.limits.min_nodes));
    metrics.workers_max.set(i64::from(a.limits.max_nodes));
    let replica = replica_id();
    let metadata = metadata(&settings);
    let ready = Arc::new(AtomicBool::new(false));
    tracing::info!(
        replica = %replica,
        cluster_id = %a.cluster_id,
        stream = %a.events.event_bus.stream_name,
        dry_run = a.dry_run,
        handlers = ?a.events.handlers,
        "autoscaler starting"
    );

    let Some(bus) = connect_retrying("Redis", &stop, || bus::connect(bus_config(&settings))).await
    else {
        return Ok(());
    };
    // Handlers decide one delivery at a time, in stream order, and a delivery may carry out a whole
    // drain: give it longer than the drain before another consumer may claim it.
    let mut handler_config = bus_config(&settings);
    handler_config.concurrency = 1;
    handler_config.claim_idle = handler_config
        .claim_idle
        .max(a.scaling.drain_timeout + Duration::from_secs(30));
    let handler_bus = bus::connect(handler_config)
        .await
        .context("connecting the handlers' bus")?;

    let intents = Intents::new();
    let pool_cfg = pool_config(&settings).context("reading the k3s token file")?;
    let Some(pool) = connect_retrying("the Docker engine", &stop, || {
        DockerWorkerPool::connect(pool_cfg.clone())
    })
    .await
    else {
        return Ok(());
    };
    let pool = Arc::new(pool);
    match pool.adopt().await {
        Ok(workers) => tracing::info!(adopted = workers.len(), "docker: adopted managed workers"),
        Err(e) => tracing::warn!(error = %e, "docker: cannot list managed workers yet"),
    }
    let Some(kube) =
        connect_retrying("Kubernetes", &stop, || crate::kube::connect(&a.kubernetes)).await
    else {
        return Ok(());
    };

    let world = if a.dry_run {
        tracing::warn!("dry run: decisions are published marked dry_run; nothing is changed");
        None
    } else {
        let targets = a
            .alerts
            .webhooks
            .iter()
            .filter_map(|w| {
                handlers::alerts::Format::parse(&w.format).map(|format| Webhook {
                    url: w.url.clone(),
                    format,
                })
            })
            .collect();
        Some(Arc::new(World {
            workers: DockerWorkers {
                pool: pool.clone(),
                intents: intents.clone(),
            },
            nodes: KubeNodes {
                ops: KubeNodeOps::new(kube.clone(), a.scaling.drain_timeout),
                intents: intents.clone(),
            },
            alerts: Webhooks::new(targets).context("loading the TLS roots for webhooks")?,
        }))
    };

    // Observations flow through one channel into the stream.
    let (tx, rx) = mpsc::channel(sink::SINK_CAPACITY);
    let sink_task = tokio::spawn(sink::drain(rx, bus.publisher(), metrics.clone()));

    // The handlers, one consumer group each.
    let stats = bus::Stats::with_observer({
        let metrics = metrics.clone();
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
        }
    });
    let mut consumers = Vec::new();
    for name in &a.events.handlers {
        let Some(handler) = handlers::Handler::from_name(name) else {
            anyhow::bail!("unknown handler {name}");
        };
        let consumer = handler_bus.consumer().with_stats(stats.clone());
        consumer
            .ensure_group(name)
            .await
            .with_context(|| format!("creating consumer group {name}"))?;
        let decider = Decider {
            handler,
            policy: policy.clone(),
            projection: Mutex::new(Projection::new(Model::new(&policy), handler_bus.audit())),
            world: world.clone(),
            publisher: handler_bus.publisher(),
            metrics: metrics.clone(),
        };
        let group = name.clone();
        let consumer_name = replica.clone();
        let token = stop.clone();
        consumers.push(tokio::spawn(async move {
            if let Err(e) = consumer
                .run(decider, &group, &consumer_name, token.cancelled_owned())
                .await
            {
                tracing::error!(group, error = %e, "consumer stopped with an error");
            }
        }));
    }
    http::set_ready(&ready, true);

    // Leadership and the leader's observers.
    let (lead_tx, lead_rx) = watch::channel(Leadership::default());
    let leader_task = tokio::spawn(leader::run(
        bus.connection(),
        a.events.event_bus.stream_name.clone(),
        replica.clone(),
        a.leader.lease_ttl,
        lead_tx,
        stop.clone().cancelled_owned(),
    ));
    {
        let metrics = metrics.clone();
        let mut rx = lead_rx.clone();
        tokio::spawn(async move {
            loop {
                metrics.leader.set(i64::from(rx.borrow_and_update().leader));
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    let observers = Observers {
        settings: settings.clone(),
        policy: policy.clone(),
        metadata,
        pool: pool.clone(),
        kube: kube.clone(),
        intents,
        bus: bus.clone(),
        world,
        tx,
    };
    let supervisor = tokio::spawn(supervise(observers, lead_rx, stop.clone()));

    // Gauges read from Redis and the record, refreshed in the background.
    tokio::spawn(refresh_gauges(
        bus.clone(),
        policy.clone(),
        metrics.clone(),
        stop.clone(),
    ));

    // HTTP.
    let status: http::StatusFn = {
        let settings = settings.clone();
        let bus = bus.clone();
        let pool = pool.clone();
        let kube = kube.clone();
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
    };
    let listen: SocketAddr = a.http.listen.parse().context("http.listen")?;
    let http_state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        status,
    };
    let http_task = tokio::spawn(http::serve(
        listen,
        http_state,
        stop.clone().cancelled_owned(),
        bound,
    ));

    stop.cancelled().await;
    tracing::info!("shutting down: finishing in-flight deliveries");
    http::set_ready(&ready, false);
    for c in consumers {
        let _ = c.await;
    }
    let _ = supervisor.await;
    let _ = leader_task.await;
    // The observers' senders are gone with the supervisor; flush what they left.
    let _ = tokio::time::timeout(Duration::from_secs(5), sink_task).await;
    if let Ok(Err(e)) = http_task.await {
        tracing::warn!(error = %e, "http server failed");
    }
    tracing::info!("stopped");
    Ok(())
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
                *counts.entry(state_label(w.state)).or_default() += 1;
            }
            seen.extend(counts.keys().cloned());
            for (state, n) in counts {
                metrics
                    .workers
                    .get_or_create(&crate::metrics::StateLabel { state })
                    .set(n);
            }
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
