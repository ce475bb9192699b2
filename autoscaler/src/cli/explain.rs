//! `autoscaler explain EVENT_ID`: why an event happened (its causes, root first) and what it led to.

use std::collections::HashMap;
use std::process::ExitCode;

use bus::{Envelope, Query};
use uuid::Uuid;

use crate::config::Settings;
use crate::runtime;

/// An event's ancestry (root first, ending with the event) and its descendants (in stream order).
#[derive(Debug, Default)]
pub struct Chain {
    pub ancestry: Vec<Envelope>,
    pub descendants: Vec<Envelope>,
}

/// Finds `wanted` (an event id, or a stream id) among `entries` and walks its causation links.
pub fn chain(entries: &[(String, Envelope)], wanted: &str) -> Option<Chain> {
    let by_id: HashMap<Uuid, &Envelope> = entries.iter().map(|(_, e)| (e.event_id, e)).collect();
    // A full id, a stream id, or the 8-character prefix `events tail` prints.
    let matches = |sid: &str, e: &Envelope| {
        let id = e.event_id.to_string();
        sid == wanted || id == wanted || (wanted.len() >= 8 && id.starts_with(wanted))
    };
    let target = entries
        .iter()
        .find(|(sid, e)| matches(sid, e))
        .map(|(_, e)| e)?;
    let mut ancestry = vec![target.clone()];
    let mut cursor = target.causation_id;
    // A chain is a tree, but guard against a (hand-written) cycle.
    while let Some(parent) = cursor.and_then(|id| by_id.get(&id)) {
        if ancestry.iter().any(|a| a.event_id == parent.event_id) {
            break;
        }
        ancestry.push((*parent).clone());
        cursor = parent.causation_id;
    }
    ancestry.reverse();
    let mut descendants = Vec::new();
    let mut frontier = vec![target.event_id];
    for (_, e) in entries {
        if e.causation_id.is_some_and(|c| frontier.contains(&c)) && !frontier.contains(&e.event_id)
        {
            frontier.push(e.event_id);
            descendants.push(e.clone());
        }
    }
    Some(Chain {
        ancestry,
        descendants,
    })
}

pub async fn run(settings: &Settings, wanted: &str) -> anyhow::Result<ExitCode> {
    let bus = bus::connect(runtime::bus_config(settings)).await?;
    let raw = bus.audit().query(&Query::default()).await?;
    let entries: Vec<(String, Envelope)> = raw
        .iter()
        .filter_map(|r| r.decode().ok().map(|e| (r.id.clone(), e)))
        .collect();
    let Some(chain) = chain(&entries, wanted) else {
        eprintln!(
            "no event {wanted} on {} ({} entries; it may have been trimmed)",
            bus.config().stream,
            raw.len()
        );
        return Ok(ExitCode::FAILURE);
    };
    println!("why (root first):");
    print!("{}", handlers::explain::render(&chain.ancestry));
    if !chain.descendants.is_empty() {
        println!("what it led to:");
        print!("{}", handlers::explain::render(&chain.descendants));
    }
    Ok(ExitCode::SUCCESS)
}
