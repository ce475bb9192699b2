//! Stable strings that handlers write into events and the model reads back: reason codes, error
//! prefixes and alert de-duplication keys. They live here, not in the handler that writes them, so
//! the model can read them without depending on any handler.

use bus::event::Event;

/// `ScaleUpDecision.reason`, `ScaleDownDecision.reason` and the stable `ScaleDownBlocked.reason`
/// codes (dashboards and alerts match on them).
pub mod reason {
    /// A scale-up sized for pending pods; also why a scale-down is blocked while pods are pending.
    pub const PENDING_PODS: &str = "pending_pods";
    /// A scale-up by `scale_up_step` after sustained resource pressure.
    pub const RESOURCE_PRESSURE: &str = "resource_pressure";
    /// A scale-down after sustained underutilisation.
    pub const UNDERUTILIZED: &str = "underutilized";
    pub const MIN_NODES_REACHED: &str = "min_nodes_reached";
    pub const COOLDOWN: &str = "cooldown";
    pub const ACTION_IN_PROGRESS: &str = "action_in_progress";
    pub const UNHEALTHY_NODES: &str = "unhealthy_nodes";
    pub const NO_PLACE_FOR_PODS: &str = "no_place_for_pods";
    pub const SCALE_DOWN_DISABLED: &str = "scale_down_disabled";
    /// A scale-up that refills a pool's capacity buffer; also why a buffer's spare worker is not
    /// removed.
    pub const CAPACITY_BUFFER: &str = "capacity_buffer";
    /// A scale-up to a scheduled minimum (a window of `schedules` is open).
    pub const SCHEDULE: &str = "schedule";
}

/// How the `ScalingActionFailed.error` starts when the NodeManager stops replacing workers that
/// failed to provision: the scale-up goal is then abandoned.
pub const GIVING_UP: &str = "giving_up";

/// How a `ScalingActionFailed.error` starts when the provider did not answer (the Docker engine
/// unreachable, timing out, or its circuit breaker open): the pool backs off until the engine is
/// seen answering again (see `model::provision`).
pub const PROVIDER_UNAVAILABLE: &str = "provider_unavailable";

/// `ScaleUpBlocked.reason` of a pool that backs off after failed creates for another reason.
pub const POOL_BACKOFF: &str = "pool_backoff";

/// Whether a `ScalingActionFailed.error` says the provider did not answer.
pub fn is_provider_unavailable(error: &str) -> bool {
    error
        .strip_prefix(PROVIDER_UNAVAILABLE)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
}

/// The stable code an error starts with (`pdb: …` → `pdb`), else `action_failed`.
pub fn code_of(error: &str) -> String {
    match error.split_once(':') {
        Some((code, _))
            if !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_') =>
        {
            code.to_string()
        }
        _ => "action_failed".to_string(),
    }
}

/// The alert key of an event that notifies, or `None` for events that never do: one alert per key
/// and de-duplication window.
pub fn dedup_key(event: &Event) -> Option<String> {
    let nodes = |v: &[String]| v.join(",");
    Some(match event {
        Event::MinimumNodesViolation(_) => "MinimumNodesViolation".into(),
        Event::AutoScaleUpToMinimum(_) => "AutoScaleUpToMinimum".into(),
        Event::MinimumNodesRestored(_) => "MinimumNodesRestored".into(),
        Event::EmergencyScaleUp(_) => "EmergencyScaleUp".into(),
        Event::NodeUnexpectedlyLost(l) => format!("NodeUnexpectedlyLost:{}", l.node_name),
        Event::NodeHealthDegraded(h) => format!("NodeHealthDegraded:{}", h.node_name),
        Event::ScalingActionFailed(f) => format!(
            "ScalingActionFailed:{}:{}",
            f.action.as_str(),
            f.node_name.as_deref().unwrap_or("")
        ),
        Event::ScaleUpStarted(s) => format!("ScaleUpStarted:{}", nodes(&s.nodes)),
        // Pods that get no worker are said once per reason: each such event is worth an alert.
        Event::ScaleUpBlocked(b) => format!("ScaleUpBlocked:{}:{}", b.reason, nodes(&b.pods)),
        Event::ScaleDownStarted(s) => format!("ScaleDownStarted:{}", nodes(&s.nodes)),
        Event::ScalingActionCompleted(c) => {
            format!(
                "ScalingActionCompleted:{}:{}",
                c.action.as_str(),
                nodes(&c.nodes)
            )
        }
        _ => return None,
    })
}
