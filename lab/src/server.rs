//! `lab serve` as a library: [`LabServer::start`] binds the API, seeds the namespaces, starts the
//! controllers and writes the kubeconfig; [`LabServer::shutdown`] stops it all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::controllers::{self, ControllerConfig};
use crate::kubeconfig;
use crate::resources::Kind;
use crate::store::Store;

/// How the lab server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// The server URL written into the kubeconfig; default `http://127.0.0.1:<port>`.
    pub advertise: Option<String>,
    /// Where the kubeconfig goes (`<lab_dir>/kubeconfig`).
    pub lab_dir: PathBuf,
    /// The bearer token clients must present, if any.
    pub token: Option<String>,
    /// The controllers' settings.
    pub controllers: ControllerConfig,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// How many changes are kept for watches to resume from (older ones get 410 Gone).
    pub history_limit: usize,
    /// With a token the server speaks HTTPS (kubectl sends no token over plain HTTP): these
    /// certificates, or ones made at start for `localhost`, `127.0.0.1`, the advertised host and
    /// `tls_sans`.
    pub certs: Option<crate::tls::LabCerts>,
    /// More names for a certificate made at start (k3s's `--tls-san`).
    pub tls_sans: Vec<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            lab_dir: PathBuf::from(".lab"),
            token: None,
            controllers: ControllerConfig {
                node_monitor_grace: Duration::from_secs(40),
                pod_eviction_timeout: Duration::from_secs(30),
                resync: Duration::from_millis(500),
            },
            bookmark_interval: Duration::from_secs(15),
            history_limit: 10_000,
            certs: None,
            tls_sans: Vec::new(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding the listen address failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificates could not be made or loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// Writing the kubeconfig failed.
    #[error("writing the kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running lab server.
pub struct LabServer {
    /// The bound address.
    addr: SocketAddr,
    /// The URL clients use.
    url: String,
    /// The kubeconfig written.
    kubeconfig_path: PathBuf,
    /// The CA clients verify the server with (HTTPS only).
    ca_pem: Option<String>,
    /// The objects (tests and in-process tools may read them directly).
    store: Arc<Store>,
    /// Stops the HTTP server and the controllers.
    shutdown: CancellationToken,
    /// The server and controller tasks, awaited on shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl LabServer {
    /// Binds, seeds `default`, `kube-system`, `kube-public` and `kube-node-lease`, starts the
    /// controllers, writes the kubeconfig, and serves until [`LabServer::shutdown`].
    pub async fn start(opts: ServeOptions) -> Result<LabServer, ServeError> {
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: opts.listen,
            source,
        })?;
        let store = Store::new(opts.history_limit);
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let mut obj = json!({"metadata": {"name": ns}});
            crate::defaults::apply(Kind::Namespace, &mut obj);
            // A fresh store: the names are free.
            let _ = store.create(Kind::Namespace, "", obj);
        }
        let certs = match (&opts.token, &opts.certs) {
            (None, _) => None,
            (Some(_), Some(c)) => Some(c.clone()),
            (Some(_), None) => {
                let mut sans = opts.tls_sans.clone();
                if let Some(host) = opts
                    .advertise
                    .as_deref()
                    .and_then(|a| a.split_once("://"))
                    .map(|(_, rest)| rest.split([':', '/']).next().unwrap_or_default())
                {
                    sans.push(host.to_string());
                }
                Some(crate::tls::LabCerts::make(&sans).map_err(ServeError::Tls)?)
            }
        };
        let scheme = if certs.is_some() { "https" } else { "http" };
        let url = opts
            .advertise
            .clone()
            .unwrap_or_else(|| format!("{scheme}://127.0.0.1:{}", addr.port()));
        let kubeconfig_path = opts.lab_dir.join("kubeconfig");
        let ca = certs.as_ref().map(|c| c.ca_pem.as_str());
        kubeconfig::write(&kubeconfig_path, &url, opts.token.as_deref(), ca).map_err(|source| {
            ServeError::Kubeconfig {
                path: kubeconfig_path.clone(),
                source,
            }
        })?;
        let shutdown = CancellationToken::new();
        let state = Arc::new(ApiState {
            store: store.clone(),
            token: opts.token.clone(),
            bookmark_interval: opts.bookmark_interval,
            eviction_lock: Mutex::new(()),
            shutdown: shutdown.clone(),
        });
        let app = api::router(state);
        let stop = shutdown.clone();
        let mut plain = None;
        let tls = match &certs {
            Some(c) => {
                let acceptor = c.acceptor().map_err(ServeError::Tls)?;
                Some(
                    crate::tls::TlsListener::new(listener, acceptor).map_err(|source| {
                        ServeError::Bind {
                            addr: opts.listen,
                            source,
                        }
                    })?,
                )
            }
            None => {
                plain = Some(listener);
                None
            }
        };
        let http = tokio::spawn(async move {
            let stopped = async move { stop.cancelled().await };
            let served = match (tls, plain) {
                (Some(tls), _) => axum::serve(tls, app).with_graceful_shutdown(stopped).await,
                (None, Some(tcp)) => axum::serve(tcp, app).with_graceful_shutdown(stopped).await,
                (None, None) => Ok(()),
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "lab API server stopped");
            }
        });
        let ctrl = tokio::spawn(controllers::run(
            store.clone(),
            opts.controllers.clone(),
            shutdown.clone(),
        ));
        tracing::info!(%addr, url = %url, kubeconfig = %kubeconfig_path.display(), "lab cluster serving");
        Ok(LabServer {
            addr,
            url,
            kubeconfig_path,
            ca_pem: certs.map(|c| c.ca_pem),
            store,
            shutdown,
            tasks: Mutex::new(vec![http, ctrl]),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients use (as in the kubeconfig).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA of the server's certificate, PEM, when it serves HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The kubeconfig written at start.
    pub fn kubeconfig_path(&self) -> &std::path::Path {
        &self.kubeconfig_path
    }

    /// The object store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Resolves when shutdown was requested.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await
    }

    /// Stops serving (open watches end) and the controllers, and waits for them.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            // Graceful shutdown waits for open connections; watches may hold one for long.
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }
}

impl Drop for LabServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
