//! What each part of the runtime takes from the [`Settings`]: the bus's configuration, the events'
//! metadata, the Docker pool's configuration (with the k3s join token) and the decision core's
//! [`handlers::policy::Policy`]. Plain field mapping, no I/O beyond reading the token file.

use crate::config::Settings;

/// The bus settings of a configuration.
pub fn bus_config(settings: &Settings) -> bus::BusConfig {
    let b = &settings.autoscaler.events.event_bus;
    let mut c = bus::BusConfig::new(b.url.clone(), b.stream_name.clone());
    // An unknown mode is refused by `config check` before this runs.
    c.topology = b.topology().unwrap_or_default();
    c.max_len = usize::try_from(b.max_stream_length).unwrap_or(usize::MAX);
    c.claim_idle = b.claim_idle;
    c.max_deliveries = b.max_deliveries;
    c.block = b.block;
    c.batch_size = b.batch_size;
    c.concurrency = b.concurrency;
    c.idempotency_ttl = b.idempotency_ttl;
    let file = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
    c.access = bus::RedisAccess {
        username: (!b.username.is_empty()).then(|| b.username.clone()),
        password_file: file(&b.password_file),
        tls_ca_file: file(&b.tls.ca_file),
        tls_cert_file: file(&b.tls.cert_file),
        tls_key_file: file(&b.tls.key_file),
        sentinel_username: (!b.sentinel_username.is_empty()).then(|| b.sentinel_username.clone()),
        sentinel_password_file: file(&b.sentinel_password_file),
    };
    c
}

/// The metadata every event of this cluster carries.
pub fn metadata(settings: &Settings) -> bus::Metadata {
    let mut m = bus::Metadata::new(
        settings.autoscaler.cluster_id.clone(),
        settings.autoscaler.region.clone(),
    );
    m.dry_run = settings.autoscaler.dry_run;
    m
}

/// The k3s join token: `K3S_TOKEN`, else the contents of `workers.token_file`. Never logged.
pub fn k3s_token(settings: &Settings) -> std::io::Result<Option<crate::docker::Secret>> {
    if let Ok(t) = std::env::var("K3S_TOKEN") {
        if !t.is_empty() {
            return Ok(Some(crate::docker::Secret::new(t)));
        }
    }
    let file = &settings.autoscaler.workers.token_file;
    if file.is_empty() {
        return Ok(None);
    }
    let t = std::fs::read_to_string(file)?;
    Ok(Some(crate::docker::Secret::new(t.trim().to_string())))
}

/// The Docker pool settings of a configuration.
pub fn pool_config(settings: &Settings) -> std::io::Result<crate::docker::PoolConfig> {
    let a = &settings.autoscaler;
    let w = &a.workers;
    Ok(crate::docker::PoolConfig {
        host: a.docker.host.clone(),
        access: engine_access(&a.docker.tls, &a.docker.ssh_key_file),
        name_prefix: w.name_prefix.clone(),
        image: w.image.clone(),
        args: w.args.clone(),
        k3s_url: w.k3s_url.clone(),
        token: k3s_token(settings)?,
        network: w.network.clone(),
        restart_policy: w.restart_policy.clone(),
        pool: w.pool.clone(),
        cluster_id: a.cluster_id.clone(),
        cpu: w.cpu,
        memory_bytes: w.memory,
        max_pods: w.max_pods,
        privileged: w.privileged,
        warm_pool: w.warm_pool,
        timeout: a.docker.timeout,
        breaker_failures: a.docker.circuit_breaker_failures,
        pools: a
            .pools
            .iter()
            .map(|p| {
                let (cpu, memory) = (p.cpu(w), p.memory(w));
                let spec = crate::docker::PoolSpec {
                    image: p.image(w).to_string(),
                    args: p.args(w).to_vec(),
                    cpu,
                    memory_bytes: memory,
                    labels: p.labels.clone(),
                    taints: p.taints.clone(),
                    env: lab_node_env(cpu, memory),
                    max_pods: p.max_pods(w),
                };
                (p.name.clone(), spec)
            })
            .collect(),
        extra_env: lab_node_env(w.cpu, w.memory),
        ..crate::docker::PoolConfig::default()
    })
}

/// The engines workers run on, the default one first: one pool configuration each, holding the
/// pools that run there (`pools[].docker_host`), with that host's address, network and `K3S_URL`.
/// Without `docker.hosts`, one: [`pool_config`] itself.
pub fn host_configs(
    settings: &Settings,
) -> std::io::Result<Vec<(String, Vec<String>, crate::docker::PoolConfig)>> {
    let a = &settings.autoscaler;
    let all = pool_config(settings)?;
    if a.docker.hosts.is_empty() {
        return Ok(vec![(
            crate::config::DEFAULT_DOCKER_HOST_NAME.to_string(),
            Vec::new(),
            all,
        )]);
    }
    let pools_on = |host: &str| -> Vec<String> {
        a.pools
            .iter()
            .filter(|p| p.docker_host() == host)
            .map(|p| p.name.clone())
            .collect()
    };
    let only = |names: &[String]| -> crate::docker::PoolConfig {
        let mut c = all.clone();
        c.pools.retain(|name, _| names.contains(name));
        c
    };
    let default_pools = pools_on(crate::config::DEFAULT_DOCKER_HOST_NAME);
    let mut out = vec![(
        crate::config::DEFAULT_DOCKER_HOST_NAME.to_string(),
        default_pools.clone(),
        only(&default_pools),
    )];
    for h in &a.docker.hosts {
        let pools = pools_on(&h.name);
        let mut c = only(&pools);
        c.host = h.host.clone();
        c.access = engine_access(&h.tls, &h.ssh_key_file);
        if let Some(n) = &h.network {
            c.network = n.clone();
        }
        if let Some(u) = &h.k3s_url {
            c.k3s_url = u.clone();
        }
        out.push((h.name.clone(), pools, c));
    }
    Ok(out)
}

/// How an engine is reached, from its config keys (`config check` has made sure they fit its address).
fn engine_access(tls: &crate::config::TlsFiles, ssh_key_file: &str) -> crate::docker::EngineAccess {
    let path = |f: &str| std::path::PathBuf::from(f);
    crate::docker::EngineAccess {
        tls: (!tls.is_empty()).then(|| crate::docker::EngineTls {
            ca: path(&tls.ca_file),
            cert: path(&tls.cert_file),
            key: path(&tls.key_file),
        }),
        ssh_key: (!ssh_key_file.is_empty()).then(|| path(ssh_key_file)),
    }
}

/// The lab's node agent reads its capacity from these; a k3s agent ignores them.
fn lab_node_env(cpu: f64, memory: u64) -> std::collections::BTreeMap<String, String> {
    [
        ("LAB_NODE_CPU".to_string(), cpu.to_string()),
        ("LAB_NODE_MEMORY".to_string(), memory.to_string()),
    ]
    .into_iter()
    .collect()
}

/// The decision core's policy of a configuration.
pub fn policy(settings: &Settings) -> handlers::policy::Policy {
    use handlers::policy as p;
    let a = &settings.autoscaler;
    p::Policy {
        limits: p::Limits {
            min_nodes: a.limits.min_nodes,
            max_nodes: a.limits.max_nodes,
        },
        enforcement: p::Enforcement {
            auto_scale_to_min: a.enforcement.auto_scale_to_min,
            min_violation_check_interval: a.enforcement.min_violation_check_interval,
            emergency_scale_threshold: a.enforcement.emergency_scale_threshold,
            ..p::Enforcement::default()
        },
        thresholds: p::Thresholds {
            cpu_high: a.thresholds.cpu_high,
            memory_high: a.thresholds.memory_high,
            cpu_low: a.thresholds.cpu_low,
            memory_low: a.thresholds.memory_low,
            consecutive_periods: a.thresholds.consecutive_periods,
        },
        scaling: p::Scaling {
            scale_up_step: a.scaling.scale_up_step,
            underutilized_for: a.scaling.underutilized_for,
            scale_up_cooldown: a.scaling.scale_up_cooldown,
            scale_down_cooldown: a.scaling.scale_down_cooldown,
            max_unhealthy_fraction: a.scaling.max_unhealthy_fraction,
            max_node_provision_time: a.scaling.max_node_provision_time,
            drain_timeout: a.scaling.drain_timeout,
            provision_retry_backoff: a.scaling.provision_retry_backoff,
            provision_retry_backoff_max: a.scaling.provision_retry_backoff_max,
            ..p::Scaling::default()
        },
        workers: p::WorkerTemplate {
            name_prefix: a.workers.name_prefix.clone(),
            cpu_millis: cpu_millis(a.workers.cpu),
            memory_bytes: a.workers.memory,
            max_pods: a.workers.max_pods,
            protected: a.workers.protected.clone(),
            warm_pool: a.workers.warm_pool,
            buffer: buffer(&a.workers.buffer),
        },
        alerts: p::AlertPolicy {
            dedup_window: a.alerts.dedup_window,
        },
        sync: p::SyncPolicy::default(),
        pools: a
            .pools
            .iter()
            .map(|pool| p::PoolTemplate {
                name: pool.name.clone(),
                min_nodes: pool.min_nodes,
                max_nodes: pool.max_nodes(&a.limits),
                allocatable: bus::scheduling::Resources::new(
                    cpu_millis(pool.cpu(&a.workers)),
                    pool.memory(&a.workers),
                    pool.max_pods(&a.workers),
                ),
                labels: pool.labels.clone(),
                taints: pool.parsed_taints(),
                priority: pool.priority,
                warm_pool: pool.warm_pool(&a.workers),
                buffer: buffer(&pool.buffer(&a.workers)),
                schedules: schedules(&pool.schedules),
            })
            .collect(),
        expander: a.scaling.expander,
        schedules: schedules(&a.schedules),
    }
}

fn buffer(b: &crate::config::BufferConfig) -> handlers::policy::Buffer {
    handlers::policy::Buffer {
        nodes: b.nodes,
        cpu_millis: cpu_millis(b.cpu),
        memory_bytes: b.memory,
    }
}

fn schedules(s: &[crate::config::ScheduleConfig]) -> Vec<handlers::policy::Schedule> {
    s.iter()
        .map(|s| handlers::policy::Schedule {
            cron: s.cron.clone(),
            duration: s.duration,
            min_nodes: s.min_nodes,
        })
        .collect()
}

/// Cores as millicores, as the decision core counts them.
fn cpu_millis(cores: f64) -> u64 {
    (cores * 1000.0).round() as u64
}
