//! The decision core's I/O traits (`handlers::traits`) implemented on the real adapters: Docker for
//! workers, Kubernetes for nodes, webhooks for alerts.

use std::sync::Arc;
use std::time::Duration;

use handlers::alerts::{payload, Alert, Format};
use handlers::traits::{ActionError, NodeOps, Notifier, WorkerPool};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

use crate::docker::DockerWorkerPool;
use crate::intents::Intents;
use crate::kube::KubeNodeOps;

/// How long our own removal of a node silences the watchers (drain + stop + delete).
const REMOVAL_INTENT: Duration = Duration::from_secs(600);

/// Workers through the Docker pool (its own `WorkerPool` implementation, warm-pool aware), recording
/// our removals so the watchers do not report them.
pub struct DockerWorkers {
    pub pool: Arc<DockerWorkerPool>,
    pub intents: Intents,
}

impl WorkerPool for DockerWorkers {
    async fn create_worker(&self, name: &str, pool: &str) -> Result<String, ActionError> {
        WorkerPool::create_worker(self.pool.as_ref(), name, pool).await
    }

    async fn remove_worker(&self, name: &str) -> Result<(), ActionError> {
        self.intents.removing(name, REMOVAL_INTENT);
        WorkerPool::remove_worker(self.pool.as_ref(), name).await
    }
}

/// Nodes through the Kubernetes API.
pub struct KubeNodes {
    pub ops: KubeNodeOps,
    pub intents: Intents,
}

fn kube_err(e: crate::kube::KubeError) -> ActionError {
    // The stable code first (`pdb`, `drain_timeout`, …), so the failure event says why at a glance.
    let message = format!("{}: {e}", e.code());
    if e.retryable() {
        ActionError::retryable(message)
    } else {
        ActionError::permanent(message)
    }
}

impl NodeOps for KubeNodes {
    async fn cordon_and_taint(&self, node: &str) -> Result<(), ActionError> {
        self.intents.removing(node, REMOVAL_INTENT);
        self.ops.cordon(node).await.map_err(kube_err)
    }

    async fn uncordon(&self, node: &str) -> Result<(), ActionError> {
        self.intents.done(node);
        self.ops.uncordon(node).await.map_err(kube_err)
    }

    async fn drain(&self, node: &str, timeout: Duration) -> Result<u32, ActionError> {
        self.intents.removing(node, REMOVAL_INTENT);
        let report = self
            .ops
            .drain_within(node, timeout)
            .await
            .map_err(kube_err)?;
        Ok(u32::try_from(report.evicted.len()).unwrap_or(u32::MAX))
    }

    async fn delete_node(&self, node: &str) -> Result<(), ActionError> {
        self.intents.removing(node, REMOVAL_INTENT);
        self.ops.delete(node).await.map(|_| ()).map_err(kube_err)
    }

    async fn annotate(&self, node: &str, text: &str) -> Result<(), ActionError> {
        self.ops
            .annotate_decision(node, text)
            .await
            .map_err(kube_err)
    }
}

/// One webhook target.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub format: Format,
}

/// Alerts to webhooks: JSON or Slack payloads, retried with backoff. URLs are never logged whole (they
/// often carry a token); only scheme and host are.
pub struct Webhooks {
    pub targets: Vec<Webhook>,
    pub attempts: u32,
    pub timeout: Duration,
    client: HttpClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<bytes::Bytes>,
    >,
}

impl Webhooks {
    pub fn new(targets: Vec<Webhook>) -> Result<Self, std::io::Error> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            targets,
            attempts: 4,
            timeout: Duration::from_secs(10),
            client: HttpClient::builder(TokioExecutor::new()).build(https),
        })
    }

    async fn post(&self, url: &str, body: &serde_json::Value) -> Result<(), String> {
        let req = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        // Drain the body so the connection can be reused.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}

/// Scheme and host of a URL, for logs.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}://{}", u.scheme(), u.host_str().unwrap_or("?")),
        Err(_) => "<bad url>".into(),
    }
}

impl Notifier for Webhooks {
    async fn notify(&self, alert: &Alert) -> Result<(), ActionError> {
        let mut failures = Vec::new();
        for target in &self.targets {
            let body = payload(alert, target.format);
            let mut delay = Duration::from_millis(200);
            let mut last = None;
            for attempt in 1..=self.attempts {
                match self.post(&target.url, &body).await {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(target = %redacted(&target.url), attempt, error = %e, "webhook failed");
                        last = Some(e);
                        if attempt < self.attempts {
                            tokio::time::sleep(delay).await;
                            delay *= 2;
                        }
                    }
                }
            }
            if let Some(e) = last {
                failures.push(format!("{}: {e}", redacted(&target.url)));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ActionError::retryable(failures.join("; ")))
        }
    }
}

/// The world the executor acts on. In a dry run there is none: decisions are published, nothing is done.
pub struct World {
    pub workers: DockerWorkers,
    pub nodes: KubeNodes,
    pub alerts: Webhooks,
}
