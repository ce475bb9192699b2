//! The object store: every object as JSON, one global resourceVersion counter, and a bounded history of
//! changes that watches replay from.
//!
//! A `std::sync::Mutex` guards it: no lock is held across an `.await`, and every operation is a short
//! in-memory step.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::resources::Kind;
use crate::time::now_rfc3339;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Deleted (the event carries the last state).
    Deleted,
}

impl EventType {
    /// The `type` of a watch event.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history and sent to watchers.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// The object's kind.
    pub kind: Kind,
    /// Added, modified or deleted.
    pub event_type: EventType,
    /// The object after the change (before it, for a deletion, with the deletion's resourceVersion).
    pub object: Arc<Value>,
    /// The object before a modification: a selective watch turns a modification into ADDED or
    /// DELETED when the object starts or stops matching its selectors.
    pub previous: Option<Arc<Value>>,
}

/// Why a store operation failed; the API layer turns these into `Status` replies.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// No such object.
    #[error("{kind} \"{name}\" not found")]
    NotFound {
        /// Plural of the kind.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// Create of a name that exists.
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists {
        /// Plural of the kind.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// An update carried a stale resourceVersion.
    #[error("Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified; please apply your changes to the latest version and try again")]
    Conflict {
        /// Plural of the kind.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The object is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A watch asked for a version older than the kept history.
    #[error("too old resource version: {asked} ({oldest})")]
    Gone {
        /// The version asked for.
        asked: u64,
        /// The oldest version a watch can still start from.
        oldest: u64,
    },
}

/// `(namespace, name)`; the namespace is empty for cluster-scoped kinds.
pub type Key = (String, String);

struct Inner {
    /// The last resourceVersion handed out.
    rv: u64,
    /// Objects per kind, sorted by key so lists are stable.
    objects: HashMap<Kind, BTreeMap<Key, Arc<Value>>>,
    /// Recent changes, oldest first.
    history: VecDeque<Change>,
    /// Watches from a version below this get 410 Gone: changes after it were dropped from the history.
    oldest_watchable: u64,
}

/// The store shared by the API handlers and the controllers.
pub struct Store {
    inner: Mutex<Inner>,
    /// Every change, for live watches and for waking controllers.
    changes: broadcast::Sender<Change>,
    /// How many changes the history keeps.
    history_limit: usize,
}

impl Store {
    /// An empty store keeping the last `history_limit` changes for watches.
    pub fn new(history_limit: usize) -> Arc<Store> {
        let (changes, _) = broadcast::channel(4096);
        Arc::new(Store {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: HashMap::new(),
                history: VecDeque::new(),
                oldest_watchable: 0,
            }),
            changes,
            history_limit: history_limit.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// A receiver of every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// One object.
    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.lock()
            .objects
            .get(&kind)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
    }

    /// All objects of `kind` (in namespace `ns` when given) and the resourceVersion of the list.
    pub fn list(&self, kind: Kind, ns: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .get(&kind)
            .map(|m| {
                m.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default();
        (items, inner.rv)
    }

    /// Creates `obj`; fills in uid, resourceVersion, creationTimestamp, generation and a generated name.
    pub fn create(&self, kind: Kind, ns: &str, mut obj: Value) -> Result<Arc<Value>, StoreError> {
        let info = kind.info();
        if !obj.is_object() {
            return Err(StoreError::Invalid("the body is not an object".into()));
        }
        let mut inner = self.lock();
        let meta = obj
            .as_object_mut()
            .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| StoreError::Invalid("metadata is not an object".into()))?;
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            let prefix = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if prefix.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    info.kind_name
                )));
            }
            name = format!("{prefix}{}", random_suffix());
        }
        if !valid_name(&name) {
            return Err(StoreError::Invalid(format!(
                "{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
                info.kind_name
            )));
        }
        let key = (ns.to_string(), name.clone());
        if inner
            .objects
            .get(&kind)
            .is_some_and(|m| m.contains_key(&key))
        {
            return Err(StoreError::AlreadyExists {
                kind: info.plural,
                name,
            });
        }
        inner.rv += 1;
        let rv = inner.rv;
        meta.insert("name".into(), json!(name));
        if info.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), json!(info.api_version()));
            o.insert("kind".into(), json!(info.kind_name));
        }
        let obj = Arc::new(obj);
        inner
            .objects
            .entry(kind)
            .or_default()
            .insert(key, obj.clone());
        self.record(&mut inner, kind, EventType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// Replaces an object with what `f` makes of the current one. `f` sees the stored object and returns
    /// the new one; identity fields are kept, resourceVersion bumps, generation bumps when `spec`
    /// changed. If `expected_rv` is given and stale, fails with Conflict. An update that changes nothing
    /// is not recorded.
    pub fn update<F>(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        expected_rv: Option<&str>,
        f: F,
    ) -> Result<Arc<Value>, StoreError>
    where
        F: FnOnce(&Value) -> Result<Value, StoreError>,
    {
        let info = kind.info();
        let mut inner = self.lock();
        let key = (ns.to_string(), name.to_string());
        let current = inner
            .objects
            .get(&kind)
            .and_then(|m| m.get(&key))
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                kind: info.plural,
                name: name.to_string(),
            })?;
        let current_rv = current["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("");
        if let Some(want) = expected_rv.filter(|v| !v.is_empty()) {
            if want != current_rv {
                return Err(StoreError::Conflict {
                    kind: info.plural,
                    name: name.to_string(),
                });
            }
        }
        let mut new = f(&current)?;
        if !new.is_object() {
            return Err(StoreError::Invalid("the result is not an object".into()));
        }
        // Identity is the store's, whatever the body says.
        {
            let old_meta = &current["metadata"];
            if !new["metadata"].is_object() {
                new["metadata"] = json!({});
            }
            let meta = &mut new["metadata"];
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
            ] {
                match old_meta.get(field) {
                    Some(v) => meta[field] = v.clone(),
                    None => {
                        if let Some(m) = meta.as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
            meta["resourceVersion"] = json!(current_rv);
            new["apiVersion"] = json!(info.api_version());
            new["kind"] = json!(info.kind_name);
        }
        if new == *current {
            return Ok(current);
        }
        if new.get("spec") != current.get("spec") {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        inner.rv += 1;
        let rv = inner.rv;
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        let new = Arc::new(new);
        inner
            .objects
            .entry(kind)
            .or_default()
            .insert(key, new.clone());
        self.record(
            &mut inner,
            kind,
            EventType::Modified,
            new.clone(),
            Some(current),
        );
        Ok(new)
    }

    /// Deletes an object; returns its last state (with the deletion's resourceVersion).
    pub fn delete(&self, kind: Kind, ns: &str, name: &str) -> Result<Arc<Value>, StoreError> {
        let info = kind.info();
        let mut inner = self.lock();
        let key = (ns.to_string(), name.to_string());
        let removed = inner
            .objects
            .get_mut(&kind)
            .and_then(|m| m.remove(&key))
            .ok_or_else(|| StoreError::NotFound {
                kind: info.plural,
                name: name.to_string(),
            })?;
        inner.rv += 1;
        let mut last = (*removed).clone();
        last["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        let last = Arc::new(last);
        self.record(&mut inner, kind, EventType::Deleted, last.clone(), None);
        Ok(last)
    }

    /// The changes to `kind` after `from` still in the history, and a receiver for later ones,
    /// taken under one lock so nothing falls between them. `Gone` if changes after `from` were dropped.
    pub fn watch_from(
        &self,
        kind: Kind,
        from: u64,
    ) -> Result<(Vec<Change>, broadcast::Receiver<Change>), StoreError> {
        let inner = self.lock();
        if from < inner.oldest_watchable {
            return Err(StoreError::Gone {
                asked: from,
                oldest: inner.oldest_watchable,
            });
        }
        let past = inner
            .history
            .iter()
            .filter(|c| c.rv > from && c.kind == kind)
            .cloned()
            .collect();
        Ok((past, self.changes.subscribe()))
    }

    /// A snapshot of `kind` plus a receiver for changes after it, taken under one lock.
    pub fn snapshot_and_subscribe(
        &self,
        kind: Kind,
        ns: Option<&str>,
    ) -> (Vec<Arc<Value>>, u64, broadcast::Receiver<Change>) {
        let inner = self.lock();
        let items = inner
            .objects
            .get(&kind)
            .map(|m| {
                m.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default();
        (items, inner.rv, self.changes.subscribe())
    }

    fn record(
        &self,
        inner: &mut Inner,
        kind: Kind,
        event_type: EventType,
        object: Arc<Value>,
        previous: Option<Arc<Value>>,
    ) {
        let change = Change {
            rv: inner.rv,
            kind,
            previous,
            event_type,
            object,
        };
        inner.history.push_back(change.clone());
        while inner.history.len() > self.history_limit {
            if let Some(dropped) = inner.history.pop_front() {
                inner.oldest_watchable = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
    }
}

/// Five lowercase alphanumerics, like the suffixes Kubernetes generates.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_fills_identity_and_update_bumps_versions() {
        let store = Store::new(100);
        let pod = store
            .create(
                Kind::Pod,
                "default",
                json!({"metadata": {"name": "a"}, "spec": {"x": 1}}),
            )
            .unwrap();
        assert_eq!(pod["metadata"]["resourceVersion"], "1");
        assert_eq!(pod["metadata"]["namespace"], "default");
        assert_eq!(pod["kind"], "Pod");
        let same = store
            .update(Kind::Pod, "default", "a", None, |o| Ok(o.clone()))
            .unwrap();
        assert_eq!(
            same["metadata"]["resourceVersion"], "1",
            "a no-op update is not recorded"
        );
        let changed = store
            .update(Kind::Pod, "default", "a", Some("1"), |o| {
                let mut o = o.clone();
                o["spec"]["x"] = json!(2);
                Ok(o)
            })
            .unwrap();
        assert_eq!(changed["metadata"]["resourceVersion"], "2");
        assert_eq!(changed["metadata"]["generation"], 2);
        let stale = store.update(Kind::Pod, "default", "a", Some("1"), |o| Ok(o.clone()));
        assert!(matches!(stale, Err(StoreError::Conflict { .. })));
    }

    #[test]
    fn a_watch_from_before_the_kept_history_is_gone() {
        let store = Store::new(2);
        for i in 0..5 {
            store
                .create(
                    Kind::Secret,
                    "default",
                    json!({"metadata": {"name": format!("s{i}")}}),
                )
                .unwrap();
        }
        assert!(matches!(
            store.watch_from(Kind::Secret, 1),
            Err(StoreError::Gone { .. })
        ));
        let (past, _) = store.watch_from(Kind::Secret, 3).unwrap();
        assert_eq!(past.len(), 2);
    }

    #[test]
    fn generated_names_and_invalid_names() {
        let store = Store::new(10);
        let s = store
            .create(
                Kind::Secret,
                "default",
                json!({"metadata": {"generateName": "x-"}}),
            )
            .unwrap();
        assert!(s["metadata"]["name"].as_str().unwrap().starts_with("x-"));
        assert!(matches!(
            store.create(
                Kind::Secret,
                "default",
                json!({"metadata": {"name": "Bad_Name"}})
            ),
            Err(StoreError::Invalid(_))
        ));
    }
}
