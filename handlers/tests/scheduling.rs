//! The scheduling simulation: scale-up over pools and scale-down, as rules and properties.

use std::collections::BTreeMap;

use bus::scheduling::{
    LabelSelector, NodeSpec, PodSpec, Resources, Taint, TaintEffect, Toleration,
};
use handlers::scheduling::{
    check, scale_down, scale_up, Expander, Ignored, PoolTemplate, Predicate, ScaleDownBlock,
    ScaleUpBlock, Snapshot,
};
use proptest::prelude::*;

const GI: u64 = 1 << 30;

fn general() -> PoolTemplate {
    PoolTemplate::new("general", 1, 5, Resources::new(2000, 4 * GI, 110))
}

fn highmem() -> PoolTemplate {
    let mut p = PoolTemplate::new("highmem", 0, 3, Resources::new(2000, 16 * GI, 110));
    p.labels.insert("memory".into(), "high".into());
    p.taints
        .push(Taint::new("dedicated", "highmem", TaintEffect::NoSchedule));
    p
}

fn pod(name: &str, cpu: u64, mem: u64) -> PodSpec {
    let mut p = PodSpec::new("default", name);
    p.cpu_millis = cpu;
    p.memory_bytes = mem;
    p.owner_kind = Some("ReplicaSet".into());
    p
}

fn highmem_pod(name: &str) -> PodSpec {
    let mut p = pod(name, 500, 6 * GI);
    p.node_selector.insert("memory".into(), "high".into());
    p.tolerations
        .push(Toleration::equal("dedicated", "highmem"));
    p
}

fn pending(pods: Vec<PodSpec>) -> Snapshot {
    Snapshot::from_parts([], [], pods, BTreeMap::new())
}

fn names(pods: &[&PodSpec]) -> Vec<String> {
    pods.iter().map(|p| p.name.clone()).collect()
}

#[test]
fn tolerating_pods_selecting_highmem_get_highmem_nodes_and_plain_pods_general_ones() {
    let s = pending(vec![
        highmem_pod("big-1"),
        highmem_pod("big-2"),
        highmem_pod("big-3"),
        pod("web-1", 500, GI),
        pod("web-2", 500, GI),
    ]);
    let plan = scale_up(&s, &[general(), highmem()], Expander::LeastWaste, 10);
    assert!(plan.blocked.is_empty(), "{:?}", plan.blocked);
    assert_eq!(plan.new_nodes["highmem"].new_nodes, 2);
    assert_eq!(
        names(&plan.new_nodes["highmem"].pods),
        ["big-1", "big-2", "big-3"]
    );
    assert_eq!(plan.new_nodes["general"].new_nodes, 1);
    assert_eq!(names(&plan.new_nodes["general"].pods), ["web-1", "web-2"]);
    assert_eq!(plan.total_new_nodes(), 3);
}

#[test]
fn a_pod_selecting_a_label_no_pool_has_gets_no_node_and_names_the_predicate_per_pool() {
    let mut p = pod("ssd", 100, GI);
    p.node_selector.insert("disktype".into(), "ssd".into());
    let s = pending(vec![p]);
    let plan = scale_up(&s, &[general(), highmem()], Expander::LeastWaste, 10);
    assert!(plan.new_nodes.is_empty());
    assert_eq!(plan.blocked.len(), 1);
    assert_eq!(plan.blocked[0].reason.code(), "no_pool_fits");
    assert_eq!(
        plan.blocked[0].reason,
        ScaleUpBlock::NoPoolFits {
            predicates: [
                ("general".to_string(), Predicate::NodeSelector),
                ("highmem".to_string(), Predicate::NodeSelector),
            ]
            .into()
        }
    );
}

#[test]
fn a_pod_larger_than_every_template_fails_resources_and_an_untolerating_one_taints() {
    let mut s = pending(vec![pod("huge", 3000, GI)]);
    let plan = scale_up(&s, &[general()], Expander::LeastWaste, 10);
    assert_eq!(
        plan.blocked[0].reason,
        ScaleUpBlock::NoPoolFits {
            predicates: [("general".to_string(), Predicate::Resources)].into()
        }
    );
    let mut p = pod("mem", 100, 6 * GI);
    p.node_selector.insert("memory".into(), "high".into());
    s.set_pending(vec![p]);
    let plan = scale_up(&s, &[general(), highmem()], Expander::LeastWaste, 10);
    assert_eq!(
        plan.blocked[0].reason,
        ScaleUpBlock::NoPoolFits {
            predicates: [
                ("general".to_string(), Predicate::NodeSelector),
                ("highmem".to_string(), Predicate::Taints),
            ]
            .into()
        }
    );
}

#[test]
fn daemon_set_pods_and_pods_naming_a_node_never_trigger_a_scale_up() {
    let mut ds = pod("ds", 100, GI);
    ds.owner_kind = Some("DaemonSet".into());
    let mut bound = pod("bound", 100, GI);
    bound.node_name = Some("w1".into());
    let s = pending(vec![ds, bound]);
    let plan = scale_up(&s, &[general()], Expander::LeastWaste, 10);
    assert_eq!(plan.total_new_nodes(), 0);
    assert!(plan.blocked.is_empty());
    let ignored: Vec<_> = plan
        .ignored
        .iter()
        .map(|(p, r)| (p.name.as_str(), *r))
        .collect();
    assert_eq!(
        ignored,
        [("bound", Ignored::BoundToNode), ("ds", Ignored::DaemonSet)]
    );
}

#[test]
fn capacity_on_its_way_is_used_before_new_nodes() {
    let mut s = pending(vec![
        pod("a", 900, GI),
        pod("b", 900, GI),
        pod("c", 900, GI),
    ]);
    s.set_provisioning("general", 1);
    let plan = scale_up(&s, &[general()], Expander::LeastWaste, 10);
    assert_eq!(names(&plan.on_provisioning["general"]), ["a", "b"]);
    assert_eq!(plan.new_nodes["general"].new_nodes, 1);
    assert_eq!(names(&plan.new_nodes["general"].pods), ["c"]);
}

#[test]
fn a_pool_at_its_max_blocks_with_pool_max_reached() {
    let pool = general();
    let mut s = Snapshot::from_parts(
        (1..=4).map(|i| pool.node(format!("w{i}"))),
        [],
        vec![pod("a", 1500, GI), pod("b", 1500, GI), pod("c", 1500, GI)],
        BTreeMap::new(),
    );
    s.set_provisioning("general", 0);
    let plan = scale_up(&s, std::slice::from_ref(&pool), Expander::LeastWaste, 10);
    assert_eq!(plan.new_nodes["general"].new_nodes, 1);
    assert_eq!(plan.blocked.len(), 1);
    assert_eq!(
        plan.blocked[0].reason,
        ScaleUpBlock::PoolMaxReached {
            pools: vec!["general".into()]
        }
    );
    assert_eq!(plan.blocked[0].pods.len(), 2);
}

#[test]
fn the_cluster_maximum_blocks_with_max_nodes_reached() {
    let s = pending(vec![pod("a", 1500, GI), pod("b", 1500, GI)]);
    let plan = scale_up(&s, &[general()], Expander::LeastWaste, 1);
    assert_eq!(plan.total_new_nodes(), 1);
    assert_eq!(plan.blocked[0].reason, ScaleUpBlock::MaxNodesReached);
    assert_eq!(names(&plan.blocked[0].pods), ["b"]);
}

#[test]
fn pods_with_anti_affinity_on_hostname_get_a_node_each() {
    let pods: Vec<PodSpec> = (1..=3)
        .map(|i| {
            let mut p = pod(&format!("db-{i}"), 100, GI / 4);
            p.labels.insert("app".into(), "db".into());
            p.anti_affinity
                .push(LabelSelector::labels(&[("app", "db")]));
            p
        })
        .collect();
    let s = pending(pods);
    let plan = scale_up(&s, &[general()], Expander::LeastWaste, 10);
    assert_eq!(plan.new_nodes["general"].new_nodes, 3);
}

#[test]
fn least_waste_prefers_the_pool_that_leaves_less_unused_and_priority_the_higher_priority() {
    let small = PoolTemplate::new("small", 0, 5, Resources::new(1000, GI, 110));
    let mut big = PoolTemplate::new("big", 0, 5, Resources::new(4000, 4 * GI, 110));
    big.priority = 10;
    let s = pending(vec![pod("a", 900, GI * 9 / 10)]);
    let pools = [small.clone(), big.clone()];
    let plan = scale_up(&s, &pools, Expander::LeastWaste, 10);
    assert_eq!(plan.new_nodes.keys().collect::<Vec<_>>(), ["small"]);
    let plan = scale_up(&s, &pools, Expander::Priority, 10);
    assert_eq!(plan.new_nodes.keys().collect::<Vec<_>>(), ["big"]);
}

#[test]
fn least_waste_ties_go_to_the_smaller_pool_name() {
    let a = PoolTemplate::new("b-pool", 0, 5, Resources::new(1000, GI, 110));
    let b = PoolTemplate::new("a-pool", 0, 5, Resources::new(1000, GI, 110));
    let s = pending(vec![pod("x", 500, GI / 2)]);
    let plan = scale_up(&s, &[a, b], Expander::LeastWaste, 10);
    assert_eq!(plan.new_nodes.keys().collect::<Vec<_>>(), ["a-pool"]);
}

#[test]
fn expander_names_are_cluster_autoscalers() {
    assert_eq!(Expander::LeastWaste.name(), "least-waste");
    assert_eq!(
        serde_json::from_str::<Expander>("\"priority\"").unwrap(),
        Expander::Priority
    );
    assert_eq!(Expander::default(), Expander::LeastWaste);
}

// ---- scale-down ------------------------------------------------------------------------------

fn on(node: &str, mut p: PodSpec) -> PodSpec {
    p.node_name = Some(node.into());
    p
}

fn cluster(placed: Vec<PodSpec>) -> Snapshot {
    let pool = PoolTemplate::new("general", 1, 5, Resources::new(2000, 4 * GI, 110));
    Snapshot::from_parts(
        ["w1", "w2", "w3"].map(|n| pool.node(n)),
        placed,
        [],
        BTreeMap::new(),
    )
}

#[test]
fn a_node_whose_pods_fit_elsewhere_goes_and_one_whose_pods_fit_nowhere_stays() {
    let s = cluster(vec![
        on("w1", pod("a", 1500, GI)),
        on("w2", pod("b", 1500, GI)),
        on("w3", pod("c", 300, GI)),
    ]);
    let plan = scale_down(&s, &[general()], &["w1", "w3"], 10);
    assert_eq!(plan.removable, ["w3"]);
    let block = &plan.blocked["w1"];
    assert_eq!(block.code(), "no_place_for_pods");
    assert!(matches!(block, ScaleDownBlock::NoPlaceForPods { pod } if pod.name == "a"));
}

#[test]
fn two_removed_nodes_never_take_the_same_free_space() {
    let s = cluster(vec![
        on("w1", pod("a", 800, GI)),
        on("w2", pod("b", 800, GI)),
        on("w3", pod("c", 1100, GI)),
    ]);
    // w3 has room for one 800m pod, not both.
    let plan = scale_down(&s, &[general()], &["w1", "w2"], 10);
    assert_eq!(plan.removable, ["w1"]);
    assert!(matches!(
        plan.blocked["w2"],
        ScaleDownBlock::NoPlaceForPods { .. }
    ));
}

#[test]
fn the_least_utilised_candidate_goes_first() {
    let s = cluster(vec![
        on("w1", pod("a", 600, GI)),
        on("w2", pod("b", 200, GI / 2)),
        on("w3", pod("c", 100, GI / 4)),
    ]);
    let mut pool = general();
    pool.min_nodes = 0;
    let plan = scale_down(&s, &[pool], &["w1", "w2", "w3"], 10);
    assert_eq!(plan.removable, ["w3", "w2"]);
    assert!(matches!(
        plan.blocked["w1"],
        ScaleDownBlock::NoPlaceForPods { .. }
    ));
}

#[test]
fn scale_down_keeps_the_pools_minimum_and_the_cluster_limit() {
    let s = cluster(vec![]);
    let mut pool = general();
    pool.min_nodes = 2;
    let plan = scale_down(&s, &[pool.clone()], &["w1", "w2", "w3"], 10);
    assert_eq!(plan.removable, ["w1"]);
    assert_eq!(
        plan.blocked["w2"],
        ScaleDownBlock::PoolMinReached {
            pool: "general".into()
        }
    );
    pool.min_nodes = 0;
    let plan = scale_down(&s, &[pool], &["w1", "w2", "w3"], 1);
    assert_eq!(plan.removable, ["w1"]);
    assert_eq!(plan.blocked["w3"], ScaleDownBlock::MinNodesReached);
    assert_eq!(plan.blocked["w3"].code(), "min_nodes_reached");
}

#[test]
fn a_pdb_that_allows_no_disruption_keeps_the_node_and_daemon_sets_do_not() {
    let mut guarded = pod("guarded", 100, GI);
    guarded.pdb_blocked = true;
    let mut ds = pod("agent", 100, GI);
    ds.owner_kind = Some("DaemonSet".into());
    let s = cluster(vec![on("w1", guarded), on("w2", ds)]);
    let mut pool = general();
    pool.min_nodes = 0;
    let plan = scale_down(&s, &[pool], &["w1", "w2", "nope"], 10);
    assert_eq!(plan.removable, ["w2"]);
    assert_eq!(plan.blocked["w1"].code(), "pdb");
    assert_eq!(plan.blocked["nope"], ScaleDownBlock::UnknownNode);
}

#[test]
fn pods_move_only_to_ready_uncordoned_nodes_that_satisfy_their_constraints() {
    let pool = general();
    let mut w2 = pool.node("w2");
    w2.cordoned = true;
    let mut w3 = pool.node("w3");
    w3.labels.insert("disktype".into(), "ssd".into());
    let mut w4 = pool.node("w4");
    w4.ready = false;
    w4.labels.insert("disktype".into(), "ssd".into());
    let mut ssd = pod("ssd", 100, GI);
    ssd.node_selector.insert("disktype".into(), "ssd".into());
    let mut tainted = pool.node("w5");
    tainted
        .taints
        .push(Taint::new("x", "", TaintEffect::NoExecute));
    let s = Snapshot::from_parts(
        [pool.node("w1"), w2, w3, w4, tainted],
        [on("w1", pod("plain", 1950, GI)), on("w3", ssd)],
        [],
        BTreeMap::new(),
    );
    let mut pool = general();
    pool.min_nodes = 0;
    // w1's pod fits only on w3 (w2 cordoned, w4 not ready, w5 tainted), and not beside w3's 100m.
    let plan = scale_down(&s, &[pool.clone()], &["w1"], 10);
    assert!(plan.removable.is_empty());
    // w3's ssd pod has nowhere else with the label that is Ready and uncordoned.
    let plan = scale_down(&s, &[pool], &["w3"], 10);
    assert!(matches!(
        plan.blocked["w3"],
        ScaleDownBlock::NoPlaceForPods { .. }
    ));
}

#[test]
fn anti_affinity_keeps_replicas_apart_when_their_node_goes() {
    let db = |n: &str| {
        let mut p = pod(n, 100, GI / 4);
        p.labels.insert("app".into(), "db".into());
        p.anti_affinity
            .push(LabelSelector::labels(&[("app", "db")]));
        p
    };
    let s = cluster(vec![
        on("w1", db("db-1")),
        on("w2", db("db-2")),
        on("w3", pod("x", 100, 1)),
    ]);
    let mut pool = general();
    pool.min_nodes = 0;
    let plan = scale_down(&s, &[pool], &["w1", "w2"], 10);
    // One db can move to w3; the other then has no node without a db.
    assert_eq!(plan.removable.len(), 1);
    assert_eq!(plan.blocked.len(), 1);
}

// ---- properties ------------------------------------------------------------------------------

fn arb_pool(name: &'static str) -> impl Strategy<Value = PoolTemplate> {
    (
        0u32..3,
        1u32..6,
        1u64..5,
        1u64..9,
        2u32..20,
        any::<bool>(),
        any::<bool>(),
        -2i32..3,
    )
        .prop_map(
            move |(min, extra, cpu, mem, pods, labelled, tainted, prio)| {
                let mut p = PoolTemplate::new(
                    name,
                    min,
                    min + extra,
                    Resources::new(cpu * 1000, mem * GI, pods),
                );
                if labelled {
                    p.labels.insert("tier".into(), name.into());
                }
                if tainted {
                    p.taints
                        .push(Taint::new("dedicated", name, TaintEffect::NoSchedule));
                }
                p.priority = prio;
                p
            },
        )
}

fn arb_pools() -> impl Strategy<Value = Vec<PoolTemplate>> {
    (
        arb_pool("alpha"),
        arb_pool("beta"),
        arb_pool("gamma"),
        1usize..4,
    )
        .prop_map(|(a, b, c, n)| vec![a, b, c].into_iter().take(n).collect())
}

fn arb_pod(i: usize) -> impl Strategy<Value = PodSpec> {
    (
        0u64..4500,
        0u64..(9 * 1024),
        prop::option::of(prop::sample::select(vec![
            "alpha", "beta", "gamma", "nowhere",
        ])),
        prop::option::of(prop::sample::select(vec!["alpha", "beta", "gamma"])),
        any::<bool>(),
        0u8..10,
    )
        .prop_map(move |(cpu, mem_mi, select, tolerate, anti, kind)| {
            let mut p = pod(&format!("p{i:03}"), cpu, mem_mi << 20);
            // Few distinct shapes, so classes have several members.
            p.cpu_millis = cpu / 500 * 500;
            p.memory_bytes = (mem_mi / 1024) * GI;
            if let Some(s) = select {
                p.node_selector.insert("tier".into(), s.into());
            }
            if let Some(t) = tolerate {
                p.tolerations.push(Toleration::equal("dedicated", t));
            }
            let app = format!("app{}", i % 3);
            p.labels.insert("app".into(), app.clone());
            if anti {
                p.anti_affinity
                    .push(LabelSelector::labels(&[("app", &app)]));
            }
            match kind {
                0 => p.owner_kind = Some("DaemonSet".into()),
                1 => p.node_name = Some("w1".into()),
                _ => {}
            }
            p
        })
}

fn arb_pods(max: usize) -> impl Strategy<Value = Vec<PodSpec>> {
    (0..max).prop_flat_map(|n| (0..n).map(arb_pod).collect::<Vec<_>>())
}

fn arb_expander() -> impl Strategy<Value = Expander> {
    prop_oneof![Just(Expander::LeastWaste), Just(Expander::Priority)]
}

/// A plan as names, to compare plans made from inputs in different orders.
fn plan_names(plan: &handlers::scheduling::ScaleUpPlan<'_>) -> String {
    let mut out = String::new();
    for (pool, p) in &plan.on_provisioning {
        out += &format!("on {pool}: {:?}\n", names(p));
    }
    for (pool, p) in &plan.new_nodes {
        out += &format!("new {pool} x{}: {:?}\n", p.new_nodes, names(&p.pods));
    }
    for b in &plan.blocked {
        out += &format!("blocked {:?}: {:?}\n", b.reason, names(&b.pods));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_new_node_is_never_planned_for_a_pod_its_pool_cannot_run(
        pools in arb_pools(), pods in arb_pods(40), expander in arb_expander(),
        provisioning in 0u32..3, room in 0u32..12,
    ) {
        let mut s = pending(pods);
        s.set_provisioning(&pools[0].name, provisioning);
        let plan = scale_up(&s, &pools, expander, room);
        for (name, p) in plan.new_nodes.iter().map(|(n, p)| (n, p.pods.clone()))
            .chain(plan.on_provisioning.iter().map(|(n, p)| (n, p.clone())))
        {
            let pool = pools.iter().find(|t| &t.name == name).unwrap();
            let node = pool.node("fresh");
            for pod in &p {
                prop_assert!(!pod.is_daemon_set() && pod.node_name.is_none());
                prop_assert_eq!(check(pod, &node, &pool.allocatable, []), Ok(()));
            }
        }
        for (name, p) in &plan.new_nodes {
            let pool = pools.iter().find(|t| &t.name == name).unwrap();
            let cap = pool.allocatable.saturating_mul(p.new_nodes);
            let used = p.pods.iter().fold(Resources::ZERO, |a, p| a.saturating_add(p.requests()));
            prop_assert!(used.fits_in(&cap));
        }
        // Every pod is accounted for exactly once.
        let placed: usize = plan.new_nodes.values().map(|p| p.pods.len()).sum::<usize>()
            + plan.on_provisioning.values().map(Vec::len).sum::<usize>()
            + plan.blocked.iter().map(|b| b.pods.len()).sum::<usize>()
            + plan.ignored.len();
        prop_assert_eq!(placed, s.pending().len());
    }

    #[test]
    fn pool_and_cluster_maxima_hold(
        pools in arb_pools(), pods in arb_pods(60), expander in arb_expander(),
        existing in 0u32..4, room in 0u32..12,
    ) {
        let first = &pools[0];
        let nodes: Vec<NodeSpec> = (0..existing).map(|i| first.node(format!("w{i}"))).collect();
        let s = Snapshot::from_parts(nodes, [], pods, BTreeMap::new());
        let plan = scale_up(&s, &pools, expander, room);
        prop_assert!(plan.total_new_nodes() <= room);
        for (name, p) in &plan.new_nodes {
            let pool = pools.iter().find(|t| &t.name == name).unwrap();
            prop_assert!(p.new_nodes > 0);
            prop_assert!(s.pool_nodes(name) + p.new_nodes <= pool.max_nodes);
        }
    }

    #[test]
    fn the_plan_does_not_depend_on_the_order_of_pods_or_pools(
        pools in arb_pools(), pods in arb_pods(40), expander in arb_expander(),
        room in 0u32..12, seed in any::<u64>(),
    ) {
        let plan_a = plan_names(&scale_up(&pending(pods.clone()), &pools, expander, room));
        let mut shuffled = pods;
        let mut pools_rev = pools;
        pools_rev.reverse();
        // A deterministic shuffle from the seed.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let plan_b = plan_names(&scale_up(&pending(shuffled), &pools_rev, expander, room));
        prop_assert_eq!(plan_a, plan_b);
    }

    #[test]
    fn scale_down_never_goes_below_a_pools_min_nor_removes_a_node_whose_pods_fit_nowhere(
        pools in arb_pools(), pods in arb_pods(60), per_pool in 1u32..4,
        cordon in any::<u8>(), limit in 0u32..8,
    ) {
        let mut nodes = Vec::new();
        for pool in &pools {
            for i in 0..per_pool.max(pool.min_nodes) {
                let mut n = pool.node(format!("{}-{i}", pool.name));
                n.cordoned = (cordon >> (nodes.len() % 8)) & 1 == 1 && i == 0;
                nodes.push(n);
            }
        }
        // Place each pod on the first node it fits on, as a scheduler would.
        let mut s = Snapshot::from_parts(nodes.clone(), [], [], BTreeMap::new());
        for mut p in pods {
            p.node_name = None;
            let target = s.nodes().values().find(|n| {
                check(&p, &n.spec, &n.free(), n.pods()).is_ok()
            }).map(|n| n.spec.name.clone());
            if let Some(t) = target {
                p.node_name = Some(t);
                s.place(p).unwrap();
            }
        }
        let candidates: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let plan = scale_down(&s, &pools, &candidates, limit);
        prop_assert!(plan.removable.len() as u32 <= limit);
        for pool in &pools {
            let removed = plan.removable.iter()
                .filter(|n| s.node(n).unwrap().spec.pool.as_deref() == Some(&pool.name))
                .count() as u32;
            prop_assert!(s.pool_nodes(&pool.name) - removed >= pool.min_nodes);
        }
        for name in &plan.removable {
            for p in s.node(name).unwrap().pods().iter().filter(|p| !p.is_daemon_set()) {
                prop_assert!(!p.pdb_blocked);
                let somewhere = s.nodes().values().any(|n| {
                    !plan.removable.contains(&n.spec.name.as_str())
                        && n.spec.schedulable()
                        && check(p, &n.spec, &n.free(), n.pods()).is_ok()
                });
                prop_assert!(somewhere, "{} removed though {} fits nowhere", name, p.name);
            }
        }
        for (name, b) in &plan.blocked {
            prop_assert!(!plan.removable.contains(&name.as_str()));
            prop_assert!(!b.code().is_empty());
        }
    }
}
