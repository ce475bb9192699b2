//! Server-side printing: `kubectl get` asks for `as=Table` and prints the rows it gets.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::objects::{condition_status, node_is_ready};
use crate::resources::Kind;
use crate::time::age;

/// Whether the `Accept` header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

fn col(name: &str, ty: &str, priority: u8) -> Value {
    json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": name, "priority": priority})
}

/// A Table of `items` of `kind`, each row carrying its whole object.
pub fn table(kind: Kind, items: &[Arc<Value>], rv: u64) -> Value {
    let columns = columns(kind);
    let rows: Vec<Value> = items
        .iter()
        .map(|o| json!({"cells": cells(kind, o), "object": **o}))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn columns(kind: Kind) -> Vec<Value> {
    if kind == Kind::Event {
        return vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
            col("Name", "string", 1),
        ];
    }
    let mut c = vec![col("Name", "string", 0)];
    match kind {
        Kind::Node => c.extend([
            col("Status", "string", 0),
            col("Roles", "string", 0),
            col("Age", "string", 0),
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
        ]),
        Kind::Pod => c.extend([
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            col("Age", "string", 0),
            col("IP", "string", 1),
            col("Node", "string", 1),
        ]),
        Kind::Deployment => c.extend([
            col("Ready", "string", 0),
            col("Up-to-date", "string", 0),
            col("Available", "string", 0),
            col("Age", "string", 0),
        ]),
        Kind::ReplicaSet => c.extend([
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Age", "string", 0),
        ]),
        Kind::PodDisruptionBudget => c.extend([
            col("Min Available", "string", 0),
            col("Max Unavailable", "string", 0),
            col("Allowed Disruptions", "integer", 0),
            col("Age", "string", 0),
        ]),
        Kind::Secret => c.extend([
            col("Type", "string", 0),
            col("Data", "integer", 0),
            col("Age", "string", 0),
        ]),
        Kind::Lease => c.extend([col("Holder", "string", 0), col("Age", "string", 0)]),
        Kind::Namespace => c.extend([col("Status", "string", 0), col("Age", "string", 0)]),
        _ => c.push(col("Age", "string", 0)),
    }
    c
}

fn text(v: &Value) -> Value {
    match v {
        Value::String(s) => json!(s),
        Value::Number(n) => json!(n.to_string()),
        _ => json!("<none>"),
    }
}

fn cells(kind: Kind, o: &Value) -> Vec<Value> {
    let name = json!(o["metadata"]["name"]);
    let created = age(o["metadata"]["creationTimestamp"].as_str().unwrap_or(""));
    let int = |v: &Value| json!(v.as_i64().unwrap_or(0));
    match kind {
        Kind::Node => node_cells(o, name, created),
        Kind::Pod => pod_cells(o, name, created),
        Kind::Deployment => deployment_cells(o, name, created),
        Kind::ReplicaSet => vec![
            name,
            int(&o["spec"]["replicas"]),
            int(&o["status"]["replicas"]),
            int(&o["status"]["readyReplicas"]),
            json!(created),
        ],
        Kind::PodDisruptionBudget => pdb_cells(o, name, created),
        Kind::Secret => vec![
            name,
            text(&o["type"]),
            json!(o["data"].as_object().map_or(0, |m| m.len())),
            json!(created),
        ],
        Kind::Lease => vec![name, text(&o["spec"]["holderIdentity"]), json!(created)],
        Kind::Namespace => vec![
            name,
            json!(o["status"]["phase"].as_str().unwrap_or("Active")),
            json!(created),
        ],
        Kind::Event => event_cells(o, name),
        _ => vec![name, json!(created)],
    }
}

fn node_cells(o: &Value, name: Value, created: String) -> Vec<Value> {
    let mut status = if node_is_ready(o) {
        "Ready".to_string()
    } else if condition_status(o, "Ready").is_some() {
        "NotReady".into()
    } else {
        "Unknown".into()
    };
    if o["spec"]["unschedulable"].as_bool().unwrap_or(false) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<&str> = o["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect()
        })
        .unwrap_or_default();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let ip = o["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .map(|x| text(&x["address"]))
        .unwrap_or(json!("<none>"));
    vec![
        name,
        json!(status),
        json!(roles),
        json!(created),
        text(&o["status"]["nodeInfo"]["kubeletVersion"]),
        ip,
    ]
}

fn pod_cells(o: &Value, name: Value, created: String) -> Vec<Value> {
    let containers = o["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = o["status"]["containerStatuses"].as_array().map_or(0, |a| {
        a.iter()
            .filter(|c| c["ready"].as_bool().unwrap_or(false))
            .count()
    });
    let status = if !o["metadata"]["deletionTimestamp"].is_null() {
        "Terminating".to_string()
    } else {
        o["status"]["phase"]
            .as_str()
            .unwrap_or("Pending")
            .to_string()
    };
    let node = if o["spec"]["nodeName"].is_string() {
        text(&o["spec"]["nodeName"])
    } else {
        json!("<none>")
    };
    vec![
        name,
        json!(format!("{ready}/{containers}")),
        json!(status),
        json!("0"),
        json!(created),
        text(&o["status"]["podIP"]),
        node,
    ]
}

fn deployment_cells(o: &Value, name: Value, created: String) -> Vec<Value> {
    let want = o["spec"]["replicas"].as_i64().unwrap_or(1);
    let ready = o["status"]["readyReplicas"].as_i64().unwrap_or(0);
    vec![
        name,
        json!(format!("{ready}/{want}")),
        json!(o["status"]["updatedReplicas"]
            .as_i64()
            .unwrap_or(0)
            .to_string()),
        json!(o["status"]["availableReplicas"]
            .as_i64()
            .unwrap_or(0)
            .to_string()),
        json!(created),
    ]
}

fn pdb_cells(o: &Value, name: Value, created: String) -> Vec<Value> {
    let bound = |v: &Value| {
        if v.is_null() {
            json!("N/A")
        } else {
            text(v)
        }
    };
    vec![
        name,
        bound(&o["spec"]["minAvailable"]),
        bound(&o["spec"]["maxUnavailable"]),
        json!(o["status"]["disruptionsAllowed"].as_i64().unwrap_or(0)),
        json!(created),
    ]
}

fn event_cells(o: &Value, name: Value) -> Vec<Value> {
    let involved = &o["involvedObject"];
    let object = format!(
        "{}/{}",
        involved["kind"].as_str().unwrap_or("").to_lowercase(),
        involved["name"].as_str().unwrap_or("")
    );
    vec![
        json!(age(o["lastTimestamp"].as_str().unwrap_or(""))),
        text(&o["type"]),
        text(&o["reason"]),
        json!(object),
        text(&o["message"]),
        name,
    ]
}
