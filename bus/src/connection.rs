//! Connecting to Redis: one shared, self-healing connection for commands, and one of its own for every
//! blocking reader.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::audit::Audit;
use crate::config::BusConfig;
use crate::consumer::{Consumer, Stats};
use crate::error::{BusError, Result};
use crate::publisher::RedisPublisher;
use crate::reader::StreamReader;

/// Response timeout of non-blocking commands. redis-rs ≥ 1.0 defaults to 500 ms, which a busy server
/// (or a large pipeline) can exceed without anything being wrong.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to establish a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Head room above BLOCK for a blocking read's reply to arrive.
const BLOCK_MARGIN: Duration = Duration::from_secs(5);

/// A connected bus: the client, a shared multiplexed connection and the settings.
///
/// Cheap to clone. The connection is a [`ConnectionManager`]: after Redis restarts, the next command fails
/// and the manager reconnects in the background, so callers only retry.
#[derive(Clone)]
pub struct Bus {
    client: redis::Client,
    conn: ConnectionManager,
    config: Arc<BusConfig>,
    /// TLS of the readers' own connections (`rediss://` only).
    reader_tls: Option<Arc<rustls::ClientConfig>>,
}

/// Connects to `config.url` as `config.access` says (ACL user and password, TLS).
pub async fn connect(config: BusConfig) -> Result<Bus> {
    let resolved = crate::access::resolve(&config)?;
    let conn = manager(&resolved.client, COMMAND_TIMEOUT).await?;
    Ok(Bus {
        client: resolved.client,
        conn,
        config: Arc::new(config),
        reader_tls: resolved.reader_tls,
    })
}

async fn manager(client: &redis::Client, response_timeout: Duration) -> Result<ConnectionManager> {
    let cfg = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(3)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    client
        .get_connection_manager_with_config(cfg)
        .await
        .map_err(BusError::Connect)
}

impl Bus {
    /// The settings this bus was connected with.
    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    pub(crate) fn shared_config(&self) -> Arc<BusConfig> {
        self.config.clone()
    }

    /// A clone of the shared connection (multiplexed: clones share one socket).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A new connection for blocking reads (`XREADGROUP`/`XREAD … BLOCK`): its response timeout is above
    /// BLOCK, and a blocked read does not stall the shared connection's other commands.
    pub async fn blocking_connection(&self) -> Result<ConnectionManager> {
        manager(&self.client, self.config.block + BLOCK_MARGIN).await
    }

    /// A connection of its own for a consumer's blocking `XREADGROUP` (see [`crate::reader`]).
    pub(crate) async fn stream_reader(&self) -> Result<StreamReader> {
        StreamReader::connect(
            self.client.get_connection_info(),
            self.reader_tls.as_ref(),
            BLOCK_MARGIN,
        )
        .await
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
