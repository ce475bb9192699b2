//! A Unix-socket forwarder in front of the Docker engine that can be taken down and brought back:
//! how the outage tests cut the engine off from an autoscaler without stopping the machine's own
//! engine (point `docker.host` at [`EngineProxy::uri`]). Test support, kept in the library so the
//! adapter tests and the end-to-end tests share one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// Forwards a Unix socket to the engine's; [`EngineProxy::down`] drops every connection and the
/// socket file (a client then sees the socket missing), [`EngineProxy::up`] binds it again.
pub struct EngineProxy {
    path: PathBuf,
    engine: PathBuf,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl EngineProxy {
    /// A proxy at `path` to the engine `DOCKER_HOST` (or the local socket) names, up. Panics when
    /// that engine is not on a Unix socket, or the socket cannot be bound: it is test support.
    pub fn start(path: PathBuf) -> Self {
        let address = super::engine_address("");
        let engine = PathBuf::from(address.strip_prefix("unix://").unwrap_or_else(|| {
            panic!("the engine proxy needs a unix-socket engine, not {address}")
        }));
        let mut p = Self {
            path,
            engine,
            accept: None,
            connections: Arc::new(Mutex::new(Vec::new())),
        };
        p.up();
        p
    }

    /// Binds the socket and forwards every connection.
    pub fn up(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path)
            .unwrap_or_else(|e| panic!("binding the proxy socket {}: {e}", self.path.display()));
        let engine = self.engine.clone();
        let connections = self.connections.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let engine = engine.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut upstream) = UnixStream::connect(&engine).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                if let Ok(mut c) = connections.lock() {
                    c.retain(|t| !t.is_finished());
                    c.push(task);
                }
            }
        }));
    }

    /// Drops every connection and removes the socket: the engine is unreachable through it.
    pub fn down(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        if let Ok(mut c) = self.connections.lock() {
            for t in c.drain(..) {
                t.abort();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// `unix://<path>`, for `docker.host`.
    pub fn uri(&self) -> String {
        format!("unix://{}", self.path.display())
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.down();
    }
}
