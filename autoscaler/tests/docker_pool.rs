//! DockerWorkerPool against the real engine: create, list, adopt, inspect, stop, remove, 409
//! idempotency, the warm pool, stats, and the token kept out of labels.

mod docker_support;

use std::collections::BTreeMap;

use autoscaler::docker::{
    naming, CreateWorker, DockerError, DockerWorkerPool, Released, WorkerState, LABEL_CLUSTER_ID,
    LABEL_MANAGED_BY, LABEL_POOL, LABEL_REQUESTED_BY, MANAGED_BY_VALUE,
};
use bollard::query_parameters::InspectContainerOptions;
use docker_support::{TestEnv, TEST_LABEL};

fn request(event: &str) -> CreateWorker {
    CreateWorker {
        name: None,
        requested_by: event.to_string(),
        extra_labels: BTreeMap::new(),
        pool: None,
    }
}

#[tokio::test]
async fn docker_pool_creates_lists_adopts_inspects_stops_and_removes_workers() {
    let env = TestEnv::new("pool").await;
    let config = env.config();
    let prefix = config.name_prefix.clone();
    let pool = DockerWorkerPool::new(env.docker.clone(), config.clone());

    let w1 = pool.create(&request("evt-1")).await.unwrap();
    let w2 = pool.create(&request("evt-2")).await.unwrap();
    assert_eq!(w1.name, format!("{prefix}1"));
    assert_eq!(w2.name, format!("{prefix}2"));
    assert_eq!(w1.state, WorkerState::Running);
    assert!(w1.started_at.is_some());
    assert_eq!(w1.requested_by(), Some("evt-1"));
    assert_eq!(w1.pool(), Some("test"));
    assert_eq!(w1.labels[LABEL_MANAGED_BY], MANAGED_BY_VALUE);
    assert_eq!(w1.labels[LABEL_CLUSTER_ID], config.cluster_id);
    assert_eq!(w1.labels[LABEL_POOL], "test");
    assert_eq!(w1.labels[TEST_LABEL], env.id);
    assert_eq!(w1.labels[LABEL_REQUESTED_BY], "evt-1");

    // The container is shaped like a k3d agent.
    let raw = env
        .docker
        .inspect_container(&w1.name, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let cfg = raw.config.unwrap();
    assert_eq!(cfg.hostname.as_deref(), Some(w1.name.as_str()));
    let envs = cfg.env.unwrap();
    assert!(envs.contains(&format!("K3S_NODE_NAME={}", w1.name)));
    assert!(envs.contains(&"K3S_URL=https://k3s-server:6443".to_string()));
    let hc = raw.host_config.unwrap();
    assert_eq!(hc.nano_cpus, Some(500_000_000));
    assert_eq!(hc.memory, Some(64 * 1024 * 1024));
    assert!(hc.tmpfs.unwrap().contains_key("/run"));
    assert_eq!(hc.network_mode.as_deref(), Some(env.network.as_str()));
    assert_eq!(
        env.volume_names().await,
        vec![
            naming::state_volume_name(&w1.name),
            naming::state_volume_name(&w2.name)
        ]
    );

    let listed = pool.list_workers().await.unwrap();
    assert_eq!(
        listed.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        vec![w1.name.as_str(), w2.name.as_str()]
    );

    // Stop one; a new pool instance (a restarted autoscaler) adopts both and sees the states.
    pool.stop_worker(&w2.name).await.unwrap();
    let restarted = DockerWorkerPool::new(env.docker.clone(), config.clone());
    let adopted = restarted.adopt().await.unwrap();
    assert_eq!(adopted.len(), 2);
    assert_eq!(adopted[0].state, WorkerState::Running);
    assert_eq!(adopted[1].state, WorkerState::Exited);
    // `pause` exits 0 on SIGTERM; on a loaded machine the stop can come before it has installed its
    // handler, and PID 1 ignores an unhandled SIGTERM: then the grace period ends in SIGKILL (137).
    assert!(
        matches!(adopted[1].exit_code, Some(0) | Some(137)),
        "{:?}",
        adopted[1].exit_code
    );
    assert!(!adopted[1].oom_killed);
    assert!(adopted[1].finished_at.is_some());

    // A third worker takes the lowest free index again after a removal.
    restarted.remove_worker(&w1.name).await.unwrap();
    let w3 = restarted.create(&request("evt-3")).await.unwrap();
    assert_eq!(w3.name, format!("{prefix}1"));

    for w in [&w2.name, &w3.name] {
        restarted.remove_worker(w).await.unwrap();
    }
    // Removing what is gone is fine.
    restarted.remove_worker(&w2.name).await.unwrap();
    assert!(pool.list_workers().await.unwrap().is_empty());
    assert!(env.container_names().await.is_empty());
    assert!(
        env.volume_names().await.is_empty(),
        "state volumes are removed with their workers"
    );
    assert!(pool.inspect_worker(&w2.name).await.unwrap().is_none());
}

#[tokio::test]
async fn docker_create_of_an_existing_name_is_idempotent_success() {
    let env = TestEnv::new("conflict").await;
    let config = env.config();
    // Two replicas, each with its own pool, create "the same" worker at once.
    let a = DockerWorkerPool::new(env.docker.clone(), config.clone());
    let b = DockerWorkerPool::new(env.docker.clone(), config.clone());
    let name = format!("{}7", config.name_prefix);
    let req = CreateWorker {
        name: Some(name.clone()),
        ..request("evt-same")
    };
    let (ra, rb) = tokio::join!(a.create(&req), b.create(&req));
    let (wa, wb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(wa.id, wb.id, "both replicas get the one container");
    assert_eq!(env.container_names().await, vec![name.clone()]);
    // And once more, sequentially.
    let again = a.create(&req).await.unwrap();
    assert_eq!(again.id, wa.id);
    assert_eq!(again.state, WorkerState::Running);
    a.remove_worker(&name).await.unwrap();
}

#[tokio::test]
async fn docker_name_of_a_foreign_container_is_not_taken_over() {
    let env = TestEnv::new("foreign").await;
    let mine = env.config();
    let other_cluster = autoscaler::docker::PoolConfig {
        cluster_id: format!("{}-other", mine.cluster_id),
        ..mine.clone()
    };
    let theirs = DockerWorkerPool::new(env.docker.clone(), other_cluster);
    let name = format!("{}1", mine.name_prefix);
    theirs
        .create(&CreateWorker {
            name: Some(name.clone()),
            ..request("evt-theirs")
        })
        .await
        .unwrap();
    let pool = DockerWorkerPool::new(env.docker.clone(), mine.clone());
    let err = pool
        .create(&CreateWorker {
            name: Some(name.clone()),
            ..request("evt-mine")
        })
        .await
        .unwrap_err();
    assert!(matches!(err, DockerError::NameTaken { .. }), "{err}");
    assert!(!err.retryable());
    // Unnamed creates skip the taken name; listing and removal never touch the foreign container.
    let w = pool.create(&request("evt-mine")).await.unwrap();
    assert_eq!(w.name, format!("{}2", mine.name_prefix));
    assert_eq!(pool.list_workers().await.unwrap().len(), 1);
    assert!(matches!(
        pool.remove_worker(&name).await,
        Err(DockerError::NameTaken { .. })
    ));
    assert_eq!(env.container_names().await.len(), 2);
}

#[tokio::test]
async fn docker_token_is_in_the_environment_but_never_in_a_label() {
    let env = TestEnv::new("token").await;
    let pool = DockerWorkerPool::new(env.docker.clone(), env.config());
    let w = pool.create(&request("evt-token")).await.unwrap();
    let token = env.token();
    let raw = env
        .docker
        .inspect_container(&w.name, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let cfg = raw.config.unwrap();
    let labels = cfg.labels.unwrap();
    assert!(
        labels
            .iter()
            .all(|(k, v)| !k.contains(&token) && !v.contains(&token)),
        "a label holds the token: {labels:?}"
    );
    assert!(cfg.env.unwrap().contains(&format!("K3S_TOKEN={token}")));
    // Nor does the pool's debug output.
    assert!(!format!("{pool:?} {:?}", pool.config()).contains(&token));
    pool.remove_worker(&w.name).await.unwrap();
}

#[tokio::test]
async fn docker_warm_pool_starts_a_stopped_worker_before_creating_one() {
    let env = TestEnv::new("warm").await;
    let config = autoscaler::docker::PoolConfig {
        warm_pool: 1,
        ..env.config()
    };
    let pool = DockerWorkerPool::new(env.docker.clone(), config.clone());
    let first = pool.acquire(&request("evt-1")).await.unwrap();
    assert!(!first.from_warm_pool);
    let second = pool.acquire(&request("evt-2")).await.unwrap();
    assert!(!second.from_warm_pool);

    // Scale-down of both: the first goes warm (pool below 1), the second is removed.
    assert_eq!(
        pool.release(&first.worker.name).await.unwrap(),
        Released::Warm
    );
    assert_eq!(
        pool.release(&second.worker.name).await.unwrap(),
        Released::Removed
    );
    assert_eq!(pool.warm_workers(), vec![first.worker.name.clone()]);
    let stopped = pool
        .inspect_worker(&first.worker.name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stopped.state, WorkerState::Exited);
    assert_eq!(env.container_names().await, vec![first.worker.name.clone()]);

    // A restarted autoscaler finds the warm worker again.
    let restarted = DockerWorkerPool::new(env.docker.clone(), config);
    restarted.adopt().await.unwrap();
    assert_eq!(restarted.warm_workers(), vec![first.worker.name.clone()]);

    let again = restarted.acquire(&request("evt-3")).await.unwrap();
    assert!(again.from_warm_pool);
    assert_eq!(
        again.worker.id, first.worker.id,
        "the same container started again"
    );
    assert_eq!(again.worker.state, WorkerState::Running);
    assert!(restarted.warm_workers().is_empty());
    restarted.remove_worker(&again.worker.name).await.unwrap();
    assert!(env.container_names().await.is_empty());
}

#[tokio::test]
async fn docker_stats_give_percentages_per_worker_and_averages() {
    let env = TestEnv::new("stats").await;
    let pool = DockerWorkerPool::new(env.docker.clone(), env.config());
    let w1 = pool.create(&request("evt-1")).await.unwrap();
    let w2 = pool.create(&request("evt-2")).await.unwrap();
    // A stopped worker is not measured.
    let w3 = pool.create(&request("evt-3")).await.unwrap();
    pool.stop_worker(&w3.name).await.unwrap();

    // The first sample reads two engine samples; the second uses one-shot readings and the first's
    // counters.
    for round in 0..2 {
        let sample = pool.usage().await.unwrap();
        let names: Vec<&str> = sample.nodes.iter().map(|n| n.node_name.as_str()).collect();
        assert_eq!(
            names,
            vec![w1.name.as_str(), w2.name.as_str()],
            "round {round}"
        );
        for n in &sample.nodes {
            assert!(
                (0.0..=100.0).contains(&n.cpu),
                "cpu {} of {}",
                n.cpu,
                n.node_name
            );
            assert!(
                (0.0..=100.0).contains(&n.memory),
                "memory {} of {}",
                n.memory,
                n.node_name
            );
            assert!(n.memory > 0.0, "a running process uses some memory");
        }
        assert!((0.0..=100.0).contains(&sample.cpu_avg));
        let mean = (sample.nodes[0].memory + sample.nodes[1].memory) / 2.0;
        assert!((sample.memory_avg - mean).abs() < 1e-9);
    }
    for w in [&w1, &w2, &w3] {
        pool.remove_worker(&w.name).await.unwrap();
    }
}

#[tokio::test]
async fn docker_pool_through_the_handlers_trait_is_idempotent_by_name() {
    use handlers::traits::WorkerPool;
    let env = TestEnv::new("trait").await;
    let pool = DockerWorkerPool::new(env.docker.clone(), env.config());
    let name = format!("{}3", pool.config().name_prefix);
    let id = WorkerPool::create_worker(&pool, &name, "default")
        .await
        .unwrap();
    assert_eq!(
        WorkerPool::create_worker(&pool, &name, "default")
            .await
            .unwrap(),
        id
    );
    let w = pool.inspect_worker(&name).await.unwrap().unwrap();
    assert_eq!(w.id, id);
    assert_eq!(w.requested_by(), None, "the trait carries no event id");
    // Kept warm when the decision says so: stopped, kept, and started again by a create of its
    // name (the same container).
    assert_eq!(
        WorkerPool::remove_worker(&pool, &name, true).await.unwrap(),
        handlers::traits::Removal::KeptWarm
    );
    let stopped = pool.inspect_worker(&name).await.unwrap().unwrap();
    assert!(stopped.state.is_stopped(), "{:?}", stopped.state);
    assert_eq!(
        WorkerPool::create_worker(&pool, &name, "default")
            .await
            .unwrap(),
        id
    );
    let started = pool.inspect_worker(&name).await.unwrap().unwrap();
    assert!(!started.state.is_stopped(), "{:?}", started.state);
    for _ in 0..2 {
        assert_eq!(
            WorkerPool::remove_worker(&pool, &name, false)
                .await
                .unwrap(),
            handlers::traits::Removal::Removed
        );
    }
    assert!(env.container_names().await.is_empty());
    assert!(env.volume_names().await.is_empty());
}

#[tokio::test]
async fn docker_lab_image_is_built_once_per_binary() {
    use autoscaler::docker::image::{ensure_lab_image, ImageStatus, LABEL_BINARY};
    use bollard::query_parameters::RemoveImageOptions;
    let env = TestEnv::new("image").await;
    // A copy of the binary of its own, so this test decides when it changes.
    let dir = std::env::temp_dir().join(format!("k3sas-{}", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("autoscaler");
    std::fs::copy(env!("CARGO_BIN_EXE_autoscaler"), &binary).unwrap();
    let tag = format!("k3s-autoscaler-lab:{}", env.id);

    let result = async {
        assert_eq!(
            ensure_lab_image(&env.docker, &binary, &tag).await.unwrap(),
            ImageStatus::Built
        );
        assert_eq!(
            ensure_lab_image(&env.docker, &binary, &tag).await.unwrap(),
            ImageStatus::UpToDate
        );
        let image = env.docker.inspect_image(&tag).await.unwrap();
        let labels = image.config.unwrap().labels.unwrap();
        assert_eq!(
            labels[LABEL_BINARY],
            autoscaler::docker::image::fingerprint(&binary).unwrap()
        );
        // Stripped of debug info and without the build machinery, the image stays small.
        let size = image.size.unwrap();
        assert!(size < 100 * 1024 * 1024, "image is {size} bytes");
        // A rebuilt binary rebuilds the image.
        let before = env.docker.inspect_image(&tag).await.unwrap().id.unwrap();
        // Make the new binary differ in content too, so the image does.
        std::fs::write(
            &binary,
            [std::fs::read(&binary).unwrap(), vec![0u8; 16]].concat(),
        )
        .unwrap();
        assert_eq!(
            ensure_lab_image(&env.docker, &binary, &tag).await.unwrap(),
            ImageStatus::Built
        );
        // The replaced image is gone, not left dangling.
        let gone = env.docker.inspect_image(&before).await;
        assert!(gone.is_err(), "the replaced image {before} is still there");
    }
    .await;
    let _ = env
        .docker
        .remove_image(
            &tag,
            Some(RemoveImageOptions {
                force: true,
                ..Default::default()
            }),
            None,
        )
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[tokio::test]
async fn docker_pools_get_their_own_template_and_only_their_own_warm_workers() {
    use autoscaler::docker::PoolSpec;
    let env = TestEnv::new("pools").await;
    let base = env.config();
    let spec = |cpu: f64, labels: &[(&str, &str)], taints: &[&str]| PoolSpec {
        image: base.image.clone(),
        cpu,
        memory_bytes: base.memory_bytes,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        taints: taints.iter().map(|t| t.to_string()).collect(),
        ..PoolSpec::default()
    };
    let config = autoscaler::docker::PoolConfig {
        warm_pool: 2,
        pools: BTreeMap::from([
            ("general".to_string(), spec(0.5, &[], &[])),
            (
                "highmem".to_string(),
                spec(
                    0.25,
                    &[("tier", "highmem")],
                    &["dedicated=highmem:NoSchedule"],
                ),
            ),
        ]),
        ..base
    };
    let prefix = config.name_prefix.clone();
    let pool = DockerWorkerPool::new(env.docker.clone(), config.clone());
    let in_pool = |p: &str| CreateWorker {
        pool: Some(p.to_string()),
        ..request("evt")
    };

    let h = pool.acquire(&in_pool("highmem")).await.unwrap();
    assert_eq!(h.worker.name, format!("{prefix}highmem-1"));
    assert_eq!(h.worker.state, WorkerState::Running);
    assert_eq!(h.worker.pool(), Some("highmem"));
    let raw = env
        .docker
        .inspect_container(&h.worker.name, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let cmd = raw.config.unwrap().cmd.unwrap();
    assert_eq!(
        cmd,
        vec![
            "pause",
            "--node-label",
            "k3s-autoscaler/pool=highmem",
            "--node-label",
            "tier=highmem",
            "--node-taint",
            "dedicated=highmem:NoSchedule"
        ]
    );
    assert_eq!(raw.host_config.unwrap().nano_cpus, Some(250_000_000));

    // A highmem worker stopped warm is not what a general scale-up starts.
    assert_eq!(pool.release(&h.worker.name).await.unwrap(), Released::Warm);
    let g = pool.acquire(&in_pool("general")).await.unwrap();
    assert!(
        !g.from_warm_pool,
        "a general worker is never a warm highmem one"
    );
    assert_eq!(g.worker.name, format!("{prefix}general-1"));
    assert_eq!(g.worker.pool(), Some("general"));
    // A restarted autoscaler keeps the warm worker's pool too.
    let restarted = DockerWorkerPool::new(env.docker.clone(), config.clone());
    restarted.adopt().await.unwrap();
    assert_eq!(restarted.warm_workers(), vec![h.worker.name.clone()]);
    let again = restarted.acquire(&in_pool("highmem")).await.unwrap();
    assert!(again.from_warm_pool);
    assert_eq!(again.worker.id, h.worker.id);

    // An unknown pool is refused before anything is created.
    let err = restarted.acquire(&in_pool("gpu")).await.unwrap_err();
    assert!(matches!(err, DockerError::UnknownPool { .. }), "{err}");
    for w in [&again.worker.name, &g.worker.name] {
        restarted.remove_worker(w).await.unwrap();
    }
    assert!(env.container_names().await.is_empty());
    assert!(env.volume_names().await.is_empty());
}

#[tokio::test]
async fn docker_a_name_held_by_another_pool_is_never_handed_over() {
    let env = TestEnv::new("mismatch").await;
    let before = env.config();
    // The same names, after `pools` was configured (with a pool named `default`).
    let after = autoscaler::docker::PoolConfig {
        pools: BTreeMap::from([(
            "default".to_string(),
            autoscaler::docker::PoolSpec {
                image: before.image.clone(),
                ..Default::default()
            },
        )]),
        ..before.clone()
    };
    let old = DockerWorkerPool::new(env.docker.clone(), before.clone());
    let new = DockerWorkerPool::new(env.docker.clone(), after);
    let name = format!("{}5", before.name_prefix);
    let named = |pool: Option<&str>| CreateWorker {
        name: Some(name.clone()),
        pool: pool.map(str::to_string),
        ..request("evt")
    };
    let stale = old.create(&named(None)).await.unwrap();
    old.stop_worker(&name).await.unwrap();

    // Stopped, of the old pool label: replaced by a worker of the new template.
    let w = new.create(&named(Some("default"))).await.unwrap();
    assert_ne!(w.id, stale.id);
    assert_eq!(w.pool(), Some("default"));
    assert_eq!(w.state, WorkerState::Running);

    // Running, of another pool: refused.
    let err = old.create(&named(None)).await.unwrap_err();
    assert!(matches!(err, DockerError::PoolMismatch { .. }), "{err}");
    assert!(!err.retryable());
    new.remove_worker(&name).await.unwrap();
    assert!(env.container_names().await.is_empty());
}
