//! Connecting to Redis: one shared, self-healing connection for commands, and one of its own for every
//! blocking reader — to one Redis, to the master the sentinels name (followed across failovers), or to
//! a Redis Cluster (`docs/TOPOLOGY.md`).

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};
use tracing::{info, warn};

use crate::access::Resolved;
use crate::audit::Audit;
use crate::config::{parse_host_port, BusConfig, Topology};
use crate::consumer::{Consumer, Stats};
use crate::error::{BusError, Result};
use crate::publisher::RedisPublisher;
use crate::reader::{ClusterHop, StreamReader};

/// Response timeout of non-blocking commands. redis-rs ≥ 1.0 defaults to 500 ms, which a busy server
/// (or a large pipeline) can exceed without anything being wrong.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to establish a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Head room above BLOCK for a blocking read's reply to arrive.
const BLOCK_MARGIN: Duration = Duration::from_secs(5);
/// After asking the sentinels, wait this long before asking again: a burst of failed commands during a
/// failover asks once.
const SENTINEL_REASK: Duration = Duration::from_millis(250);
/// On a Redis Cluster, how long a command refused because its slot is moving is sent again, every
/// [`SLOT_MOVE_PAUSE`]: `TRYAGAIN` (keys of one slot on both sides of a migration: the idempotent
/// publish, the outputs-and-ack script), and a `MOVED` or `ASK` that redis-rs' own retries did not
/// get past (the nodes learn a slot's new owner one after the other). A resharding moves a slot's
/// keys in seconds, and the write then goes through (docs/TOPOLOGY.md, "Resharding").
const SLOT_MOVE_PATIENCE: Duration = Duration::from_secs(15);
const SLOT_MOVE_PAUSE: Duration = Duration::from_millis(100);

/// A connected bus: a shared multiplexed connection, how to make more, and the settings.
///
/// Cheap to clone. The connection heals itself: after Redis restarts (or the sentinels promote another
/// master, or a cluster slot moves), the next command fails and the connection reconnects in the
/// background, so callers only retry.
#[derive(Clone)]
pub struct Bus {
    conn: Connection,
    target: Arc<Target>,
    config: Arc<BusConfig>,
}

/// A connection to the bus's Redis, whichever the topology: it runs any redis-rs command, script or
/// pipeline ([`redis::aio::ConnectionLike`]). Cheap to clone (clones share the sockets).
#[derive(Clone)]
pub struct Connection(Inner);

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Sentinel(Arc<Followed>),
    Cluster(ClusterConnection),
}

/// Where new connections go.
struct Target {
    resolved: Resolved,
    kind: TargetKind,
}

enum TargetKind {
    Single(Box<redis::Client>),
    Sentinel(Arc<Sentinels>),
    Cluster {
        /// The URL's node first, then the configured seeds.
        seeds: Vec<(String, u16)>,
        /// The node that last owned the stream's slot (readers go there first).
        owner: Arc<Mutex<Option<(String, u16)>>>,
    },
}

/// Connects to `config.url` as `config.access` and `config.topology` say (ACL user and password, TLS;
/// one Redis, Sentinel, or a Redis Cluster).
pub async fn connect(config: BusConfig) -> Result<Bus> {
    config.validate().map_err(BusError::Access)?;
    let resolved = crate::access::resolve(&config)?;
    let kind = match &config.topology {
        Topology::Single => TargetKind::Single(Box::new(resolved.client(&resolved.info)?)),
        Topology::Sentinel { sentinels, master } => TargetKind::Sentinel(Arc::new(Sentinels {
            nodes: host_ports(sentinels)?,
            master: master.clone(),
            resolved: resolved.clone(),
        })),
        Topology::Cluster { seeds } => {
            let mut all = Vec::new();
            if let redis::ConnectionAddr::Tcp(h, p)
            | redis::ConnectionAddr::TcpTls {
                host: h, port: p, ..
            } = resolved.info.addr()
            {
                all.push((h.clone(), *p));
            }
            all.extend(host_ports(seeds)?);
            TargetKind::Cluster {
                seeds: all,
                owner: Arc::new(Mutex::new(None)),
            }
        }
    };
    let target = Arc::new(Target { resolved, kind });
    let conn = target.connection(COMMAND_TIMEOUT).await?;
    Ok(Bus {
        conn,
        target,
        config: Arc::new(config),
    })
}

fn host_ports(list: &[String]) -> Result<Vec<(String, u16)>> {
    list.iter()
        .map(|a| parse_host_port(a).map_err(|e| BusError::Access(format!("`{a}`: {e}"))))
        .collect()
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(3)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
}

impl Target {
    /// A new connection whose commands may take `response_timeout`.
    async fn connection(&self, response_timeout: Duration) -> Result<Connection> {
        match &self.kind {
            TargetKind::Single(client) => client
                .get_connection_manager_with_config(manager_config(response_timeout))
                .await
                .map(|c| Connection(Inner::Single(c)))
                .map_err(BusError::Connect),
            TargetKind::Sentinel(sentinels) => {
                let addr = sentinels.master().await?;
                let conn = sentinels.manager_at(&addr, response_timeout).await?;
                Ok(Connection(Inner::Sentinel(Arc::new(Followed {
                    sentinels: sentinels.clone(),
                    response_timeout,
                    current: RwLock::new((addr, conn)),
                    asking: tokio::sync::Mutex::new(()),
                }))))
            }
            TargetKind::Cluster { seeds, .. } => {
                let nodes: Vec<_> = seeds.iter().map(|(h, p)| self.resolved.at(h, *p)).collect();
                let mut builder = ClusterClientBuilder::new(nodes)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(response_timeout)
                    // Retries paced as the single connection's (`manager_config`): redis-rs' own
                    // minimum of 1.28 s between two tries is for a node failover, which the callers
                    // retry on their own; a moving slot is waited out above it
                    // (`SLOT_MOVE_PATIENCE`).
                    .retries(3)
                    .min_retry_wait(50)
                    .max_retry_wait(1000)
                    .retry_wait_formula(50, 2);
                if let Some(certs) = &self.resolved.certs {
                    builder = builder.certs(certs.clone());
                }
                let client = builder.build().map_err(BusError::Connect)?;
                client
                    .get_async_connection()
                    .await
                    .map(|c| Connection(Inner::Cluster(c)))
                    .map_err(BusError::Connect)
            }
        }
    }

    /// A reader connection to the node that serves `stream` (see [`crate::reader`]).
    async fn stream_reader(&self) -> Result<StreamReader> {
        let tls = self.resolved.reader_tls.as_ref();
        match &self.kind {
            TargetKind::Single(_) => {
                StreamReader::connect(&self.resolved.info, tls, BLOCK_MARGIN).await
            }
            TargetKind::Sentinel(sentinels) => {
                let (host, port) = sentinels.master().await?;
                StreamReader::connect(&self.resolved.at(&host, port), tls, BLOCK_MARGIN).await
            }
            TargetKind::Cluster { seeds, owner } => {
                // The last known owner first; any node will do, it answers MOVED to the owner.
                let last = owner.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let mut err = None;
                for (host, port) in last.iter().chain(seeds.iter()) {
                    match StreamReader::connect(&self.resolved.at(host, *port), tls, BLOCK_MARGIN)
                        .await
                    {
                        Ok(r) => {
                            return Ok(r.in_cluster(ClusterHop {
                                resolved: self.resolved.clone(),
                                owner: owner.clone(),
                            }))
                        }
                        Err(e) => err = Some(e),
                    }
                }
                Err(err.unwrap_or_else(|| BusError::Access("no cluster node to read from".into())))
            }
        }
    }
}

/// The sentinels of one master, and how to reach the data nodes they name.
struct Sentinels {
    nodes: Vec<(String, u16)>,
    master: String,
    resolved: Resolved,
}

impl Sentinels {
    /// The master's address as the first sentinel that answers names it, confirmed by that server's
    /// `ROLE` (a sentinel that missed a failover names a replica, and the next one is asked).
    async fn master(&self) -> Result<(String, u16)> {
        let quick = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT));
        let mut last = String::from("no sentinel answered");
        for (host, port) in &self.nodes {
            let asked = async {
                let client = self
                    .resolved
                    .client(&self.resolved.sentinel_at(host, *port))?;
                let mut c = client
                    .get_multiplexed_async_connection_with_config(&quick)
                    .await
                    .map_err(BusError::Connect)?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
                    .map_err(BusError::redis("SENTINEL get-master-addr-by-name"))
            };
            let (mhost, mport) = match asked.await {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    last = format!("sentinel {host}:{port} does not know `{}`", self.master);
                    continue;
                }
                Err(e) => {
                    last = format!("sentinel {host}:{port}: {e}");
                    continue;
                }
            };
            let role = async {
                let client = self.resolved.client(&self.resolved.at(&mhost, mport))?;
                let mut c = client
                    .get_multiplexed_async_connection_with_config(&quick)
                    .await
                    .map_err(BusError::Connect)?;
                let role: Vec<Value> = redis::cmd("ROLE")
                    .query_async(&mut c)
                    .await
                    .map_err(BusError::redis("ROLE"))?;
                Ok::<_, BusError>(
                    matches!(role.first(), Some(Value::BulkString(b)) if b == b"master"),
                )
            };
            match role.await {
                Ok(true) => return Ok((mhost, mport)),
                Ok(false) => {
                    last = format!("{mhost}:{mport}, named by {host}:{port}, is not a master")
                }
                Err(e) => last = format!("{mhost}:{mport}, named by {host}:{port}: {e}"),
            }
        }
        Err(BusError::Sentinel {
            master: self.master.clone(),
            detail: last,
        })
    }

    async fn manager_at(
        &self,
        (host, port): &(String, u16),
        response_timeout: Duration,
    ) -> Result<ConnectionManager> {
        self.resolved
            .client(&self.resolved.at(host, *port))?
            .get_connection_manager_with_config(manager_config(response_timeout))
            .await
            .map_err(BusError::Connect)
    }
}

/// A connection to the master the sentinels name. A command that fails as if the master were gone
/// (connection refused or dropped, a timeout, `READONLY` from a demoted master) makes it ask the
/// sentinels again, in the background; when they name another master, later commands go there.
struct Followed {
    sentinels: Arc<Sentinels>,
    response_timeout: Duration,
    current: RwLock<((String, u16), ConnectionManager)>,
    /// Held while asking the sentinels (and [`SENTINEL_REASK`] after): one question at a time.
    asking: tokio::sync::Mutex<()>,
}

impl Followed {
    fn current(&self) -> ConnectionManager {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    fn after_error(self: &Arc<Self>, e: &RedisError) {
        let master_may_have_moved = e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_timeout()
            || matches!(
                e.kind(),
                ErrorKind::Server(
                    redis::ServerErrorKind::ReadOnly | redis::ServerErrorKind::MasterDown
                )
            );
        if !master_may_have_moved {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move { this.reask().await });
    }

    async fn reask(&self) {
        let Ok(_one) = self.asking.try_lock() else {
            return;
        };
        let was = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone();
        match self.sentinels.master().await {
            Ok(addr) if addr != was => {
                match self
                    .sentinels
                    .manager_at(&addr, self.response_timeout)
                    .await
                {
                    Ok(conn) => {
                        info!(master = %self.sentinels.master, from = %format!("{}:{}", was.0, was.1), to = %format!("{}:{}", addr.0, addr.1), "following the new master");
                        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (addr, conn);
                    }
                    Err(e) => {
                        warn!(master = %self.sentinels.master, error = %e, "cannot reach the new master yet")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "the sentinels name no reachable master yet"),
        }
        tokio::time::sleep(SENTINEL_REASK).await;
    }
}

/// A refusal that says the command was not run because its slot is moving: sending it again is safe.
fn slot_is_moving(e: &RedisError) -> bool {
    use redis::ServerErrorKind::{Ask, Moved, TryAgain};
    matches!(e.kind(), ErrorKind::Server(TryAgain | Moved | Ask))
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Inner::Single(c) => c.req_packed_command(cmd),
            Inner::Cluster(c) => Box::pin(async move {
                let deadline = std::time::Instant::now() + SLOT_MOVE_PATIENCE;
                loop {
                    match c.req_packed_command(cmd).await {
                        Err(e) if slot_is_moving(&e) && std::time::Instant::now() < deadline => {
                            tokio::time::sleep(SLOT_MOVE_PAUSE).await
                        }
                        reply => return reply,
                    }
                }
            }),
            Inner::Sentinel(f) => Box::pin(async move {
                let mut c = f.current();
                let reply = c.req_packed_command(cmd).await;
                if let Err(e) = &reply {
                    f.after_error(e);
                }
                reply
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Inner::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Inner::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Inner::Sentinel(f) => Box::pin(async move {
                let mut c = f.current();
                let reply = c.req_packed_commands(pipeline, offset, count).await;
                if let Err(e) = &reply {
                    f.after_error(e);
                }
                reply
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
            Inner::Sentinel(f) => f.current().get_db(),
        }
    }
}

impl Bus {
    /// The settings this bus was connected with.
    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    pub(crate) fn shared_config(&self) -> Arc<BusConfig> {
        self.config.clone()
    }

    /// A clone of the shared connection (multiplexed: clones share one socket per node).
    pub fn connection(&self) -> Connection {
        self.conn.clone()
    }

    /// A new connection for blocking reads (`XREADGROUP`/`XREAD … BLOCK`): its response timeout is above
    /// BLOCK, and a blocked read does not stall the shared connection's other commands.
    pub async fn blocking_connection(&self) -> Result<Connection> {
        self.target
            .connection(self.config.block + BLOCK_MARGIN)
            .await
    }

    /// A connection of its own for a consumer's blocking `XREADGROUP` (see [`crate::reader`]).
    pub(crate) async fn stream_reader(&self) -> Result<StreamReader> {
        self.target.stream_reader().await
    }

    /// A publisher on the shared connection.
    pub fn publisher(&self) -> RedisPublisher {
        RedisPublisher::new(self.conn.clone(), self.config.clone())
    }

    /// A consumer-group runtime with fresh counters.
    pub fn consumer(&self) -> Consumer {
        Consumer::new(self.clone(), Stats::default())
    }

    /// Audit and admin queries.
    pub fn audit(&self) -> Audit {
        Audit::new(self.clone())
    }
}
