//! Scale-down: which candidate nodes can go, in which order, and why the others stay.

use std::collections::BTreeMap;

use bus::scheduling::{PodSpec, Resources};

use super::classes::Classes;
use super::predicates::check_node;
use super::snapshot::{NodeState, PoolTemplate, Snapshot};

/// Why a candidate node stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleDownBlock<'a> {
    /// This pod's PodDisruptionBudget allows no disruption now.
    Pdb { pod: &'a PodSpec },
    /// This pod fits on no other Ready, uncordoned node that stays.
    NoPlaceForPods { pod: &'a PodSpec },
    /// The node's pool is at its `min_nodes`.
    PoolMinReached { pool: String },
    /// The cluster-wide minimum leaves no node to remove.
    MinNodesReached,
    /// The snapshot has no node of that name.
    UnknownNode,
}

impl ScaleDownBlock<'_> {
    /// The stable code (`pdb`, `no_place_for_pods`, `pool_min_reached`, `min_nodes_reached`,
    /// `unknown_node`), as in `ScaleDownBlocked`.
    pub fn code(&self) -> &'static str {
        match self {
            ScaleDownBlock::Pdb { .. } => "pdb",
            ScaleDownBlock::NoPlaceForPods { .. } => "no_place_for_pods",
            ScaleDownBlock::PoolMinReached { .. } => "pool_min_reached",
            ScaleDownBlock::MinNodesReached => "min_nodes_reached",
            ScaleDownBlock::UnknownNode => "unknown_node",
        }
    }
}

/// The outcome of [`scale_down`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScaleDownPlan<'a> {
    /// The nodes that can go, in the order they should.
    pub removable: Vec<&'a str>,
    /// The candidates that stay, by name.
    pub blocked: BTreeMap<String, ScaleDownBlock<'a>>,
}

/// A node during the simulation.
struct SimNode {
    free: Resources,
    /// Classes running there, with counts: its own pods, then those moved onto it.
    classes: Vec<(u32, u32)>,
    /// Ready and uncordoned: it may receive pods.
    target: bool,
    removed: bool,
}

/// Pods of the node being checked, placed tentatively on `node` (not committed yet).
struct Tentative {
    node: usize,
    used: Resources,
    classes: Vec<(u32, u32)>,
}

struct Sim<'a> {
    states: Vec<&'a NodeState>,
    nodes: Vec<SimNode>,
    classes: Classes<'a>,
    /// The class of each placed pod, node by node.
    assignment: Vec<u32>,
    /// Where each node's pods start in `assignment`.
    offsets: Vec<usize>,
    /// Per node, the larger of requested CPU and memory fractions.
    util: Vec<f64>,
    /// Targets, most used first.
    order: Vec<usize>,
    /// Per class, the first position in `order` that may still take one of its pods: a node that
    /// cannot take one on committed state never can later (committed free space only shrinks,
    /// conflicts only grow, removed nodes stay removed), so each class's search only moves forward.
    cursor: Vec<usize>,
    /// Per class and node, the node-only predicates: 0 unknown, 1 pass, 2 fail (lazily filled).
    node_ok: Vec<Vec<u8>>,
}

impl<'a> Sim<'a> {
    fn new(snapshot: &'a Snapshot) -> Self {
        let states: Vec<&'a NodeState> = snapshot.nodes().values().collect();
        let placed: Vec<&'a PodSpec> = states.iter().flat_map(|n| n.pods()).collect();
        let (classes, assignment) = Classes::group(&placed, false);
        let mut nodes = Vec::with_capacity(states.len());
        let mut offsets = Vec::with_capacity(states.len());
        let mut at = 0;
        for n in &states {
            offsets.push(at);
            let mut counts = Vec::new();
            for _ in n.pods() {
                add_count(&mut counts, assignment[at], 1);
                at += 1;
            }
            nodes.push(SimNode {
                free: n.free(),
                classes: counts,
                target: n.spec.schedulable(),
                removed: false,
            });
        }
        let util: Vec<f64> = states.iter().map(|n| n.utilization()).collect();
        let mut order: Vec<usize> = (0..states.len()).filter(|&i| nodes[i].target).collect();
        order.sort_by(|&a, &b| util[b].total_cmp(&util[a]).then(a.cmp(&b)));
        let nc = classes.len();
        Sim {
            states,
            nodes,
            classes,
            assignment,
            offsets,
            util,
            order,
            cursor: vec![0; nc],
            node_ok: vec![Vec::new(); nc],
        }
    }

    fn node_ok(&mut self, k: u32, t: usize) -> bool {
        let row = &mut self.node_ok[k as usize];
        if row.is_empty() {
            row.resize(self.states.len(), 0);
        }
        if row[t] == 0 {
            let pass =
                check_node(self.classes.list[k as usize].rep(), &self.states[t].spec).is_ok();
            row[t] = if pass { 1 } else { 2 };
        }
        row[t] == 1
    }

    /// Finds room for `want` pods of class `k` off node `from`, adding to `tentative`.
    fn place(&mut self, k: u32, want: u32, from: usize, tentative: &mut Vec<Tentative>) -> bool {
        let req = self.classes.list[k as usize].requests;
        let self_anti = self.classes.list[k as usize].self_anti;
        let mut left = want;
        let mut i = self.cursor[k as usize];
        let mut advancing = true;
        while left > 0 && i < self.order.len() {
            let t = self.order[i];
            i += 1;
            if t == from {
                advancing = false;
                continue;
            }
            let committed_ok = !self.nodes[t].removed
                && req.fits_in(&self.nodes[t].free)
                && self.node_ok(k, t)
                && !self
                    .classes
                    .conflicts_with_any(k, self.nodes[t].classes.iter().map(|c| c.0));
            if !committed_ok {
                if advancing {
                    self.cursor[k as usize] = i;
                }
                continue;
            }
            advancing = false;
            let slot = tentative.iter().position(|x| x.node == t);
            let (free, extra): (Resources, &[(u32, u32)]) = match slot {
                Some(s) => (
                    self.nodes[t].free.saturating_sub(tentative[s].used),
                    &tentative[s].classes,
                ),
                None => (self.nodes[t].free, &[]),
            };
            if self
                .classes
                .conflicts_with_any(k, extra.iter().map(|c| c.0))
            {
                continue;
            }
            let mut n = req.copies_in(&free);
            if self_anti {
                n = n.min(1);
            }
            let n = n.min(left);
            if n == 0 {
                continue;
            }
            left -= n;
            let s = match slot {
                Some(s) => s,
                None => {
                    tentative.push(Tentative {
                        node: t,
                        used: Resources::ZERO,
                        classes: Vec::new(),
                    });
                    tentative.len() - 1
                }
            };
            let entry = &mut tentative[s];
            entry.used = entry.used.saturating_add(req.saturating_mul(n));
            add_count(&mut entry.classes, k, n);
        }
        left == 0
    }
}

fn add_count(classes: &mut Vec<(u32, u32)>, k: u32, n: u32) {
    match classes.iter_mut().find(|c| c.0 == k) {
        Some(c) => c.1 += n,
        None => classes.push((k, n)),
    }
}

/// Which of `candidates` can be removed from `snapshot`, at most `max_removals` of them (the
/// cluster-wide minimum), keeping each pool's `min_nodes` (nodes of the pool in the snapshot,
/// any state).
///
/// Candidates are tried least utilised first (the larger of requested CPU and memory fractions;
/// ties by name): such a node's removal wastes least — the fewest pods to move, the most idle
/// capacity freed. A node goes only when every pod on it except DaemonSet pods (which go with it)
/// fits on another Ready, uncordoned node that stays, under all predicates; the moves are kept,
/// so two removed nodes' pods never take the same free space, and pods moved onto a node move
/// again if it goes too. Targets are tried most utilised first (packing onto busy nodes leaves the
/// idle ones removable), ties by name.
pub fn scale_down<'a, S: AsRef<str>>(
    snapshot: &'a Snapshot,
    pools: &[PoolTemplate],
    candidates: &[S],
    max_removals: u32,
) -> ScaleDownPlan<'a> {
    let mut plan = ScaleDownPlan::default();
    let mut sim = Sim::new(snapshot);
    let todo = candidates_in_order(snapshot, candidates, &sim.util, &mut plan.blocked);
    let mut limits = Limits::new(pools, &sim.states, max_removals);
    for c in todo {
        let state = sim.states[c];
        match try_remove(&mut sim, &mut limits, c) {
            Ok(()) => plan.removable.push(state.spec.name.as_str()),
            Err(block) => {
                plan.blocked.insert(state.spec.name.clone(), block);
            }
        }
    }
    plan
}

/// The known candidates' node indices, least utilised first; unknown ones go to `blocked`.
fn candidates_in_order<S: AsRef<str>>(
    snapshot: &Snapshot,
    candidates: &[S],
    util: &[f64],
    blocked: &mut BTreeMap<String, ScaleDownBlock<'_>>,
) -> Vec<usize> {
    let index: BTreeMap<&str, usize> = snapshot
        .nodes()
        .keys()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut todo: Vec<usize> = Vec::new();
    for c in candidates {
        match index.get(c.as_ref()) {
            Some(&i) => todo.push(i),
            None => {
                blocked.insert(c.as_ref().to_string(), ScaleDownBlock::UnknownNode);
            }
        }
    }
    todo.sort_by(|&a, &b| util[a].total_cmp(&util[b]).then(a.cmp(&b)));
    todo.dedup();
    todo
}

/// The cluster-wide and per-pool minimums, as removals use them up.
struct Limits<'p> {
    mins: BTreeMap<&'p str, u32>,
    in_pool: BTreeMap<&'p str, u32>,
    removals_left: u32,
}

impl<'p> Limits<'p> {
    fn new(pools: &'p [PoolTemplate], states: &[&'p NodeState], max_removals: u32) -> Self {
        let mins = pools
            .iter()
            .map(|p| (p.name.as_str(), p.min_nodes))
            .collect();
        let mut in_pool: BTreeMap<&str, u32> = BTreeMap::new();
        for n in states.iter().copied() {
            if let Some(p) = n.spec.pool.as_deref() {
                *in_pool.entry(p).or_default() += 1;
            }
        }
        Limits {
            mins,
            in_pool,
            removals_left: max_removals,
        }
    }

    /// Whether a node of `pool` may go without breaking a minimum.
    fn allow(&self, pool: Option<&str>) -> Result<(), ScaleDownBlock<'static>> {
        if self.removals_left == 0 {
            return Err(ScaleDownBlock::MinNodesReached);
        }
        if let Some(p) = pool {
            if self.in_pool.get(p).copied().unwrap_or(0) <= self.mins.get(p).copied().unwrap_or(0) {
                return Err(ScaleDownBlock::PoolMinReached {
                    pool: p.to_string(),
                });
            }
        }
        Ok(())
    }

    fn removed(&mut self, pool: Option<&str>) {
        self.removals_left -= 1;
        if let Some(p) = pool {
            if let Some(n) = self.in_pool.get_mut(p) {
                *n -= 1;
            }
        }
    }
}

/// Removes node `c` in the simulation when the minimums allow and its pods can move, keeping the
/// moves; otherwise says why it stays.
fn try_remove<'a>(
    sim: &mut Sim<'a>,
    limits: &mut Limits<'_>,
    c: usize,
) -> Result<(), ScaleDownBlock<'a>> {
    let state = sim.states[c];
    let pool = state.spec.pool.as_deref();
    limits.allow(pool)?;
    // Its own pods that must move, by name, with their classes.
    let mut own: Vec<(&'a PodSpec, u32)> = state
        .pods()
        .iter()
        .zip(&sim.assignment[sim.offsets[c]..])
        .filter(|(p, _)| !p.is_daemon_set())
        .map(|(p, &k)| (p, k))
        .collect();
    own.sort_by(|a, b| (&a.0.namespace, &a.0.name).cmp(&(&b.0.namespace, &b.0.name)));
    if let Some(&(p, _)) = own.iter().find(|(p, _)| p.pdb_blocked) {
        return Err(ScaleDownBlock::Pdb { pod: p });
    }
    match sim.move_pods(c) {
        Ok(tentative) => sim.commit(c, tentative),
        Err(k) => {
            // Name a pod of the class that was on the node from the start when there is one.
            let pod = own
                .iter()
                .find(|o| o.1 == k)
                .map_or(sim.classes.list[k as usize].rep(), |o| o.0);
            return Err(ScaleDownBlock::NoPlaceForPods { pod });
        }
    }
    limits.removed(pool);
    Ok(())
}

impl Sim<'_> {
    /// Places the pods on node `c` that must move (largest first) on the others, tentatively;
    /// `Err` holds the first class that finds no room.
    fn move_pods(&mut self, c: usize) -> Result<Vec<Tentative>, u32> {
        let mut movers: Vec<(u32, u32)> = self.nodes[c]
            .classes
            .iter()
            .copied()
            .filter(|&(k, _)| !self.classes.list[k as usize].rep().is_daemon_set())
            .collect();
        movers.sort_by(|a, b| {
            let (ra, rb) = (
                self.classes.list[a.0 as usize].requests,
                self.classes.list[b.0 as usize].requests,
            );
            (rb.cpu_millis, rb.memory_bytes)
                .cmp(&(ra.cpu_millis, ra.memory_bytes))
                .then(a.0.cmp(&b.0))
        });
        let mut tentative = Vec::new();
        match movers
            .iter()
            .find(|&&(k, n)| !self.place(k, n, c, &mut tentative))
        {
            Some(&(k, _)) => Err(k),
            None => Ok(tentative),
        }
    }

    /// Keeps the moves off node `c` and marks it removed.
    fn commit(&mut self, c: usize, tentative: Vec<Tentative>) {
        for t in tentative {
            let n = &mut self.nodes[t.node];
            n.free = n.free.saturating_sub(t.used);
            for (k, count) in t.classes {
                add_count(&mut n.classes, k, count);
            }
        }
        self.nodes[c].removed = true;
    }
}
