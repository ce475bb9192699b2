//! The envelope around every event and its stream-entry codec (the entry layout is a contract; see
//! `docs/ARCHITECTURE.md`).
//!
//! An entry is flat string fields so that `redis-cli XRANGE` reads it without any tool:
//! `event_id`, `event_type`, `timestamp`, `source`, `data` (JSON), `metadata` (JSON), `correlation_id`,
//! `causation_id` (empty for a root event) and `v`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::Event;
use crate::DecodeError;

/// The schema version written in `v`.
pub const SCHEMA_VERSION: u32 = 1;

/// The stream-entry field names, in the order they are written.
pub const FIELDS: [&str; 9] = [
    "event_id",
    "event_type",
    "timestamp",
    "source",
    "data",
    "metadata",
    "correlation_id",
    "causation_id",
    "v",
];

/// Namespace of deterministic (v5) event ids.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b33_735f_6175_746f_7363_616c_6572_0001);

/// Where an event comes from, beyond its source component.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Metadata {
    pub cluster_id: String,
    pub region: String,
    /// Set on decisions made with `dry_run` on: nothing was or will be done for them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Anything else a publisher wants to keep (replica id, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Metadata {
    pub fn new(cluster_id: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            region: region.into(),
            ..Self::default()
        }
    }
}

/// An event with its identity, time, origin and causation.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub event_id: Uuid,
    /// Millisecond precision, as written on the stream.
    pub timestamp: DateTime<Utc>,
    pub source: String,
    pub event: Event,
    pub metadata: Metadata,
    /// The `event_id` of the chain's first event (its own for a root).
    pub correlation_id: Uuid,
    /// The `event_id` of the event that caused this one; `None` for a root.
    pub causation_id: Option<Uuid>,
    pub v: u32,
}

/// Now, truncated to the milliseconds the stream keeps, so an envelope round-trips unchanged.
pub fn now_millis() -> DateTime<Utc> {
    truncate_millis(Utc::now())
}

/// The event id derived from `key` (see [`Envelope::with_deterministic_id`]): the what-if replay
/// recomputes it to recognise which recorded entries a timer emitted.
pub fn deterministic_id(key: &str) -> Uuid {
    Uuid::new_v5(&EVENT_ID_NAMESPACE, key.as_bytes())
}

/// Truncates a time to milliseconds.
pub fn truncate_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.timestamp_millis())
        .single()
        .unwrap_or(t)
}

impl Envelope {
    /// A root event: an observation that starts a chain.
    pub fn root(source: impl Into<String>, event: impl Into<Event>, metadata: Metadata) -> Self {
        let event_id = Uuid::new_v4();
        Self {
            event_id,
            timestamp: now_millis(),
            source: source.into(),
            event: event.into(),
            metadata,
            correlation_id: event_id,
            causation_id: None,
            v: SCHEMA_VERSION,
        }
    }

    /// An event caused by `parent`: same chain, same metadata.
    pub fn caused_by(
        parent: &Envelope,
        source: impl Into<String>,
        event: impl Into<Event>,
    ) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            timestamp: now_millis(),
            source: source.into(),
            event: event.into(),
            metadata: parent.metadata.clone(),
            correlation_id: parent.correlation_id,
            causation_id: Some(parent.event_id),
            v: SCHEMA_VERSION,
        }
    }

    /// Replaces the random id with one derived from `key`, for de-duplication across replicas.
    /// A root's correlation id follows its id.
    pub fn with_deterministic_id(mut self, key: &str) -> Self {
        let id = deterministic_id(key);
        if self.causation_id.is_none() {
            self.correlation_id = id;
        }
        self.event_id = id;
        self
    }

    pub fn with_timestamp(mut self, t: DateTime<Utc>) -> Self {
        self.timestamp = truncate_millis(t);
        self
    }

    pub fn event_type(&self) -> &'static str {
        self.event.event_type()
    }

    /// The stream-entry fields, in [`FIELDS`] order.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("event_id", self.event_id.to_string()),
            ("event_type", self.event.event_type().to_string()),
            ("timestamp", format_timestamp(self.timestamp)),
            ("source", self.source.clone()),
            ("data", self.event.data_string()),
            (
                "metadata",
                serde_json::to_string(&self.metadata).unwrap_or_else(|_| "{}".to_string()),
            ),
            ("correlation_id", self.correlation_id.to_string()),
            (
                "causation_id",
                self.causation_id.map(|c| c.to_string()).unwrap_or_default(),
            ),
            ("v", self.v.to_string()),
        ]
    }

    /// Decodes stream-entry fields. `get` returns a field's raw value, if present.
    pub fn from_fields<'a>(get: impl Fn(&str) -> Option<&'a [u8]>) -> Result<Self, DecodeError> {
        let field = |name: &'static str| -> Result<&'a str, DecodeError> {
            let raw = get(name).ok_or(DecodeError::MissingField(name))?;
            std::str::from_utf8(raw).map_err(|_| DecodeError::NotUtf8(name))
        };
        let uuid = |name: &'static str, s: &str| -> Result<Uuid, DecodeError> {
            Uuid::parse_str(s).map_err(|e| DecodeError::BadField {
                field: name,
                reason: e.to_string(),
            })
        };
        let v: u32 = field("v")?.parse().map_err(|_| DecodeError::BadField {
            field: "v",
            reason: "not a number".to_string(),
        })?;
        if v != SCHEMA_VERSION {
            return Err(DecodeError::UnsupportedVersion(v));
        }
        let event = Event::from_parts(field("event_type")?, field("data")?)?;
        let metadata: Metadata =
            serde_json::from_str(field("metadata")?).map_err(|e| DecodeError::BadField {
                field: "metadata",
                reason: e.to_string(),
            })?;
        let causation = field("causation_id")?;
        Ok(Self {
            event_id: uuid("event_id", field("event_id")?)?,
            timestamp: parse_timestamp(field("timestamp")?).map_err(|reason| {
                DecodeError::BadField {
                    field: "timestamp",
                    reason,
                }
            })?,
            source: field("source")?.to_string(),
            event,
            metadata,
            correlation_id: uuid("correlation_id", field("correlation_id")?)?,
            causation_id: if causation.is_empty() {
                None
            } else {
                Some(uuid("causation_id", causation)?)
            },
            v,
        })
    }

    /// Decodes from owned `(field, value)` pairs, as a Redis reply gives them.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<[u8]>>(
        pairs: &[(K, V)],
    ) -> Result<Self, DecodeError> {
        Self::from_fields(|name| {
            pairs
                .iter()
                .find(|(k, _)| k.as_ref() == name)
                .map(|(_, v)| v.as_ref())
        })
    }

    /// A JSON object with the entry's fields, `data` and `metadata` as objects (for `--json` output).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "event_id": self.event_id,
            "event_type": self.event.event_type(),
            "timestamp": format_timestamp(self.timestamp),
            "source": self.source,
            "data": self.event.data_json(),
            "metadata": self.metadata,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id.map(|c| c.to_string()).unwrap_or_default(),
            "v": self.v,
        })
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2025-12-16T11:20:00.000Z`.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 time into UTC.
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| e.to_string())
}
