//! Shared fixtures of the bus tests: a sample of every event type, connections, waiting.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use bus::testing::RedisServer;
use bus::{Bus, BusConfig, Envelope, Event, Metadata};
use serde_json::json;

/// A sample of `event_type` with every field set (optional ones too).
pub fn sample(event_type: &str) -> Event {
    let t = "2025-12-16T11:20:00Z";
    let data = match event_type {
        "OptimalStateTrigger" => {
            json!({"current_workers": 2, "min_workers": 2, "cpu_avg": 12.5, "memory_avg": 30.25})
        }
        "ScalingActionCompleted" => {
            json!({"action": "scale_up", "count": 1, "previous_workers": 2, "new_workers": 3, "duration": 41.5, "nodes": ["k3s-worker-3"]})
        }
        "ClusterStateSynced" => {
            json!({"k8s_nodes": 3, "docker_containers": 3, "db_workers": 3, "last_sync": t})
        }
        "UnderutilizationWarning" => {
            json!({"workers": 4, "min_workers": 2, "cpu_avg": 10.0, "memory_avg": 20.0, "duration": 300.0, "nodes": [{"node_name": "k3s-worker-1", "cpu": 9.5, "memory": 19.0}]})
        }
        "ResourcePressureAlert" => {
            json!({"cpu_avg": 85.0, "memory_avg": 70.5, "workers": 3, "max_workers": 10})
        }
        "PendingPodsDetected" => {
            json!({"pending_count": 3, "waiting_time": 60.0, "affected_deployments": ["app1", "app2"], "pods": [{"namespace": "default", "name": "app1-x", "cpu_millis": 250, "memory_bytes": 268435456u64, "node_selector": {"tier": "highmem"}, "tolerations": [{"key": "dedicated", "operator": "Exists"}]}]})
        }
        "MetricsSampled" => {
            json!({"workers": 3, "cpu_avg": 55.5, "memory_avg": 40.0, "source": "docker_stats", "nodes": [{"node_name": "k3s-worker-2", "cpu": 55.5, "memory": 40.0}]})
        }
        "NodeHealthDegraded" => {
            json!({"node_name": "k3s-worker-1", "status": "NotReady", "last_check": t})
        }
        "NodeUnexpectedlyLost" => {
            json!({"node_name": "k3s-worker-1", "last_seen": t, "cause": "container_crash"})
        }
        "NodeCreated" => {
            json!({"node_name": "k3s-worker-4", "container_id": "abc123", "pool": "general"})
        }
        "NodeReady" => json!({"node_name": "k3s-worker-4"}),
        "NodeInterruptionNotice" => json!({"node_name": "k3s-worker-2", "cause": "docker_kill"}),
        "NodeCordoned" => json!({"node_name": "k3s-worker-2"}),
        "NodeRemoved" => json!({"node_name": "k3s-worker-2", "pool": "general"}),
        "ClusterObserved" => {
            json!({"k8s_nodes": [{"name": "k3s-worker-1", "ready": true}, {"name": "k3s-worker-2", "ready": false, "scale_down_disabled": true}], "docker_containers": ["k3s-worker-1", "k3s-worker-2"], "unreachable": [{"host": "edge", "pools": ["edge"], "error": "docker engine at tcp://10.0.0.2:2375 unreachable"}]})
        }
        "NodeDrained" => json!({"node_name": "k3s-worker-2", "evicted_pods": 7}),
        "MinimumNodesViolation" => {
            json!({"current_workers": 1, "min_workers": 2, "violation_time": t})
        }
        "AutoScaleUpToMinimum" => {
            json!({"current_workers": 1, "min_workers": 2, "scale_up_count": 1, "reason": "minimum_violation", "target_workers": 2})
        }
        "MinimumNodesRestored" => {
            json!({"current_workers": 2, "min_workers": 2, "restore_time": t})
        }
        "EmergencyScaleUp" => {
            json!({"lost_count": 2, "remaining_workers": 1, "min_workers": 2, "emergency_scale": 2, "target_workers": 3})
        }
        "ScaleUpDecision" => {
            json!({"current_workers": 2, "target_workers": 3, "reason": "pending_pods", "pool": "general", "pool_target": 2})
        }
        "ScaleDownDecision" => {
            json!({"current_workers": 4, "target_workers": 3, "nodes": ["k3s-worker-4"], "reason": "underutilization", "pool": "general"})
        }
        "ManualScaleRequested" => json!({"target_workers": 5, "reason": "manual request"}),
        "ScaleUpStarted" => {
            json!({"count": 1, "target_workers": 3, "nodes": ["k3s-worker-3"], "pool": "general"})
        }
        "ScaleDownStarted" => json!({"count": 1, "target_workers": 3, "nodes": ["k3s-worker-4"]}),
        "ScaleDownBlocked" => {
            json!({"reason": "pending_pods", "workers": 3, "min_workers": 2, "pending_count": 2, "node_name": "k3s-worker-3", "detail": "2 pods pending", "pool": "general"})
        }
        "ScaleUpBlocked" => {
            json!({"reason": "no_pool_fits", "pods": ["default/ssd-1"], "pool": "general", "detail": "no pool has disktype=ssd", "predicates": {"general": "node_selector"}})
        }
        "ScalingActionFailed" => {
            json!({"action": "scale_down", "node_name": "k3s-worker-3", "error": "drain timed out", "retryable": true})
        }
        "PlacementSnapshot" => json!({
            "snapshot": "5f0c", "part": 0, "parts": 2,
            "nodes": [{"name": "k3s-worker-3", "pool": "general",
                "allocatable": {"cpu_millis": 2000, "memory_bytes": 4294967296u64, "pods": 110},
                "labels": {"tier": "highmem"}, "taints": ["dedicated=highmem:NoSchedule"], "ready": true}],
            "pods": [{"template": {"namespace": "default", "name": "", "cpu_millis": 100,
                "labels": {"app": "web"}, "owner_kind": "ReplicaSet"},
                "pods": [["web-1", "k3s-worker-3"], ["web-2", "k3s-worker-3"]]}],
        }),
        "WarmPoolEntered" => json!({"node_name": "k3s-worker-4", "pool": "general"}),
        "WarmPoolLeft" => {
            json!({"node_name": "k3s-worker-4", "pool": "general", "reason": "started"})
        }
        "PlacementChanged" => json!({
            "nodes_removed": ["k3s-worker-4"],
            "pods_removed": [{"namespace": "default", "name": "web-3"}],
        }),
        "ScheduledMinimumStarted" => {
            json!({"schedule": "pool/web/0", "pool": "web", "min_nodes": 3,
            "cron": "0 8 * * 1-5", "window_start": "2026-12-03T08:00:00Z",
            "window_end": "2026-12-03T18:00:00Z"})
        }
        "ScheduledMinimumEnded" => json!({"schedule": "cluster/0", "min_nodes": 4,
            "window_start": "2026-12-03T08:00:00Z"}),
        other => panic!("no sample for {other}: add one to tests/common/mod.rs"),
    };
    match Event::from_value(event_type, data) {
        Ok(e) => e,
        Err(e) => panic!("sample of {event_type} does not decode: {e}"),
    }
}

/// A root envelope of a small event, numbered by `i` (in `node_name`).
pub fn numbered(i: usize) -> Envelope {
    let event = Event::from_value("NodeReady", json!({"node_name": format!("n-{i}")})).unwrap();
    Envelope::root("test", event, Metadata::new("test-cluster", "local"))
}

/// The number of a [`numbered`] envelope.
pub fn number_of(e: &Envelope) -> usize {
    e.event.node_name().unwrap()[2..].parse().unwrap()
}

pub fn envelope_of(event: Event) -> Envelope {
    Envelope::root("test", event, Metadata::new("test-cluster", "local"))
}

/// Test timings: short block and claim_idle.
pub fn config(server: &RedisServer, stream: &str) -> BusConfig {
    server.config(stream)
}

pub async fn connect(config: BusConfig) -> Bus {
    bus::connect(config)
        .await
        .expect("connect to the test redis-server")
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw command on a fresh connection (for XADD of malformed entries, XPENDING, …).
pub async fn raw<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> T {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut conn).await.unwrap()
}

/// The group's pending count.
pub async fn pending(url: &str, stream: &str, group: &str) -> u64 {
    let v: redis::Value = raw(url, redis::cmd("XPENDING").arg(stream).arg(group)).await;
    match v {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}
