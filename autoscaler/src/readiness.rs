//! `/readyz`: ready once the runtime is connected and its consumer groups exist, and only while Redis
//! and the Docker engine answer. A background probe pings both every [`PROBE_EVERY`]; a probe that
//! does not answer within its timeout counts as unreachable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the dependencies are pinged.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// What `/readyz` answers from.
#[derive(Debug)]
pub struct Readiness {
    /// Connected, groups created; cleared when the shutdown begins.
    started: AtomicBool,
    redis: AtomicBool,
    docker: AtomicBool,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// Not started; the dependencies count as reachable until a probe says otherwise (the runtime
    /// starts only once it has connected to both).
    pub fn new() -> Self {
        Self {
            started: AtomicBool::new(false),
            redis: AtomicBool::new(true),
            docker: AtomicBool::new(true),
        }
    }

    pub fn set_started(&self, started: bool) {
        self.started.store(started, Ordering::Relaxed);
    }

    pub fn set_redis(&self, reachable: bool) {
        self.redis.store(reachable, Ordering::Relaxed);
    }

    pub fn set_docker(&self, reachable: bool) {
        self.docker.store(reachable, Ordering::Relaxed);
    }

    /// Ready to work.
    pub fn ready(&self) -> bool {
        self.why_not().is_empty()
    }

    /// Why not ready (empty when ready), for the body of a 503.
    pub fn why_not(&self) -> Vec<&'static str> {
        let mut why = Vec::new();
        if !self.started.load(Ordering::Relaxed) {
            why.push("not started (or shutting down)");
        }
        if !self.redis.load(Ordering::Relaxed) {
            why.push("redis unreachable");
        }
        if !self.docker.load(Ordering::Relaxed) {
            why.push("docker engine unreachable");
        }
        why
    }
}

/// The connections the probe pings.
pub struct Probes {
    /// A connection of its own or shared: the manager reconnects by itself once Redis is back.
    pub redis: bus::Connection,
    /// The engine, pinged directly (not through the circuit breaker, whose state is about calls).
    pub docker: bollard::Docker,
    /// How long a ping may take before it counts as unreachable.
    pub timeout: Duration,
}

async fn redis_answers(conn: &mut bus::Connection, timeout: Duration) -> bool {
    let cmd = redis::cmd("PING");
    let ping = cmd.query_async::<String>(conn);
    matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(_)))
}

async fn docker_answers(docker: &bollard::Docker, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, docker.ping()).await,
        Ok(Ok(_))
    )
}

/// Pings Redis and the engine every `every` until `stop`, keeping `readiness` current and logging
/// each change.
pub async fn watch(
    readiness: Arc<Readiness>,
    mut probes: Probes,
    every: Duration,
    stop: CancellationToken,
) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let redis = redis_answers(&mut probes.redis, probes.timeout).await;
        let docker = docker_answers(&probes.docker, probes.timeout).await;
        log_change(
            "redis",
            readiness.redis.swap(redis, Ordering::Relaxed),
            redis,
        );
        log_change(
            "docker engine",
            readiness.docker.swap(docker, Ordering::Relaxed),
            docker,
        );
    }
}

fn log_change(what: &str, before: bool, now: bool) {
    match (before, now) {
        (true, false) => tracing::warn!(dependency = what, "unreachable: /readyz answers 503"),
        (false, true) => tracing::info!(dependency = what, "reachable again"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_started_and_both_dependencies_answer() {
        let r = Readiness::new();
        assert_eq!(r.why_not(), ["not started (or shutting down)"]);
        r.set_started(true);
        assert!(r.ready());
        r.set_redis(false);
        r.set_docker(false);
        assert_eq!(
            r.why_not(),
            ["redis unreachable", "docker engine unreachable"]
        );
        r.set_redis(true);
        r.set_docker(true);
        assert!(r.ready());
    }
}
