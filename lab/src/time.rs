//! Timestamps as the API writes them.

use chrono::{DateTime, SecondsFormat, Utc};

/// Now, as an RFC 3339 `Time` (seconds, `Z`).
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Now, as a `MicroTime`.
pub fn now_micro() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses a `Time` or `MicroTime`.
pub fn parse(ts: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A kubectl-style age: `45s`, `3m12s`, `5h`, `2d`.
pub fn age(since: &str) -> String {
    let Some(t) = parse(since) else {
        return "<unknown>".into();
    };
    let secs = (Utc::now() - t).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
