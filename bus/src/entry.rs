//! Raw stream entries as Redis returns them.
//!
//! The replies are parsed from `redis::Value` here rather than with redis-rs's `StreamId` (a `HashMap` of
//! UTF-8 keys) so that field order and bytes survive exactly — a dead letter must carry the original
//! fields, even those of a malformed entry — and so that one odd entry cannot make a whole read fail.

use bytes::Bytes;
use redis::Value;

use crate::error::{BusError, Result};
use crate::{DecodeError, Envelope};

/// One stream entry: its id and its fields, in stream order, as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// The stream id, `<ms>-<seq>`.
    pub id: String,
    /// `(field, value)` pairs in the order they were written.
    pub fields: Vec<(Bytes, Bytes)>,
}

impl RawEntry {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k.as_ref() == name.as_bytes())
            .map(|(_, v)| v.as_ref())
    }

    /// The first value of `name` as text (lossy).
    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The entry as an event envelope.
    pub fn decode(&self) -> Result<Envelope, DecodeError> {
        Envelope::from_fields(|name| self.get(name))
    }

    /// The `event_type` field, or `"<none>"`: a label for logs and counters even when decoding fails.
    pub fn type_label(&self) -> String {
        self.get_str("event_type")
            .filter(|t| crate::EVENT_TYPES.contains(&t.as_str()))
            .unwrap_or_else(|| "<undecodable>".to_string())
    }
}

/// An entry of a consumer-group read: its fields are `None` when it is still pending but was deleted from
/// the stream (trimmed or `XDEL`ed) before it was acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct ReadEntry {
    pub id: String,
    pub fields: Option<Vec<(Bytes, Bytes)>>,
}

pub(crate) fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

pub(crate) fn string(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// As [`bytes`], moving the buffer out instead of copying it (replies are parsed once).
fn into_bytes(v: Value) -> Bytes {
    match v {
        Value::BulkString(b) => Bytes::from(b),
        other => bytes(&other).map(Bytes::from).unwrap_or_default(),
    }
}

fn into_items(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

fn bad(op: &'static str, detail: impl Into<String>) -> BusError {
    BusError::Reply {
        op,
        detail: detail.into(),
    }
}

/// One `[id, [f, v, …]]` (or `[id, nil]`).
pub(crate) fn parse_entry(op: &'static str, v: Value) -> Result<ReadEntry> {
    let mut parts = into_items(v)
        .ok_or_else(|| bad(op, "entry is not an array"))?
        .into_iter();
    let id = parts
        .next()
        .as_ref()
        .and_then(string)
        .ok_or_else(|| bad(op, "entry without id"))?;
    let fields = match parts.next() {
        None | Some(Value::Nil) => None,
        Some(Value::Map(pairs)) => Some(
            pairs
                .into_iter()
                .map(|(k, v)| (into_bytes(k), into_bytes(v)))
                .collect(),
        ),
        Some(other) => {
            let flat = into_items(other).ok_or_else(|| bad(op, "entry fields are not an array"))?;
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let Some(k) = it.next() {
                let v = it.next().map(into_bytes).unwrap_or_default();
                fields.push((into_bytes(k), v));
            }
            Some(fields)
        }
    };
    Ok(ReadEntry { id, fields })
}

/// A list of entries (`XRANGE`, one stream of `XREAD`, XAUTOCLAIM's second element).
pub(crate) fn parse_entries(op: &'static str, v: Value) -> Result<Vec<ReadEntry>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        other => into_items(other)
            .ok_or_else(|| bad(op, "entries are not an array"))?
            .into_iter()
            .map(|e| parse_entry(op, e))
            .collect(),
    }
}

/// The entries of the first (only) stream of an `XREAD`/`XREADGROUP` reply; nil (timeout) is empty.
pub(crate) fn parse_read(op: &'static str, v: Value) -> Result<Vec<ReadEntry>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Map(streams) => match streams.into_iter().next() {
            Some((_, entries)) => parse_entries(op, entries),
            None => Ok(Vec::new()),
        },
        other => {
            let streams = into_items(other).ok_or_else(|| bad(op, "reply is not an array"))?;
            match streams.into_iter().next() {
                Some(s) => {
                    let pair = into_items(s).ok_or_else(|| bad(op, "stream is not an array"))?;
                    match pair.into_iter().nth(1) {
                        Some(entries) => parse_entries(op, entries),
                        None => Ok(Vec::new()),
                    }
                }
                None => Ok(Vec::new()),
            }
        }
    }
}

/// Entries whose fields are present, as [`RawEntry`]s (range queries never return nil fields).
pub(crate) fn present(entries: Vec<ReadEntry>) -> Vec<RawEntry> {
    entries
        .into_iter()
        .filter_map(|e| e.fields.map(|fields| RawEntry { id: e.id, fields }))
        .collect()
}

/// XAUTOCLAIM's reply: next cursor, claimed entries, ids deleted from the stream (Redis ≥ 7).
pub(crate) fn parse_autoclaim(v: Value) -> Result<(String, Vec<ReadEntry>, Vec<String>)> {
    const OP: &str = "XAUTOCLAIM";
    let mut parts = into_items(v)
        .ok_or_else(|| bad(OP, "reply is not an array"))?
        .into_iter();
    let next = parts
        .next()
        .as_ref()
        .and_then(string)
        .ok_or_else(|| bad(OP, "no cursor"))?;
    let claimed = match parts.next() {
        Some(v) => parse_entries(OP, v)?,
        None => Vec::new(),
    };
    let deleted = match parts.next().and_then(into_items) {
        Some(ids) => ids.iter().filter_map(string).collect(),
        None => Vec::new(),
    };
    Ok((next, claimed, deleted))
}
