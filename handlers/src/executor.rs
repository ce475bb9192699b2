//! Maps commands to trait calls and returns the facts to publish — the one place that says which
//! event reports which effect. `autoscaler` runs it (leader only) with its Docker/Kubernetes adapters.
//!
//! | command | success | failure |
//! |---|---|---|
//! | `CreateWorker` | `NodeCreated` | `ScalingActionFailed {scale_up, node, retryable}` |
//! | `CordonAndTaint` | `NodeCordoned` | `ScalingActionFailed {scale_down, …}` |
//! | `Drain` | `NodeDrained {evicted_pods}` | `ScalingActionFailed {scale_down, …}` |
//! | `RemoveWorker` | — (the following `DeleteNode` reports); `WarmPoolEntered` when kept warm | `ScalingActionFailed` |
//! | `DeleteNode` | `NodeRemoved` | `ScalingActionFailed` |
//! | `Uncordon`, `AnnotateNode`, `Notify` | — | — (logged by the caller) |
//!
//! Commands run in order; after a failure, later commands for the same node are skipped.

use bus::event::{
    NodeCordoned, NodeCreated, NodeDrained, NodeRemoved, ScalingAction, ScalingActionFailed,
    WarmPoolEntered,
};
use bus::Envelope;
use chrono::{DateTime, Utc};

use crate::command::{Command, Issued};
use crate::policy::pool_field;
use crate::traits::{ActionError, NodeOps, Notifier, Removal, WorkerPool};

/// The source of the executor's facts.
pub const SOURCE: &str = "executor";

/// What one run produced: facts to publish and errors of commands that report no fact.
#[derive(Debug, Default)]
pub struct Executed {
    pub facts: Vec<Envelope>,
    pub unreported: Vec<(Command, ActionError)>,
}

/// Runs `issued` in order against the adapters.
pub async fn execute<P: WorkerPool, N: NodeOps, A: Notifier>(
    issued: &[Issued],
    pool: &P,
    nodes: &N,
    notifier: &A,
    now: DateTime<Utc>,
) -> Executed {
    let mut done = Executed::default();
    let mut failed_nodes: Vec<String> = Vec::new();
    for i in issued {
        if i.command
            .node()
            .is_some_and(|n| failed_nodes.iter().any(|f| f == n))
        {
            continue;
        }
        let fail = |action: ScalingAction, node: &str, e: ActionError| {
            i.fact(
                SOURCE,
                ScalingActionFailed {
                    action,
                    node_name: Some(node.to_string()),
                    error: crate::alerts::redact(&e.message),
                    retryable: e.retryable,
                },
                now,
            )
        };
        let fact = match &i.command {
            Command::CreateWorker {
                name,
                pool: node_pool,
                ..
            } => match pool.create_worker(name, node_pool).await {
                Ok(id) => Some(i.fact(
                    SOURCE,
                    NodeCreated {
                        node_name: name.clone(),
                        container_id: Some(id),
                        pool: pool_field(node_pool),
                    },
                    now,
                )),
                Err(e) => Some(fail(ScalingAction::ScaleUp, name, e)),
            },
            Command::CordonAndTaint { node } => match nodes.cordon_and_taint(node).await {
                Ok(()) => Some(i.fact(
                    SOURCE,
                    NodeCordoned {
                        node_name: node.clone(),
                    },
                    now,
                )),
                Err(e) => Some(fail(ScalingAction::ScaleDown, node, e)),
            },
            Command::Drain { node, timeout } => match nodes.drain(node, *timeout).await {
                Ok(evicted) => Some(i.fact(
                    SOURCE,
                    NodeDrained {
                        node_name: node.clone(),
                        evicted_pods: evicted,
                    },
                    now,
                )),
                Err(e) => Some(fail(ScalingAction::ScaleDown, node, e)),
            },
            Command::RemoveWorker { node, keep_warm_in } => {
                match pool.remove_worker(node, keep_warm_in.is_some()).await {
                    Ok(Removal::Removed) => None,
                    Ok(Removal::KeptWarm) => Some(i.fact(
                        SOURCE,
                        WarmPoolEntered {
                            node_name: node.clone(),
                            pool: keep_warm_in.as_deref().and_then(pool_field),
                        },
                        now,
                    )),
                    Err(e) => Some(fail(ScalingAction::ScaleDown, node, e)),
                }
            }
            Command::DeleteNode {
                node,
                pool: node_pool,
            } => match nodes.delete_node(node).await {
                Ok(()) => Some(i.fact(
                    SOURCE,
                    NodeRemoved {
                        node_name: node.clone(),
                        pool: pool_field(node_pool),
                    },
                    now,
                )),
                Err(e) => Some(fail(ScalingAction::ScaleDown, node, e)),
            },
            Command::Uncordon { node } => {
                if let Err(e) = nodes.uncordon(node).await {
                    done.unreported.push((i.command.clone(), e));
                }
                None
            }
            Command::AnnotateNode { node, text } => {
                if let Err(e) = nodes.annotate(node, text).await {
                    done.unreported.push((i.command.clone(), e));
                }
                None
            }
            Command::Notify { alert } => {
                if let Err(e) = notifier.notify(alert).await {
                    done.unreported.push((i.command.clone(), e));
                }
                None
            }
        };
        if let Some(f) = fact {
            if let bus::Event::ScalingActionFailed(sf) = &f.event {
                if let Some(n) = &sf.node_name {
                    failed_nodes.push(n.clone());
                }
            }
            done.facts.push(f);
        }
    }
    done
}
