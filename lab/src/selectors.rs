//! Label selectors (`a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, and `metav1.LabelSelector`
//! objects), node selectors (required node affinity's `nodeSelectorTerms`) and field selectors
//! (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`, `spec.unschedulable`, …).

use serde_json::Value;

/// A parsed label selector: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    /// The label parses as an integer greater than this (node selectors only).
    Gt(String, i64),
    /// The label parses as an integer less than this (node selectors only).
    Lt(String, i64),
    /// From an invalid expression: as kube's selector conversion fails, nothing is selected.
    Nothing,
}

impl Requirement {
    /// Whether the requirement holds, `get` reading a label (or field) value.
    fn holds<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        let int = |k: &str| get(k).and_then(|l| l.parse::<i64>().ok());
        match self {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Gt(k, n) => int(k).is_some_and(|l| l > *n),
            Requirement::Lt(k, n) => int(k).is_some_and(|l| l < *n),
            Requirement::Nothing => false,
        }
    }
}

/// Which operators a `matchExpressions` list may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operators {
    /// `metav1.LabelSelector`: In, NotIn, Exists, DoesNotExist.
    Label,
    /// `v1.NodeSelectorRequirement`: those and Gt, Lt.
    Node,
}

/// One `{key, operator, values}` expression, checked as the API server validates it.
fn parse_expression(e: &Value, ops: Operators) -> Result<Requirement, SelectorError> {
    let key = e["key"].as_str().unwrap_or("").to_string();
    let op = e["operator"].as_str().unwrap_or("");
    let values: Vec<String> = e["values"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let err = |why: &str| SelectorError(format!("{key} {op}: {why}"));
    if key.is_empty() {
        return Err(err("key is required"));
    }
    match op {
        "In" | "NotIn" if values.is_empty() => Err(err("values must be non-empty")),
        "In" => Ok(Requirement::In(key, values)),
        "NotIn" => Ok(Requirement::NotIn(key, values)),
        "Exists" | "DoesNotExist" if !values.is_empty() => Err(err("values must be empty")),
        "Exists" => Ok(Requirement::Exists(key)),
        "DoesNotExist" => Ok(Requirement::NotExists(key)),
        "Gt" | "Lt" if ops == Operators::Node => {
            let n = match values.as_slice() {
                [v] => v
                    .parse::<i64>()
                    .map_err(|_| err("value must be an integer"))?,
                _ => return Err(err("needs exactly one value")),
            };
            Ok(if op == "Gt" {
                Requirement::Gt(key, n)
            } else {
                Requirement::Lt(key, n)
            })
        }
        _ => Err(err("not a valid operator")),
    }
}

/// A list of expressions, all of which must parse.
fn parse_expressions(exprs: &Value, ops: Operators) -> Result<Vec<Requirement>, SelectorError> {
    exprs
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| parse_expression(e, ops))
        .collect()
}

/// A selector string that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(LabelSelector(reqs))
    }

    /// A `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`), as in PDBs, Deployments
    /// and pod affinity terms. An invalid expression makes it select nothing (kube rejects such
    /// objects; the lab does not validate them all).
    pub fn from_object(sel: &Value) -> Self {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Requirement::Eq(
                    k.clone(),
                    v.as_str().unwrap_or("").to_string(),
                ));
            }
        }
        match parse_expressions(&sel["matchExpressions"], Operators::Label) {
            Ok(exprs) => reqs.extend(exprs),
            Err(_) => reqs = vec![Requirement::Nothing],
        }
        LabelSelector(reqs)
    }

    /// Whether the selector selects nothing in particular (matches everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object's labels satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.0
            .iter()
            .all(|r| r.holds(|k| labels.get(k).and_then(Value::as_str)))
    }
}

/// A `v1.NodeSelector`, as in required node affinity: its `nodeSelectorTerms` are OR-ed; within a
/// term, `matchExpressions` on labels (In, NotIn, Exists, DoesNotExist, Gt, Lt) and `matchFields` on
/// `metadata.name` (In, NotIn, one value) are AND-ed. As in kube-scheduler, an empty term or one that
/// does not validate matches no node, so a selector with no valid term matches none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeSelector(Vec<NodeSelectorTerm>);

/// One term of a [`NodeSelector`].
#[derive(Debug, Clone, PartialEq)]
struct NodeSelectorTerm {
    /// `matchExpressions`, on the node's labels.
    labels: Vec<Requirement>,
    /// `matchFields`, on the node's name (the requirement's key is `metadata.name`).
    fields: Vec<Requirement>,
}

impl NodeSelector {
    /// Reads a `v1.NodeSelector` object (`{nodeSelectorTerms: [...]}`).
    pub fn from_object(sel: &Value) -> Self {
        let terms = sel["nodeSelectorTerms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| NodeSelectorTerm::parse(t).ok())
            .filter(|t| !t.labels.is_empty() || !t.fields.is_empty())
            .collect();
        NodeSelector(terms)
    }

    /// Whether some term matches the node's labels and name.
    pub fn matches(&self, node: &Value) -> bool {
        let labels = &node["metadata"]["labels"];
        let name = node["metadata"]["name"].as_str();
        self.0.iter().any(|term| {
            term.labels
                .iter()
                .all(|r| r.holds(|k| labels.get(k).and_then(Value::as_str)))
                && term
                    .fields
                    .iter()
                    .all(|r| r.holds(|f| if f == "metadata.name" { name } else { None }))
        })
    }
}

impl NodeSelectorTerm {
    fn parse(term: &Value) -> Result<Self, SelectorError> {
        let labels = parse_expressions(&term["matchExpressions"], Operators::Node)?;
        let mut fields = Vec::new();
        for f in term["matchFields"].as_array().into_iter().flatten() {
            let key = f["key"].as_str().unwrap_or("");
            if key != "metadata.name" {
                return Err(SelectorError(format!(
                    "matchFields: {key:?} is not a supported field"
                )));
            }
            match parse_expression(f, Operators::Label)? {
                r @ (Requirement::In(_, _) | Requirement::NotIn(_, _))
                    if f["values"].as_array().is_some_and(|v| v.len() == 1) =>
                {
                    fields.push(r)
                }
                _ => {
                    return Err(SelectorError(format!(
                        "matchFields {key}: only In and NotIn with one value"
                    )))
                }
            }
        }
        Ok(NodeSelectorTerm { labels, fields })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_requirement(part: &str) -> Result<Requirement, SelectorError> {
    let err = || SelectorError(part.to_string());
    if let Some(k) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(k.trim().to_string()));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEq(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = part.split_once("==") {
        return Ok(Requirement::Eq(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = part.split_once('=') {
        return Ok(Requirement::Eq(k.trim().into(), v.trim().into()));
    }
    let words: Vec<&str> = part.splitn(3, char::is_whitespace).map(str::trim).collect();
    if words.len() == 3 && (words[1] == "in" || words[1] == "notin") {
        let list = words[2]
            .trim()
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(err)?;
        let values = list
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        let key = words[0].to_string();
        return Ok(if words[1] == "in" {
            Requirement::In(key, values)
        } else {
            Requirement::NotIn(key, values)
        });
    }
    if words.len() == 1 && !part.contains(char::is_whitespace) {
        return Ok(Requirement::Exists(part.to_string()));
    }
    Err(err())
}

/// A parsed field selector: `path=value`, `path==value` or `path!=value`, comma-separated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, eq, value) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(SelectorError(part.to_string()));
            };
            out.push((path.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    /// Whether the object's fields satisfy every term. A missing field reads as `""`, or `false` for
    /// `spec.unschedulable`, as the API server's field labels do.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let mut v = obj;
            for seg in path.split('.') {
                v = &v[seg];
            }
            let have = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                Value::Null if path == "spec.unschedulable" => "false".into(),
                _ => String::new(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "n", "labels": labels}, "spec": {"nodeName": "w1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_selectors_cover_every_operator() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m("app=web"));
        assert!(m("app==web,tier=front"));
        assert!(!m("app!=web"));
        assert!(m("app in (web, api)"));
        assert!(!m("app notin (web)"));
        assert!(m("tier"));
        assert!(!m("!tier"));
        assert!(m("missing notin (x)"));
        assert!(m(""));
        assert!(LabelSelector::parse("a b c").is_err());
    }

    #[test]
    fn field_selectors_read_paths_and_defaults() {
        let o = obj(json!({}));
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&o);
        assert!(m("spec.nodeName=w1"));
        assert!(m("metadata.name=n,status.phase!=Pending"));
        assert!(!m("spec.nodeName="));
        assert!(m("spec.unschedulable=false"));
    }

    #[test]
    fn object_selectors_match_labels_and_expressions() {
        let sel = LabelSelector::from_object(&json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}));
        assert!(sel.matches(&obj(json!({"app": "web", "tier": "front"}))));
        assert!(!sel.matches(&obj(json!({"app": "web"}))));
    }

    #[test]
    fn invalid_object_selectors_select_nothing() {
        let o = obj(json!({"app": "web"}));
        for bad in [
            json!({"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]}),
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}),
            json!({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}),
        ] {
            assert!(!LabelSelector::from_object(&bad).matches(&o), "{bad}");
        }
        let not = json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]});
        assert!(LabelSelector::from_object(&not).matches(&o));
    }

    fn node(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}})
    }

    fn terms(terms: Value) -> NodeSelector {
        NodeSelector::from_object(&json!({ "nodeSelectorTerms": terms }))
    }

    #[test]
    fn node_selector_expressions_follow_kube_semantics() {
        let n = node("w1", json!({"disktype": "ssd", "cores": "8"}));
        let m = |op: &str, key: &str, values: Value| {
            terms(json!([{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]))
                .matches(&n)
        };
        assert!(m("In", "disktype", json!(["hdd", "ssd"])));
        assert!(!m("In", "missing", json!(["ssd"])));
        assert!(!m("NotIn", "disktype", json!(["ssd"])));
        assert!(
            m("NotIn", "missing", json!(["ssd"])),
            "an absent label is not in any set"
        );
        assert!(m("Exists", "disktype", json!(null)));
        assert!(!m("DoesNotExist", "disktype", json!(null)));
        assert!(m("DoesNotExist", "missing", json!(null)));
        assert!(m("Gt", "cores", json!(["4"])));
        assert!(!m("Gt", "cores", json!(["8"])));
        assert!(m("Lt", "cores", json!(["16"])));
        assert!(!m("Gt", "disktype", json!(["1"])), "a non-integer label");
        assert!(!m("Gt", "missing", json!(["1"])));
        assert!(!m("Gt", "cores", json!(["1", "2"])), "Gt takes one value");
        assert!(!m("Near", "cores", json!(["1"])));
    }

    #[test]
    fn node_selector_terms_are_ored_and_their_expressions_anded() {
        let n = node("w1", json!({"disktype": "ssd", "zone": "a"}));
        let ssd = json!({"key": "disktype", "operator": "In", "values": ["ssd"]});
        let zone_b = json!({"key": "zone", "operator": "In", "values": ["b"]});
        assert!(!terms(json!([{"matchExpressions": [ssd, zone_b]}])).matches(&n));
        assert!(
            terms(json!([{"matchExpressions": [zone_b]}, {"matchExpressions": [ssd]}])).matches(&n)
        );
        assert!(!terms(json!([])).matches(&n), "no terms match no node");
        assert!(
            !terms(json!([{}])).matches(&n),
            "an empty term matches no node"
        );
        let bad = json!({"key": "zone", "operator": "In", "values": []});
        assert!(
            terms(json!([{"matchExpressions": [bad]}, {"matchExpressions": [ssd]}])).matches(&n)
        );
    }

    #[test]
    fn node_selector_fields_match_the_node_name() {
        let field = |op: &str, v: &str| json!([{"matchFields": [{"key": "metadata.name", "operator": op, "values": [v]}]}]);
        assert!(terms(field("In", "w1")).matches(&node("w1", json!({}))));
        assert!(!terms(field("In", "w1")).matches(&node("w2", json!({}))));
        assert!(terms(field("NotIn", "w1")).matches(&node("w2", json!({}))));
        let other =
            json!([{"matchFields": [{"key": "spec.x", "operator": "In", "values": ["w1"]}]}]);
        assert!(!terms(other).matches(&node("w1", json!({}))));
    }
}
