//! Shared set-up of the Docker tests: the engine (required: a missing engine fails the test loudly),
//! the offline test image, and a per-test environment whose guard removes everything carrying its test
//! label — containers, volumes, network — when dropped, also when the test panics.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use autoscaler::docker::{self, image, PoolConfig, Secret};
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{
    ListContainersOptions, ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
};
use bollard::Docker;

/// The image the tests' workers run: `FROM scratch` + the `autoscaler` binary.
pub const TEST_IMAGE: &str = "k3s-autoscaler-lab:test";
/// Every test object carries this label with its test's id.
pub const TEST_LABEL: &str = "k3s-autoscaler/test";

/// Connects to the local engine or fails the test with the reason.
pub async fn engine() -> Docker {
    match docker::connect("", Duration::from_secs(10)).await {
        Ok(d) => d,
        Err(e) => {
            panic!("these tests need the Docker engine (DOCKER_HOST or /var/run/docker.sock): {e}")
        }
    }
}

/// Builds the test image once per test binary (tests in a binary run in parallel).
pub async fn ensure_test_image(docker: &Docker) {
    static ONCE: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let mut done = ONCE.lock().await;
    if !*done {
        image::ensure_lab_image(
            docker,
            Path::new(env!("CARGO_BIN_EXE_autoscaler")),
            TEST_IMAGE,
        )
        .await
        .expect("building the test image");
        *done = true;
    }
}

/// One test's world on the engine.
pub struct TestEnv {
    pub docker: Docker,
    /// Unique per test: in the cluster id, name prefix, network and test label.
    pub id: String,
    pub network: String,
    /// Declared last: dropped after everything else.
    pub guard: Guard,
}

impl TestEnv {
    /// Engine, image and a fresh network; `what` names the test in the id.
    pub async fn new(what: &str) -> Self {
        let docker = engine().await;
        ensure_test_image(&docker).await;
        let short = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let id = format!("{what}-{short}");
        let network = format!("k3sas-test-{id}");
        let guard = Guard {
            id: id.clone(),
            network: network.clone(),
        };
        docker
            .create_network(NetworkCreateRequest {
                name: network.clone(),
                driver: Some("bridge".into()),
                labels: Some(HashMap::from([(TEST_LABEL.to_string(), id.clone())])),
                ..Default::default()
            })
            .await
            .expect("creating the test network");
        Self {
            docker,
            id,
            network,
            guard,
        }
    }

    /// The pool configuration of this test: the test image running `autoscaler pause`, small limits,
    /// no restart policy (so an engine-side kill stays killed), not privileged (this engine refuses
    /// privileged containers), and a token that must never show up in a label.
    pub fn config(&self) -> PoolConfig {
        PoolConfig {
            name_prefix: format!("t-{}-w", self.id),
            image: TEST_IMAGE.into(),
            command: vec!["pause".into()],
            k3s_url: "https://k3s-server:6443".into(),
            token: Some(Secret::new(self.token())),
            network: self.network.clone(),
            restart_policy: "no".into(),
            pool: "test".into(),
            cluster_id: format!("test-{}", self.id),
            cpu: 0.5,
            memory_bytes: 64 * 1024 * 1024,
            extra_labels: BTreeMap::from([(TEST_LABEL.to_string(), self.id.clone())]),
            privileged: false,
            timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(2),
            ..PoolConfig::default()
        }
    }

    /// The join token of this test.
    pub fn token(&self) -> String {
        format!("K10secret-token-{}", self.id)
    }

    /// Label filter selecting this test's objects.
    pub fn filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![format!("{TEST_LABEL}={}", self.id)],
        )])
    }

    /// Names of this test's containers, running or not.
    pub async fn container_names(&self) -> Vec<String> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(self.filter()),
                ..Default::default()
            }))
            .await
            .expect("listing test containers");
        let mut names: Vec<String> = list
            .into_iter()
            .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
            .map(|n| n.trim_start_matches('/').to_string())
            .collect();
        names.sort();
        names
    }

    /// Names of this test's volumes.
    pub async fn volume_names(&self) -> Vec<String> {
        let list = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(self.filter()),
            }))
            .await
            .expect("listing test volumes");
        let mut names: Vec<String> = list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        names.sort();
        names
    }
}

/// Removes every container and volume with the test's label, then its network, on drop.
pub struct Guard {
    id: String,
    network: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let id = self.id.clone();
        let network = self.network.clone();
        // Drop is synchronous and may run inside a runtime (or during a panic): clean up on a thread
        // with its own runtime.
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(cleanup(&id, &network));
        })
        .join();
        if joined.is_err() {
            eprintln!("cleanup of test {} panicked", self.id);
        }
    }
}

async fn cleanup(id: &str, network: &str) {
    let docker = match docker::connect("", Duration::from_secs(10)).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cleanup of test {id}: {e}");
            return;
        }
    };
    let filter = HashMap::from([("label".to_string(), vec![format!("{TEST_LABEL}={id}")])]);
    if let Ok(list) = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filter.clone()),
            ..Default::default()
        }))
        .await
    {
        for c in list {
            if let Some(cid) = c.id {
                let _ = docker
                    .remove_container(
                        &cid,
                        Some(RemoveContainerOptions {
                            force: true,
                            v: true,
                            link: false,
                        }),
                    )
                    .await;
            }
        }
    }
    if let Ok(list) = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filter),
        }))
        .await
    {
        for v in list.volumes.unwrap_or_default() {
            let _ = docker
                .remove_volume(&v.name, Some(RemoveVolumeOptions { force: true }))
                .await;
        }
    }
    let _ = docker.remove_network(network).await;
}
