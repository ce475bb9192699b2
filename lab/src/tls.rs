//! TLS for the lab API server when it requires a token: kubectl (client-go) sends no credentials
//! over plain HTTP, so a server that asks for a bearer token must speak HTTPS, as k3s does. The
//! certificate is the lab's own: a CA made at start (or given, PEM, by whoever starts the server:
//! `autoscaler lab` makes it on the host so the host's kubeconfig can carry it) signing a server
//! certificate for `localhost`, `127.0.0.1` and the `--tls-san` names. The kubeconfig carries the
//! CA (`certificate-authority-data`); node agents, which get only the URL and the token as a k3s
//! agent does, skip the verification (the token still authenticates them to the server).

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The lab's CA and the server certificate it signed, PEM.
#[derive(Clone)]
pub struct LabCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for LabCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret.
        f.debug_struct("LabCerts").finish_non_exhaustive()
    }
}

impl LabCerts {
    /// A fresh CA and a server certificate for `localhost`, `127.0.0.1` and `sans`.
    pub fn make(sans: &[String]) -> Result<Self, String> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let err = |e: rcgen::Error| format!("making the lab's certificates: {e}");
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "k3s-autoscaler lab CA");
        let ca = ca_params.self_signed(&ca_key).map_err(err)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        for san in sans {
            if !san.is_empty() && !names.contains(san) {
                names.push(san.clone());
            }
        }
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(names).map_err(err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "k3s-autoscaler lab API server");
        let cert = params.signed_by(&key, &issuer).map_err(err)?;
        Ok(LabCerts {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The acceptor serving the server certificate.
    pub fn acceptor(&self) -> Result<TlsAcceptor, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("the lab's server certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("the lab's server key: {e}"))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the lab's server certificate: {e}"))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// An axum listener that hands over connections once their TLS handshake is done. Handshakes run
/// in their own tasks, so a slow or failing client does not hold up the others.
pub struct TlsListener {
    local: std::net::SocketAddr,
    done: mpsc::Receiver<(TlsStream<TcpStream>, std::net::SocketAddr)>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, done) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                // Once the server is gone (the receiver dropped), stop and free the port.
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    () = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    }
                });
            }
        });
        Ok(TlsListener { local, done })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(c) => c,
            // The accept task only ends once this listener is gone; never resolve.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
