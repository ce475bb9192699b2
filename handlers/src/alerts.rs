//! AlertManager: routes critical events to `Notify` commands — before an action (its decision or
//! start) and after it (completed, failed, restored) — at most once per key within the de-duplication
//! window, with payloads in generic JSON or Slack form and secrets redacted.
//!
//! The window is kept by the [`crate::Model`] (it records, per alert key, which event opened the current
//! window), so every replica agrees on which event notifies. Sending, retries and backoff live in
//! `autoscaler`'s [`crate::traits::Notifier`].

use std::collections::BTreeMap;

use bus::event::Event;
use bus::Envelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::codes::dedup_key;
use crate::command::{Cause, Command, Emitter, Outcome};
use crate::model::Model;
use crate::policy::Policy;

/// The handler's name (consumer group and event source).
pub const HANDLER: &str = "AlertManager";

/// How bad it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
    Resolved,
}

/// Where the alert sits relative to an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A problem was seen.
    Detected,
    /// An action is about to happen (decision or start).
    Before,
    /// An action ended (completed, failed, restored).
    After,
}

/// One notification, already redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// De-duplication key (event type, plus node or action where it matters).
    pub key: String,
    pub severity: Severity,
    pub phase: Phase,
    pub title: String,
    pub text: String,
    pub event_type: String,
    pub event_id: Uuid,
    pub correlation_id: Uuid,
    pub timestamp: DateTime<Utc>,
    pub cluster_id: String,
    /// The event's data fields as strings.
    pub fields: BTreeMap<String, String>,
}

/// Webhook payload shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The alert as a flat JSON object.
    Json,
    /// Slack-compatible `{text, attachments}`.
    Slack,
}

impl Format {
    /// `json` or `slack` as in `alerts.webhooks[].format`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(Format::Json),
            "slack" => Some(Format::Slack),
            _ => None,
        }
    }
}

fn classify(event: &Event) -> (Severity, Phase) {
    match event {
        Event::MinimumNodesViolation(_) | Event::EmergencyScaleUp(_) => {
            (Severity::Critical, Phase::Detected)
        }
        Event::NodeUnexpectedlyLost(_)
        | Event::NodeHealthDegraded(_)
        | Event::ScaleUpBlocked(_) => (Severity::Warning, Phase::Detected),
        Event::AutoScaleUpToMinimum(_) | Event::ScaleUpStarted(_) | Event::ScaleDownStarted(_) => {
            (Severity::Info, Phase::Before)
        }
        Event::ScalingActionFailed(f) if !f.retryable => (Severity::Critical, Phase::After),
        Event::ScalingActionFailed(_) => (Severity::Warning, Phase::After),
        Event::MinimumNodesRestored(_) => (Severity::Resolved, Phase::After),
        _ => (Severity::Info, Phase::After),
    }
}

/// Builds the (redacted) alert for an event.
pub fn alert_for(env: &Envelope) -> Option<Alert> {
    let key = dedup_key(&env.event)?;
    let (severity, phase) = classify(&env.event);
    let mut fields = BTreeMap::new();
    if let serde_json::Value::Object(map) = env.event.data_json() {
        for (k, v) in map {
            let s = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            fields.insert(k, redact(&s));
        }
    }
    let summary = fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(Alert {
        key,
        severity,
        phase,
        title: format!("[{}] {}", env.metadata.cluster_id, env.event_type()),
        text: redact(&format!("{}: {summary}", env.event_type())),
        event_type: env.event_type().to_string(),
        event_id: env.event_id,
        correlation_id: env.correlation_id,
        timestamp: env.timestamp,
        cluster_id: env.metadata.cluster_id.clone(),
        fields,
    })
}

/// The webhook body for `alert` in `format`.
pub fn payload(alert: &Alert, format: Format) -> serde_json::Value {
    match format {
        Format::Json => serde_json::to_value(alert).unwrap_or(serde_json::Value::Null),
        Format::Slack => {
            let color = match alert.severity {
                Severity::Critical => "danger",
                Severity::Warning => "warning",
                Severity::Resolved => "good",
                Severity::Info => "#439FE0",
            };
            let fields: Vec<serde_json::Value> = alert
                .fields
                .iter()
                .map(|(k, v)| serde_json::json!({"title": k, "value": v, "short": true}))
                .collect();
            serde_json::json!({
                "text": alert.title,
                "attachments": [{
                    "color": color,
                    "title": alert.event_type,
                    "text": alert.text,
                    "fields": fields,
                    "footer": format!("event {} · chain {}", alert.event_id, alert.correlation_id),
                    "ts": alert.timestamp.timestamp(),
                }],
            })
        }
    }
}

/// Words after which a value is a secret (`token=…`, `password: …`).
const SECRET_KEYS: &[&str] = &[
    "token",
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "authorization",
];

/// Removes credentials from free text: `scheme://user:pass@host` → `scheme://***@host`,
/// `token=abc` / `password: abc` → `token=***`, `Bearer abc` → `Bearer ***`.
pub fn redact(text: &str) -> String {
    let mut out = redact_url_credentials(text);
    out = redact_after(&out, "bearer ", false);
    for key in SECRET_KEYS {
        out = redact_after(&out, key, true);
    }
    out
}

fn redact_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        if let Some(at) = authority.rfind('@') {
            out.push_str("***");
            out.push_str(&authority[at..]);
        } else {
            out.push_str(authority);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Replaces the value after each case-insensitive `key` (followed by `=`/`:` when `needs_sep`).
fn redact_after(text: &str, key: &str, needs_sep: bool) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find(key) {
        let key_end = pos + found + key.len();
        out.push_str(&text[pos..key_end]);
        let mut value_start = key_end;
        if needs_sep {
            let after = &text[key_end..];
            let trimmed = after.trim_start_matches(['"', '\'', ' ']);
            let skipped = after.len() - trimmed.len();
            if trimmed.starts_with('=') || trimmed.starts_with(':') {
                value_start = key_end + skipped + 1;
                let ws = text[value_start..].len() - text[value_start..].trim_start().len();
                value_start += ws;
                out.push_str(&text[key_end..value_start]);
            } else {
                pos = key_end;
                continue;
            }
        }
        let value_len = text[value_start..]
            .find(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '&' | '"' | '\'' | '}'))
            .unwrap_or(text.len() - value_start);
        if value_len > 0 {
            out.push_str("***");
        }
        pos = value_start + value_len;
    }
    out.push_str(&text[pos..]);
    out
}

/// Routes critical events to `Notify` commands, once per de-duplication window.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertManager;

impl AlertManager {
    /// Notifies when `event` opened its key's window in the model (so a repeat within the window,
    /// or a redelivery, stays silent).
    pub fn handle(
        &self,
        model: &Model,
        event: &Envelope,
        _policy: &Policy,
        now: DateTime<Utc>,
    ) -> Outcome {
        let Some(key) = dedup_key(&event.event) else {
            return Outcome::default();
        };
        if !model.alerts.opened_by(&key, event.event_id) {
            return Outcome::default();
        }
        let Some(alert) = alert_for(event) else {
            return Outcome::default();
        };
        let cause = Cause::from(event);
        let mut out = Emitter::new(HANDLER, &cause, now);
        out.command(Command::Notify { alert }, event);
        out.finish()
    }
}
