//! The configuration tests: loading, environment overrides, and field-named problems.

use std::path::Path;
use std::time::Duration;

use super::*;

/// The smallest valid configuration: the required keys, each set once.
const MINIMAL_BLOCK: &str = r#"
autoscaler:
  limits:
    min_nodes: 2
    max_nodes: 6
  enforcement:
    auto_scale_to_min: true
    min_violation_check_interval: 10  # seconds
    emergency_scale_threshold: 2  # scale up 2x if this many lost
  events:
    event_bus:
      type: "redis_streams"
      stream_name: "autoscaler_events"
      max_stream_length: 10000
    handlers:
      - "MetricsListener"
      - "ScalingDecisionEngine"
      - "NodeManager"
      - "MinimumNodeEnforcer"
      - "StateSynchronizer"
"#;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn fields(err: ConfigError) -> Vec<String> {
    err.problems().into_iter().map(|p| p.field).collect()
}

#[test]
fn the_minimal_block_loads_unchanged() {
    let s = Settings::from_yaml_with_env(MINIMAL_BLOCK, no_env()).expect("minimal block is valid");
    assert_eq!(s.autoscaler.limits.min_nodes, 2);
    assert_eq!(s.autoscaler.limits.max_nodes, 6);
    assert_eq!(
        s.autoscaler.enforcement.min_violation_check_interval,
        Duration::from_secs(10)
    );
    assert_eq!(
        s.autoscaler.events.event_bus.stream_name,
        "autoscaler_events"
    );
    assert_eq!(s.autoscaler.events.handlers.len(), 5);
}

#[test]
fn the_shipped_config_yaml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.yaml");
    let s = Settings::load_with_env(&path, no_env()).expect("config.yaml is valid");
    assert_eq!(
        s.autoscaler.scaling.underutilized_for,
        Duration::from_secs(300)
    );
    assert_eq!(s.autoscaler.workers.memory, 2 * 1024 * 1024 * 1024);
}

#[test]
fn environment_overrides_apply_and_redis_url_wins() {
    let env = vec![
        ("AUTOSCALER__LIMITS__MAX_NODES".to_string(), "8".to_string()),
        (
            "AUTOSCALER__SCALING__UNDERUTILIZED_FOR".to_string(),
            "90s".to_string(),
        ),
        (
            "REDIS_URL".to_string(),
            "redis://10.0.0.1:6380/0".to_string(),
        ),
        ("PATH".to_string(), "/bin".to_string()),
    ];
    let s = Settings::from_yaml_with_env(MINIMAL_BLOCK, env).expect("valid");
    assert_eq!(s.autoscaler.limits.max_nodes, 8);
    assert_eq!(
        s.autoscaler.scaling.underutilized_for,
        Duration::from_secs(90)
    );
    assert_eq!(s.autoscaler.events.event_bus.url, "redis://10.0.0.1:6380/0");
}

#[test]
fn durations_accept_seconds_and_humantime() {
    let yaml = MINIMAL_BLOCK.replace(
        "min_violation_check_interval: 10",
        "min_violation_check_interval: \"1m 30s\"",
    );
    let s = Settings::from_yaml_with_env(&yaml, no_env()).expect("valid");
    assert_eq!(
        s.autoscaler.enforcement.min_violation_check_interval,
        Duration::from_secs(90)
    );
    let bad = MINIMAL_BLOCK.replace(
        "min_violation_check_interval: 10",
        "min_violation_check_interval: soon",
    );
    let err = Settings::from_yaml_with_env(&bad, no_env()).unwrap_err();
    assert_eq!(
        fields(err),
        vec!["autoscaler.enforcement.min_violation_check_interval"]
    );
}

#[test]
fn every_bad_field_is_reported_by_name() {
    let yaml = MINIMAL_BLOCK
        .replace("min_nodes: 2", "min_nodes: 9")
        .replace("\"MetricsListener\"", "\"MetricListener\"")
        .replace(
            "max_stream_length: 10000",
            "max_stream_length: 10000\n      url: \"not a url\"",
        )
        .replace(
            "auto_scale_to_min: true",
            "auto_scale_to_min: true\n    surprise: 1",
        );
    let err = Settings::from_yaml_with_env(&yaml, no_env()).unwrap_err();
    let f = fields(err);
    assert!(
        f.contains(&"autoscaler.enforcement.surprise".to_string()),
        "{f:?}"
    );
    assert!(
        f.contains(&"autoscaler.limits.min_nodes".to_string()),
        "{f:?}"
    );
    assert!(
        f.contains(&"autoscaler.events.handlers[0]".to_string()),
        "{f:?}"
    );
    assert!(
        f.contains(&"autoscaler.events.event_bus.url".to_string()),
        "{f:?}"
    );
}

#[test]
fn max_nodes_zero_is_rejected() {
    let yaml = MINIMAL_BLOCK
        .replace("min_nodes: 2", "min_nodes: 0")
        .replace("max_nodes: 6", "max_nodes: 0");
    let err = Settings::from_yaml_with_env(&yaml, no_env()).unwrap_err();
    assert_eq!(fields(err), vec!["autoscaler.limits.max_nodes"]);
}

/// `MINIMAL_BLOCK` with two pools, as the README's example.
fn with_pools(pools: &str) -> String {
    format!("{MINIMAL_BLOCK}  workers:\n    cpu: 1.0\n    memory: \"1Gi\"\n  pools:\n{pools}")
}

const TWO_POOLS: &str = r#"    - name: general
      min_nodes: 1
      max_nodes: 4
    - name: highmem
      max_nodes: 2
      cpu: 2
      memory: "4Gi"
      max_pods: 30
      priority: 10
      image: "example/k3s:highmem"
      args: ["--kubelet-arg", "max-pods=30"]
      labels:
        tier: highmem
        example.com/Disk-Type: SSD
      taints: ["dedicated=highmem:NoSchedule", "spot:PreferNoSchedule"]
"#;

#[test]
fn without_pools_the_default_pool_and_least_waste_remain() {
    let s = Settings::from_yaml_with_env(MINIMAL_BLOCK, no_env()).expect("valid");
    assert!(s.autoscaler.pools.is_empty());
    let policy = crate::runtime::settings::policy(&s);
    assert!(policy.pools.is_empty());
    assert_eq!(policy.expander, handlers::policy::Expander::LeastWaste);
    let pools = policy.node_pools();
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].name, handlers::policy::DEFAULT_POOL);
    assert_eq!((pools[0].min_nodes, pools[0].max_nodes), (2, 6));
}

#[test]
fn pools_load_with_defaults_from_workers_and_limits() {
    let yaml = with_pools(TWO_POOLS) + "  scaling:\n    expander: priority\n";
    let s = Settings::from_yaml_with_env(&yaml, no_env()).expect("valid");
    let policy = crate::runtime::settings::policy(&s);
    assert_eq!(policy.expander, handlers::policy::Expander::Priority);
    let [general, highmem] = &policy.pools[..] else {
        panic!("two pools: {:?}", policy.pools)
    };
    assert_eq!(general.name, "general");
    assert_eq!((general.min_nodes, general.max_nodes), (1, 4));
    assert_eq!(
        general.allocatable,
        bus::scheduling::Resources::new(1000, 1 << 30, 110)
    );
    assert!(general.labels.is_empty() && general.taints.is_empty());
    assert_eq!(general.priority, 0);
    assert_eq!((highmem.min_nodes, highmem.max_nodes), (0, 2));
    assert_eq!(
        highmem.allocatable,
        bus::scheduling::Resources::new(2000, 4 << 30, 30)
    );
    assert_eq!(highmem.priority, 10);
    // Label keys keep their case and dots.
    assert_eq!(highmem.labels["tier"], "highmem");
    assert_eq!(highmem.labels["example.com/Disk-Type"], "SSD");
    assert_eq!(
        highmem.taints,
        vec![
            bus::scheduling::Taint::new(
                "dedicated",
                "highmem",
                bus::scheduling::TaintEffect::NoSchedule
            ),
            bus::scheduling::Taint::new("spot", "", bus::scheduling::TaintEffect::PreferNoSchedule),
        ]
    );
    let raw = &s.autoscaler.pools[1];
    assert_eq!(raw.image(&s.autoscaler.workers), "example/k3s:highmem");
    assert_eq!(
        s.autoscaler.pools[0].image(&s.autoscaler.workers),
        s.autoscaler.workers.image
    );
}

#[test]
fn the_expander_comes_from_the_environment_too() {
    let env = vec![(
        "AUTOSCALER__SCALING__EXPANDER".to_string(),
        "priority".to_string(),
    )];
    let s = Settings::from_yaml_with_env(MINIMAL_BLOCK, env).expect("valid");
    assert_eq!(
        s.autoscaler.scaling.expander,
        handlers::policy::Expander::Priority
    );
    let bad = MINIMAL_BLOCK.to_string() + "  scaling:\n    expander: cheapest\n";
    let err = Settings::from_yaml_with_env(&bad, no_env()).unwrap_err();
    let problems = err.problems();
    assert_eq!(problems[0].field, "autoscaler.scaling.expander");
    assert!(problems[0].message.contains("least-waste"), "{problems:?}");
}

#[test]
fn every_bad_pool_field_is_reported_by_name() {
    let yaml = with_pools(
        r#"    - name: General
    - name: ok
      min_nodes: 3
      max_nodes: 2
      cpu: 0
      memory: 0
      labels:
        "bad key!": x
        tier: "no spaces"
        k3s-autoscaler/pool: other
        node-role.kubernetes.io/worker: "true"
      taints: ["dedicated=highmem", "a=b:Sometimes", "=x:NoSchedule"]
    - name: ok
    - name: big
      max_nodes: 7
    - name: this-pool-name-is-long-enough-to-make-worker-names-too-long-x
"#,
    );
    let err = Settings::from_yaml_with_env(&yaml, no_env()).unwrap_err();
    let problems = err.problems();
    let f: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    for expected in [
        "autoscaler.pools[0].name",
        "autoscaler.pools[1].min_nodes",
        "autoscaler.pools[1].cpu",
        "autoscaler.pools[1].memory",
        "autoscaler.pools[1].labels.bad key!",
        "autoscaler.pools[1].labels.tier",
        "autoscaler.pools[1].labels.k3s-autoscaler/pool",
        "autoscaler.pools[1].labels.node-role.kubernetes.io/worker",
        "autoscaler.pools[1].taints[0]",
        "autoscaler.pools[1].taints[1]",
        "autoscaler.pools[1].taints[2]",
        "autoscaler.pools[2].name",
        "autoscaler.pools[3].max_nodes",
        "autoscaler.pools[4].name",
    ] {
        assert!(
            f.contains(&expected),
            "{expected} missing from {problems:#?}"
        );
    }
    let text = err.to_string();
    assert!(text.contains("also the name of pools[1]"), "{text}");
    assert!(text.contains("more than limits.max_nodes (6)"), "{text}");
    assert!(text.contains("longer than 63 characters"), "{text}");
}

#[test]
fn the_pools_minimums_must_fit_in_max_nodes() {
    let yaml = with_pools("    - {name: a, min_nodes: 4}\n    - {name: b, min_nodes: 3}\n");
    let err = Settings::from_yaml_with_env(&yaml, no_env()).unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "autoscaler.pools");
    assert!(problems[0].message.contains("add up to 7"), "{problems:?}");
}

#[test]
fn an_unknown_pool_key_is_reported() {
    let yaml = with_pools("    - {name: a, gpus: 1}\n");
    let err = Settings::from_yaml_with_env(&yaml, no_env()).unwrap_err();
    assert_eq!(fields(err), vec!["autoscaler.pools[0].gpus"]);
}

#[test]
fn the_commented_pools_example_of_config_yaml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.yaml");
    let text = std::fs::read_to_string(path).expect("config.yaml");
    // Uncomment the block from `  # pools:` to the next blank line.
    let mut inside = false;
    let uncommented: Vec<String> = text
        .lines()
        .map(|l| {
            inside |= l.starts_with("  # pools:");
            match l.strip_prefix("  # ") {
                Some(rest) if inside => format!("  {rest}"),
                _ => {
                    inside &= !l.trim().is_empty();
                    l.to_string()
                }
            }
        })
        .collect();
    let s = Settings::from_yaml_with_env(&uncommented.join("\n"), no_env())
        .expect("the pools example is valid");
    let names: Vec<&str> = s.autoscaler.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["general", "highmem"]);
    assert_eq!(
        s.autoscaler.pools[1].taints,
        ["dedicated=highmem:NoSchedule"]
    );
    assert_eq!(s.autoscaler.pools[1].buffer.map(|b| b.nodes), Some(1));
    assert_eq!(s.autoscaler.pools[1].schedules[0].min_nodes, 2);
    let policy = crate::runtime::policy(&s);
    assert_eq!(policy.pools[1].buffer.nodes, 1);
    assert_eq!(
        policy.pools[1].schedules[0].duration,
        Duration::from_secs(11 * 3600)
    );
}

#[test]
fn buffers_and_schedules_load_and_bad_ones_are_reported_by_name() {
    let good = format!(
        "{MINIMAL_BLOCK}  workers:\n    buffer: {{cpu: 1.5, memory: 1Gi}}\n  schedules:\n    - {{cron: \"0 8 * * 1-5\", duration: 10h, min_nodes: 4}}\n"
    );
    let s = Settings::from_yaml_with_env(&good, no_env()).expect("valid");
    let policy = crate::runtime::policy(&s);
    assert_eq!(policy.workers.buffer.cpu_millis, 1500);
    assert_eq!(policy.workers.buffer.memory_bytes, 1 << 30);
    assert_eq!(policy.node_pools()[0].buffer.cpu_millis, 1500);
    assert_eq!(policy.schedules[0].min_nodes, 4);

    let bad = format!(
        "{MINIMAL_BLOCK}  workers:\n    buffer: {{nodes: 9, cpu: -1}}\n  schedules:\n    - {{cron: \"at eight\", duration: 0s, min_nodes: 7}}\n"
    );
    let err = Settings::from_yaml_with_env(&bad, no_env()).unwrap_err();
    let f = fields(err);
    for expected in [
        "autoscaler.schedules[0].cron",
        "autoscaler.schedules[0].duration",
        "autoscaler.schedules[0].min_nodes",
        "autoscaler.workers.buffer.nodes",
        "autoscaler.workers.buffer.cpu",
    ] {
        assert!(f.iter().any(|x| x == expected), "{expected} missing: {f:?}");
    }
    let unknown = format!("{MINIMAL_BLOCK}  workers:\n    buffer: {{spare: 1}}\n");
    let err = Settings::from_yaml_with_env(&unknown, no_env()).unwrap_err();
    assert!(err.to_string().contains("spare"), "{err}");
}

/// Durations that would make a loop spin, or every attempt fail at once, are refused by name; the
/// ones that only wait may be zero.
#[test]
fn durations_that_would_spin_are_rejected_and_waits_may_be_zero() {
    let zero = |section: &str, key: &str| -> Vec<String> {
        let yaml = format!("{MINIMAL_BLOCK}  {section}:\n    {key}: 0\n");
        match Settings::from_yaml_with_env(&yaml, no_env()) {
            Ok(_) => Vec::new(),
            Err(e) => fields(e),
        }
    };
    for (section, key) in [
        ("scaling", "max_node_provision_time"),
        ("scaling", "drain_timeout"),
        ("scaling", "provision_retry_backoff"),
        ("scaling", "provision_retry_backoff_max"),
        ("metrics", "interval"),
        ("docker", "timeout"),
        ("kubernetes", "pending_batch_max"),
        ("leader", "lease_ttl"),
    ] {
        assert_eq!(
            zero(section, key),
            vec![format!("autoscaler.{section}.{key}")],
            "{section}.{key}: 0"
        );
    }
    // Set in the minimal block itself.
    let yaml = MINIMAL_BLOCK.replace(
        "min_violation_check_interval: 10",
        "min_violation_check_interval: 0",
    );
    assert_eq!(
        fields(Settings::from_yaml_with_env(&yaml, no_env()).unwrap_err()),
        vec!["autoscaler.enforcement.min_violation_check_interval"]
    );
    for key in ["block", "claim_idle", "idempotency_ttl"] {
        let yaml = MINIMAL_BLOCK.replace(
            "max_stream_length: 10000",
            &format!("max_stream_length: 10000\n      {key}: 0"),
        );
        assert_eq!(
            fields(Settings::from_yaml_with_env(&yaml, no_env()).unwrap_err()),
            vec![format!("autoscaler.events.event_bus.{key}")]
        );
    }
    // A lease shorter than a second is renewed too often to be a lease.
    let yaml = format!("{MINIMAL_BLOCK}  leader:\n    lease_ttl: 300ms\n");
    assert_eq!(
        fields(Settings::from_yaml_with_env(&yaml, no_env()).unwrap_err()),
        vec!["autoscaler.leader.lease_ttl"]
    );
    for (section, key) in [
        ("scaling", "underutilized_for"),
        ("scaling", "scale_up_cooldown"),
        ("scaling", "scale_down_cooldown"),
        ("kubernetes", "pending_batch_idle"),
        ("alerts", "dedup_window"),
    ] {
        assert_eq!(
            zero(section, key),
            Vec::<String>::new(),
            "{section}.{key}: 0"
        );
    }
}

#[test]
fn redis_access_keys_load_and_their_combinations_are_checked() {
    let with = |url: &str, extra: &str| {
        MINIMAL_BLOCK.replace(
            "max_stream_length: 10000",
            &format!("max_stream_length: 10000\n      url: \"{url}\"\n{extra}"),
        )
    };
    let ok = with(
        "rediss://redis:6380",
        "      username: autoscaler\n      password_file: /run/secrets/redis\n      tls:\n        ca_file: /etc/ca.pem\n        cert_file: /etc/c.pem\n        key_file: /etc/k.pem\n",
    );
    let s = Settings::from_yaml_with_env(&ok, no_env()).expect("valid");
    let bus = crate::runtime::bus_config(&s);
    assert_eq!(bus.access.username.as_deref(), Some("autoscaler"));
    assert_eq!(
        bus.access.tls_ca_file.as_deref(),
        Some(Path::new("/etc/ca.pem"))
    );
    for (yaml, field) in [
        (
            with(
                "redis://:pw@redis:6379",
                "      password_file: /run/secrets/redis\n",
            ),
            "autoscaler.events.event_bus.password_file",
        ),
        (
            with(
                "redis://redis:6379",
                "      tls:\n        ca_file: /etc/ca.pem\n",
            ),
            "autoscaler.events.event_bus.tls",
        ),
        (
            with(
                "rediss://redis:6380",
                "      tls:\n        cert_file: /etc/c.pem\n",
            ),
            "autoscaler.events.event_bus.tls",
        ),
    ] {
        let err = Settings::from_yaml_with_env(&yaml, no_env()).unwrap_err();
        let problems = err.problems();
        assert_eq!(
            problems
                .iter()
                .map(|p| p.field.as_str())
                .collect::<Vec<_>>(),
            vec![field]
        );
        // A URL's password never shows in a problem.
        assert!(problems.iter().all(|p| !p.message.contains("pw@")));
    }
}

#[test]
fn webhook_headers_need_a_name_and_exactly_one_source() {
    let yaml = format!(
        "{MINIMAL_BLOCK}  alerts:\n    webhooks:\n      - url: \"https://h.example/x\"\n        headers:\n          - {{name: Authorization, value_env: HOOK_AUTH}}\n          - {{name: \"bad name\", value_env: X}}\n          - {{name: X-Key}}\n"
    );
    let err = Settings::from_yaml_with_env(&yaml, no_env()).unwrap_err();
    assert_eq!(
        fields(err),
        vec![
            "autoscaler.alerts.webhooks[0].headers[1]",
            "autoscaler.alerts.webhooks[0].headers[2]"
        ]
    );
}

#[test]
fn the_bus_topology_is_single_by_default_and_checked_for_sentinel_and_cluster() {
    let s = Settings::from_yaml_with_env(MINIMAL_BLOCK, no_env()).expect("valid");
    assert_eq!(
        s.autoscaler.events.event_bus.topology(),
        Some(bus::Topology::Single)
    );
    let with = |extra: &str, stream: &str| {
        MINIMAL_BLOCK
            .replace(
                "      max_stream_length: 10000\n",
                &format!("      max_stream_length: 10000\n{extra}"),
            )
            .replace("\"autoscaler_events\"", stream)
    };
    let cluster = with(
        "      mode: cluster\n      cluster_nodes: [\"10.0.0.2:7000\"]\n",
        "\"{lab-a}:autoscaler_events\"",
    );
    let s = Settings::from_yaml_with_env(&cluster, no_env()).expect("a tagged stream is valid");
    assert_eq!(
        crate::runtime::bus_config(&s).topology,
        bus::Topology::Cluster {
            seeds: vec!["10.0.0.2:7000".into()]
        }
    );
    let untagged = with("      mode: cluster\n", "\"autoscaler_events\"");
    let err = Settings::from_yaml_with_env(&untagged, no_env()).unwrap_err();
    assert_eq!(fields(err), vec!["autoscaler.events.event_bus.mode"]);
    let sentinel = with(
        "      mode: sentinel\n      sentinels: [\"10.0.0.3:26379\", \"10.0.0.4:26379\"]\n      sentinel_master: mymaster\n",
        "\"autoscaler_events\"",
    );
    let s = Settings::from_yaml_with_env(&sentinel, no_env()).expect("valid");
    assert_eq!(
        crate::runtime::bus_config(&s).access.sentinel_password_file,
        None
    );
    let secured = with(
        "      mode: sentinel\n      sentinels: [\"10.0.0.3:26379\"]\n      sentinel_master: m\n      sentinel_username: watcher\n      sentinel_password_file: /run/secrets/sentinel\n",
        "\"autoscaler_events\"",
    );
    let access = crate::runtime::bus_config(
        &Settings::from_yaml_with_env(&secured, no_env()).expect("valid"),
    )
    .access;
    assert_eq!(access.sentinel_username.as_deref(), Some("watcher"));
    assert_eq!(
        access.sentinel_password_file.as_deref(),
        Some(Path::new("/run/secrets/sentinel"))
    );
    let err = Settings::from_yaml_with_env(
        &with(
            "      sentinel_password_file: /run/secrets/sentinel\n",
            "\"s\"",
        ),
        no_env(),
    )
    .unwrap_err();
    assert_eq!(
        fields(err),
        vec!["autoscaler.events.event_bus.sentinel_password_file"],
        "only with mode: sentinel"
    );
    let s = Settings::from_yaml_with_env(&sentinel, no_env()).expect("valid");
    assert!(matches!(
        crate::runtime::bus_config(&s).topology,
        bus::Topology::Sentinel { ref master, ref sentinels } if master == "mymaster" && sentinels.len() == 2
    ));
    for bad in [
        with("      mode: sentinel\n", "\"s\""),
        with("      mode: replicated\n", "\"s\""),
    ] {
        let err = Settings::from_yaml_with_env(&bad, no_env()).unwrap_err();
        assert_eq!(
            fields(err),
            vec!["autoscaler.events.event_bus.mode"],
            "{bad}"
        );
    }
}

#[test]
fn a_pool_on_another_docker_host_gets_that_hosts_address_network_and_server() {
    let yaml = with_pools(
        "    - name: general\n    - name: edge\n      docker_host: edge\n",
    ) + "  docker:\n    hosts:\n      - {name: edge, host: \"tcp://10.0.0.2:2375\", network: host, k3s_url: \"http://10.0.0.1:6443\"}\n";
    let s = Settings::from_yaml_with_env(&yaml, no_env()).expect("valid");
    let hosts = crate::runtime::host_configs(&s).expect("configs");
    let names: Vec<(&str, &[String])> = hosts
        .iter()
        .map(|(n, p, _)| (n.as_str(), p.as_slice()))
        .collect();
    assert_eq!(
        names,
        [
            ("default", &["general".to_string()][..]),
            ("edge", &["edge".to_string()][..])
        ]
    );
    let (_, _, edge) = &hosts[1];
    assert_eq!(edge.host, "tcp://10.0.0.2:2375");
    assert_eq!(edge.network, "host");
    assert_eq!(edge.k3s_url, "http://10.0.0.1:6443");
    assert_eq!(edge.pools.keys().collect::<Vec<_>>(), ["edge"]);
    let (_, _, default) = &hosts[0];
    assert_eq!(default.network, s.autoscaler.workers.network);
    assert_eq!(default.pools.keys().collect::<Vec<_>>(), ["general"]);
}

#[test]
fn docker_hosts_are_checked_names_addresses_and_the_pools_naming_them() {
    let yaml = with_pools("    - name: edge\n      docker_host: edgy\n")
        + "  docker:\n    hosts:\n      - {name: edge, host: \"npipe://me@box\"}\n      - {name: edge, host: \"tcp://b:2375\"}\n      - {name: default, host: \"tcp://c:2375\"}\n";
    let err = Settings::from_yaml_with_env(&yaml, no_env()).expect_err("invalid");
    assert_eq!(
        fields(err),
        vec![
            "autoscaler.docker.hosts[0].host",
            "autoscaler.docker.hosts[1].name",
            "autoscaler.docker.hosts[2].name",
            "autoscaler.pools[0].docker_host",
        ]
    );
}

#[test]
fn engines_over_tls_and_ssh_get_their_files_and_mismatched_ones_are_refused() {
    let pools =
        with_pools("    - name: a\n      docker_host: a\n    - name: b\n      docker_host: b\n");
    let yaml = pools.clone()
        + "  docker:\n    host: \"tcp://10.0.0.1:2376\"\n    tls: {ca_file: /c/ca.pem, cert_file: /c/cert.pem, key_file: /c/key.pem}\n    hosts:\n      - {name: a, host: \"ssh://ops@edge-1\", ssh_key_file: /k/id}\n      - {name: b, host: \"ssh://edge-2\"}\n";
    let s = Settings::from_yaml_with_env(&yaml, no_env()).expect("valid");
    let hosts = crate::runtime::host_configs(&s).expect("configs");
    let access: Vec<&crate::docker::EngineAccess> =
        hosts.iter().map(|(_, _, c)| &c.access).collect();
    let tls = access[0].tls.as_ref().expect("docker.tls");
    assert_eq!(tls.ca, std::path::Path::new("/c/ca.pem"));
    assert_eq!(tls.key, std::path::Path::new("/c/key.pem"));
    assert_eq!(
        access[1].ssh_key.as_deref(),
        Some(std::path::Path::new("/k/id"))
    );
    assert_eq!(
        *access[2],
        crate::docker::EngineAccess::default(),
        "ssh's own keys"
    );

    let bad = pools
        + "  docker:\n    tls: {ca_file: /c/ca.pem}\n    hosts:\n      - {name: a, host: \"unix:///d.sock\", tls: {ca_file: /c/ca.pem, cert_file: /c/c.pem, key_file: /c/k.pem}}\n      - {name: b, host: \"ssh://ops@edge-2:2222\", tls: {ca_file: /c/ca.pem}, ssh_key_file: /k/id}\n";
    let err = Settings::from_yaml_with_env(&bad, no_env()).expect_err("invalid");
    assert_eq!(
        fields(err),
        vec![
            "autoscaler.docker.host",
            "autoscaler.docker.hosts[0].tls",
            // Not tcp://, and not all three files.
            "autoscaler.docker.hosts[1].tls",
            "autoscaler.docker.hosts[1].tls",
            // A port.
            "autoscaler.docker.hosts[1].host",
        ]
    );
}
