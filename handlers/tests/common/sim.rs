//! What tests read from a [`Simulation`] and how they drive it.

use std::time::Duration;

use bus::Event;
use handlers::simulate::Simulation;

use super::catalogue::{command_kind, event_type};
use super::fixtures::metrics;

/// The published events of type `ty` (which must be an event type).
pub fn events_of<'a>(sim: &'a Simulation, ty: &str) -> Vec<&'a bus::Envelope> {
    let ty = event_type(ty);
    sim.log.iter().filter(|e| e.event_type() == ty).collect()
}

/// The reasons of every `ScaleDownBlocked`, in order.
pub fn blocked_reasons(sim: &Simulation) -> Vec<String> {
    sim.log
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleDownBlocked(b) => Some(b.reason.clone()),
            _ => None,
        })
        .collect()
}

/// Every `ScaleUpBlocked`, in order.
pub fn scale_up_blocks(sim: &Simulation) -> Vec<bus::event::ScaleUpBlocked> {
    sim.log
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpBlocked(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

/// Every `ScalingActionFailed`, in order.
pub fn action_failures(sim: &Simulation) -> Vec<bus::event::ScalingActionFailed> {
    sim.log
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScalingActionFailed(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

/// The nodes of every command of `kind` issued (which must be a command kind), in order.
pub fn commands(sim: &Simulation, kind: &str) -> Vec<String> {
    let kind = command_kind(kind);
    sim.commands
        .iter()
        .filter(|i| i.command.kind() == kind)
        .filter_map(|i| i.command.node().map(str::to_string))
        .collect()
}

/// Samples every 15 s for `secs` seconds.
pub fn sample_for(sim: &mut Simulation, secs: u64, cpu: f64, mem: f64) {
    for _ in 0..secs / 15 {
        sim.advance(Duration::from_secs(15));
        let w = sim.model.current_workers();
        sim.observe("metrics_collector", metrics(w, cpu, mem));
    }
}

/// The nodes every `ScaleDownDecision` names, in order.
pub fn removed(sim: &Simulation) -> Vec<String> {
    events_of(sim, "ScaleDownDecision")
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleDownDecision(d) => Some(d.nodes.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The targets of every `ScaleUpDecision`, in order.
pub fn decision_targets(sim: &Simulation) -> Vec<u32> {
    events_of(sim, "ScaleUpDecision")
        .iter()
        .filter_map(|e| match &e.event {
            Event::ScaleUpDecision(d) => Some(d.target_workers),
            _ => None,
        })
        .collect()
}

/// Polls a future that never waits (the fakes are synchronous).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
