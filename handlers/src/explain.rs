//! `autoscaler explain EVENT_ID`: a causation chain as lines a person can read, root first.

use std::collections::BTreeMap;

use bus::envelope::format_timestamp;
use bus::Envelope;
use uuid::Uuid;

/// The chain ending at `id`, root first, from the events `all` (e.g. a stream read).
/// Stops where a cause is not among `all` (trimmed stream).
pub fn chain_of(all: &[Envelope], id: Uuid) -> Vec<Envelope> {
    let by_id: BTreeMap<Uuid, &Envelope> = all.iter().map(|e| (e.event_id, e)).collect();
    let mut chain = Vec::new();
    let mut next = Some(id);
    while let Some(cur) = next {
        let Some(e) = by_id.get(&cur) else { break };
        if chain.iter().any(|c: &Envelope| c.event_id == cur) {
            break; // a cycle cannot happen with v5 ids of distinct keys, but never loop
        }
        chain.push((*e).clone());
        next = e.causation_id;
    }
    chain.reverse();
    chain
}

/// One line per event, root first: time, type, source, key data, and why (its cause, its reason).
pub fn render(chain: &[Envelope]) -> String {
    let ordered = root_first(chain);
    let types: BTreeMap<Uuid, &str> = ordered
        .iter()
        .map(|e| (e.event_id, e.event_type()))
        .collect();
    let mut out = String::new();
    for (depth, e) in ordered.iter().enumerate() {
        let why = match e.causation_id {
            None => "observation (root)".to_string(),
            Some(c) => match types.get(&c) {
                Some(t) => format!("because of {t} {}", short(c)),
                None => format!("because of {} (not in the stream any more)", short(c)),
            },
        };
        let reason = match e.event.data_json().get("reason") {
            Some(serde_json::Value::String(r)) => format!(", reason {r}"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{}{} {} {} from {}: {} [{}{}]\n",
            "  ".repeat(depth.min(12)),
            format_timestamp(e.timestamp),
            short(e.event_id),
            e.event_type(),
            e.source,
            key_data(e),
            why,
            reason
        ));
    }
    out
}

fn short(id: Uuid) -> String {
    id.to_string()[..8].to_string()
}

/// The data as `k=v` pairs (scalars and short lists; `reason` is shown in the why part).
fn key_data(e: &Envelope) -> String {
    let serde_json::Value::Object(map) = e.event.data_json() else {
        return String::new();
    };
    map.iter()
        .filter(|(k, _)| k.as_str() != "reason")
        .filter_map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Array(a) if a.iter().all(|x| x.is_string()) => {
                    let items: Vec<&str> = a.iter().filter_map(|x| x.as_str()).collect();
                    format!("[{}]", items.join(","))
                }
                serde_json::Value::Array(a) => {
                    // Objects with a name (observed nodes, pods, node usage) show their names.
                    let names: Vec<&str> = a
                        .iter()
                        .filter_map(|x| {
                            x.get("name")
                                .or_else(|| x.get("node_name"))
                                .and_then(|n| n.as_str())
                        })
                        .collect();
                    if names.len() == a.len() && a.len() <= 12 {
                        format!("[{}]", names.join(","))
                    } else {
                        format!("[{} items]", a.len())
                    }
                }
                serde_json::Value::Null => return None,
                serde_json::Value::Object(_) => return None,
            };
            Some(format!("{k}={s}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Orders a chain root first by following causation (any order in, chain order out).
fn root_first(chain: &[Envelope]) -> Vec<&Envelope> {
    let ids: std::collections::BTreeSet<Uuid> = chain.iter().map(|e| e.event_id).collect();
    let Some(root) = chain
        .iter()
        .find(|e| e.causation_id.is_none_or(|c| !ids.contains(&c)))
    else {
        return chain.iter().collect();
    };
    let mut out = vec![root];
    while out.len() < chain.len() {
        let last = out[out.len() - 1].event_id;
        match chain.iter().find(|e| e.causation_id == Some(last)) {
            Some(n) => out.push(n),
            None => break,
        }
    }
    // Anything not on the single path (a branch) keeps its given order after it.
    for e in chain {
        if !out.iter().any(|o| o.event_id == e.event_id) {
            out.push(e);
        }
    }
    out
}
