//! Alerts to webhooks: JSON or Slack payloads over HTTP(S), each target retried with backoff. URLs are
//! never logged whole (they often carry a token); only scheme and host are.

use std::time::Duration;

use handlers::alerts::{payload, Alert, Format};
use handlers::traits::{ActionError, Notifier};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use primitives::Backoff;

/// One webhook target.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub format: Format,
}

/// The alerts' [`Notifier`]: the webhook targets and the HTTP client that posts to them.
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
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::MAX);
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
                            tokio::time::sleep(backoff.next_delay()).await;
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
