//! The lab's Docker side, laid out like k3d: a network of its own, the lab API server as a container on
//! it (reached by workers by name, by the host through a port published on 127.0.0.1 only), the lab image
//! built offline from this very binary, and a kubeconfig in `$LAB_DIR` pointing at the loopback port.
//! Used by `autoscaler lab` and by the end-to-end tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions,
};
use bollard::Docker;

use crate::docker::{self, LABEL_CLUSTER_ID, LABEL_MANAGED_BY};

/// The port the lab API server listens on inside its container.
pub const API_PORT: u16 = 6443;

/// Label on the lab's own containers and network (the API server), beside the managed-by label.
pub const LABEL_LAB_ROLE: &str = "k3s-autoscaler/lab-role";

#[derive(Debug, thiserror::Error)]
pub enum LabEnvError {
    #[error(transparent)]
    Docker(#[from] docker::DockerError),
    #[error("docker: {operation}: {message}")]
    Engine {
        operation: &'static str,
        message: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the lab API server did not answer at {url} within {secs} s (see `docker logs {container}`)")]
    NoAnswer {
        url: String,
        container: String,
        secs: u64,
    },
}

fn engine(operation: &'static str) -> impl FnOnce(bollard::errors::Error) -> LabEnvError {
    move |e| LabEnvError::Engine {
        operation,
        message: e.to_string(),
    }
}

/// How to lay the lab out.
#[derive(Debug, Clone)]
pub struct LabEnvOptions {
    /// Names the network (`<name>`), the server container (`<name>-server`) and is the cluster id label.
    pub name: String,
    /// Where the kubeconfig goes.
    pub lab_dir: PathBuf,
    /// The `autoscaler` binary that goes into the image.
    pub binary: PathBuf,
    /// The image tag.
    pub image: String,
    /// The API server's `--node-monitor-grace`.
    pub node_monitor_grace: Duration,
    /// The API server's `--pod-eviction-timeout`.
    pub pod_eviction_timeout: Duration,
    /// More labels on the server container (tests add their test label).
    pub extra_labels: HashMap<String, String>,
    /// The bearer token the API server requires (it gets it as `K3S_TOKEN`, the kubeconfig carries it,
    /// workers present it as their k3s token); `None`: no token.
    pub token: Option<String>,
}

impl LabEnvOptions {
    pub fn new(
        name: impl Into<String>,
        lab_dir: impl Into<PathBuf>,
        binary: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            lab_dir: lab_dir.into(),
            binary: binary.into(),
            image: format!("k3s-autoscaler-lab:{}", env!("CARGO_PKG_VERSION")),
            node_monitor_grace: Duration::from_secs(40),
            pod_eviction_timeout: Duration::from_secs(30),
            token: None,
            extra_labels: HashMap::new(),
        }
    }
}

/// A running lab environment.
#[derive(Debug)]
pub struct LabEnv {
    docker: Docker,
    pub options: LabEnvOptions,
    /// The Docker network workers join.
    pub network: String,
    /// The API server's container.
    pub server_container: String,
    /// The API server as the host reaches it (`https://127.0.0.1:<published port>`; `http` without a token).
    pub host_url: String,
    /// The API server as workers reach it (`https://<server container>:6443`; `http` without a token).
    pub network_url: String,
    /// `$LAB_DIR/kubeconfig`.
    pub kubeconfig: PathBuf,
}

impl LabEnv {
    /// Builds the image if needed, creates the network and starts the API server; waits until it answers.
    pub async fn up(docker: Docker, options: LabEnvOptions) -> Result<Self, LabEnvError> {
        let status =
            docker::image::ensure_lab_image(&docker, &options.binary, &options.image).await?;
        tracing::info!(image = %options.image, ?status, "lab: image ready");
        let network = options.name.clone();
        let server_container = format!("{}-server", options.name);
        // The cluster id (for `down`), but a managed-by value of its own: the server is not a worker
        // (the image's own managed-by label would otherwise make it look like one).
        let mut labels = options.extra_labels.clone();
        labels.insert(LABEL_CLUSTER_ID.into(), options.name.clone());
        labels.insert(LABEL_MANAGED_BY.into(), "k3s-autoscaler-lab".into());
        labels.insert(LABEL_LAB_ROLE.into(), "server".into());

        if docker.inspect_network(&network, None).await.is_err() {
            docker
                .create_network(NetworkCreateRequest {
                    name: network.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(labels.clone()),
                    ..Default::default()
                })
                .await
                .map_err(engine("create network"))?;
        }
        // A server left over from an earlier run holds the name: replace it.
        let _ = docker
            .remove_container(
                &server_container,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await;

        let cmd = vec![
            "lab".to_string(),
            "serve".into(),
            "--listen".into(),
            format!("0.0.0.0:{API_PORT}"),
            "--node-monitor-grace".into(),
            format!("{}s", options.node_monitor_grace.as_secs()),
            "--pod-eviction-timeout".into(),
            format!("{}s", options.pod_eviction_timeout.as_secs()),
            "--lab-dir".into(),
            "/tmp/lab".into(),
        ];
        let port_key = format!("{API_PORT}/tcp");
        // With a token the server speaks HTTPS (kubectl sends no token over plain HTTP), with
        // certificates made here, so the host's kubeconfig can carry their CA; its name on the
        // network is in the certificate for the workers (which do not verify it, as they get only
        // the URL and the token).
        let certs = match &options.token {
            Some(_) => Some(
                lab::tls::LabCerts::make(std::slice::from_ref(&server_container)).map_err(
                    |message| LabEnvError::Engine {
                        operation: "make the lab's TLS certificates",
                        message,
                    },
                )?,
            ),
            None => None,
        };
        // In the environment, not on the command line (`ps` in the container would show it).
        let server_env = options.token.as_ref().map(|t| {
            let mut env = vec![format!("K3S_TOKEN={t}")];
            if let Some(c) = &certs {
                env.push(format!("LAB_TLS_CERT={}", c.cert_pem));
                env.push(format!("LAB_TLS_KEY={}", c.key_pem));
                env.push(format!("LAB_TLS_CA={}", c.ca_pem));
            }
            env
        });
        let scheme = if certs.is_some() { "https" } else { "http" };
        let body = ContainerCreateBody {
            image: Some(options.image.clone()),
            hostname: Some(server_container.clone()),
            cmd: Some(cmd),
            env: server_env,
            labels: Some(labels),
            exposed_ports: Some(vec![port_key.clone()]),
            host_config: Some(HostConfig {
                network_mode: Some(network.clone()),
                port_bindings: Some(HashMap::from([(
                    port_key.clone(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        };
        docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::new()
                        .name(&server_container)
                        .build(),
                ),
                body,
            )
            .await
            .map_err(engine("create the lab API server"))?;
        docker
            .start_container(&server_container, None::<StartContainerOptions>)
            .await
            .map_err(engine("start the lab API server"))?;
        let inspect = docker
            .inspect_container(&server_container, None::<InspectContainerOptions>)
            .await
            .map_err(engine("inspect the lab API server"))?;
        let host_port = inspect
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get(&port_key).cloned().flatten())
            .and_then(|b| b.into_iter().find_map(|b| b.host_port))
            .ok_or_else(|| LabEnvError::Engine {
                operation: "inspect the lab API server",
                message: "no published port".into(),
            })?;
        let host_url = format!("{scheme}://127.0.0.1:{host_port}");
        let kubeconfig = options.lab_dir.join("kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &host_url,
            options.token.as_deref(),
            certs.as_ref().map(|c| c.ca_pem.as_str()),
        )?;
        let env = LabEnv {
            docker,
            network_url: format!("{scheme}://{server_container}:{API_PORT}"),
            network,
            server_container,
            host_url,
            kubeconfig,
            options,
        };
        env.wait_until_serving(Duration::from_secs(30)).await?;
        Ok(env)
    }

    async fn wait_until_serving(&self, within: Duration) -> Result<(), LabEnvError> {
        let deadline = Instant::now() + within;
        let version_url = format!("{}/version", self.host_url);
        loop {
            if version_answers(&self.kubeconfig).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabEnvError::NoAnswer {
                    url: version_url,
                    container: self.server_container.clone(),
                    secs: within.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes every container of this lab (workers and server) and the network.
    pub async fn down(&self) {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_CLUSTER_ID}={}", self.options.name)],
        )]);
        let listed = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap_or_default();
        for c in listed {
            if let Some(id) = c.id {
                let _ = self
                    .docker
                    .remove_container(
                        &id,
                        Some(
                            RemoveContainerOptionsBuilder::new()
                                .force(true)
                                .v(true)
                                .build(),
                        ),
                    )
                    .await;
            }
        }
        // Named state volumes of removed workers.
        let _ = self
            .docker
            .prune_volumes(Some(
                bollard::query_parameters::PruneVolumesOptionsBuilder::new()
                    .filters(&HashMap::from([(
                        "label".to_string(),
                        vec![format!("{LABEL_CLUSTER_ID}={}", self.options.name)],
                    )]))
                    .build(),
            ))
            .await;
        let _ = self.docker.remove_network(&self.network).await;
    }
}

/// Whether `GET /version` answers 200, as the kubeconfig's user (with its token, if any).
async fn version_answers(kubeconfig: &Path) -> bool {
    let Ok(client) = crate::kube::connect_kubeconfig(kubeconfig).await else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.apiserver_version()).await,
        Ok(Ok(_))
    )
}

/// Writes the lab's kubeconfig for `server`, with the bearer token when there is one and the CA of
/// an HTTPS server.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    token: Option<&str>,
    ca_pem: Option<&str>,
) -> Result<(), LabEnvError> {
    lab::kubeconfig::write(path, server, token, ca_pem).map_err(|source| LabEnvError::Write {
        path: path.display().to_string(),
        source,
    })
}
