//! The patch types kubectl and kube send: JSON merge patch (RFC 7386), strategic merge patch (merge
//! patch plus merge-by-key for the few lists that have a merge key, and its `$` directives), and JSON
//! patch (RFC 6902).

use serde_json::{Map, Value};

/// A patch that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct PatchError(pub String);

/// RFC 7386: objects merge recursively, `null` deletes, anything else (lists too) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The merge key of the lists strategic merge patch merges by key rather than replacing.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "env" | "volumes" | "volumeMounts"
        | "imagePullSecrets" => Some("name"),
        "conditions" => Some("type"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

/// Strategic merge patch for the kinds served here: merge patch, except lists with a known merge key
/// merge element-wise (`$patch: delete` removes an element) and `$…` directive keys are dropped.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = patch.clone();
        p.remove("$patch");
        *target = strip_directives(&Value::Object(p));
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (merge_key(k), v) {
            (Some(key), Value::Array(items)) => {
                let existing = t.entry(k.clone()).or_insert_with(|| Value::Array(vec![]));
                if !existing.is_array() {
                    *existing = Value::Array(vec![]);
                }
                let Value::Array(list) = existing else {
                    continue;
                };
                for item in items {
                    let id = item.get(key).cloned();
                    let pos = id
                        .as_ref()
                        .and_then(|id| list.iter().position(|e| e.get(key) == Some(id)));
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            list.remove(i);
                        }
                        (None, true) => {}
                        (Some(i), false) => strategic_merge_patch(&mut list[i], item),
                        (None, false) => list.push(strip_directives(item)),
                    }
                }
            }
            (_, Value::Object(_)) => {
                strategic_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v)
            }
            _ => {
                t.insert(k.clone(), strip_directives(v));
            }
        }
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), PatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| PatchError("a JSON patch is a list of operations".into()))?;
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| PatchError("operation without path".into()))?;
        match op["op"].as_str().unwrap_or("") {
            "add" => add(target, path, op["value"].clone())?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                remove(target, path)?;
                add(target, path, op["value"].clone())?;
            }
            "move" => {
                let from = op["from"]
                    .as_str()
                    .ok_or_else(|| PatchError("move without from".into()))?;
                let v = remove(target, from)?;
                add(target, path, v)?;
            }
            "copy" => {
                let from = op["from"]
                    .as_str()
                    .ok_or_else(|| PatchError("copy without from".into()))?;
                let v = target
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| PatchError(format!("copy from missing path {from}")))?;
                add(target, path, v)?;
            }
            "test" => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(PatchError(format!("test failed at {path}")));
                }
            }
            other => {
                return Err(PatchError(format!(
                    "unknown JSON patch operation {other:?}"
                )))
            }
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> Result<(String, String), PatchError> {
    let i = path
        .rfind('/')
        .ok_or_else(|| PatchError(format!("bad path {path:?}")))?;
    let last = path[i + 1..].replace("~1", "/").replace("~0", "~");
    Ok((path[..i].to_string(), last))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let p = target
        .pointer_mut(&parent)
        .ok_or_else(|| PatchError(format!("missing path {parent}")))?;
    match p {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| PatchError(format!("bad index {last}")))?;
                if i > a.len() {
                    return Err(PatchError(format!("index {i} out of range")));
                }
                a.insert(i, value);
            }
        }
        _ => return Err(PatchError(format!("{parent} is not a container"))),
    }
    Ok(())
}

fn remove(target: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, last) = split_pointer(path)?;
    let missing = || PatchError(format!("missing path {path}"));
    match target.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| PatchError(format!("bad index {last}")))?;
            if i >= a.len() {
                return Err(missing());
            }
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_merges_maps_and_replaces_lists() {
        let mut node = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"taints": [{"key": "x"}]}});
        merge_patch(
            &mut node,
            &json!({"metadata": {"labels": {"b": null, "c": "3"}}, "spec": {"unschedulable": true, "taints": []}}),
        );
        assert_eq!(node["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        assert_eq!(node["spec"], json!({"unschedulable": true, "taints": []}));
    }

    #[test]
    fn strategic_patch_merges_keyed_lists_and_drops_directives() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        strategic_merge_patch(
            &mut pod,
            &json!({"$setElementOrder/containers": [{"name": "a"}],
                    "spec": {"containers": [{"name": "a", "image": "z"}, {"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(
            pod,
            json!({"spec": {"containers": [{"name": "a", "image": "z"}]}})
        );
    }

    #[test]
    fn json_patch_applies_operations_in_order() {
        let mut v = json!({"spec": {"taints": [{"key": "a"}]}});
        json_patch(
            &mut v,
            &json!([{"op": "add", "path": "/spec/taints/-", "value": {"key": "b"}},
                    {"op": "remove", "path": "/spec/taints/0"},
                    {"op": "add", "path": "/spec/unschedulable", "value": true},
                    {"op": "test", "path": "/spec/unschedulable", "value": true}]),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"spec": {"taints": [{"key": "b"}], "unschedulable": true}})
        );
        assert!(json_patch(&mut v, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
