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
