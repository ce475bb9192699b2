//! Scale-up: which pools get how many new nodes for the pending pods, and why the others get none.

use std::collections::BTreeMap;

use bus::scheduling::{PodSpec, Resources};
use serde::{Deserialize, Serialize};

use super::classes::Classes;
use super::predicates::{check_node, Predicate};
use super::snapshot::{PoolTemplate, Snapshot, Unavailable};

/// How the pool of the next new nodes is picked among those that can run pending pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expander {
    /// cluster-autoscaler's default: the pool whose new nodes leave the smallest unused fraction
    /// of CPU plus memory for the pods they take.
    #[default]
    LeastWaste,
    /// The highest `priority` first; least-waste among pools of equal priority.
    Priority,
}

impl Expander {
    /// The name in the configuration (`least-waste`, `priority`).
    pub fn name(self) -> &'static str {
        match self {
            Expander::LeastWaste => "least-waste",
            Expander::Priority => "priority",
        }
    }
}

/// Why pending pods get no node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ScaleUpBlock {
    /// No pool's new node could ever run them: the first failing predicate per pool (empty when
    /// there are no pools).
    NoPoolFits {
        predicates: BTreeMap<String, Predicate>,
    },
    /// Some pools could run them, and each of those is at its `max_nodes`.
    PoolMaxReached { pools: Vec<String> },
    /// A pool could run them, but the cluster-wide maximum leaves no room.
    MaxNodesReached,
    /// The pools with room that could run them back off after failed creates.
    PoolBackoff { pools: Vec<String> },
    /// As [`ScaleUpBlock::PoolBackoff`], and some of those pools failed because the provider
    /// (the Docker engine) did not answer.
    ProviderUnavailable { pools: Vec<String> },
}

impl ScaleUpBlock {
    /// The stable code (`no_pool_fits`, `pool_max_reached`, `max_nodes_reached`).
    pub fn code(&self) -> &'static str {
        match self {
            ScaleUpBlock::NoPoolFits { .. } => "no_pool_fits",
            ScaleUpBlock::PoolMaxReached { .. } => "pool_max_reached",
            ScaleUpBlock::MaxNodesReached => "max_nodes_reached",
            ScaleUpBlock::PoolBackoff { .. } => "pool_backoff",
            ScaleUpBlock::ProviderUnavailable { .. } => "provider_unavailable",
        }
    }
}

/// Why a pending pod is left out of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ignored {
    /// DaemonSet pods run on each node: a new node brings its own.
    DaemonSet,
    /// The pod names its node (`spec.nodeName`): no new node can be it.
    BoundToNode,
}

/// The new nodes of one pool.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolScaleUp<'a> {
    pub new_nodes: u32,
    /// The pods they take, by `namespace/name`.
    pub pods: Vec<&'a PodSpec>,
}

/// Pods sharing one reason for getting no node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedPods<'a> {
    pub reason: ScaleUpBlock,
    /// By `namespace/name`.
    pub pods: Vec<&'a PodSpec>,
}

/// The outcome of [`scale_up`]; every list is sorted, so equal inputs give equal plans.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScaleUpPlan<'a> {
    /// Per pool, the pending pods that nodes already on their way will take.
    pub on_provisioning: BTreeMap<String, Vec<&'a PodSpec>>,
    /// Per pool with new nodes.
    pub new_nodes: BTreeMap<String, PoolScaleUp<'a>>,
    /// By reason.
    pub blocked: Vec<BlockedPods<'a>>,
    /// By `namespace/name`.
    pub ignored: Vec<(&'a PodSpec, Ignored)>,
}

impl ScaleUpPlan<'_> {
    /// New nodes over all pools.
    pub fn total_new_nodes(&self) -> u32 {
        self.new_nodes.values().map(|p| p.new_nodes).sum()
    }
}

/// One node being filled in the simulation.
#[derive(Debug, Clone)]
struct Bin {
    free: Resources,
    /// The classes placed on it (for anti-affinity).
    classes: Vec<u32>,
}

impl Bin {
    fn new(allocatable: Resources) -> Self {
        Bin {
            free: allocatable,
            classes: Vec::new(),
        }
    }
}

/// Places up to `want` pods of class `k` on `bins`, first fit; returns how many.
fn fill(classes: &mut Classes<'_>, k: u32, want: u32, bins: &mut [Bin]) -> u32 {
    let req = classes.list[k as usize].requests;
    let self_anti = classes.list[k as usize].self_anti;
    let mut placed = 0;
    for b in bins {
        if placed == want {
            break;
        }
        let mut n = req.copies_in(&b.free);
        if n == 0 || classes.conflicts_with_any(k, b.classes.iter().copied()) {
            continue;
        }
        if self_anti {
            n = 1;
        }
        let t = n.min(want - placed);
        b.free = b.free.saturating_sub(req.saturating_mul(t));
        if !b.classes.contains(&k) {
            b.classes.push(k);
        }
        placed += t;
    }
    placed
}

/// The next `n` members of class `k`.
fn take<'c, 'a>(classes: &'c Classes<'a>, next: &mut [usize], k: u32, n: u32) -> &'c [&'a PodSpec] {
    let k = k as usize;
    let from = next[k];
    next[k] += n as usize;
    &classes.list[k].members[from..next[k]]
}

/// What new nodes of one pool would do for the pods still without a place.
struct Option_ {
    pool: usize,
    nodes: u32,
    placed: Vec<(u32, u32)>,
    waste: f64,
}

/// The unused CPU plus memory fraction of `nodes` new nodes of `allocatable` carrying `used`.
fn waste(allocatable: Resources, nodes: u32, used: Resources) -> f64 {
    let cap = allocatable.saturating_mul(nodes);
    let frac = |cap: u64, used: u64| {
        if cap == 0 {
            0.0
        } else {
            cap.saturating_sub(used) as f64 / cap as f64
        }
    };
    frac(cap.cpu_millis, used.cpu_millis) + frac(cap.memory_bytes, used.memory_bytes)
}

/// First-fit decreasing of the classes that fit `pool` onto at most `room` new nodes of it.
fn simulate_pool(
    classes: &mut Classes<'_>,
    pool_index: usize,
    pool: &PoolTemplate,
    fits: &[bool],
    left: &[u32],
    room: u32,
) -> Option_ {
    let t = pool.allocatable;
    let share = |r: &Resources| {
        let f = |need: u64, have: u64| {
            if have == 0 {
                0.0
            } else {
                need as f64 / have as f64
            }
        };
        f(r.cpu_millis, t.cpu_millis)
            .max(f(r.memory_bytes, t.memory_bytes))
            .max(f(u64::from(r.pods), u64::from(t.pods)))
    };
    let mut order: Vec<u32> = (0..classes.len() as u32)
        .filter(|&k| fits[k as usize] && left[k as usize] > 0)
        .collect();
    let shares: Vec<f64> = classes.list.iter().map(|c| share(&c.requests)).collect();
    order.sort_by(|&a, &b| {
        shares[b as usize]
            .total_cmp(&shares[a as usize])
            .then(a.cmp(&b))
    });
    let mut bins: Vec<Bin> = Vec::new();
    let mut placed = Vec::new();
    let mut used = Resources::ZERO;
    for k in order {
        let want = left[k as usize];
        let mut got = fill(classes, k, want, &mut bins);
        while got < want && (bins.len() as u32) < room {
            bins.push(Bin::new(t));
            let start = bins.len() - 1;
            let n = fill(classes, k, want - got, &mut bins[start..]);
            if n == 0 {
                // Cannot happen for a class that fits an empty node; stop rather than loop.
                bins.pop();
                break;
            }
            got += n;
        }
        if got > 0 {
            placed.push((k, got));
            used = used.saturating_add(classes.list[k as usize].requests.saturating_mul(got));
        }
    }
    let nodes = bins.len() as u32;
    Option_ {
        pool: pool_index,
        nodes,
        placed,
        waste: waste(t, nodes, used),
    }
}

/// Whether option `a` is better than `b` for `expander`; pools are tried in name order and a tie
/// keeps the earlier, so ties go to the smaller name.
fn better(expander: Expander, pools: &[&PoolTemplate], a: &Option_, b: &Option_) -> bool {
    if expander == Expander::Priority {
        let (pa, pb) = (pools[a.pool].priority, pools[b.pool].priority);
        if pa != pb {
            return pa > pb;
        }
    }
    a.waste.total_cmp(&b.waste).is_lt()
}

/// Plans new nodes for `snapshot`'s pending pods over `pools`, with at most `max_new_nodes` new
/// nodes cluster-wide (the cluster maximum minus nodes existing and on their way).
///
/// Pools the snapshot marks [`Unavailable`](super::Unavailable) get no new node; pods only they
/// could take are blocked with `pool_backoff` or `provider_unavailable`.
///
/// DaemonSet pods and pods naming a node are [`Ignored`]. The rest are grouped into classes and
/// placed first-fit-decreasing on nodes already on their way (pools in name order), then the
/// expander picks a pool for what is left, its new nodes take what they can, and again with the
/// other pools until no pool takes anything. Existing nodes are not tried: kube-scheduler already
/// found that the pods do not fit there, and it knows predicates this simulation does not.
pub fn scale_up<'a>(
    snapshot: &'a Snapshot,
    pools: &[PoolTemplate],
    expander: Expander,
    max_new_nodes: u32,
) -> ScaleUpPlan<'a> {
    let mut pools: Vec<&PoolTemplate> = pools.iter().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));

    let mut plan = ScaleUpPlan::default();
    let considered = set_aside_ignored(snapshot, &mut plan.ignored);
    let (classes, _) = Classes::group(&considered, true);
    let fit = fit_per_pool(&pools, &classes);
    let fits: Vec<Vec<bool>> = fit
        .iter()
        .map(|row| row.iter().map(Result::is_ok).collect())
        .collect();
    let mut unplaced = Unplaced::new(classes);

    fill_provisioning(
        snapshot,
        &pools,
        &fits,
        &mut unplaced,
        &mut plan.on_provisioning,
    );
    let pool_room = add_new_nodes(
        snapshot,
        &pools,
        expander,
        max_new_nodes,
        &fits,
        &mut unplaced,
        &mut plan.new_nodes,
    );
    plan.blocked = blocked(snapshot, &pools, &fit, &fits, &pool_room, &unplaced);
    for pods in plan.on_provisioning.values_mut() {
        pods.sort_unstable_by(by_name);
    }
    for p in plan.new_nodes.values_mut() {
        p.pods.sort_unstable_by(by_name);
    }
    plan
}

/// The pending pods by class, and how many of each are still without a place.
struct Unplaced<'a> {
    classes: Classes<'a>,
    left: Vec<u32>,
    /// The next member of each class to hand out: members go in name order.
    next: Vec<usize>,
}

impl<'a> Unplaced<'a> {
    fn new(classes: Classes<'a>) -> Self {
        let left = classes
            .list
            .iter()
            .map(|c| c.members.len() as u32)
            .collect();
        let next = vec![0; classes.len()];
        Unplaced {
            classes,
            left,
            next,
        }
    }

    /// Hands out the next `n` members of class `k`: they have a place now.
    fn take(&mut self, k: u32, n: u32) -> &[&'a PodSpec] {
        self.left[k as usize] -= n;
        take(&self.classes, &mut self.next, k, n)
    }
}

fn by_name(a: &&PodSpec, b: &&PodSpec) -> std::cmp::Ordering {
    (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
}

/// Records the pending pods that are [`Ignored`] in `ignored` (sorted) and returns the others.
fn set_aside_ignored<'a>(
    snapshot: &'a Snapshot,
    ignored: &mut Vec<(&'a PodSpec, Ignored)>,
) -> Vec<&'a PodSpec> {
    let mut considered = Vec::with_capacity(snapshot.pending().len());
    for p in snapshot.pending() {
        if p.is_daemon_set() {
            ignored.push((p, Ignored::DaemonSet));
        } else if p.node_name.is_some() {
            ignored.push((p, Ignored::BoundToNode));
        } else {
            considered.push(p);
        }
    }
    ignored.sort_by(|a, b| (&a.0.namespace, &a.0.name).cmp(&(&b.0.namespace, &b.0.name)));
    considered
}

/// Per pool, whether each class runs on an empty node of it, or the first predicate that fails.
fn fit_per_pool(pools: &[&PoolTemplate], classes: &Classes<'_>) -> Vec<Vec<Result<(), Predicate>>> {
    pools
        .iter()
        .map(|pool| {
            let node = pool.template_node();
            classes
                .list
                .iter()
                .map(|c| {
                    check_node(c.rep(), &node)?;
                    if c.requests.fits_in(&pool.allocatable) {
                        Ok(())
                    } else {
                        Err(Predicate::Resources)
                    }
                })
                .collect()
        })
        .collect()
}

/// Places pending pods on capacity on its way (pools in name order), largest pods first.
fn fill_provisioning<'a>(
    snapshot: &Snapshot,
    pools: &[&PoolTemplate],
    fits: &[Vec<bool>],
    unplaced: &mut Unplaced<'a>,
    on_provisioning: &mut BTreeMap<String, Vec<&'a PodSpec>>,
) {
    let classes = &unplaced.classes;
    let mut order: Vec<u32> = (0..classes.len() as u32).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (
            classes.list[a as usize].requests,
            classes.list[b as usize].requests,
        );
        (rb.cpu_millis, rb.memory_bytes)
            .cmp(&(ra.cpu_millis, ra.memory_bytes))
            .then(a.cmp(&b))
    });
    let mut on_the_way: Vec<Vec<Bin>> = pools
        .iter()
        .map(|p| {
            let n = snapshot.provisioning().get(&p.name).copied().unwrap_or(0);
            vec![Bin::new(p.allocatable); n as usize]
        })
        .collect();
    for &k in &order {
        for (pi, pool) in pools.iter().enumerate() {
            let left = unplaced.left[k as usize];
            if left == 0 {
                break;
            }
            if !fits[pi][k as usize] || on_the_way[pi].is_empty() {
                continue;
            }
            let n = fill(&mut unplaced.classes, k, left, &mut on_the_way[pi]);
            if n > 0 {
                on_provisioning
                    .entry(pool.name.clone())
                    .or_default()
                    .extend_from_slice(unplaced.take(k, n));
            }
        }
    }
}

/// Adds new nodes, one pool at a time as the expander picks, until no pool takes anything;
/// returns each pool's room left.
fn add_new_nodes<'a>(
    snapshot: &Snapshot,
    pools: &[&PoolTemplate],
    expander: Expander,
    max_new_nodes: u32,
    fits: &[Vec<bool>],
    unplaced: &mut Unplaced<'a>,
    new_nodes: &mut BTreeMap<String, PoolScaleUp<'a>>,
) -> Vec<u32> {
    let mut pool_room: Vec<u32> = pools
        .iter()
        .map(|p| {
            let have = snapshot
                .pool_nodes(&p.name)
                .saturating_add(snapshot.provisioning().get(&p.name).copied().unwrap_or(0));
            p.max_nodes.saturating_sub(have)
        })
        .collect();
    let mut cluster_room = max_new_nodes;
    let mut used = vec![false; pools.len()];
    loop {
        let mut best: Option<Option_> = None;
        for (pi, pool) in pools.iter().enumerate() {
            let room = pool_room[pi].min(cluster_room);
            if used[pi] || room == 0 || snapshot.unavailable(&pool.name).is_some() {
                continue;
            }
            let opt = simulate_pool(
                &mut unplaced.classes,
                pi,
                pool,
                &fits[pi],
                &unplaced.left,
                room,
            );
            if opt.placed.is_empty() {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|b| better(expander, pools, &opt, b))
            {
                best = Some(opt);
            }
        }
        let Some(best) = best else { break };
        used[best.pool] = true;
        cluster_room -= best.nodes;
        pool_room[best.pool] -= best.nodes;
        let entry = new_nodes.entry(pools[best.pool].name.clone()).or_default();
        entry.new_nodes += best.nodes;
        for (k, n) in best.placed {
            entry.pods.extend_from_slice(unplaced.take(k, n));
        }
    }
    pool_room
}

/// When every `fitting` pool with room backs off: which, and whether the provider is why.
fn backing_off(
    snapshot: &Snapshot,
    pools: &[&PoolTemplate],
    fitting: &[usize],
    pool_room: &[u32],
) -> Option<ScaleUpBlock> {
    let open: Vec<usize> = fitting
        .iter()
        .copied()
        .filter(|&pi| pool_room[pi] > 0)
        .collect();
    let why: Vec<Unavailable> = open
        .iter()
        .map(|&pi| snapshot.unavailable(&pools[pi].name))
        .collect::<Option<_>>()?;
    let names = open.iter().map(|&pi| pools[pi].name.clone()).collect();
    Some(if why.contains(&Unavailable::Provider) {
        ScaleUpBlock::ProviderUnavailable { pools: names }
    } else {
        ScaleUpBlock::PoolBackoff { pools: names }
    })
}

/// Why the pods still without a place get nothing, by reason, each list sorted.
fn blocked<'a>(
    snapshot: &Snapshot,
    pools: &[&PoolTemplate],
    fit: &[Vec<Result<(), Predicate>>],
    fits: &[Vec<bool>],
    pool_room: &[u32],
    unplaced: &Unplaced<'a>,
) -> Vec<BlockedPods<'a>> {
    let mut blocked: BTreeMap<ScaleUpBlock, Vec<&'a PodSpec>> = BTreeMap::new();
    for k in 0..unplaced.classes.len() {
        if unplaced.left[k] == 0 {
            continue;
        }
        let fitting: Vec<usize> = (0..pools.len()).filter(|&pi| fits[pi][k]).collect();
        let reason = if fitting.is_empty() {
            ScaleUpBlock::NoPoolFits {
                predicates: pools
                    .iter()
                    .zip(fit)
                    .filter_map(|(p, row)| row[k].err().map(|e| (p.name.clone(), e)))
                    .collect(),
            }
        } else if fitting.iter().all(|&pi| pool_room[pi] == 0) {
            ScaleUpBlock::PoolMaxReached {
                pools: fitting.iter().map(|&pi| pools[pi].name.clone()).collect(),
            }
        } else if let Some(why) = backing_off(snapshot, pools, &fitting, pool_room) {
            why
        } else {
            ScaleUpBlock::MaxNodesReached
        };
        blocked
            .entry(reason)
            .or_default()
            .extend_from_slice(&unplaced.classes.list[k].members[unplaced.next[k]..]);
    }
    blocked
        .into_iter()
        .map(|(reason, mut pods)| {
            pods.sort_unstable_by(by_name);
            BlockedPods { reason, pods }
        })
        .collect()
}
