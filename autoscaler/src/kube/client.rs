//! Building the `kube` client from the `kubernetes:` config block.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::error::{KubeError, Result};
use crate::config::KubernetesSettings;

/// A client for `settings`: its `kubeconfig` path when set, else `KUBECONFIG`, in-cluster, or
/// `~/.kube/config` (kube's `Config::infer`); `server`, when set, replaces the kubeconfig's URL.
///
/// kube's built-in retry of 429/503 (up to 15 attempts, minutes of backoff) is turned off: a 429 from the
/// Eviction API is a PodDisruptionBudget's answer that the drain retries against its own deadline, and the
/// watchers back off on their own.
pub async fn connect(settings: &KubernetesSettings) -> Result<Client> {
    let mut config = if settings.kubeconfig.is_empty() {
        Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?
    } else {
        config_from_kubeconfig(Path::new(&settings.kubeconfig)).await?
    };
    if !settings.server.is_empty() {
        config.cluster_url = settings.server.parse().map_err(|e| {
            KubeError::Config(format!(
                "kubernetes.server `{}` is not a URL: {e}",
                settings.server
            ))
        })?;
    }
    client_from_config(config)
}

/// A client from the kubeconfig file at `path` (its current context), with the retry policy of [`connect`].
pub async fn connect_kubeconfig(path: &Path) -> Result<Client> {
    client_from_config(config_from_kubeconfig(path).await?)
}

async fn config_from_kubeconfig(path: &Path) -> Result<Config> {
    let kubeconfig = Kubeconfig::read_from(path)
        .map_err(|e| KubeError::Config(format!("reading kubeconfig {}: {e}", path.display())))?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| KubeError::Config(format!("kubeconfig {}: {e}", path.display())))
}

fn client_from_config(mut config: Config) -> Result<Client> {
    config.default_retry = false;
    Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))
}
