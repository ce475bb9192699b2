//! The HTTP port: `/metrics` (Prometheus), `/healthz` (the process serves), `/readyz` (started, and
//! Redis and the Docker engine answer: [`crate::readiness`]), `/status` (the same JSON as
//! `autoscaler status --json`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// Produces the `/status` document on demand.
pub type StatusFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = serde_json::Value> + Send>> + Send + Sync>;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// Started, and Redis and the Docker engine reachable.
    pub ready: Arc<Readiness>,
    pub status: StatusFn,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(s): State<HttpState>) -> Response {
    let why = s.ready.why_not();
    if why.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join(", ")),
        )
            .into_response()
    }
}

async fn status(State(s): State<HttpState>) -> Response {
    axum::Json((s.status)().await).into_response()
}

/// Serves until `shutdown` resolves. Returns the bound address through `bound` (port 0 picks one).
pub async fn serve(
    listen: SocketAddr,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "http: serving /metrics /healthz /readyz /status");
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
