//! Alerts to webhooks: JSON or Slack payloads over HTTP(S), each target retried with backoff. URLs are
//! never logged whole (they often carry a token); only scheme and host are. Headers (authentication)
//! take their values from the environment or a file ([`resolve_headers`]); their values are marked
//! sensitive and never logged: `Debug` shows the names only.

use std::time::Duration;

use handlers::alerts::{payload, Alert, Format};
use handlers::traits::{ActionError, Notifier};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use primitives::Backoff;

/// One webhook target.
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    pub format: Format,
    /// Sent with every request; values marked sensitive.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Webhook")
            .field("url", &redacted(&self.url))
            .field("format", &self.format)
            .field("headers", &names)
            .finish()
    }
}

/// The headers of `alerts.webhooks[].headers`: each value read from its environment variable (looked
/// up with `env`) or its file (surrounding whitespace trimmed). Errors name the header and where its
/// value was to come from, never the value.
pub fn resolve_headers(
    headers: &[crate::config::WebhookHeader],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    headers
        .iter()
        .map(|h| {
            let name = http::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("`{}` is not a header name", h.name))?;
            let value = if !h.value_env.is_empty() {
                env(&h.value_env)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| format!("header {name}: ${} is not set", h.value_env))?
            } else {
                std::fs::read_to_string(&h.value_file)
                    .map_err(|e| format!("header {name}: cannot read {}: {e}", h.value_file))?
                    .trim()
                    .to_string()
            };
            let mut value = http::HeaderValue::from_str(&value)
                .map_err(|_| format!("header {name}: the value is not a valid header value"))?;
            value.set_sensitive(true);
            Ok((name, value))
        })
        .collect()
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

    async fn post(&self, target: &Webhook, body: &serde_json::Value) -> Result<(), String> {
        let mut req = http::Request::post(&target.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            // The builder's error would not name a secret, but say nothing of the URL either.
            .map_err(|_| "not a valid request URL".to_string())?;
        for (name, value) in &target.headers {
            req.headers_mut().insert(name.clone(), value.clone());
        }
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
                match self.post(target, &body).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebhookHeader;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn header(name: &str, env: &str, file: &str) -> WebhookHeader {
        WebhookHeader {
            name: name.into(),
            value_env: env.into(),
            value_file: file.into(),
        }
    }

    #[tokio::test]
    async fn webhook_headers_come_from_env_or_file_are_sent_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("webhook-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("key");
        std::fs::write(&key_file, "file-secret-2\n").unwrap();
        let headers = resolve_headers(
            &[
                header("Authorization", "HOOK_AUTH", ""),
                header("X-Api-Key", "", &key_file.display().to_string()),
            ],
            |k| (k == "HOOK_AUTH").then(|| "Bearer env-secret-1".to_string()),
        )
        .unwrap();
        assert!(headers.iter().all(|(_, v)| v.is_sensitive()));

        // A receiver that records the request.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 16 * 1024];
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("\r\n\r\n{") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&got).to_lowercase()
        });
        let target = Webhook {
            url: format!("http://{addr}/hook?token=url-secret-3"),
            format: Format::Json,
            headers,
        };
        let shown = format!("{target:?}");
        for secret in ["env-secret-1", "file-secret-2", "url-secret-3"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("authorization") && shown.contains("x-api-key"),
            "{shown}"
        );
        let hooks = Webhooks::new(vec![target.clone()]).unwrap();
        hooks
            .post(&target, &serde_json::json!({"text": "hi"}))
            .await
            .unwrap();
        let request = received.await.unwrap();
        assert!(
            request.contains("authorization: bearer env-secret-1"),
            "{request}"
        );
        assert!(request.contains("x-api-key: file-secret-2"), "{request}");

        // A missing variable is named, and no value shows.
        let err = resolve_headers(&[header("Authorization", "NOPE", "")], |_| None).unwrap_err();
        assert!(err.contains("$NOPE"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
