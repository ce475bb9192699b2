//! `autoscaler explain EVENT_ID`: why an event happened (its causes, root first) and what it led to.

use std::collections::HashMap;
use std::process::ExitCode;

use bus::stream_id::StreamId;
use bus::Envelope;
use uuid::Uuid;

use crate::config::Settings;
use crate::runtime;

/// An event's ancestry (root first, ending with the event) and its descendants (in stream order).
#[derive(Debug, Default)]
pub struct Chain {
    pub ancestry: Vec<Envelope>,
    pub descendants: Vec<Envelope>,
}

/// Whether the entry at stream id `sid` with `event_id` is the one asked for: by a full id, a
/// stream id, or the 8-character prefix `events tail` prints.
fn is_wanted(sid: &str, event_id: &str, wanted: &str) -> bool {
    sid == wanted || event_id == wanted || (wanted.len() >= 8 && event_id.starts_with(wanted))
}

/// Finds `wanted` (an event id, or a stream id) among `entries` and walks its causation links.
pub fn chain(entries: &[(String, Envelope)], wanted: &str) -> Option<Chain> {
    let by_id: HashMap<Uuid, &Envelope> = entries.iter().map(|(_, e)| (e.event_id, e)).collect();
    let target = entries
        .iter()
        .find(|(sid, e)| is_wanted(sid, &e.event_id.to_string(), wanted))
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
    let audit = bus.audit();
    // Two passes over archive and stream, a page at a time: find the event (and its correlation
    // id, the root every event of its chain shares), then collect that chain only.
    let mut history = super::events::history(settings, &audit, StreamId { ms: 0, seq: 0 }, None);
    let mut target: Option<Uuid> = None;
    let mut read = 0usize;
    'find: loop {
        let page = history.next_page().await;
        super::events::warn_problems(&mut history);
        let Some(page) = page? else { break };
        for r in &page {
            read += 1;
            let event_id = r.get_str("event_id").unwrap_or_default();
            if is_wanted(&r.id, &event_id, wanted) {
                if let Ok(e) = r.decode() {
                    target = Some(e.correlation_id);
                    break 'find;
                }
            }
        }
    }
    let Some(correlation) = target else {
        eprintln!(
            "no event {wanted} on {} or in the archive ({read} entries; it may have been trimmed)",
            bus.config().stream,
        );
        return Ok(ExitCode::FAILURE);
    };
    let wanted_correlation = correlation.to_string();
    let mut entries: Vec<(String, Envelope)> = Vec::new();
    let mut history = super::events::history(settings, &audit, StreamId { ms: 0, seq: 0 }, None);
    loop {
        let page = history.next_page().await;
        super::events::warn_problems(&mut history);
        let Some(page) = page? else { break };
        entries.extend(
            page.iter()
                .filter(|r| r.get("correlation_id") == Some(wanted_correlation.as_bytes()))
                .filter_map(|r| r.decode().ok().map(|e| (r.id.clone(), e))),
        );
    }
    let Some(chain) = chain(&entries, wanted) else {
        eprintln!("event {wanted} went away while it was read (trimmed?)");
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
