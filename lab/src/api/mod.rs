//! The HTTP API: one axum fallback handler decodes the path ([`path`]), checks the bearer token, and
//! dispatches to discovery ([`discovery`]), the verbs ([`verbs`]) or a watch ([`watch`]). The parts:
//! [`path`] (what a path addresses), [`discovery`], [`verbs`] (get, list, create, update, patch, delete,
//! eviction, scale), [`watch`], [`table`] (what `kubectl get` prints), [`status`] (errors as `Status`),
//! [`openapi`] (the minimal spec kubectl validates with), [`metrics`] (`metrics.k8s.io`).

pub mod discovery;
pub mod metrics;
pub mod openapi;
pub mod path;
pub mod status;
pub mod table;
pub mod verbs;
pub mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;

use crate::store::Store;
use path::Route;
use status::ApiError;

/// What every request handler shares.
pub struct ApiState {
    /// The objects.
    pub store: Arc<Store>,
    /// The bearer token clients must present, if any.
    pub token: Option<String>,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Serialises evictions, so two cannot both spend a PDB's last allowed disruption.
    pub eviction_lock: Mutex<()>,
    /// Cancelled on shutdown: open watches end so the HTTP server can stop.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The router serving the whole API.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// Where computed metrics are served.
const METRICS_PREFIX: &str = "/apis/metrics.k8s.io/v1beta1/";

/// The query parameters of a request.
pub type Params = HashMap<String, String>;

async fn dispatch(
    State(state): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(token) = &state.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_str()) {
            return ApiError::new(401, "Unauthorized", "Unauthorized").into_response();
        }
    }
    let params: Params = Query::try_from_uri(&uri)
        .map(|q: Query<Params>| q.0)
        .unwrap_or_default();
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let route = path::route(uri.path());
    tracing::debug!(%method, path = uri.path(), "request");
    let result = match (&method, route) {
        (&Method::GET, Route::Version) => Ok(json(discovery::version())),
        (&Method::GET, Route::Health) => Ok((StatusCode::OK, "ok").into_response()),
        (&Method::GET, Route::CoreVersions) => Ok(json(discovery::core_versions())),
        (&Method::GET, Route::Groups) => Ok(json(discovery::group_list())),
        (&Method::GET, Route::Group(g)) => discovery::group(&g)
            .map(json)
            .ok_or_else(|| ApiError::not_found("the server could not find the requested resource")),
        (&Method::GET, Route::ResourceList { group, version })
            if group == metrics::GROUP && version == metrics::VERSION =>
        {
            Ok(json(metrics::resource_list()))
        }
        (&Method::GET, Route::Unknown) if uri.path().starts_with(METRICS_PREFIX) => {
            let rest: Vec<&str> = uri.path()[METRICS_PREFIX.len()..]
                .split('/')
                .filter(|s| !s.is_empty())
                .collect();
            metrics::get(&state.store, &rest).map(json)
        }
        (&Method::GET, Route::ResourceList { group, version }) => {
            discovery::resource_list(&group, &version)
                .map(json)
                .ok_or_else(|| {
                    ApiError::not_found("the server could not find the requested resource")
                })
        }
        (_, Route::Resource(target)) => {
            let req = verbs::Request {
                target,
                params,
                accept,
                content_type,
                body,
            };
            verbs::handle(&state, &method, req).await
        }
        (&Method::GET, Route::Unknown) if uri.path().trim_end_matches('/') == "/openapi/v3" => {
            Ok(json(openapi::index()))
        }
        (&Method::GET, Route::Unknown) if uri.path().starts_with("/openapi/v3/") => {
            openapi::document(uri.path()).map(json).ok_or_else(|| {
                ApiError::not_found("the server could not find the requested resource")
            })
        }
        _ => Err(ApiError::not_found(
            "the server could not find the requested resource",
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A 200 JSON reply.
pub fn json(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// A JSON reply with a status code.
pub fn json_code(code: u16, v: Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        axum::Json(v),
    )
        .into_response()
}
