//! A minimal OpenAPI v3: just enough for kubectl to see that the server validates fields itself
//! (`fieldValidation` on each kind's PATCH), so `kubectl create -f` needs no `--validate=false`.
//! kubectl then sends `fieldValidation=Strict`, which the lab accepts without checking.

use serde_json::{json, Map, Value};

use crate::resources::{groups, RESOURCES};

fn gv_path(group: &str) -> String {
    if group.is_empty() {
        "api/v1".to_string()
    } else {
        format!("apis/{group}/v1")
    }
}

/// `/openapi/v3`: the index of group-version documents.
pub fn index() -> Value {
    let mut paths = Map::new();
    for g in std::iter::once("").chain(groups()) {
        let p = gv_path(g);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=lab")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/<group>/v1`, if served.
pub fn document(path: &str) -> Option<Value> {
    let gv = path
        .trim_start_matches("/openapi/v3/")
        .trim_end_matches('/');
    let group = if gv == "api/v1" {
        ""
    } else {
        gv.strip_prefix("apis/")?.strip_suffix("/v1")?
    };
    let mut paths = Map::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        let prefix = format!("/{}", gv_path(group));
        let item = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind_name});
        paths.insert(
            item,
            json!({"patch": {
                "operationId": format!("patch{}", r.kind_name),
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                ],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes (lab)", "version": "v1.33.0"}, "paths": paths,
        "components": {"schemas": {}}}),
    )
}
