//! Shared helpers for the handlers' tests: names checked against the catalogues, fixtures, and
//! what tests read from a simulation.
#![allow(dead_code)]

mod catalogue;
mod fixtures;
mod sim;

// Each test crate uses a different part of the helpers.
#[allow(unused_imports)]
pub use catalogue::*;
#[allow(unused_imports)]
pub use fixtures::*;
#[allow(unused_imports)]
pub use sim::*;

use std::collections::BTreeMap;

use bus::Envelope;
use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 12, 16, 11, 0, 0)
        .single()
        .unwrap()
}

/// Asserts that `wanted` (event types) appears in `types` in this order (other events may come
/// between).
pub fn assert_in_order(types: &[&str], wanted: &[&str]) {
    for w in wanted {
        event_type(w);
    }
    let mut i = 0;
    for t in types {
        if i < wanted.len() && *t == wanted[i] {
            i += 1;
        }
    }
    assert_eq!(
        i,
        wanted.len(),
        "expected {:?} in order, stopped at {:?}; log was {:?}",
        wanted,
        wanted.get(i),
        types
    );
}

/// Every event's cause is an earlier event of the log, and its correlation is its root's id.
pub fn assert_causation_consistent(log: &[Envelope]) {
    let mut by_id: BTreeMap<Uuid, &Envelope> = BTreeMap::new();
    for e in log {
        match e.causation_id {
            None => assert_eq!(e.correlation_id, e.event_id, "root {e:?}"),
            Some(c) => {
                let parent = by_id.get(&c).unwrap_or_else(|| {
                    panic!("cause of {} not earlier in the log", e.event_type())
                });
                assert_eq!(
                    e.correlation_id,
                    parent.correlation_id,
                    "{}",
                    e.event_type()
                );
            }
        }
        by_id.insert(e.event_id, e);
    }
}

/// The first event of `ty` (which must be an event type) in the log.
pub fn first<'a>(log: &'a [Envelope], ty: &str) -> &'a Envelope {
    let ty = event_type(ty);
    log.iter()
        .find(|e| e.event_type() == ty)
        .unwrap_or_else(|| {
            panic!(
                "no {ty} in {:?}",
                log.iter().map(|e| e.event_type()).collect::<Vec<_>>()
            )
        })
}
