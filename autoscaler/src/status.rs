//! `autoscaler status` and `/status`: workers as Kubernetes, Docker and the record see them; limits;
//! the leader; pending and lag per group; the last decision and the last blocked reason.
//!
//! Each source is read on its own: one that cannot be reached is reported under `errors`, the others
//! still show.

use bus::Bus;
use serde_json::{json, Value};

use crate::config::Settings;
use crate::docker::DockerHosts;

/// Where status reads from; any source may be missing.
pub struct Sources<'a> {
    pub settings: &'a Settings,
    pub bus: Option<&'a Bus>,
    pub pool: Option<&'a DockerHosts>,
    pub kube: Option<&'a kube::Client>,
}

const DECISIONS: &[&str] = &[
    "ScaleUpDecision",
    "ScaleDownDecision",
    "AutoScaleUpToMinimum",
    "EmergencyScaleUp",
    "ManualScaleRequested",
];

/// The status document.
pub async fn collect(src: Sources<'_>) -> Value {
    let a = &src.settings.autoscaler;
    let mut errors: Vec<String> = Vec::new();
    let docker = match src.pool {
        Some(pool) => docker_workers(pool, &mut errors).await,
        None => None,
    };
    let kubernetes = match src.kube {
        Some(client) => kube_workers(client, &a.workers.name_prefix, &mut errors).await,
        None => None,
    };
    let b = match src.bus {
        Some(bus) => bus_status(bus, src.settings, &mut errors).await,
        None => BusStatus::default(),
    };
    json!({
        "cluster_id": a.cluster_id,
        "limits": {"min_nodes": a.limits.min_nodes, "max_nodes": a.limits.max_nodes},
        "dry_run": a.dry_run,
        "workers": {"kubernetes": kubernetes, "docker": docker, "record": b.record},
        "leader": b.leader,
        "groups": b.groups,
        "dlq_length": b.dlq_length,
        "last_decision": b.last_decision,
        "last_blocked": b.last_blocked,
        "backoff": b.backoff,
        "buffers": b.buffers,
        "schedules": b.schedules,
        "errors": errors,
    })
}

/// The workers as Docker sees them, with the host each runs on; a host that does not answer is
/// named under `errors`.
async fn docker_workers(hosts: &DockerHosts, errors: &mut Vec<String>) -> Option<Vec<Value>> {
    match hosts.list_workers().await {
        Ok(listing) => {
            for h in &listing.unreachable {
                errors.push(format!(
                    "docker host {} (pools {}): {}",
                    h.host,
                    h.pools.join(", "),
                    h.error
                ));
            }
            Some(
                listing
                    .workers
                    .iter()
                    .map(|(host, w)| {
                        json!({"name": w.name, "state": format!("{:?}", w.state).to_lowercase(), "host": host})
                    })
                    .collect(),
            )
        }
        Err(e) => {
            errors.push(format!("docker: {e}"));
            None
        }
    }
}

/// The worker nodes (named with the worker prefix) as Kubernetes sees them.
async fn kube_workers(
    client: &kube::Client,
    prefix: &str,
    errors: &mut Vec<String>,
) -> Option<Vec<Value>> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    match nodes.list(&Default::default()).await {
        Ok(list) => Some(
            list.items
                .iter()
                .filter_map(|n| node_summary(n, prefix))
                .collect(),
        ),
        Err(e) => {
            errors.push(format!("kubernetes: {e}"));
            None
        }
    }
}

/// A worker node's name, Ready status and cordon; `None` for a node that is not a worker.
fn node_summary(n: &k8s_openapi::api::core::v1::Node, prefix: &str) -> Option<Value> {
    let name = n.metadata.name.clone()?;
    name.starts_with(prefix).then(|| {
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "Unknown".into());
        let cordoned = n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        json!({"name": name, "ready": ready, "cordoned": cordoned})
    })
}

/// What the bus tells: the record's workers, the groups, the DLQ, the leader, the last decisions.
/// `None`/null where that part could not be read.
#[derive(Default)]
struct BusStatus {
    record: Option<Vec<Value>>,
    groups: Option<Vec<Value>>,
    leader: Value,
    dlq_length: Value,
    last_decision: Value,
    last_blocked: Value,
    /// Pools whose creates failed lately (see `handlers::model::provision`).
    backoff: Vec<Value>,
    /// Pools with a capacity buffer: what they have spare, what they are short of.
    buffers: Vec<Value>,
    /// Open windows of scheduled minimums.
    schedules: Vec<Value>,
}

async fn bus_status(bus: &Bus, settings: &Settings, errors: &mut Vec<String>) -> BusStatus {
    let mut out = BusStatus::default();
    let audit = bus.audit();
    // The stream a page at a time: the model folds it, the newest decisions are kept.
    let policy = crate::runtime::policy(settings);
    let mut model = handlers::model::Model::new(&policy);
    let (mut last_decision, mut last_blocked) = (Value::Null, Value::Null);
    let mut pages = audit.pages("-", "+");
    let read = loop {
        match pages.next_page().await {
            Ok(Some(page)) => {
                for e in page.iter().filter_map(|e| e.decode().ok()) {
                    if DECISIONS.contains(&e.event_type()) {
                        last_decision = e.to_json();
                    }
                    if e.event_type() == "ScaleDownBlocked" {
                        last_blocked = e.to_json();
                    }
                    model.apply(&e);
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    match read {
        Ok(()) => {
            out.record = Some(record_workers(&model));
            out.backoff = backoff_json(&model, &policy);
            out.buffers = buffers_json(&model, &policy);
            out.schedules = schedules_json(&model, &policy);
            out.last_decision = last_decision;
            out.last_blocked = last_blocked;
        }
        Err(e) => errors.push(format!("redis: {e}")),
    }
    match audit.groups().await {
        Ok(gs) => out.groups = Some(gs.iter().map(group_json).collect()),
        Err(e) => errors.push(format!("redis: {e}")),
    }
    match audit.dlq_len().await {
        Ok(n) => out.dlq_length = json!(n),
        Err(e) => errors.push(format!("redis: {e}")),
    }
    let mut conn = bus.connection();
    match crate::leader::current_holder(&mut conn, &bus.config().stream).await {
        Ok(Some(holder)) => {
            let (replica, token) = holder.split_once('|').unwrap_or((holder.as_str(), ""));
            out.leader = json!({"replica": replica, "fencing_token": token});
        }
        Ok(None) => {}
        Err(e) => errors.push(format!("redis: {e}")),
    }
    out
}

/// Each pool whose last creates failed: how many in a row, until when it backs off (it may be
/// over already: a worker of the pool becoming Ready is what clears it), and the last error.
fn backoff_json(model: &handlers::model::Model, policy: &handlers::Policy) -> Vec<Value> {
    let backoff = policy.scaling.provision_backoff();
    model
        .provision
        .backoff
        .iter()
        .map(|(pool, b)| {
            json!({
                "pool": pool,
                "failures": b.failures,
                "reason": b.reason(),
                "until": bus::envelope::format_timestamp(b.until(&backoff)),
                "error": b.error,
            })
        })
        .collect()
}

/// Each pool with a capacity buffer: what it asks for, what it has spare and how many workers it
/// is short (`null` figures before the placement is on the stream).
fn buffers_json(model: &handlers::model::Model, policy: &handlers::Policy) -> Vec<Value> {
    let usage = handlers::buffer::Usage::of(model);
    policy
        .node_pools()
        .iter()
        .filter(|p| !p.buffer.is_empty())
        .map(|p| {
            let spare = handlers::buffer::spare(model, &usage, p);
            json!({
                "pool": p.name,
                "nodes": p.buffer.nodes,
                "cpu_millis": p.buffer.cpu_millis,
                "memory_bytes": p.buffer.memory_bytes,
                "spare_nodes": spare.map(|s| s.nodes),
                "free_cpu_millis": spare.map(|s| s.free.cpu_millis),
                "free_memory_bytes": spare.map(|s| s.free.memory_bytes),
                "short": spare.map(|s| handlers::buffer::shortfall(p, &s)),
            })
        })
        .collect()
}

/// The open windows of scheduled minimums, with the minimum each scope has while they last.
fn schedules_json(model: &handlers::model::Model, policy: &handlers::Policy) -> Vec<Value> {
    model
        .schedules
        .open
        .iter()
        .map(|(key, w)| {
            let min = match &w.pool {
                None => model.schedules.cluster_min(policy),
                Some(p) => model.schedules.pool_min(policy, p),
            };
            json!({
                "schedule": key,
                "pool": w.pool,
                "min_nodes": w.min_nodes,
                "min_in_effect": min,
                "window_start": bus::envelope::format_timestamp(w.start),
                "window_end": bus::envelope::format_timestamp(w.end),
            })
        })
        .collect()
}

/// The workers the record (the model folded from the stream) holds, gone ones left out.
/// Warm workers (stopped, kept for their pool's next scale-up) are listed as `warm`.
fn record_workers(model: &handlers::model::Model) -> Vec<Value> {
    model
        .workers
        .values()
        .filter(|w| !w.state.is_gone() || w.warm)
        .map(|w| {
            let state = if w.warm && w.state.is_gone() {
                "warm".to_string()
            } else {
                crate::runtime::run::state_label(w.state)
            };
            json!({"name": w.name, "state": state, "since": bus::envelope::format_timestamp(w.since)})
        })
        .collect()
}

fn group_json(g: &bus::GroupInfo) -> Value {
    json!({
        "name": g.name,
        "pending": g.pending,
        "lag": g.lag,
        "consumers": g.consumers.iter().map(|c| json!({"name": c.name, "pending": c.pending, "idle_ms": c.idle_ms})).collect::<Vec<_>>(),
    })
}

/// The human form of the status document.
pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    let names = |v: &Value| -> String {
        match v.as_array() {
            None => "unavailable".into(),
            Some(a) if a.is_empty() => "none".into(),
            Some(a) => a
                .iter()
                .map(|w| {
                    let name = w["name"].as_str().unwrap_or("?");
                    let state = w["state"].as_str().or(w["ready"].as_str()).unwrap_or("");
                    format!("{name}({state})")
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    };
    let count = |v: &Value| {
        v.as_array()
            .map(|a| a.len().to_string())
            .unwrap_or_else(|| "-".into())
    };
    out.push_str(&format!(
        "cluster {}   limits {}..={}{}\n",
        doc["cluster_id"].as_str().unwrap_or("?"),
        doc["limits"]["min_nodes"],
        doc["limits"]["max_nodes"],
        if doc["dry_run"].as_bool() == Some(true) {
            "   DRY RUN"
        } else {
            ""
        }
    ));
    let w = &doc["workers"];
    out.push_str(&format!(
        "workers  kubernetes {:>2}: {}\n",
        count(&w["kubernetes"]),
        names(&w["kubernetes"])
    ));
    out.push_str(&format!(
        "         docker     {:>2}: {}\n",
        count(&w["docker"]),
        names(&w["docker"])
    ));
    // With several engines, the docker line again by host.
    if let Some(ws) = w["docker"].as_array() {
        let mut by_host: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for x in ws {
            by_host
                .entry(x["host"].as_str().unwrap_or("?"))
                .or_default()
                .push(x["name"].as_str().unwrap_or("?"));
        }
        if by_host
            .keys()
            .any(|h| *h != crate::config::DEFAULT_DOCKER_HOST_NAME)
        {
            for (host, names) in by_host {
                out.push_str(&format!(
                    "           on {host:<7} {:>2}: {}\n",
                    names.len(),
                    names.join(" ")
                ));
            }
        }
    }
    out.push_str(&format!(
        "         record     {:>2}: {}\n",
        count(&w["record"]),
        names(&w["record"])
    ));
    match doc["leader"]["replica"].as_str() {
        Some(r) => out.push_str(&format!(
            "leader   {r} (fencing token {})\n",
            doc["leader"]["fencing_token"].as_str().unwrap_or("?")
        )),
        None => out.push_str("leader   none\n"),
    }
    if let Some(groups) = doc["groups"].as_array() {
        for g in groups {
            out.push_str(&format!(
                "group    {:<22} pending {:>4}  lag {:>4}  consumers {}\n",
                g["name"].as_str().unwrap_or("?"),
                g["pending"],
                if g["lag"].is_null() {
                    "?".to_string()
                } else {
                    g["lag"].to_string()
                },
                g["consumers"].as_array().map(|c| c.len()).unwrap_or(0)
            ));
        }
    }
    out.push_str(&format!("dead letters {}\n", doc["dlq_length"]));
    let line = |label: &str, e: &Value| -> String {
        if e.is_null() {
            return format!("{label} none\n");
        }
        format!(
            "{label} {} {} {} ({})\n",
            e["timestamp"].as_str().unwrap_or(""),
            e["event_type"].as_str().unwrap_or(""),
            e["data"],
            e["event_id"].as_str().unwrap_or("")
        )
    };
    out.push_str(&line("last decision", &doc["last_decision"]));
    out.push_str(&line("last blocked ", &doc["last_blocked"]));
    for b in doc["backoff"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "backoff  pool {} {}: {} failed create(s), no create before {} ({})\n",
            b["pool"].as_str().unwrap_or("?"),
            b["reason"].as_str().unwrap_or("?"),
            b["failures"],
            b["until"].as_str().unwrap_or("?"),
            b["error"].as_str().unwrap_or("")
        ));
    }
    for b in doc["buffers"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "buffer   pool {}: {} spare worker(s) of {} asked, {} m CPU / {} B memory free, short {}\n",
            b["pool"].as_str().unwrap_or("?"),
            b["spare_nodes"],
            b["nodes"],
            b["free_cpu_millis"],
            b["free_memory_bytes"],
            b["short"],
        ));
    }
    for w in doc["schedules"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "schedule {} ({}): min_nodes {} until {}\n",
            w["schedule"].as_str().unwrap_or("?"),
            w["pool"].as_str().unwrap_or("cluster"),
            w["min_in_effect"],
            w["window_end"].as_str().unwrap_or("?"),
        ));
    }
    if let Some(errors) = doc["errors"].as_array() {
        for e in errors {
            out.push_str(&format!("unavailable: {}\n", e.as_str().unwrap_or("")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_backing_off_is_shown_with_its_reason_and_deadline() {
        let doc = json!({
            "cluster_id": "lab",
            "limits": {"min_nodes": 1, "max_nodes": 3},
            "workers": {},
            "leader": {},
            "dlq_length": 0,
            "last_decision": null,
            "last_blocked": null,
            "backoff": [{"pool": "default", "failures": 2, "reason": "provider_unavailable",
                "until": "2026-12-03T10:30:59.000Z", "error": "provider_unavailable: circuit open"}],
        });
        let text = render(&doc);
        assert!(
            text.contains("backoff  pool default provider_unavailable: 2 failed create(s), no create before 2026-12-03T10:30:59.000Z"),
            "{text}"
        );
    }

    #[test]
    fn with_several_engines_the_workers_are_shown_by_host() {
        let workers = |docker: Value| {
            json!({
                "cluster_id": "lab",
                "limits": {"min_nodes": 1, "max_nodes": 3},
                "workers": {"docker": docker},
                "leader": {},
                "dlq_length": 0,
                "last_decision": null,
                "last_blocked": null,
            })
        };
        let text = render(&workers(json!([
            {"name": "w-general-1", "state": "running", "host": "default"},
            {"name": "w-edge-1", "state": "running", "host": "edge"},
            {"name": "w-edge-2", "state": "running", "host": "edge"},
        ])));
        assert!(text.contains("on default  1: w-general-1"), "{text}");
        assert!(text.contains("on edge     2: w-edge-1 w-edge-2"), "{text}");
        let one = render(&workers(json!([
            {"name": "w-1", "state": "running", "host": "default"},
        ])));
        assert!(!one.contains(" on "), "one engine: no by-host lines\n{one}");
    }
}
