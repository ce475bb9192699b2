//! The scheduling simulation: where pending pods could run, how many new nodes of which pool they
//! need, and which nodes can go. Pure: no I/O, no logging, no clock; every iteration is over sorted
//! collections and every tie is broken by name, so equal inputs (in any order) give equal plans.
//!
//! Map:
//! - [`predicates`]: [`Predicate`] and one pure function per predicate (resources with pod slots,
//!   `nodeSelector`, required node affinity, taints/tolerations, hostname anti-affinity);
//! - [`snapshot`]: the [`Snapshot`] (nodes with their pods, pending pods, nodes on their way per pool)
//!   and [`PoolTemplate`] (what a new node of a pool looks like, its bounds and priority);
//! - [`scale_up`](mod@scale_up): [`scale_up()`] → [`ScaleUpPlan`] (new nodes per pool, and why the
//!   rest get none: [`ScaleUpBlock`]), with the [`Expander`]s `least-waste` and `priority`;
//! - [`scale_down`](mod@scale_down): [`scale_down()`] → [`ScaleDownPlan`] (removable nodes in
//!   order, [`ScaleDownBlock`] per node that stays);
//! - `classes`: equivalence classes of pods.
//!
//! Choices:
//! - **Classes.** Pods with the same namespace, requests and constraints (and the values of the
//!   labels some anti-affinity selector reads) answer every predicate alike, so they are checked once per pool or node, as
//!   cluster-autoscaler's equivalence groups do: 10,000 pending pods of 50 Deployments are 50
//!   checks per pool, and packing moves a class onto a node in one step (how many copies fit).
//! - **Order of predicates.** Node selector, node affinity, taints, resources, anti-affinity
//!   (kube-scheduler's order); a blocked pod names the first that fails, per pool.
//! - **Least-waste** (cluster-autoscaler's): for the pods a pool's new nodes would take
//!   (first-fit decreasing by the larger share of a node a pod needs), the unused fraction of their
//!   CPU plus the unused fraction of their memory; the smallest wins, a tie goes to the smaller
//!   pool name. **Priority**: the highest `priority`, then least-waste. After a pool is picked, the
//!   pods it cannot take (its max, or constraints) go through the expander again with the others.
//! - **Capacity on its way** (nodes created, not Ready) is used before any new node; existing nodes
//!   are not, since kube-scheduler has already found the pending pods do not fit there.
//! - **Scale-down order**: least utilised candidate first (see [`scale_down()`]), moves simulated
//!   and kept across candidates.

pub mod predicates;
pub mod scale_down;
pub mod scale_up;
pub mod snapshot;

mod classes;

pub use predicates::{check, check_node, Predicate};
pub use scale_down::{scale_down, ScaleDownBlock, ScaleDownPlan};
pub use scale_up::{
    scale_up, BlockedPods, Expander, Ignored, PoolScaleUp, ScaleUpBlock, ScaleUpPlan,
};
pub use snapshot::{NodeState, PoolTemplate, Snapshot, SnapshotError, Unavailable};
