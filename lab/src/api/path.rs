//! Decoding a request path into what it addresses.

use crate::resources::Kind;

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/version`.
    Version,
    /// `/healthz`, `/livez`, `/readyz`.
    Health,
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1` or `/apis/<group>/<version>`.
    ResourceList {
        /// Group ("" for core).
        group: String,
        /// Version.
        version: String,
    },
    /// A collection, object or subresource.
    Resource(Target),
    /// A group/version that exists with a resource that does not, or any other path.
    Unknown,
}

/// A collection (`name` None), an object, or an object's subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The kind addressed.
    pub kind: Kind,
    /// The namespace in the path (None: all namespaces, or a cluster-scoped kind).
    pub namespace: Option<String>,
    /// The object's name.
    pub name: Option<String>,
    /// `status`, `eviction`, `scale`, …
    pub subresource: Option<String>,
}

/// Decodes a path (without query).
pub fn route(path: &str) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz"] | ["livez"] | ["readyz"] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["apis", g] => Route::Group(g.to_string()),
        ["api", v] => Route::ResourceList {
            group: String::new(),
            version: v.to_string(),
        },
        ["apis", g, v] => Route::ResourceList {
            group: g.to_string(),
            version: v.to_string(),
        },
        ["api", v, rest @ ..] => resource("", v, rest),
        ["apis", g, v, rest @ ..] => resource(g, v, rest),
        _ => Route::Unknown,
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Route {
    let (namespace, rest) = match rest {
        // `/api/v1/namespaces/<ns>/<plural>…`; `/api/v1/namespaces/<ns>` is the namespace itself.
        ["namespaces", ns, plural, tail @ ..]
            if Kind::from_path(group, version, plural).is_some() =>
        {
            (Some(ns.to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        _ => (None, rest.to_vec()),
    };
    let Some(kind) = rest
        .first()
        .and_then(|p| Kind::from_path(group, version, p))
    else {
        return Route::Unknown;
    };
    if rest.len() > 3 {
        return Route::Unknown;
    }
    Route::Resource(Target {
        kind,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: Kind, ns: Option<&str>, name: Option<&str>, sub: Option<&str>) -> Route {
        Route::Resource(Target {
            kind,
            namespace: ns.map(String::from),
            name: name.map(String::from),
            subresource: sub.map(String::from),
        })
    }

    #[test]
    fn paths_decode_to_their_targets() {
        assert_eq!(route("/api/v1/nodes"), target(Kind::Node, None, None, None));
        assert_eq!(
            route("/api/v1/nodes/w1/status"),
            target(Kind::Node, None, Some("w1"), Some("status"))
        );
        assert_eq!(
            route("/api/v1/namespaces/default"),
            target(Kind::Namespace, None, Some("default"), None)
        );
        assert_eq!(
            route("/api/v1/namespaces"),
            target(Kind::Namespace, None, None, None)
        );
        assert_eq!(
            route("/api/v1/namespaces/default/pods/p/eviction"),
            target(Kind::Pod, Some("default"), Some("p"), Some("eviction"))
        );
        assert_eq!(
            route("/apis/apps/v1/namespaces/x/deployments"),
            target(Kind::Deployment, Some("x"), None, None)
        );
        assert_eq!(
            route("/apis/apps/v1/deployments"),
            target(Kind::Deployment, None, None, None)
        );
        assert_eq!(
            route("/apis/policy/v1"),
            Route::ResourceList {
                group: "policy".into(),
                version: "v1".into()
            }
        );
        assert_eq!(route("/apis/nope/v1/things"), Route::Unknown);
        assert_eq!(route("/openapi/v2"), Route::Unknown);
    }
}
