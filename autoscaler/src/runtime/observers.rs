//! What the leader runs: the watchers, the MetricsCollector, the cluster observation for the
//! StateSynchronizer, and the handlers' timers. Only one replica observes at a time, so each
//! observation is published once; they all stop when leadership is lost and start again when won.

use std::sync::Arc;
use std::time::Duration;

use bus::event::{ClusterObserved, ObservedNode};
use bus::{Envelope, Metadata};
use chrono::Utc;
use handlers::{Model, Policy};
use k8s_openapi::api::core::v1::Node;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::adapters::Adapters;
use super::group_runner::GroupRunner;
use super::projection::Projection;
use super::tasks::Tasks;
use crate::config::Settings;
use crate::docker::{DockerEventsWatcher, DockerHosts, UsageSample};
use crate::intents::RemovalIntents;
use crate::kube::node_watcher::{NodeObservation, Readiness};
use crate::kube::{BatchWindows, NodeWatcher, PendingPodsWatcher, PlacementObserver};
use crate::leader::Leadership;

/// Everything the observers need.
#[derive(Clone)]
pub struct Observers {
    pub settings: Arc<Settings>,
    pub policy: Arc<Policy>,
    pub metadata: Metadata,
    pub pool: Arc<DockerHosts>,
    pub kube: kube::Client,
    pub intents: RemovalIntents,
    pub bus: bus::Bus,
    pub adapters: Option<Arc<Adapters>>,
    pub tx: mpsc::Sender<Envelope>,
    /// Where their tasks are tracked, so a shutdown waits for them.
    pub tasks: Tasks,
}

/// The `metadata` key of the fencing token every observation carries: which leader's tenure published
/// it, so a stale leader's late writes can be told apart in the audit trail (handlers' outputs inherit
/// their cause's metadata, so a chain carries the token of the tenure that observed its root).
pub const LEADER_TOKEN_KEY: &str = "leader_token";

/// Starts the observers whenever this replica leads and stops them when it does not, until `stop`.
pub async fn supervise(
    observers: Observers,
    mut leadership: watch::Receiver<Leadership>,
    stop: CancellationToken,
) {
    // The observers of the current tenure, with its fencing token.
    let mut running: Option<(CancellationToken, u64)> = None;
    loop {
        let now = *leadership.borrow_and_update();
        // A new tenure (another token) restarts the observers, so what they publish carries its token.
        if running
            .as_ref()
            .is_some_and(|(_, t)| !now.leader || *t != now.token)
        {
            tracing::info!("not leader (or a new tenure): stopping watchers and pollers");
            if let Some((t, _)) = running.take() {
                t.cancel();
            }
        }
        if now.leader && running.is_none() {
            tracing::info!(
                fencing_token = now.token,
                "leader: starting watchers and pollers"
            );
            let token = stop.child_token();
            let mut tenure = observers.clone();
            tenure.metadata.extra.insert(
                LEADER_TOKEN_KEY.to_string(),
                serde_json::Value::from(now.token),
            );
            tenure.spawn_all(token.clone());
            running = Some((token, now.token));
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = leadership.changed() => if changed.is_err() { break },
        }
    }
    if let Some((t, _)) = running {
        t.cancel();
    }
}

impl Observers {
    fn spawn_all(self, token: CancellationToken) {
        let a = &self.settings.autoscaler;
        let prefix = a.workers.name_prefix.clone();

        let node_watcher = NodeWatcher::new(
            self.kube.clone(),
            prefix.clone(),
            self.intents.clone(),
            self.metadata.clone(),
        );
        self.tasks.spawn_logged(
            "node watcher",
            node_watcher.run(self.tx.clone(), token.clone().cancelled_owned()),
        );

        let pending = PendingPodsWatcher::new(
            self.kube.clone(),
            BatchWindows::new(
                a.kubernetes.pending_batch_idle,
                a.kubernetes.pending_batch_max,
            ),
            self.metadata.clone(),
        );
        self.tasks.spawn_logged(
            "pending pods watcher",
            pending.run(self.tx.clone(), token.clone().cancelled_owned()),
        );

        let placement = PlacementObserver::new(
            self.kube.clone(),
            self.metadata.clone(),
            prefix.clone(),
            a.kubernetes.placement_interval,
            a.kubernetes.placement_snapshot_interval,
        );
        self.tasks.spawn_logged(
            "placement observer",
            placement.run(self.tx.clone(), token.clone().cancelled_owned()),
        );

        for i in 0..self.pool.hosts().len() {
            let name = self.pool.hosts()[i].name.clone();
            self.tasks.spawn(
                format!("docker events watcher {name}"),
                self.clone().docker_events(i, token.clone()),
            );
        }

        self.tasks.spawn(
            "metrics collector",
            self.clone().metrics_collector(token.clone()),
        );
        self.tasks.spawn(
            "cluster observer",
            self.clone().cluster_observer(token.clone()),
        );
        if let Some(dir) = a.events.archive.path() {
            self.tasks.spawn(
                "archiver",
                crate::archive::run(self.bus.audit(), dir, token.clone()),
            );
        }
        for name in &a.events.handlers {
            if let Some(h) = handlers::Handler::from_name(name) {
                if let Some(every) = h.tick_interval(&self.policy) {
                    self.tasks.spawn(
                        format!("ticker {}", h.name()),
                        self.clone().ticker(h, every, token.clone()),
                    );
                }
            }
        }
    }

    /// Samples utilisation every `metrics.interval` and publishes `MetricsSampled`.
    async fn metrics_collector(self, token: CancellationToken) {
        let a = &self.settings.autoscaler;
        let mut every = tokio::time::interval(a.metrics.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = every.tick() => {}
            }
            let sample = match a.metrics.source.as_str() {
                "pod_requests" => crate::kube::utilisation::requests_utilisation(
                    &self.kube,
                    &a.workers.name_prefix,
                )
                .await
                .map(|u| u.into_sample("pod_requests"))
                .map_err(|e| e.to_string()),
                // metrics.k8s.io where it is served, else what cluster-autoscaler uses: requests.
                "metrics_api" => match crate::kube::utilisation::metrics_utilisation(
                    &self.kube,
                    &a.workers.name_prefix,
                )
                .await
                {
                    Ok(u) => Ok(u.into_sample("metrics_api")),
                    Err(e) if e.code() == "metrics_not_served" => {
                        crate::kube::utilisation::requests_utilisation(
                            &self.kube,
                            &a.workers.name_prefix,
                        )
                        .await
                        .map(|u| u.into_sample("pod_requests"))
                        .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                },
                _ => self
                    .usage()
                    .await
                    .map(|u| bus::event::MetricsSampled {
                        workers: u32::try_from(u.nodes.len()).unwrap_or(u32::MAX),
                        cpu_avg: u.cpu_avg,
                        memory_avg: u.memory_avg,
                        source: "docker_stats".into(),
                        nodes: u.nodes,
                    })
                    .map_err(|e| e.to_string()),
            };
            match sample {
                Ok(s) => {
                    let env = Envelope::root("metrics_collector", s, self.metadata.clone());
                    if self.tx.send(env).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, source = %a.metrics.source, "metrics: no sample this period")
                }
            }
        }
    }

    /// Host `i`'s engine events, once it is connected; the watcher itself reconnects after that.
    async fn docker_events(self, i: usize, token: CancellationToken) {
        let host = &self.pool.hosts()[i];
        let pool = loop {
            match host.pool().await {
                Ok(p) => break p,
                Err(_) => tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(crate::docker::hosts::RECONNECT_GAP) => {}
                },
            }
        };
        let watcher = DockerEventsWatcher::for_pool(&pool, self.metadata.clone())
            .with_shared_intents(self.intents.clone());
        if let Err(e) = watcher
            .run(self.tx.clone(), token.clone().cancelled_owned())
            .await
        {
            tracing::warn!(host = %host.name, error = %e, "docker events watcher ended");
        }
    }

    /// Docker stats of every host's workers; a host that does not answer is left out of the sample
    /// (its workers' state is the StateSynchronizer's business), unless it is the only one.
    async fn usage(&self) -> crate::docker::Result<UsageSample> {
        let samples = futures::future::join_all(self.pool.hosts().iter().map(|h| async move {
            match h.pool().await {
                Ok(p) => p.usage().await,
                Err(e) => Err(e),
            }
        }))
        .await;
        let mut nodes = Vec::new();
        let mut answered = false;
        let mut last_error = None;
        for (h, s) in self.pool.hosts().iter().zip(samples) {
            match s {
                Ok(u) => {
                    answered = true;
                    nodes.extend(u.nodes);
                }
                Err(e) => {
                    tracing::debug!(host = %h.name, error = %e, "metrics: host left out of the sample");
                    last_error = Some(e);
                }
            }
        }
        match last_error {
            Some(e) if !answered => Err(e),
            _ => Ok(UsageSample::from_nodes(nodes)),
        }
    }

    /// Observes Kubernetes and Docker for the StateSynchronizer: on a timer, and soon after any event
    /// that calls for it, with a burst of triggers collapsed into one observation.
    async fn cluster_observer(self, token: CancellationToken) {
        let mut triggers = handlers::SyncTriggers::new(self.policy.sync.clone());
        let audit = self.bus.audit();
        let mut follower = match audit.last_id().await {
            Ok(last) => audit.follow(last.as_deref().unwrap_or("0-0")).await.ok(),
            Err(_) => None,
        };
        // Whether the last observation failed: said once, not on every retry.
        let mut failing = false;
        loop {
            if triggers.due(Utc::now()) {
                match self.observe().await {
                    Ok(observed) => {
                        if failing {
                            tracing::info!("cluster observation works again");
                            failing = false;
                        }
                        let env = Envelope::root("state_observer", observed, self.metadata.clone());
                        if self.tx.send(env).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, retry_every = ?self.policy.sync.min_gap, "cluster observation failed");
                            failing = true;
                        } else {
                            tracing::debug!(error = %e, "cluster observation still failing");
                        }
                        // Try again after the short gap, not the long interval: the first
                        // observation after an engine outage is what ends a pool's
                        // `provider_unavailable` backoff.
                        triggers.trigger();
                    }
                }
            }
            let wake = triggers
                .next_due()
                .and_then(|t| (t - Utc::now()).to_std().ok())
                .unwrap_or(Duration::from_millis(100));
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(wake) => {}
                batch = async {
                    match follower.as_mut() {
                        Some(f) => f.next_batch().await.ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    for entry in batch.unwrap_or_default() {
                        if entry.decode().is_ok_and(|e| handlers::sync::wants_sync(&e.event)) {
                            triggers.trigger();
                        }
                    }
                }
            }
        }
    }

    async fn observe(&self) -> Result<ClusterObserved, String> {
        let prefix = &self.settings.autoscaler.workers.name_prefix;
        let nodes: kube::Api<Node> = kube::Api::all(self.kube.clone());
        let list = nodes
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let k8s_nodes = list
            .items
            .iter()
            .filter_map(|n| {
                let name = n.metadata.name.clone()?;
                if !name.starts_with(prefix.as_str()) {
                    return None;
                }
                let ready =
                    NodeObservation::from_node(n).is_some_and(|o| o.readiness == Readiness::Ready);
                let scale_down_disabled = n
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("cluster-autoscaler.kubernetes.io/scale-down-disabled"))
                    .is_some_and(|v| v == "true");
                Some(ObservedNode {
                    name,
                    ready,
                    scale_down_disabled,
                })
            })
            .collect();
        let listing = self.pool.list_workers().await.map_err(|e| e.to_string())?;
        if listing.workers.is_empty() && listing.unreachable.len() == self.pool.hosts().len() {
            let said: Vec<String> = listing
                .unreachable
                .iter()
                .map(|h| format!("{}: {}", h.host, h.error))
                .collect();
            return Err(format!("no Docker host answered ({})", said.join("; ")));
        }
        Ok(ClusterObserved {
            k8s_nodes,
            docker_containers: listing.workers.into_iter().map(|(_, w)| w.name).collect(),
            unreachable: listing.unreachable,
        })
    }

    /// A handler's timer work (minimum check, provisioning timeouts) on the leader's view of history.
    async fn ticker(self, handler: handlers::Handler, every: Duration, token: CancellationToken) {
        let mut projection = Projection::new(Model::new(&self.policy), self.bus.audit());
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = interval.tick() => {}
            }
            if let Err(e) = projection.catch_up_all().await {
                tracing::warn!(error = %e, handler = handler.name(), "tick: cannot read the stream");
                continue;
            }
            let outcome = handler.tick(projection.model(), &self.policy, Utc::now());
            let mut events = outcome.events;
            // A tick issues no uncordon; a failed command is repeated by a later tick's decision.
            events.extend(
                GroupRunner::execute(self.adapters.as_deref(), handler.name(), &outcome.commands)
                    .await
                    .facts,
            );
            super::group_runner::mark_dry_run(self.adapters.is_none(), &mut events);
            for e in events {
                if self.tx.send(e).await.is_err() {
                    return;
                }
            }
        }
    }
}
