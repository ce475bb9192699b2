//! `autoscaler scale --to N [--reason TEXT]`: a manual request, published as `ManualScaleRequested` and
//! carried out by the handlers through the same limits, single-flight and audit trail as any decision.

use std::process::ExitCode;

use bus::event::ManualScaleRequested;
use bus::Envelope;

use crate::config::Settings;
use crate::runtime;

pub async fn run(settings: &Settings, to: u32, reason: String) -> anyhow::Result<ExitCode> {
    let limits = &settings.autoscaler.limits;
    if to < limits.min_nodes || to > limits.max_nodes {
        eprintln!(
            "refused: --to {to} is outside [min_nodes, max_nodes] = [{}, {}] (change autoscaler.limits to go there)",
            limits.min_nodes, limits.max_nodes
        );
        return Ok(ExitCode::from(super::EXIT_BAD_CONFIG));
    }
    let bus = bus::connect(runtime::bus_config(settings)).await?;
    let envelope = Envelope::root(
        "operator",
        ManualScaleRequested {
            target_workers: to,
            reason,
        },
        runtime::metadata(settings),
    );
    let id = bus.publisher().publish(&envelope).await?;
    println!(
        "requested {to} workers: ManualScaleRequested {} (stream id {id}); follow with `autoscaler explain {}`",
        envelope.event_id, envelope.event_id
    );
    Ok(ExitCode::SUCCESS)
}
