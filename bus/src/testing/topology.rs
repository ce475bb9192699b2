//! Redis topologies for tests, on loopback ports: a primary with one replica and three sentinels
//! ([`RedisSentinels`]), and a Redis Cluster of three primaries made by `redis-cli --cluster create`
//! ([`RedisCluster`]). Every process is killed when its value drops, a failed test's too.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{claim_port, fresh_dir, PortClaim, RedisOptions, RedisServer};
use crate::config::{BusConfig, Topology};

/// The master name the sentinels monitor.
pub const MASTER: &str = "bus-test";

/// Waits until `check` holds, panicking with `what` after `within`.
fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            panic!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A synchronous command to `127.0.0.1:port`, `None` when it fails.
fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    Dial::default().query(port, cmd)
}

/// How the test itself reaches the servers and sentinels of a secured set: their password, TLS
/// with the set's certificates.
#[derive(Debug, Clone, Default)]
struct Dial {
    password: Option<String>,
    certs: Option<super::TestCerts>,
}

impl Dial {
    /// A synchronous command to `127.0.0.1:port` with this password and TLS, `None` when it fails.
    fn query<T: redis::FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> Option<T> {
        let (scheme, certs) = match &self.certs {
            Some(c) => ("rediss", Some(c)),
            None => ("redis", None),
        };
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        let url = format!("{scheme}://{auth}127.0.0.1:{port}/");
        let client = match certs {
            None => redis::Client::open(url).ok()?,
            Some(c) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: Some(redis::ClientTlsConfig {
                        client_cert: std::fs::read(&c.client_cert).ok()?,
                        client_key: std::fs::read(&c.client_key).ok()?,
                    }),
                    root_cert: Some(std::fs::read(&c.ca).ok()?),
                },
            )
            .ok()?,
        };
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        cmd.query(&mut conn).ok()
    }
}

/// Passwords and TLS for a [`RedisSentinels`] set: the data nodes' `requirepass` (and `masterauth`,
/// `sentinel auth-pass`), the sentinels' own `requirepass`, TLS everywhere (replication and the
/// sentinels' links included) with one CA.
#[derive(Debug, Clone, Default)]
pub struct SentinelSecurity {
    pub data_password: Option<String>,
    pub sentinel_password: Option<String>,
    pub tls: bool,
}

/// As [`query`], with the error (`what` and the server's reply) when it fails.
fn must_query<T: redis::FromRedisValue>(
    port: u16,
    cmd: &redis::Cmd,
    what: &str,
) -> Result<T, String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .map_err(|e| format!("{what} on {port}: {e}"))?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| format!("{what} on {port}: {e}"))?;
    cmd.query(&mut conn)
        .map_err(|e| format!("{what} on {port}: {e}"))
}

/// One `redis-server --sentinel`, killed on drop.
struct SentinelProcess {
    port: u16,
    _claim: PortClaim,
    dir: PathBuf,
    child: Option<Child>,
}

impl SentinelProcess {
    fn start(
        master_port: u16,
        down_after: Duration,
        failover_timeout: Duration,
        security: &SentinelSecurity,
        certs: Option<&super::TestCerts>,
    ) -> Self {
        let claim = claim_port();
        let port = claim.port;
        let dir = fresh_dir(&format!("bus-sentinel-{port}"));
        // The sentinel rewrites its file (what it learns of replicas and other sentinels).
        let conf = dir.join("sentinel.conf");
        let listen = match certs {
            Some(c) => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-replication yes\ntls-auth-clients no\n",
                c.server_cert.display(),
                c.server_key.display(),
                c.ca.display()
            ),
            None => format!("port {port}\n"),
        };
        let mut auth = String::new();
        if let Some(p) = &security.sentinel_password {
            auth.push_str(&format!("requirepass {p}\n"));
        }
        if let Some(p) = &security.data_password {
            auth.push_str(&format!("sentinel auth-pass {MASTER} {p}\n"));
        }
        let text = format!(
            "{listen}bind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
             sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n{auth}\
             sentinel down-after-milliseconds {MASTER} {down}\n\
             sentinel failover-timeout {MASTER} {failover}\n\
             sentinel parallel-syncs {MASTER} 1\n",
            dir = dir.display(),
            log = dir.join("sentinel.log").display(),
            down = down_after.as_millis(),
            failover = failover_timeout.as_millis(),
        );
        if let Err(e) = std::fs::write(&conf, text) {
            panic!("cannot write {}: {e}", conf.display());
        }
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server not found: apt-get install -y redis-server")
            }
            Err(e) => panic!("cannot start redis-server --sentinel: {e}"),
        };
        let s = Self {
            port,
            _claim: claim,
            dir,
            child: Some(child),
        };
        let dial = Dial {
            password: security.sentinel_password.clone(),
            certs: certs.cloned(),
        };
        wait_for(
            &format!("sentinel on port {port} answers PING"),
            Duration::from_secs(10),
            || dial.query::<String>(port, &redis::cmd("PING")).is_some(),
        );
        s
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A primary, one replica of it and three sentinels (quorum 2) with short failure detection: the
/// sentinels call the primary down after `down_after` and promote the replica.
pub struct RedisSentinels {
    // Sentinels first: dropped (killed) before the servers, so they do not fail over while the
    // test's servers go.
    sentinels: Vec<SentinelProcess>,
    servers: Vec<RedisServer>,
    down_after: Duration,
    security: SentinelSecurity,
    /// The test's way to the data nodes, and to the sentinels.
    data: Dial,
    sentinel: Dial,
    /// The shared certificates and the sentinels' password file.
    dir: PathBuf,
}

impl RedisSentinels {
    /// Starts them and waits until every sentinel knows the replica and the two other sentinels (a
    /// failover needs both).
    pub fn start(down_after: Duration) -> Self {
        Self::start_with(down_after, SentinelSecurity::default())
    }

    /// As [`RedisSentinels::start`], behind the passwords and TLS `security` says.
    pub fn start_with(down_after: Duration, security: SentinelSecurity) -> Self {
        let dir = fresh_dir("bus-sentinels");
        let certs = security.tls.then(|| super::TestCerts::make(&dir));
        let server_options = |extra: Vec<String>| {
            let mut args = extra;
            if let Some(p) = &security.data_password {
                // A replica (and a demoted master) authenticates to its master.
                args.extend(["--masterauth".into(), p.clone()]);
            }
            if security.tls {
                args.extend(["--tls-replication".into(), "yes".into()]);
            }
            RedisOptions {
                tls: security.tls,
                certs: certs.clone(),
                password: security.data_password.clone(),
                args,
                ..RedisOptions::default()
            }
        };
        let data = Dial {
            password: security.data_password.clone(),
            certs: certs.clone(),
        };
        let sentinel = Dial {
            password: security.sentinel_password.clone(),
            certs: certs.clone(),
        };
        let primary = RedisServer::start_with(server_options(Vec::new()));
        let replica = RedisServer::start_with(server_options(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port().to_string(),
        ]));
        wait_for("the replica is in sync", Duration::from_secs(10), || {
            data.query::<String>(replica.port(), redis::cmd("INFO").arg("replication"))
                .is_some_and(|i| i.contains("master_link_status:up"))
        });
        let failover_timeout = Duration::from_secs(10);
        let sentinels: Vec<_> = (0..3)
            .map(|_| {
                SentinelProcess::start(
                    primary.port(),
                    down_after,
                    failover_timeout,
                    &security,
                    certs.as_ref(),
                )
            })
            .collect();
        for s in &sentinels {
            wait_for(
                &format!("sentinel {} knows the replica and the others", s.port),
                Duration::from_secs(20),
                || {
                    let replicas: Option<Vec<redis::Value>> =
                        sentinel.query(s.port, redis::cmd("SENTINEL").arg("replicas").arg(MASTER));
                    let others: Option<Vec<redis::Value>> =
                        sentinel.query(s.port, redis::cmd("SENTINEL").arg("sentinels").arg(MASTER));
                    replicas.is_some_and(|r| r.len() == 1) && others.is_some_and(|o| o.len() == 2)
                },
            );
        }
        Self {
            sentinels,
            servers: vec![primary, replica],
            down_after,
            security,
            data,
            sentinel,
            dir,
        }
    }

    /// `host:port` of each sentinel.
    pub fn sentinel_addresses(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The port the sentinels name as the master's, if one answers.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            self.sentinel
                .query::<(String, u16)>(
                    s.port,
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(MASTER),
                )
                .map(|(_, port)| port)
        })
    }

    /// The server on `port` (the primary or the replica).
    pub fn server(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.servers.iter_mut().find(|s| s.port() == port)
    }

    /// Kills the current master (SIGKILL); returns its port. The sentinels promote the replica after
    /// `down_after` and their election.
    pub fn kill_master(&mut self) -> u16 {
        let Some(port) = self.master_port() else {
            panic!("no sentinel names a master");
        };
        match self.server(port) {
            Some(s) => s.kill(),
            None => panic!("the sentinels name port {port}, not one of this set's servers"),
        }
        port
    }

    /// Waits until the sentinels name a master other than `old` and it answers as one.
    pub fn wait_failover(&self, old: u16, within: Duration) -> u16 {
        let mut new = None;
        wait_for("the sentinels promote the replica", within, || {
            new = self.master_port().filter(|p| *p != old).filter(|p| {
                self.data.query::<Vec<redis::Value>>(*p, &redis::cmd("ROLE")).is_some_and(
                    |r| matches!(r.first(), Some(redis::Value::BulkString(b)) if b == b"master"),
                )
            });
            new.is_some()
        });
        new.unwrap_or(old)
    }

    /// How long the sentinels wait before they call a master down.
    pub fn down_after(&self) -> Duration {
        self.down_after
    }

    /// Bus settings for `stream` through these sentinels, with short timings for tests. The URL names
    /// no reachable node: only the sentinels say where the master is.
    ///
    /// Secured: the data nodes' password in the URL, the sentinels' in a file
    /// (`sentinel_password_file`), the set's CA and client certificate for TLS.
    pub fn config(&self, stream: &str) -> BusConfig {
        let scheme = if self.security.tls { "rediss" } else { "redis" };
        let auth = self
            .security
            .data_password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        let mut c = BusConfig::new(format!("{scheme}://{auth}sentinel-named-master/"), stream);
        c.topology = Topology::Sentinel {
            sentinels: self.sentinel_addresses(),
            master: MASTER.into(),
        };
        if let Some(p) = &self.security.sentinel_password {
            let file = self.dir.join("sentinel-password");
            if let Err(e) = std::fs::write(&file, p) {
                panic!("cannot write {}: {e}", file.display());
            }
            c.access.sentinel_password_file = Some(file);
        }
        if let Some(certs) = &self.sentinel.certs {
            c.access.tls_ca_file = Some(certs.ca.clone());
            c.access.tls_cert_file = Some(certs.client_cert.clone());
            c.access.tls_key_file = Some(certs.client_key.clone());
        }
        c.block = Duration::from_millis(200);
        c.claim_idle = Duration::from_millis(500);
        c
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        // The processes first (fields drop after this), then their shared files.
        self.sentinels.clear();
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three primaries (no replicas) on loopback ports, every slot assigned.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three `--cluster-enabled` servers, joins them with `redis-cli --cluster create` and waits
    /// until every node says `cluster_state:ok`. Panics (with how to install it) if redis-cli is missing.
    pub fn start() -> Self {
        let nodes: Vec<_> = (0..3)
            .map(|_| {
                RedisServer::start_with(RedisOptions {
                    args: ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
                        .map(String::from)
                        .to_vec(),
                    ..RedisOptions::default()
                })
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        // `redis-cli --cluster create` waits for the nodes to join with no end of its own: bounded
        // here (coreutils' `timeout`), so a cluster that cannot form fails its test, not CI's run.
        let out = Command::new("timeout")
            .arg("60")
            .arg("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) if o.status.code() == Some(124) => panic!(
                "redis-cli --cluster create did not finish within 60 s: {}",
                String::from_utf8_lossy(&o.stdout)
            ),
            Ok(o) if o.status.code() == Some(127) => {
                panic!("redis-cli not found: apt-get install -y redis-tools")
            }
            Ok(o) => panic!(
                "redis-cli --cluster create failed ({}): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-cli not found: apt-get install -y redis-tools")
            }
            Err(e) => panic!("cannot run redis-cli: {e}"),
        }
        for n in &nodes {
            wait_for(
                &format!("cluster node {} is ok", n.port()),
                Duration::from_secs(20),
                || {
                    query::<String>(n.port(), redis::cmd("CLUSTER").arg("INFO"))
                        .is_some_and(|i| i.contains("cluster_state:ok"))
                },
            );
        }
        Self { nodes }
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The port of the primary serving `key`'s slot (`CLUSTER KEYSLOT` + `CLUSTER SLOTS`).
    pub fn owner_of(&self, key: &str) -> Option<u16> {
        let port = self.nodes.first()?.port();
        let slot: i64 = query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))?;
        let slots: Vec<(i64, i64, (String, u16))> =
            query::<Vec<redis::Value>>(port, redis::cmd("CLUSTER").arg("SLOTS"))?
                .into_iter()
                .filter_map(|range| {
                    let redis::Value::Array(parts) = range else {
                        return None;
                    };
                    let mut it = parts.into_iter();
                    let from = redis::from_redis_value::<i64>(it.next()?).ok()?;
                    let to = redis::from_redis_value::<i64>(it.next()?).ok()?;
                    let redis::Value::Array(node) = it.next()? else {
                        return None;
                    };
                    let mut n = node.into_iter();
                    let host = redis::from_redis_value::<String>(n.next()?).ok()?;
                    let p = redis::from_redis_value::<u16>(n.next()?).ok()?;
                    Some((from, to, (host, p)))
                })
                .collect();
        slots
            .into_iter()
            .find(|(from, to, _)| (*from..=*to).contains(&slot))
            .map(|(_, _, (_, p))| p)
    }

    /// Moves `key`'s slot to the primary on `to` as `redis-cli --cluster reshard` does: the slot
    /// IMPORTING there and MIGRATING here, `key` itself first and then the slot's other keys,
    /// one `MIGRATE` each, `pace` after each, then the slot given to `to` on every node. While it
    /// lasts, clients meet the slot half-moved: `ASK` for a key gone already, `TRYAGAIN` for a
    /// command over keys on both sides. Returns when `key` itself had moved (the rest of the
    /// slot's keys and the slot's owner not yet). Blocking: run it off the async runtime.
    pub fn migrate_slot(&self, key: &str, to: u16, pace: Duration) -> Result<Instant, String> {
        let from = self.owner_of(key).ok_or("no owner")?;
        if from == to {
            return Err(format!("{key} is on {to} already"));
        }
        let id = |port: u16| -> Result<String, String> {
            must_query(port, redis::cmd("CLUSTER").arg("MYID"), "CLUSTER MYID")
        };
        let (from_id, to_id) = (id(from)?, id(to)?);
        let slot: i64 = must_query(
            from,
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
            "KEYSLOT",
        )?;
        let set = |port: u16, state: &str, node: &str| -> Result<(), String> {
            must_query::<()>(
                port,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(state)
                    .arg(node),
                &format!("SETSLOT {slot} {state}"),
            )
        };
        set(to, "IMPORTING", &from_id)?;
        set(from, "MIGRATING", &to_id)?;
        let migrate = |k: &str| -> Result<(), String> {
            let moved: String = must_query(
                from,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to)
                    .arg(k)
                    .arg(0)
                    .arg(5000),
                &format!("MIGRATE {k}"),
            )?;
            if moved == "OK" || moved == "NOKEY" {
                Ok(())
            } else {
                Err(format!("MIGRATE {k}: {moved}"))
            }
        };
        migrate(key)?;
        let key_moved = Instant::now();
        std::thread::sleep(pace);
        loop {
            let keys: Vec<String> = must_query(
                from,
                redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(1),
                "GETKEYSINSLOT",
            )?;
            let Some(k) = keys.first() else { break };
            migrate(k)?;
            std::thread::sleep(pace);
        }
        set(to, "NODE", &to_id)?;
        set(from, "NODE", &to_id)?;
        for port in self.ports().into_iter().filter(|p| *p != from && *p != to) {
            set(port, "NODE", &to_id)?;
        }
        Ok(key_moved)
    }

    /// Bus settings for `stream` on this cluster (the first node as URL, the others as seeds), with
    /// short timings for tests. The stream needs a hash tag.
    pub fn config(&self, stream: &str) -> BusConfig {
        let ports = self.ports();
        let mut c = BusConfig::new(format!("redis://127.0.0.1:{}/", ports[0]), stream);
        c.topology = Topology::Cluster {
            seeds: ports[1..]
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect(),
        };
        c.block = Duration::from_millis(200);
        c.claim_idle = Duration::from_millis(500);
        c
    }
}
