//! The AlertManager's rules: when alerts go out, and what they never carry.

mod common;

use std::time::Duration;

use bus::event::*;
use common::*;
use handlers::simulate::Simulation;
use handlers::{Command, Policy};

#[test]
fn alerts_go_out_before_and_after_an_action_once_per_window() {
    let mut sim = Simulation::new(Policy::default(), t0()).with_workers(2);
    sim.kill("k3s-worker-2");
    sim.observe_cluster();
    sim.advance(Duration::from_secs(120));
    let alerts: Vec<_> = sim
        .commands
        .iter()
        .filter_map(|c| match &c.command {
            Command::Notify { alert } => Some((alert.event_type.clone(), alert.phase)),
            _ => None,
        })
        .collect();
    use handlers::alerts::Phase;
    assert!(alerts.contains(&("NodeUnexpectedlyLost".into(), Phase::Detected)));
    assert!(alerts.contains(&("MinimumNodesViolation".into(), Phase::Detected)));
    assert!(alerts.contains(&("AutoScaleUpToMinimum".into(), Phase::Before)));
    assert!(alerts.contains(&("ScalingActionCompleted".into(), Phase::After)));
    assert!(alerts.contains(&("MinimumNodesRestored".into(), Phase::After)));
    // A second violation inside the window is not notified again.
    sim.kill("k3s-worker-3");
    sim.observe_cluster();
    let violations = sim
        .commands
        .iter()
        .filter(|c| matches!(&c.command, Command::Notify { alert } if alert.event_type == "MinimumNodesViolation"))
        .count();
    assert_eq!(events_of(&sim, "MinimumNodesViolation").len(), 2);
    assert_eq!(violations, 1);
}

#[test]
fn alert_payloads_never_carry_secrets() {
    let failed = bus::Envelope::root(
        "executor",
        ScalingActionFailed {
            action: ScalingAction::ScaleUp,
            node_name: Some("k3s-worker-3".into()),
            error: "create failed: https://admin:hunter2@registry.local/v2 token=abc123 K3S_TOKEN=K10xyz password: p4ss Bearer eyJhbGci".into(),
            retryable: true,
        },
        bus::Metadata::new("k3s-lab", "local"),
    );
    let alert = handlers::alerts::alert_for(&failed).unwrap();
    for format in [
        handlers::alerts::Format::Json,
        handlers::alerts::Format::Slack,
    ] {
        let body = handlers::alerts::payload(&alert, format).to_string();
        for secret in ["hunter2", "abc123", "K10xyz", "p4ss", "eyJhbGci", "admin:"] {
            assert!(!body.contains(secret), "{secret} leaked in {body}");
        }
        assert!(body.contains("registry.local"));
        assert!(body.contains("k3s-worker-3"));
    }
    let slack = handlers::alerts::payload(&alert, handlers::alerts::Format::Slack);
    assert_eq!(slack["attachments"][0]["color"], "warning");
    assert!(slack["text"]
        .as_str()
        .unwrap()
        .contains("ScalingActionFailed"));
}
