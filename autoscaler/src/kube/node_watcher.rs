//! `NodeWatcher`: Node objects of our workers → `NodeReady`, `NodeHealthDegraded`, `NodeUnexpectedlyLost`.
//!
//! A kube-runtime watcher feeds a reflector [`Store`] (every Node, for others to read) and a pure
//! [`NodeTracker`] that turns what it sees into transitions:
//!
//! - `NodeReady` the first time a node incarnation (its `uid`) is seen Ready — also for nodes already
//!   Ready when the watcher starts, so a restarted autoscaler still learns that a scale-up finished;
//! - `NodeHealthDegraded {status: "NotReady" | "Unknown"}` only on a Ready → not-Ready transition, never
//!   for NotReady → NotReady updates (heartbeats of a dead node's conditions, label changes, …);
//! - `NodeUnexpectedlyLost {cause: "node_deleted"}` for a deleted worker node when no removal of ours is in
//!   flight ([`RemovalIntents::is_removing`]), including a deletion noticed only on a re-list: after a watch
//!   restart (`Init` … `InitDone`), a node known before but absent from the new list was deleted meanwhile
//!   (tombstones, as kube-runtime keeps for deleted objects).
//!
//! Only worker nodes count: those whose name starts with `workers.name_prefix` (the autoscaler names its
//! workers so, and hostname = container name = node name). The server and other nodes stay in the store
//! but produce no events.
//!
//! Each envelope gets a deterministic id (`with_deterministic_id`) derived from the node's uid (and, for
//! degradations, the Ready condition's transition time), so a repeat after a restart or from a second
//! replica is the same event to the bus's de-duplication.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use bus::event::{Event, NodeHealthDegraded, NodeReady, NodeUnexpectedlyLost};
use bus::{Envelope, Metadata};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::error::Result;
use crate::intents::RemovalIntents;

/// The `source` of the envelopes this watcher emits.
pub const SOURCE: &str = "node_watcher";

/// The Ready condition of a node, as the tracker needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// `Ready=True`.
    Ready,
    /// `Ready=False`.
    NotReady,
    /// `Ready=Unknown` (the node-lifecycle controller lost its heartbeats) or no Ready condition yet.
    Unknown,
}

impl Readiness {
    /// The text written in `NodeHealthDegraded.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Ready => "Ready",
            Readiness::NotReady => "NotReady",
            Readiness::Unknown => "Unknown",
        }
    }
}

/// What the tracker reads of one Node object.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeObservation {
    pub name: String,
    /// Tells incarnations apart: a node deleted and registered again under its name gets a new uid.
    pub uid: String,
    pub readiness: Readiness,
    /// The Ready condition's `lastHeartbeatTime`.
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// The Ready condition's `lastTransitionTime`.
    pub ready_since: Option<DateTime<Utc>>,
}

impl NodeObservation {
    /// Reads a Node; `None` when it has no name (never from a real API server).
    pub fn from_node(node: &Node) -> Option<Self> {
        let name = node.metadata.name.clone()?;
        let uid = node.metadata.uid.clone().unwrap_or_default();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
        let readiness = match ready.map(|c| c.status.as_str()) {
            Some("True") => Readiness::Ready,
            Some("False") => Readiness::NotReady,
            _ => Readiness::Unknown,
        };
        Some(Self {
            name,
            uid,
            readiness,
            last_heartbeat: ready
                .and_then(|c| c.last_heartbeat_time.as_ref())
                .and_then(|t| super::to_chrono(&t.0)),
            ready_since: ready
                .and_then(|c| c.last_transition_time.as_ref())
                .and_then(|t| super::to_chrono(&t.0)),
        })
    }
}

/// An event the tracker found, with the key its deterministic envelope id is derived from.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTransition {
    pub key: String,
    pub event: Event,
}

/// What the tracker remembers of one node incarnation.
#[derive(Debug, Clone)]
struct Known {
    uid: String,
    readiness: Readiness,
    /// `NodeReady` was emitted for this uid.
    ready_reported: bool,
    /// The last heartbeat seen, else when the watcher last saw the object.
    last_seen: DateTime<Utc>,
}

/// The pure transition logic of the watcher: feed it what the watch delivers, get the events.
#[derive(Debug, Default)]
pub struct NodeTracker {
    known: HashMap<String, Known>,
    /// Names listed since the current re-list began (`Init`); `None` outside a re-list.
    relisting: Option<HashSet<String>>,
}

impl NodeTracker {
    /// A node was added or modified.
    pub fn applied(
        &mut self,
        obs: &NodeObservation,
        is_removing: impl Fn(&str) -> bool,
        now: DateTime<Utc>,
    ) -> Vec<NodeTransition> {
        let mut out = Vec::new();
        if let Some(seen) = self.relisting.as_mut() {
            seen.insert(obs.name.clone());
        }
        let last_seen = obs.last_heartbeat.unwrap_or(now);
        let previous = match self.known.remove(&obs.name) {
            Some(k) if k.uid != obs.uid => {
                // The name came back with a new uid: the old incarnation was deleted in between.
                out.extend(lost(&obs.name, &k, &is_removing));
                None
            }
            other => other,
        };
        let mut state = previous.clone().unwrap_or(Known {
            uid: obs.uid.clone(),
            readiness: Readiness::Unknown,
            ready_reported: false,
            last_seen,
        });
        if obs.readiness == Readiness::Ready && !state.ready_reported {
            state.ready_reported = true;
            out.push(NodeTransition {
                key: format!("NodeReady/{}", obs.uid),
                event: NodeReady {
                    node_name: obs.name.clone(),
                }
                .into(),
            });
        }
        let was_ready = previous.is_some_and(|p| p.readiness == Readiness::Ready);
        if was_ready && obs.readiness != Readiness::Ready {
            let since = obs.ready_since.or(obs.last_heartbeat).unwrap_or(now);
            out.push(NodeTransition {
                key: format!(
                    "NodeHealthDegraded/{}/{}",
                    obs.uid,
                    since.timestamp_millis()
                ),
                event: NodeHealthDegraded {
                    node_name: obs.name.clone(),
                    status: obs.readiness.as_str().to_string(),
                    last_check: obs.last_heartbeat.unwrap_or(now),
                }
                .into(),
            });
        }
        state.readiness = obs.readiness;
        state.last_seen = state.last_seen.max(last_seen);
        self.known.insert(obs.name.clone(), state);
        out
    }

    /// A node was deleted (a watch `Delete`).
    pub fn deleted(
        &mut self,
        name: &str,
        uid: Option<&str>,
        is_removing: impl Fn(&str) -> bool,
    ) -> Vec<NodeTransition> {
        match self.known.get(name) {
            // A stale delete of an older incarnation than the one we know: nothing of ours is gone.
            Some(k) if uid.is_some_and(|u| u != k.uid) => Vec::new(),
            Some(_) => match self.known.remove(name) {
                Some(k) => lost(name, &k, &is_removing).into_iter().collect(),
                None => Vec::new(),
            },
            None => Vec::new(),
        }
    }

    /// The watch restarted: a full list follows.
    pub fn relist_started(&mut self) {
        self.relisting = Some(HashSet::new());
    }

    /// The list is complete: every node known before but not listed was deleted meanwhile.
    pub fn relist_done(&mut self, is_removing: impl Fn(&str) -> bool) -> Vec<NodeTransition> {
        let Some(seen) = self.relisting.take() else {
            return Vec::new();
        };
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for name in gone {
            if let Some(k) = self.known.remove(&name) {
                out.extend(lost(&name, &k, &is_removing));
            }
        }
        out
    }

    /// Node names the tracker currently knows.
    pub fn known(&self) -> impl Iterator<Item = &str> {
        self.known.keys().map(String::as_str)
    }
}

fn lost(name: &str, k: &Known, is_removing: &impl Fn(&str) -> bool) -> Option<NodeTransition> {
    if is_removing(name) {
        return None;
    }
    Some(NodeTransition {
        key: format!("NodeUnexpectedlyLost/{}", k.uid),
        event: NodeUnexpectedlyLost {
            node_name: name.to_string(),
            last_seen: k.last_seen,
            cause: "node_deleted".to_string(),
        }
        .into(),
    })
}

/// Watches Nodes; see the module doc.
pub struct NodeWatcher {
    api: Api<Node>,
    /// Only nodes whose name starts with this produce events (all nodes when empty).
    name_prefix: String,
    /// Our own removals in flight: their deletion is not a loss.
    intents: RemovalIntents,
    /// Metadata of the emitted envelopes.
    metadata: Metadata,
    /// Reader half of the reflector, handed out by [`NodeWatcher::store`].
    store: Store<Node>,
    /// Writer half, fed by `run`.
    writer: reflector::store::Writer<Node>,
    /// Restart the watch (full re-list) this often, a level-triggered repair of anything missed.
    resync: Option<Duration>,
    watcher_config: watcher::Config,
}

impl NodeWatcher {
    /// A watcher of all Nodes that reports on those named `name_prefix…`.
    pub fn new(
        client: Client,
        name_prefix: impl Into<String>,
        intents: RemovalIntents,
        metadata: Metadata,
    ) -> Self {
        let (store, writer) = reflector::store();
        Self {
            api: Api::all(client),
            name_prefix: name_prefix.into(),
            intents,
            metadata,
            store,
            writer,
            resync: Some(Duration::from_secs(300)),
            watcher_config: watcher::Config::default(),
        }
    }

    /// Restarts the watch with a full re-list every `every` (`None`: only when the watch breaks, e.g.
    /// on 410 Gone). Default 5 minutes.
    pub fn with_resync(mut self, every: Option<Duration>) -> Self {
        self.resync = every;
        self
    }

    /// Replaces the watcher's list/watch parameters (label selector, timeouts).
    pub fn with_watcher_config(mut self, config: watcher::Config) -> Self {
        self.watcher_config = config;
        self
    }

    /// The reflector's store of all Nodes, filled while `run` runs (`wait_until_ready` resolves after the
    /// first full list).
    pub fn store(&self) -> Store<Node> {
        self.store.clone()
    }

    fn is_worker(&self, name: &str) -> bool {
        name.starts_with(&self.name_prefix)
    }

    /// Runs until `shutdown` completes or `tx`'s receiver is dropped. API failures are logged and retried
    /// with kube's default backoff, never returned.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<Envelope>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        let mut tracker = NodeTracker::default();
        loop {
            let stream = watcher(self.api.clone(), self.watcher_config.clone()).default_backoff();
            tokio::pin!(stream);
            let resync = self.resync;
            let resync_at = async move {
                match resync {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(resync_at);
            loop {
                let item = tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = &mut resync_at => {
                        debug!("restarting the node watch for a full re-list");
                        break;
                    }
                    item = stream.next() => item,
                };
                let event = match item {
                    Some(Ok(event)) => event,
                    Some(Err(error)) => {
                        warn!(%error, "node watch failed; retrying with backoff");
                        continue;
                    }
                    None => break,
                };
                self.writer.apply_watcher_event(&event);
                let transitions = self.track(&mut tracker, event);
                for t in transitions {
                    info!(event_type = t.event.event_type(), key = %t.key, "node transition");
                    let envelope = Envelope::root(SOURCE, t.event, self.metadata.clone())
                        .with_deterministic_id(&t.key);
                    if tx.send(envelope).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn track(&self, tracker: &mut NodeTracker, event: watcher::Event<Node>) -> Vec<NodeTransition> {
        let removing = |n: &str| self.intents.is_removing(n);
        let now = Utc::now();
        match event {
            watcher::Event::Init => {
                tracker.relist_started();
                Vec::new()
            }
            watcher::Event::InitApply(node) | watcher::Event::Apply(node) => {
                match NodeObservation::from_node(&node) {
                    Some(obs) if self.is_worker(&obs.name) => tracker.applied(&obs, removing, now),
                    _ => Vec::new(),
                }
            }
            watcher::Event::InitDone => tracker.relist_done(removing),
            watcher::Event::Delete(node) => match node.metadata.name.as_deref() {
                Some(name) if self.is_worker(name) => {
                    tracker.deleted(name, node.metadata.uid.as_deref(), removing)
                }
                _ => Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(name: &str, uid: &str, readiness: Readiness) -> NodeObservation {
        NodeObservation {
            name: name.into(),
            uid: uid.into(),
            readiness,
            last_heartbeat: None,
            ready_since: None,
        }
    }

    fn types(ts: &[NodeTransition]) -> Vec<&'static str> {
        ts.iter().map(|t| t.event.event_type()).collect()
    }

    fn never(_: &str) -> bool {
        false
    }

    #[test]
    fn node_ready_is_reported_once_per_incarnation() {
        let mut t = NodeTracker::default();
        let now = Utc::now();
        assert!(t
            .applied(&obs("w1", "u1", Readiness::Unknown), never, now)
            .is_empty());
        assert_eq!(
            types(&t.applied(&obs("w1", "u1", Readiness::Ready), never, now)),
            ["NodeReady"]
        );
        assert!(t
            .applied(&obs("w1", "u1", Readiness::Ready), never, now)
            .is_empty());
        // Recovering after a degradation is not a new NodeReady.
        t.applied(&obs("w1", "u1", Readiness::NotReady), never, now);
        assert!(t
            .applied(&obs("w1", "u1", Readiness::Ready), never, now)
            .is_empty());
        // A new incarnation under the same name is: and the old one was lost.
        assert_eq!(
            types(&t.applied(&obs("w1", "u2", Readiness::Ready), never, now)),
            ["NodeUnexpectedlyLost", "NodeReady"]
        );
    }

    #[test]
    fn only_ready_to_not_ready_degrades() {
        let mut t = NodeTracker::default();
        let now = Utc::now();
        t.applied(&obs("w1", "u1", Readiness::NotReady), never, now);
        assert!(t
            .applied(&obs("w1", "u1", Readiness::NotReady), never, now)
            .is_empty());
        t.applied(&obs("w1", "u1", Readiness::Ready), never, now);
        let ts = t.applied(&obs("w1", "u1", Readiness::Unknown), never, now);
        assert_eq!(types(&ts), ["NodeHealthDegraded"]);
        match &ts[0].event {
            Event::NodeHealthDegraded(d) => assert_eq!(d.status, "Unknown"),
            other => panic!("{other:?}"),
        }
        assert!(t
            .applied(&obs("w1", "u1", Readiness::Unknown), never, now)
            .is_empty());
        assert!(t
            .applied(&obs("w1", "u1", Readiness::NotReady), never, now)
            .is_empty());
    }

    #[test]
    fn a_deletion_is_a_loss_unless_we_are_removing_the_node() {
        let mut t = NodeTracker::default();
        let now = Utc::now();
        t.applied(&obs("w1", "u1", Readiness::Ready), never, now);
        t.applied(&obs("w2", "u2", Readiness::Ready), never, now);
        let ts = t.deleted("w1", Some("u1"), never);
        assert_eq!(types(&ts), ["NodeUnexpectedlyLost"]);
        assert_eq!(ts[0].key, "NodeUnexpectedlyLost/u1");
        assert!(t.deleted("w2", Some("u2"), |n| n == "w2").is_empty());
        // Deleting again (or an unknown node) says nothing.
        assert!(t.deleted("w1", Some("u1"), never).is_empty());
    }

    #[test]
    fn nodes_missing_from_a_relist_were_deleted() {
        let mut t = NodeTracker::default();
        let now = Utc::now();
        for (n, u) in [("w1", "u1"), ("w2", "u2"), ("w3", "u3")] {
            t.applied(&obs(n, u, Readiness::Ready), never, now);
        }
        t.relist_started();
        assert!(t
            .applied(&obs("w1", "u1", Readiness::Ready), never, now)
            .is_empty());
        let ts = t.relist_done(|n| n == "w3");
        assert_eq!(types(&ts), ["NodeUnexpectedlyLost"]);
        match &ts[0].event {
            Event::NodeUnexpectedlyLost(l) => {
                assert_eq!(l.node_name, "w2");
                assert_eq!(l.cause, "node_deleted");
            }
            other => panic!("{other:?}"),
        }
        let mut known: Vec<_> = t.known().collect();
        known.sort();
        assert_eq!(known, ["w1"]);
        // A relist_done without a relist is harmless.
        assert!(t.relist_done(never).is_empty());
    }

    #[test]
    fn a_first_list_reports_ready_nodes_and_loses_nothing() {
        let mut t = NodeTracker::default();
        let now = Utc::now();
        t.relist_started();
        let ts = t.applied(&obs("w1", "u1", Readiness::Ready), never, now);
        assert_eq!(types(&ts), ["NodeReady"]);
        assert!(t.relist_done(never).is_empty());
    }
}
