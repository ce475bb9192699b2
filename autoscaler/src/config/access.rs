//! The keys of who may talk to what: Redis credentials and TLS (`events.event_bus.username`,
//! `password_file`, `tls`), Docker engines' TLS and SSH keys (`docker.tls`, `docker.hosts[].tls`,
//! `ssh_key_file`), and the headers of webhooks (`alerts.webhooks[].headers`). Secrets are never
//! values in the file: they come from a file or the environment, and are read at start.

use serde::Deserialize;

/// `events.event_bus.tls` (for a `rediss://` URL) and `docker.tls` / `docker.hosts[].tls` (for a
/// `tcp://` engine started with `--tlsverify`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate(s), PEM, the server's certificate must chain to; empty: the system's roots
    /// (Redis only: an engine's CA is always given).
    pub ca_file: String,
    /// Client certificate, PEM, for a server that requires one (Redis' `tls-auth-clients yes`,
    /// always for an engine).
    pub cert_file: String,
    /// Its private key, PEM.
    pub key_file: String,
}

impl TlsFiles {
    /// Whether no file is named (no TLS settings at all).
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_empty() && self.cert_file.is_empty() && self.key_file.is_empty()
    }
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
