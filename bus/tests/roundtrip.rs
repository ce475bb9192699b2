//! Every event type goes through the stream and comes back unchanged; the entry has the documented
//! flat layout (`bus::envelope`).

mod common;

use bus::testing::RedisServer;
use bus::{Envelope, Event, Metadata, Query, EVENT_TYPES};
use common::*;
use proptest::prelude::*;

#[tokio::test]
async fn every_event_type_round_trips_through_the_stream_unchanged() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "roundtrip")).await;
    let publisher = bus.publisher();
    let mut sent = Vec::new();
    let mut parent: Option<Envelope> = None;
    for t in EVENT_TYPES {
        // Alternate roots and caused events, so both shapes of correlation/causation are covered.
        let e = match &parent {
            Some(p) => Envelope::caused_by(p, "ScalingDecisionEngine", sample(t)),
            None => envelope_of(sample(t)),
        };
        parent = if parent.is_some() {
            None
        } else {
            Some(e.clone())
        };
        publisher.publish(&e).await.unwrap();
        sent.push(e);
    }
    let got = bus.audit().query(&Query::default()).await.unwrap();
    assert_eq!(got.len(), EVENT_TYPES.len());
    for (raw, want) in got.iter().zip(&sent) {
        assert_eq!(&raw.decode().unwrap(), want, "entry {}", raw.id);
    }
}

#[tokio::test]
async fn an_entry_has_exactly_the_design_fields_in_order() {
    let server = RedisServer::start();
    let bus = connect(config(&server, "fields")).await;
    let e = envelope_of(sample("PendingPodsDetected"));
    let id = bus.publisher().publish(&e).await.unwrap();
    let v: Vec<(String, Vec<(String, String)>)> = raw(
        &server.url(),
        redis::cmd("XRANGE").arg("fields").arg("-").arg("+"),
    )
    .await;
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].0, id);
    let names: Vec<&str> = v[0].1.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, bus::envelope::FIELDS);
    let get = |k: &str| v[0].1.iter().find(|(n, _)| n == k).unwrap().1.clone();
    assert_eq!(get("event_type"), "PendingPodsDetected");
    assert_eq!(get("event_id"), e.event_id.to_string());
    assert_eq!(get("correlation_id"), e.event_id.to_string());
    assert_eq!(get("causation_id"), "");
    assert_eq!(get("v"), "1");
    let data: serde_json::Value = serde_json::from_str(&get("data")).unwrap();
    assert_eq!(data["pending_count"], 3);
    let metadata: serde_json::Value = serde_json::from_str(&get("metadata")).unwrap();
    assert_eq!(metadata["cluster_id"], "test-cluster");
    assert_eq!(metadata["region"], "local");
    assert!(get("timestamp").ends_with('Z') && get("timestamp").len() == 24);
}

fn any_event() -> impl Strategy<Value = Event> {
    (
        0..EVENT_TYPES.len(),
        0u32..1000,
        0.0f64..100.0,
        "[a-z0-9-]{1,20}",
    )
        .prop_map(|(i, n, x, name)| {
            // Start from the full sample and vary a number, a float and a string where the type has them.
            let mut data = sample(EVENT_TYPES[i]).data_json();
            if let Some(obj) = data.as_object_mut() {
                for (k, v) in obj.iter_mut() {
                    if v.is_u64() && k != "memory_bytes" {
                        *v = serde_json::json!(n);
                    } else if v.is_f64() {
                        *v = serde_json::json!(x);
                    } else if k == "node_name" || k == "reason" || k == "cause" {
                        *v = serde_json::json!(name.clone());
                    }
                }
            }
            Event::from_value(EVENT_TYPES[i], data).unwrap()
        })
}

proptest! {
    #[test]
    fn the_codec_round_trips_any_event(event in any_event(), source in "[A-Za-z_]{1,20}", region in "\\PC{0,12}") {
        let e = Envelope::root(source, event, Metadata::new("c", region));
        let fields = e.to_fields();
        let back = Envelope::from_pairs(&fields.iter().map(|(k, v)| (*k, v.as_bytes())).collect::<Vec<_>>()).unwrap();
        prop_assert_eq!(back, e);
    }

    #[test]
    fn the_codec_never_panics_on_garbage(t in "\\PC{0,30}", data in "\\PC{0,60}") {
        let e = envelope_of(sample("NodeReady"));
        let mut fields: Vec<(&str, String)> = e.to_fields();
        fields[1].1 = t;
        fields[4].1 = data;
        let _ = Envelope::from_pairs(&fields.iter().map(|(k, v)| (*k, v.as_bytes())).collect::<Vec<_>>());
    }
}
