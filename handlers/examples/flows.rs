//! Prints the two reference event flows (a scale-down with visibility, a minimum-violation recovery)
//! as `autoscaler explain` would, and a what-if summary.
//! `cargo run -p handlers --example flows`

use std::time::Duration;

use bus::event::MetricsSampled;
use chrono::{TimeZone, Utc};
use handlers::simulate::Simulation;
use handlers::Policy;

fn main() {
    let t0 = Utc
        .with_ymd_and_hms(2025, 12, 16, 11, 0, 0)
        .single()
        .unwrap_or_default();

    let mut sim = Simulation::new(Policy::default(), t0).with_workers(2);
    sim.advance(Duration::from_secs(30));
    sim.kill("k3s-worker-2");
    sim.observe_cluster();
    sim.advance(Duration::from_secs(120));
    if let Some(done) = sim.log.iter().find(|e| e.event_type() == "NodeCreated") {
        println!("$ autoscaler explain {}", done.event_id);
        print!(
            "{}",
            handlers::explain::render(&handlers::explain::chain_of(&sim.log, done.event_id))
        );
    }

    let mut sim = Simulation::new(Policy::default(), t0).with_workers(3);
    for _ in 0..40 {
        sim.advance(Duration::from_secs(15));
        let w = sim.model.current_workers();
        sim.observe(
            "metrics_collector",
            MetricsSampled {
                workers: w,
                cpu_avg: 25.0,
                memory_avg: 35.0,
                source: "docker_stats".into(),
                nodes: vec![],
            },
        );
    }
    sim.observe_cluster();
    if let Some(done) = sim
        .log
        .iter()
        .find(|e| e.event_type() == "ScalingActionCompleted")
    {
        println!("\n$ autoscaler explain {}", done.event_id);
        print!(
            "{}",
            handlers::explain::render(&handlers::explain::chain_of(&sim.log, done.event_id))
        );
    }
    let mut other = Policy::default();
    other.limits.min_nodes = 3;
    println!("\n$ autoscaler events replay --what-if   (limits.min_nodes: 3)");
    print!("{}", handlers::replay::what_if(&sim.log, &other).render());
}
