//! A Redis for `autoscaler lab`: the one at the configured URL when it answers, else a `redis-server`
//! started here (fresh, AOF on, files in `$LAB_DIR/redis`) and stopped with the lab.

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Why no Redis could be had.
#[derive(Debug, thiserror::Error)]
pub enum LocalRedisError {
    #[error("no Redis answers at the configured URL and `redis-server` cannot be started ({0}); install it with `apt-get install -y redis-server` or set REDIS_URL")]
    Spawn(std::io::Error),
    #[error("cannot prepare {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("redis-server on port {0} did not answer within 10 s")]
    NoAnswer(u16),
    #[error("no free port: {0}")]
    Port(std::io::Error),
    #[error("the configured sentinels or Redis Cluster do not answer (the lab starts a Redis of its own only for `event_bus.mode: single`)")]
    Topology,
}

/// A Redis the lab uses; stops the server it started when dropped.
pub struct LocalRedis {
    /// The URL to use: the configured one, or the started server's (no password, no TLS). It may
    /// hold a password: show it with [`bus::redact_url`].
    pub url: String,
    child: Option<Child>,
}

impl LocalRedis {
    /// Whether this process started the server.
    pub fn started_here(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// PING with a short timeout, connecting as `config` says (credentials, TLS).
pub async fn answers(config: &bus::BusConfig) -> bool {
    let ping = async {
        let bus = bus::connect(config.clone())
            .await
            .map_err(|e| e.to_string())?;
        let mut conn = bus.connection();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ping).await,
        Ok(Ok(_))
    )
}

/// Uses the configured Redis when it answers, else starts `redis-server` on a free loopback port.
pub async fn ensure(
    config: &bus::BusConfig,
    lab_dir: &Path,
) -> Result<LocalRedis, LocalRedisError> {
    if answers(config).await {
        return Ok(LocalRedis {
            url: config.url.clone(),
            child: None,
        });
    }
    // A lab stands in for one Redis only: sentinels or a cluster that do not answer are an error.
    if config.topology != bus::Topology::Single {
        return Err(LocalRedisError::Topology);
    }
    // A lab started here starts afresh: its workers were removed when the last one stopped, so old
    // history would only describe containers that are gone.
    let dir = lab_dir.join("redis");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|source| LocalRedisError::Dir {
        path: dir.display().to_string(),
        source,
    })?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(LocalRedisError::Port)?
        .port();
    let log =
        std::fs::File::create(dir.join("redis.log")).map_err(|source| LocalRedisError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--appendonly", "yes", "--save", ""])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::from(log))
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(LocalRedisError::Spawn)?;
    let local = LocalRedis {
        url: format!("redis://127.0.0.1:{port}"),
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if answers(&bus::BusConfig::new(local.url.clone(), "ping")).await {
            tracing::info!(url = %bus::redact_url(&local.url), dir = %dir.display(), "lab: started redis-server");
            return Ok(local);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(LocalRedisError::NoAnswer(port))
}
