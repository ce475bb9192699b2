//! Defaulting and validation on create, as the API server's admission would do for the fields the lab
//! and its clients read.

use serde_json::{json, Value};

use crate::objects::HOSTNAME_LABEL;
use crate::resources::Kind;
use crate::selectors::LabelSelector;

/// Fills in defaults for a new object of `kind`.
pub fn apply(kind: Kind, obj: &mut Value) {
    let set = |v: &mut Value, field: &str, default: Value| {
        if v.is_object() && v[field].is_null() {
            v[field] = default;
        }
    };
    match kind {
        Kind::Pod => {
            set(obj, "spec", json!({}));
            set(obj, "status", json!({}));
            let spec = &mut obj["spec"];
            set(spec, "restartPolicy", json!("Always"));
            set(spec, "schedulerName", json!("default-scheduler"));
            set(spec, "terminationGracePeriodSeconds", json!(30));
            set(spec, "dnsPolicy", json!("ClusterFirst"));
            set(&mut obj["status"], "phase", json!("Pending"));
        }
        Kind::Deployment => {
            set(obj, "spec", json!({}));
            let spec = &mut obj["spec"];
            set(spec, "replicas", json!(1));
            set(spec, "revisionHistoryLimit", json!(10));
            set(spec, "progressDeadlineSeconds", json!(600));
            set(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
            obj["status"] = json!({});
        }
        Kind::ReplicaSet => {
            set(obj, "spec", json!({}));
            set(&mut obj["spec"], "replicas", json!(1));
            obj["status"] = json!({"replicas": 0});
        }
        Kind::Namespace => {
            set(obj, "spec", json!({"finalizers": ["kubernetes"]}));
            obj["status"] = json!({"phase": "Active"});
        }
        Kind::Secret => set(obj, "type", json!("Opaque")),
        Kind::Node => {
            set(obj, "spec", json!({}));
            set(obj, "status", json!({}));
            // A kubelet labels its node so; the lab stands in for kubelets too, and hostname
            // anti-affinity and the autoscaler's simulation read it.
            if let Some(name) = obj["metadata"]["name"].as_str().map(String::from) {
                let meta = &mut obj["metadata"];
                set(meta, "labels", json!({}));
                set(&mut meta["labels"], HOSTNAME_LABEL, json!(name));
            }
        }
        Kind::PodDisruptionBudget => {
            obj["status"] = json!({"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0});
        }
        _ => {}
    }
}

/// Checks what the controllers rely on; the message is the `Invalid` Status's.
pub fn validate(kind: Kind, obj: &Value) -> Result<(), String> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    match kind {
        Kind::Deployment | Kind::ReplicaSet => {
            let what = kind.info().kind_name;
            let selector = &obj["spec"]["selector"];
            if !selector.is_object() {
                return Err(format!(
                    "{what}.apps \"{name}\" is invalid: spec.selector: Required value"
                ));
            }
            let template =
                json!({"metadata": {"labels": obj["spec"]["template"]["metadata"]["labels"]}});
            let sel = LabelSelector::from_object(selector);
            if sel.is_empty() || !sel.matches(&template) {
                return Err(format!(
                    "{what}.apps \"{name}\" is invalid: spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`"
                ));
            }
            if obj["spec"]["template"]["spec"]["containers"]
                .as_array()
                .is_none_or(Vec::is_empty)
            {
                return Err(format!("{what}.apps \"{name}\" is invalid: spec.template.spec.containers: Required value"));
            }
            Ok(())
        }
        Kind::Pod => {
            if obj["spec"]["containers"]
                .as_array()
                .is_none_or(Vec::is_empty)
            {
                return Err(format!(
                    "Pod \"{name}\" is invalid: spec.containers: Required value"
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
