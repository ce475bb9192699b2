//! Scheduled minimums: a window of `schedules` opens and closes as facts on the stream
//! (`ScheduledMinimumStarted` / `ScheduledMinimumEnded`, roots of the enforcer's timer), raises the
//! minimum while it is open (a top-up with the reason `schedule`, no violation, scale-down stops at
//! it), and the recorded config replays as itself; a what-if that adds the schedule to a
//! recording without it shows the scale-up it would have made.

mod common;

use std::time::Duration;

use bus::Event;
use chrono::TimeZone;
use common::*;
use handlers::policy::{PoolTemplate, Schedule};
use handlers::simulate::Simulation;
use handlers::Policy;

fn at(h: u32, m: u32) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc
        .with_ymd_and_hms(2025, 12, 16, h, m, 0)
        .single()
        .unwrap()
}

fn nine_to_ten(min_nodes: u32) -> Schedule {
    Schedule {
        cron: "0 9 * * *".into(),
        duration: Duration::from_secs(3600),
        min_nodes,
    }
}

fn policy(schedules: Vec<Schedule>) -> Policy {
    let mut p = Policy::default();
    p.limits.min_nodes = 2;
    p.limits.max_nodes = 6;
    p.scaling.scale_down_cooldown = Duration::from_secs(60);
    p.schedules = schedules;
    p
}

/// Samples every 15 s (low usage) until `until`.
fn quiet_until(sim: &mut Simulation, until: chrono::DateTime<chrono::Utc>) {
    while sim.now < until {
        sim.advance(Duration::from_secs(15));
        let w = sim.model.current_workers();
        sim.observe("metrics_collector", metrics(w, 5.0, 5.0));
    }
}

fn reasons(sim: &Simulation) -> Vec<String> {
    sim.log
        .iter()
        .filter_map(|e| match &e.event {
            Event::AutoScaleUpToMinimum(d) => Some(d.reason.clone()),
            Event::ScaleUpDecision(d) => Some(d.reason.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_window_raises_the_minimum_and_lowers_it_again() {
    let mut sim = Simulation::new(policy(vec![nine_to_ten(4)]), at(8, 50)).with_workers(2);
    quiet_until(&mut sim, at(8, 59));
    assert!(events_of(&sim, "ScheduledMinimumStarted").is_empty());
    quiet_until(&mut sim, at(9, 2));
    let started = events_of(&sim, "ScheduledMinimumStarted");
    assert_eq!(started.len(), 1, "{:?}", sim.types());
    assert!(
        started[0].causation_id.is_none(),
        "the clock's observation: a root"
    );
    assert!(started[0].timestamp - at(9, 0) <= chrono::Duration::seconds(10));
    assert_eq!(reasons(&sim), vec!["schedule".to_string()]);
    assert_eq!(sim.model.current_workers(), 4);
    assert!(events_of(&sim, "MinimumNodesViolation").is_empty());

    // While it is open, underuse removes nothing.
    quiet_until(&mut sim, at(9, 59));
    assert!(events_of(&sim, "ScaleDownDecision").is_empty());
    assert_eq!(sim.model.current_workers(), 4);

    // Closed: the configured minimum again, and scale-down brings the cluster back to it.
    quiet_until(&mut sim, at(10, 30));
    assert_eq!(events_of(&sim, "ScheduledMinimumEnded").len(), 1);
    assert_eq!(sim.model.current_workers(), 2, "{:?}", sim.types());
    assert!(sim.model.schedules.open.is_empty());

    let recorded = sim.policy.clone();
    let report = handlers::replay::what_if(&sim.log, &recorded);
    assert_eq!(report.decisions_changed, 0, "{}", report.render());
    assert_eq!(report.replayed.peak_workers, 4);
}

#[test]
fn a_what_if_that_adds_a_schedule_shows_its_scale_up() {
    let mut sim = Simulation::new(policy(Vec::new()), at(8, 50)).with_workers(2);
    quiet_until(&mut sim, at(9, 30));
    assert!(reasons(&sim).is_empty());
    let report = handlers::replay::what_if(&sim.log, &policy(vec![nine_to_ten(3)]));
    assert_eq!(report.recorded.peak_workers, 2);
    assert_eq!(report.replayed.peak_workers, 3, "{}", report.render());
    assert!(report.decisions_changed > 0);
}

#[test]
fn a_pool_window_tops_up_that_pool() {
    let mut p = policy(Vec::new());
    let pool = |name: &str| {
        PoolTemplate::new(
            name,
            1,
            4,
            bus::scheduling::Resources::new(2000, 2 << 30, 110),
        )
    };
    let mut web = pool("web");
    web.schedules = vec![nine_to_ten(3)];
    p.pools = vec![pool("default"), web];
    let mut sim = Simulation::new(p, at(8, 59)).with_workers(2);
    quiet_until(&mut sim, at(9, 2));
    let ups: Vec<(Option<String>, Option<u32>, String)> = events_of(&sim, "ScaleUpDecision")
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpDecision(d) => Some((d.pool.clone(), d.pool_target, d.reason.clone())),
            _ => None,
        })
        .collect();
    assert!(
        ups.contains(&(Some("web".into()), Some(3), "schedule".into())),
        "{ups:?}"
    );
    assert_eq!(sim.model.workers.planned_in("web"), 3);
    let report = handlers::replay::what_if(&sim.log, &sim.policy.clone());
    assert_eq!(report.decisions_changed, 0, "{}", report.render());
}
