//! Who the bus is to Redis and how it gets there: the ACL user and password (from the URL, or the
//! config's `username` / `password_file`), and TLS for `rediss://` (a CA file, else the system's
//! roots, and an optional client certificate). The same settings serve redis-rs (every command
//! connection) and the consumers' own `XREADGROUP` reader (`reader.rs`), which speaks RESP itself.

use std::sync::Arc;

use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
    TlsCertificates,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{redact_url, BusConfig, RedisAccess};
use crate::error::{BusError, Result};

/// What [`resolve`] makes of a [`BusConfig`].
#[derive(Clone)]
pub(crate) struct Resolved {
    /// The URL's address and the credentials and database to use on every data node.
    pub(crate) info: ConnectionInfo,
    /// The certificates of `rediss://`; `None` for plain TCP and Unix sockets.
    pub(crate) certs: Option<TlsCertificates>,
    /// The TLS settings of the reader's connections; `None` for plain TCP and Unix sockets.
    pub(crate) reader_tls: Option<Arc<rustls::ClientConfig>>,
    /// Who the sentinels are asked as (their own user and password, database 0).
    pub(crate) sentinel: RedisConnectionInfo,
}

impl Resolved {
    /// `info` (this URL's, or [`Resolved::at`] another node) with the credentials, as a redis-rs client.
    pub(crate) fn client(&self, info: &ConnectionInfo) -> Result<redis::Client> {
        match &self.certs {
            None => redis::Client::open(info.clone()),
            Some(certs) => redis::Client::build_with_tls(info.clone(), certs.clone()),
        }
        .map_err(BusError::Connect)
    }

    /// The URL's settings (scheme, credentials, database) at another node, `host:port`.
    pub(crate) fn at(&self, host: &str, port: u16) -> ConnectionInfo {
        let addr = match self.info.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_string(), port),
        };
        self.info.clone().set_addr(addr)
    }

    /// A sentinel at `host:port`: the URL's scheme (TLS with the same files), the sentinels'
    /// credentials.
    pub(crate) fn sentinel_at(&self, host: &str, port: u16) -> ConnectionInfo {
        self.at(host, port)
            .set_redis_settings(self.sentinel.clone())
    }
}

fn read(what: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| BusError::Access(format!("cannot read the {what} {}: {e}", path.display())))
}

/// The URL parsed, the config's username and password file applied, TLS files loaded.
pub(crate) fn resolve(config: &BusConfig) -> Result<Resolved> {
    // redis-rs' parse errors do not echo the URL; the URL itself is shown redacted.
    let info: ConnectionInfo = config.url.as_str().into_connection_info().map_err(|e| {
        BusError::Access(format!(
            "`{}` is not a Redis URL: {e}",
            redact_url(&config.url)
        ))
    })?;
    let info = with_credentials(info, &config.access)?;
    let sentinel = sentinel_credentials(&config.access)?;
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let a = &config.access;
    if !tls && (a.tls_ca_file.is_some() || a.tls_cert_file.is_some()) {
        return Err(BusError::Access(
            "TLS files are set but the URL is not rediss://".into(),
        ));
    }
    if a.tls_cert_file.is_some() != a.tls_key_file.is_some() {
        return Err(BusError::Access(
            "a client certificate needs both tls_cert_file and tls_key_file".into(),
        ));
    }
    if !tls {
        return Ok(Resolved {
            info,
            certs: None,
            reader_tls: None,
            sentinel,
        });
    }
    let root_cert = a
        .tls_ca_file
        .as_deref()
        .map(|p| read("CA file", p))
        .transpose()?;
    let client_tls = match (&a.tls_cert_file, &a.tls_key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read("client certificate", cert)?,
            client_key: read("client key", key)?,
        }),
        _ => None,
    };
    let reader_tls = rustls_config(root_cert.as_deref(), client_tls.as_ref())?;
    let resolved = Resolved {
        info,
        certs: Some(TlsCertificates {
            client_tls,
            root_cert,
        }),
        reader_tls: Some(Arc::new(reader_tls)),
        sentinel,
    };
    // The certificates are checked now, not at the first connection.
    resolved.client(&resolved.info)?;
    Ok(resolved)
}

fn with_credentials(info: ConnectionInfo, access: &RedisAccess) -> Result<ConnectionInfo> {
    let settings = credentials(
        info.redis_settings().clone(),
        access.username.as_deref(),
        access.password_file.as_deref(),
        "password file",
    )?;
    Ok(info.set_redis_settings(settings))
}

/// The sentinels' own user and password (none unless configured: they are not the data nodes').
fn sentinel_credentials(access: &RedisAccess) -> Result<RedisConnectionInfo> {
    credentials(
        RedisConnectionInfo::default(),
        access.sentinel_username.as_deref(),
        access.sentinel_password_file.as_deref(),
        "sentinel password file",
    )
}

/// `settings` with `user` (if not empty) and the password in `password_file` (if any), trimmed.
fn credentials(
    mut settings: RedisConnectionInfo,
    user: Option<&str>,
    password_file: Option<&std::path::Path>,
    what: &str,
) -> Result<RedisConnectionInfo> {
    if let Some(user) = user.filter(|u| !u.is_empty()) {
        settings = settings.set_username(user);
    }
    if let Some(path) = password_file {
        let raw = read(what, path)?;
        let password = String::from_utf8(raw)
            .map_err(|_| BusError::Access(format!("the {what} {} is not UTF-8", path.display())))?;
        let password = password.trim();
        if password.is_empty() {
            return Err(BusError::Access(format!(
                "the {what} {} is empty",
                path.display()
            )));
        }
        settings = settings.set_password(password);
    }
    Ok(settings)
}

/// The reader's TLS settings, built like redis-rs builds its own: the CA file's certificates (else the
/// system's roots) and the client certificate when there is one.
fn rustls_config(
    root_cert: Option<&[u8]>,
    client: Option<&ClientTlsConfig>,
) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| BusError::Access(format!("the CA file does not parse: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| BusError::Access(format!("the CA file: {e}")))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BusError::Access(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    match client {
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(&c.client_cert)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| {
                    BusError::Access(format!("the client certificate does not parse: {e}"))
                })?;
            let key = PrivateKeyDer::from_pem_slice(&c.client_key)
                .map_err(|e| BusError::Access(format!("the client key does not parse: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| BusError::Access(format!("the client certificate: {e}")))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}
