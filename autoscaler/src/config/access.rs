//! The keys of who may talk to what: Redis credentials and TLS (`events.event_bus.username`,
//! `password_file`, `tls`), and the headers of webhooks (`alerts.webhooks[].headers`). Secrets are
//! never values in the file: they come from a file or the environment, and are read at start.

use serde::Deserialize;

/// `events.event_bus.tls`: for a `rediss://` URL.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RedisTls {
    /// CA certificate(s), PEM, the server's certificate must chain to; empty: the system's roots.
    pub ca_file: String,
    /// Client certificate, PEM, for a server that requires one (`tls-auth-clients yes`).
    pub cert_file: String,
    /// Its private key, PEM.
    pub key_file: String,
}

/// One header of a webhook request: its value comes from an environment variable or a file, never
/// from the configuration itself, and is never logged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookHeader {
    /// `Authorization`, `X-Api-Key`, …
    pub name: String,
    /// The environment variable holding the value.
    #[serde(default)]
    pub value_env: String,
    /// The file holding the value (surrounding whitespace trimmed).
    #[serde(default)]
    pub value_file: String,
}
