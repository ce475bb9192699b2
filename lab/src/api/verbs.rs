//! The verbs on collections, objects and subresources: get, list, create, update, patch, delete,
//! deletecollection, eviction and scale. Watches go to [`super::watch`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::Method;
use axum::response::Response;
use serde_json::{json, Value};

use super::status::{success, ApiError};
use super::{json as ok_json, json_code, table, watch, ApiState, Params};
use crate::disruption;
use crate::patch;
use crate::resources::{Kind, RESOURCES};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Store, StoreError};
use crate::{defaults, objects};

/// A decoded request for a resource.
pub struct Request {
    /// What it addresses.
    pub target: super::path::Target,
    /// Query parameters.
    pub params: Params,
    /// The `Accept` header.
    pub accept: String,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body.
    pub body: Bytes,
}

/// Dispatches a resource request by method and target shape.
pub async fn handle(
    state: &Arc<ApiState>,
    method: &Method,
    req: Request,
) -> Result<Response, ApiError> {
    let t = &req.target;
    let info = t.kind.info();
    let ns = if info.namespaced {
        t.namespace.clone().unwrap_or_default()
    } else {
        String::new()
    };
    if info.namespaced && t.name.is_some() && t.namespace.is_none() {
        return Err(ApiError::not_found(
            "the server could not find the requested resource",
        ));
    }
    let store = &state.store;
    let name = t.name.clone();
    let sub = t.subresource.as_deref();
    match (method.clone(), name, sub) {
        (Method::GET, None, None) => list_or_watch(state, &req),
        (Method::GET, Some(name), None | Some("status")) => get_object(store, &ns, &name, &req),
        (Method::GET, Some(name), Some("scale")) => {
            Ok(ok_json(scale_of(&*get(store, t.kind, &ns, &name)?)))
        }
        (Method::POST, None, None) => create(store, t.kind, &ns, &req),
        (Method::POST, Some(name), Some("eviction")) if t.kind == Kind::Pod => {
            evict(state, &ns, &name)
        }
        (Method::PUT, Some(name), None | Some("status")) => put_object(store, &ns, &name, &req),
        (Method::PATCH, Some(name), None | Some("status")) => {
            patch_object(store, t.kind, &ns, &name, sub, &req)
        }
        (Method::PUT | Method::PATCH, Some(name), Some("scale")) => {
            update_scale(store, method, &ns, &name, &req)
        }
        (Method::DELETE, Some(name), None) => {
            let obj = delete(store, t.kind, &ns, &name)?;
            Ok(ok_json((*obj).clone()))
        }
        (Method::DELETE, None, None) => delete_collection(store, &req),
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// GET on a collection: a watch when asked for, else the list (or its Table).
fn list_or_watch(state: &Arc<ApiState>, req: &Request) -> Result<Response, ApiError> {
    let t = &req.target;
    let info = t.kind.info();
    let selectors = Selectors::from_params(&req.params)?;
    let ns_filter = t.namespace.as_deref().filter(|_| info.namespaced);
    if is_true(req.params.get("watch")) {
        return watch::serve(
            state,
            t.kind,
            ns_filter.map(String::from),
            selectors,
            &req.params,
            &req.accept,
        );
    }
    let (items, rv) = state.store.list(t.kind, ns_filter);
    let items: Vec<Arc<Value>> = items.into_iter().filter(|o| selectors.matches(o)).collect();
    if table::wants_table(&req.accept) {
        return Ok(ok_json(table::table(t.kind, &items, rv)));
    }
    Ok(ok_json(json!({
        "kind": format!("{}List", info.kind_name),
        "apiVersion": info.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items.iter().map(|o| (**o).clone()).collect::<Vec<_>>(),
    })))
}

/// GET on an object or its status.
fn get_object(store: &Store, ns: &str, name: &str, req: &Request) -> Result<Response, ApiError> {
    let kind = req.target.kind;
    let obj = get(store, kind, ns, name)?;
    if table::wants_table(&req.accept) {
        return Ok(ok_json(table::table(
            kind,
            &[obj],
            store.resource_version(),
        )));
    }
    Ok(ok_json((*obj).clone()))
}

/// PUT on an object or its status.
fn put_object(store: &Store, ns: &str, name: &str, req: &Request) -> Result<Response, ApiError> {
    let kind = req.target.kind;
    let sub = req.target.subresource.as_deref();
    let body = decode(req)?;
    let expected = body["metadata"]["resourceVersion"]
        .as_str()
        .map(String::from);
    let obj = store.update(kind, ns, name, expected.as_deref(), |old| {
        Ok(merge_subresource(kind, old, body, sub))
    })?;
    Ok(ok_json((*obj).clone()))
}

/// PUT or PATCH on the `scale` subresource: only `spec.replicas` is taken.
fn update_scale(
    store: &Store,
    method: &Method,
    ns: &str,
    name: &str,
    req: &Request,
) -> Result<Response, ApiError> {
    let kind = req.target.kind;
    let scale = get(store, kind, ns, name).map(|o| scale_of(&o))?;
    let new_scale = if *method == Method::PUT {
        decode(req)?
    } else {
        let mut s = scale.clone();
        apply_patch(&mut s, req)?;
        s
    };
    let replicas = new_scale["spec"]["replicas"].clone();
    let obj = store.update(kind, ns, name, None, |old| {
        let mut o = old.clone();
        o["spec"]["replicas"] = replicas;
        Ok(o)
    })?;
    Ok(ok_json(scale_of(&obj)))
}

/// DELETE on a collection: the selected objects that could be deleted.
fn delete_collection(store: &Store, req: &Request) -> Result<Response, ApiError> {
    let t = &req.target;
    let info = t.kind.info();
    let selectors = Selectors::from_params(&req.params)?;
    let (items, _) = store.list(t.kind, t.namespace.as_deref().filter(|_| info.namespaced));
    let mut deleted = Vec::new();
    for o in items.iter().filter(|o| selectors.matches(o)) {
        let o_ns = o["metadata"]["namespace"].as_str().unwrap_or("");
        let o_name = o["metadata"]["name"].as_str().unwrap_or("");
        if let Ok(d) = delete(store, t.kind, o_ns, o_name) {
            deleted.push((*d).clone());
        }
    }
    Ok(ok_json(json!({
        "kind": format!("{}List", info.kind_name),
        "apiVersion": info.api_version(),
        "metadata": {"resourceVersion": store.resource_version().to_string()},
        "items": deleted,
    })))
}

fn is_true(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("1") | Some("true"))
}

/// The label and field selectors of a list or watch.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Selectors {
    fn from_params(params: &Params) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Selectors { labels, fields })
    }

    /// Whether an object passes both.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

fn get(store: &Store, kind: Kind, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
    store.get(kind, ns, name).ok_or_else(|| {
        StoreError::NotFound {
            kind: kind.info().plural,
            name: name.to_string(),
        }
        .into()
    })
}

fn decode(req: &Request) -> Result<Value, ApiError> {
    let v: Value = if req.content_type.contains("yaml") {
        serde_yaml::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}")))?
    } else if req.content_type.contains("json") || req.content_type.is_empty() {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    } else {
        return Err(ApiError::unsupported_media(&req.content_type));
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the body is not an object"));
    }
    Ok(v)
}

fn create(store: &Store, kind: Kind, ns: &str, req: &Request) -> Result<Response, ApiError> {
    let mut obj = decode(req)?;
    let info = kind.info();
    if let Some(k) = obj["kind"].as_str() {
        if k != info.kind_name {
            return Err(ApiError::bad_request(format!(
                "the body's kind {k} is not {}",
                info.kind_name
            )));
        }
    }
    let mut ns = ns.to_string();
    if info.namespaced {
        let body_ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if ns.is_empty() {
            ns = if body_ns.is_empty() {
                "default".into()
            } else {
                body_ns
            };
        } else if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if store.get(Kind::Namespace, "", &ns).is_none() {
            return Err(StoreError::NotFound {
                kind: "namespaces",
                name: ns,
            }
            .into());
        }
    }
    defaults::apply(kind, &mut obj);
    defaults::validate(kind, &obj).map_err(StoreError::Invalid)?;
    if matches!(req.params.get("dryRun").map(String::as_str), Some("All")) {
        return Ok(json_code(201, obj));
    }
    let created = store.create(kind, &ns, obj)?;
    tracing::debug!(kind = info.kind_name, namespace = %ns, name = created["metadata"]["name"].as_str().unwrap_or(""), "created");
    Ok(json_code(201, (*created).clone()))
}

/// The object a write to the main resource or to `status` leaves: the main resource cannot change
/// `status` of kinds that have the subresource; `status` changes only `status`.
fn merge_subresource(kind: Kind, old: &Value, mut new: Value, sub: Option<&str>) -> Value {
    match sub {
        Some("status") => {
            let mut out = old.clone();
            out["status"] = new["status"].take();
            out
        }
        _ if kind.info().has_status => {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            new
        }
        _ => new,
    }
}

fn apply_patch(target: &mut Value, req: &Request) -> Result<(), ApiError> {
    let ct = req.content_type.split(';').next().unwrap_or("").trim();
    match ct {
        "application/merge-patch+json" => patch::merge_patch(target, &parse_json(&req.body)?),
        "application/strategic-merge-patch+json" => {
            patch::strategic_merge_patch(target, &parse_json(&req.body)?)
        }
        "application/json-patch+json" => patch::json_patch(target, &parse_json(&req.body)?)
            .map_err(|e| ApiError::new(422, "Invalid", e.0))?,
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            let p: Value = serde_yaml::from_slice(&req.body)
                .map_err(|e| ApiError::bad_request(format!("invalid apply patch: {e}")))?;
            patch::merge_patch(target, &p)
        }
        other => return Err(ApiError::unsupported_media(other)),
    }
    Ok(())
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid patch: {e}")))
}

fn patch_object(
    store: &Store,
    kind: Kind,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    req: &Request,
) -> Result<Response, ApiError> {
    let is_apply = req.content_type.starts_with("application/apply-patch");
    if is_apply && sub.is_none() && store.get(kind, ns, name).is_none() {
        let mut obj: Value = serde_yaml::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("invalid apply patch: {e}")))?;
        obj["metadata"]["name"] = json!(name);
        defaults::apply(kind, &mut obj);
        defaults::validate(kind, &obj).map_err(StoreError::Invalid)?;
        let created = store.create(kind, ns, obj)?;
        return Ok(json_code(201, (*created).clone()));
    }
    let mut failure: Option<ApiError> = None;
    let result = store.update(kind, ns, name, None, |old| {
        let mut new = old.clone();
        if let Err(e) = apply_patch(&mut new, req) {
            failure = Some(e);
            return Err(StoreError::Invalid(String::new()));
        }
        if new["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
            return Err(StoreError::Conflict {
                kind: kind.info().plural,
                name: name.to_string(),
            });
        }
        Ok(merge_subresource(kind, old, new, sub))
    });
    match (result, failure) {
        (_, Some(e)) => Err(e),
        (Ok(obj), None) => Ok(ok_json((*obj).clone())),
        (Err(e), None) => Err(e.into()),
    }
}

/// Deletes an object; a namespace takes its objects with it.
pub fn delete(store: &Store, kind: Kind, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
    if kind == Kind::Namespace {
        if name == "default" || name == "kube-system" {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("namespace \"{name}\" may not be deleted"),
            ));
        }
        for r in RESOURCES.iter().filter(|r| r.namespaced) {
            for o in store.list(r.kind, Some(name)).0 {
                let _ = store.delete(r.kind, name, o["metadata"]["name"].as_str().unwrap_or(""));
            }
        }
    }
    Ok(store.delete(kind, ns, name)?)
}

fn scale_of(obj: &Value) -> Value {
    let selector = crate::controllers::selector_string(&obj["spec"]["selector"]);
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// The Eviction API: deletes the pod unless a PodDisruptionBudget forbids it (429).
fn evict(state: &ApiState, ns: &str, name: &str) -> Result<Response, ApiError> {
    let store = &state.store;
    let _serial = state
        .eviction_lock
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let pod = get(store, Kind::Pod, ns, name)?;
    let (pdbs, _) = store.list(Kind::PodDisruptionBudget, Some(ns));
    let (pods, _) = store.list(Kind::Pod, Some(ns));
    for pdb in pdbs.iter().filter(|p| disruption::selects(p, &pod)) {
        let budget = disruption::evaluate(pdb, &pods);
        if !disruption::allows(&budget, &pod) {
            let pdb_name = pdb["metadata"]["name"].as_str().unwrap_or("");
            let mut e = ApiError::new(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
            );
            e.details = Some(json!({"causes": [{
                "reason": "DisruptionBudget",
                "message": format!("The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                    budget.desired_healthy, budget.current_healthy),
            }]}));
            tracing::info!(
                pod = name,
                namespace = ns,
                pdb = pdb_name,
                "eviction refused by disruption budget"
            );
            return Err(e);
        }
    }
    store.delete(Kind::Pod, ns, name)?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    tracing::info!(
        pod = name,
        namespace = ns,
        node,
        ready = objects::pod_is_ready(&pod),
        "evicted"
    );
    Ok(json_code(201, success(201)))
}
