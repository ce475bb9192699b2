//! The MetricsListener's rules: the events it derives from samples.

mod common;

use bus::event::*;
use common::*;
use handlers::Policy;

#[test]
fn the_minimum_is_announced_once_the_scale_down_is_done_not_during_the_drain() {
    let policy = Policy::default();
    let listener = handlers::metrics_listener::MetricsListener;
    let mut clock = Clock::new(15);
    let mut model = handlers::Model::new(&policy);
    let min = policy.limits.min_nodes;
    let names: Vec<String> = (1..=min + 1).map(|i| format!("w{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    model.apply(&clock.at(all_ready(&name_refs)));
    let victim = names.last().cloned().expect("a worker");
    model.apply(&clock.at(ScaleDownStarted {
        count: 1,
        target_workers: min,
        nodes: vec![victim.clone()],
    }));
    let optimal = |model: &handlers::Model, sample: &bus::Envelope, now| {
        listener
            .handle(model, sample, &policy, now)
            .events
            .iter()
            .filter(|e| e.event_type() == "OptimalStateTrigger")
            .count()
    };
    // Low samples while the victim drains: the record counts `min` live workers, but one is leaving.
    for _ in 0..policy.thresholds.consecutive_periods + 1 {
        let sample = clock.at(metrics(min, 1.0, 1.0));
        model.apply(&sample);
        assert_eq!(model.current_workers(), min);
        assert_eq!(
            optimal(&model, &sample, clock.now),
            0,
            "not during the drain"
        );
    }
    for e in removal_of(&victim, min + 1) {
        model.apply(&clock.at(e));
    }
    let sample = clock.at(metrics(min, 1.0, 1.0));
    model.apply(&sample);
    assert_eq!(
        optimal(&model, &sample, clock.now),
        1,
        "announced once it is gone"
    );
}
