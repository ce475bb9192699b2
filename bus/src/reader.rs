//! The consumer's blocking `XREADGROUP … >`, on a connection of its own decoded by `redis-protocol`.
//!
//! This is the bus's hot path: a reply carries up to `batch_size` entries of 9 fields each. redis-rs
//! parses every reply into owned `redis::Value`s through a general-purpose parser combinator, which the
//! end-to-end benchmark showed taking ~40 % of the client's CPU. `redis-protocol` decodes the same RESP2
//! into frames that are views into one read buffer. Everything else (claims, pending reads, acks,
//! scripts) stays on redis-rs: it is rare or its replies are small.
//!
//! The connection is TCP, TLS over TCP (`rediss://`, with the bus's TLS settings) or a Unix socket; the
//! user, password and database are applied with `AUTH` and `SELECT`. Any error drops it; the read loop
//! reconnects with backoff.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use redis::{ConnectionAddr, ConnectionInfo};
use redis_protocol::codec::Resp2;
use redis_protocol::resp2::types::BytesFrame;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::access::Resolved;
use crate::entry::ReadEntry;
use crate::error::{BusError, Result};

/// Initial read buffer: a batch of 256 entries of ~0.5 KiB.
const READ_BUFFER: usize = 256 * 1024;

/// A byte stream to Redis: TCP or Unix socket.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// On a Redis Cluster: how to follow a `MOVED` to the node that owns the stream's slot, or an `ASK`
/// to the node a slot is being moved to.
pub(crate) struct ClusterHop {
    pub(crate) resolved: Resolved,
    /// Where the stream was last found, for the next reader.
    pub(crate) owner: Arc<Mutex<Option<(String, u16)>>>,
}

/// Redirections followed for one read, at most: a slot moves once, a second hop is a migration under
/// way, a third a loop.
const MAX_HOPS: usize = 3;

/// One connection that only runs `XREADGROUP`.
pub(crate) struct StreamReader {
    io: Framed<Pin<Box<dyn Io>>, Resp2>,
    /// Reply timeout on top of BLOCK.
    margin: Duration,
    cluster: Option<ClusterHop>,
}

impl StreamReader {
    /// Connects and authenticates as `info` says (TLS with `tls` for `rediss://`). `margin` is how much
    /// longer than BLOCK a reply may take.
    pub(crate) async fn connect(
        info: &ConnectionInfo,
        tls: Option<&Arc<rustls::ClientConfig>>,
        margin: Duration,
    ) -> Result<Self> {
        let io: Pin<Box<dyn Io>> = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Box::pin(tcp(host, *port, margin).await?),
            ConnectionAddr::TcpTls { host, port, .. } => {
                let Some(tls) = tls else {
                    return Err(io_error("connect", "rediss:// without TLS settings"));
                };
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| io_error("connect", format!("TLS server name `{host}`: {e}")))?;
                let s = tcp(host, *port, margin).await?;
                let s = tokio::time::timeout(
                    margin,
                    tokio_rustls::TlsConnector::from(tls.clone()).connect(name, s),
                )
                .await
                .map_err(|_| io_error("connect", "TLS handshake timed out"))?
                .map_err(|e| io_error("connect", format!("TLS: {e}")))?;
                Box::pin(s)
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Box::pin(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| io_error("connect", e))?,
            ),
            other => {
                return Err(BusError::Reply {
                    op: "connect",
                    detail: format!(
                        "the consumer's reader supports TCP, TLS and Unix sockets, not {other}"
                    ),
                })
            }
        };
        let mut reader = Self {
            // A reply is decoded from the start again after every read that leaves it incomplete: a
            // buffer that takes a whole batch in one or two reads keeps that cheap.
            io: Framed::with_capacity(io, Resp2::default(), READ_BUFFER),
            margin,
            cluster: None,
        };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = vec![bulk("AUTH")];
            if let Some(user) = settings.username() {
                auth.push(bulk(user));
            }
            auth.push(bulk(password));
            reader.call("AUTH", auth, Duration::ZERO).await?;
        }
        if settings.db() != 0 {
            let select = vec![bulk("SELECT"), bulk(&settings.db().to_string())];
            reader.call("SELECT", select, Duration::ZERO).await?;
        }
        Ok(reader)
    }

    /// This reader follows `MOVED` and `ASK` redirections (a Redis Cluster's node may not own the
    /// stream, or be moving it to another).
    pub(crate) fn in_cluster(mut self, hop: ClusterHop) -> Self {
        self.cluster = Some(hop);
        self
    }

    /// `XREADGROUP GROUP g c COUNT n BLOCK ms STREAMS s >`: new entries, or none after `block`.
    pub(crate) async fn read_new(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<ReadEntry>> {
        let block_ms = block.as_millis().max(1);
        let args = vec![
            bulk("XREADGROUP"),
            bulk("GROUP"),
            bulk(group),
            bulk(consumer),
            bulk("COUNT"),
            bulk(&count.max(1).to_string()),
            bulk("BLOCK"),
            bulk(&block_ms.to_string()),
            bulk("STREAMS"),
            bulk(stream),
            bulk(">"),
        ];
        let mut hops = 0;
        loop {
            match self.call("XREADGROUP", args.clone(), block).await {
                // `MOVED <slot> <host:port>`: nothing was read; the same read goes to the owner.
                Err(BusError::Server { message, .. })
                    if message.starts_with("MOVED ")
                        && self.cluster.is_some()
                        && hops < MAX_HOPS =>
                {
                    hops += 1;
                    self.hop(&message).await?;
                }
                // `ASK <slot> <host:port>`: the slot is being moved and the stream has gone already;
                // this one read is for the importing node, the slot stays this node's until moved.
                Err(BusError::Server { message, .. })
                    if message.starts_with("ASK ") && self.cluster.is_some() =>
                {
                    return parse_read(self.ask(&message, args.clone(), block).await?);
                }
                reply => return parse_read(reply?),
            }
        }
    }

    /// The node a redirection names (`MOVED|ASK <slot> <host:port>`).
    fn redirected_to(redirect: &str) -> Result<(String, u16)> {
        redirect
            .split_whitespace()
            .nth(2)
            .and_then(|a| crate::config::parse_host_port(a).ok())
            .ok_or_else(|| bad(redirect))
    }

    /// Sends `args` once to the node an `ASK` names, after `ASKING`, on a connection of its own: a
    /// migration is short, and the next read goes to the owner again (Redis Cluster spec, "ASK
    /// redirection"). `&mut self` though nothing here changes: a future holding `&self` would not be
    /// `Send` (the connection's stream is not `Sync`).
    async fn ask(
        &mut self,
        ask: &str,
        args: Vec<BytesFrame>,
        block: Duration,
    ) -> Result<BytesFrame> {
        let to = Self::redirected_to(ask)?;
        let Some(hop) = &self.cluster else {
            return Err(bad(ask));
        };
        let info = hop.resolved.at(&to.0, to.1);
        let mut there = Self::connect(&info, hop.resolved.reader_tls.as_ref(), self.margin).await?;
        there
            .call("ASKING", vec![bulk("ASKING")], Duration::ZERO)
            .await?;
        there.call("XREADGROUP", args, block).await
    }

    /// Replaces this connection by one to the node a `MOVED` reply names, and remembers that node.
    async fn hop(&mut self, moved: &str) -> Result<()> {
        let to = Self::redirected_to(moved)?;
        let Some(hop) = self.cluster.take() else {
            return Err(bad(moved));
        };
        let info = hop.resolved.at(&to.0, to.1);
        let next = Self::connect(&info, hop.resolved.reader_tls.as_ref(), self.margin).await?;
        *hop.owner.lock().unwrap_or_else(|e| e.into_inner()) = Some(to);
        *self = next.in_cluster(hop);
        Ok(())
    }

    /// Sends one command and waits for its reply (at most `block` + the margin).
    async fn call(
        &mut self,
        op: &'static str,
        args: Vec<BytesFrame>,
        block: Duration,
    ) -> Result<BytesFrame> {
        self.io
            .send(BytesFrame::Array(args))
            .await
            .map_err(|e| io_error(op, e))?;
        let reply = tokio::time::timeout(block + self.margin, self.io.next())
            .await
            .map_err(|_| io_error(op, "no reply in time"))?
            .ok_or_else(|| io_error(op, "connection closed"))?
            .map_err(|e| io_error(op, e))?;
        match reply {
            BytesFrame::Error(message) => Err(BusError::Server {
                op,
                message: message.to_string(),
            }),
            other => Ok(other),
        }
    }
}

/// A TCP connection to `host:port` within `margin`, without Nagle's delay (requests are small and
/// latency matters).
async fn tcp(host: &str, port: u16, margin: Duration) -> Result<tokio::net::TcpStream> {
    let s = tokio::time::timeout(margin, tokio::net::TcpStream::connect((host, port)))
        .await
        .map_err(|_| io_error("connect", "timed out"))?
        .map_err(|e| io_error("connect", e))?;
    s.set_nodelay(true).map_err(|e| io_error("connect", e))?;
    Ok(s)
}

fn bulk(s: &str) -> BytesFrame {
    BytesFrame::BulkString(Bytes::copy_from_slice(s.as_bytes()))
}

fn io_error(op: &'static str, e: impl std::fmt::Display) -> BusError {
    BusError::Io {
        op,
        detail: e.to_string(),
    }
}

fn bad(detail: &str) -> BusError {
    BusError::Reply {
        op: "XREADGROUP",
        detail: detail.to_string(),
    }
}

/// `nil` (timed out) or `[[stream, [[id, [f, v, …] | nil], …]]]`.
fn parse_read(reply: BytesFrame) -> Result<Vec<ReadEntry>> {
    let streams = match reply {
        BytesFrame::Null => return Ok(Vec::new()),
        BytesFrame::Array(streams) => streams,
        _ => return Err(bad("reply is not an array")),
    };
    let Some(BytesFrame::Array(pair)) = streams.into_iter().next() else {
        return Ok(Vec::new());
    };
    let entries = match pair.into_iter().nth(1) {
        Some(BytesFrame::Array(entries)) => entries,
        Some(BytesFrame::Null) | None => return Ok(Vec::new()),
        Some(_) => return Err(bad("entries are not an array")),
    };
    entries.into_iter().map(parse_entry).collect()
}

fn parse_entry(entry: BytesFrame) -> Result<ReadEntry> {
    let BytesFrame::Array(parts) = entry else {
        return Err(bad("entry is not an array"));
    };
    let mut parts = parts.into_iter();
    let id = match parts.next() {
        Some(BytesFrame::BulkString(b) | BytesFrame::SimpleString(b)) => {
            String::from_utf8_lossy(&b).into_owned()
        }
        _ => return Err(bad("entry without id")),
    };
    let fields = match parts.next() {
        None | Some(BytesFrame::Null) => None,
        Some(BytesFrame::Array(flat)) => {
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let Some(k) = it.next() {
                let v = it.next().map(frame_bytes).unwrap_or_default();
                fields.push((frame_bytes(k), v));
            }
            Some(fields)
        }
        Some(_) => return Err(bad("entry fields are not an array")),
    };
    Ok(ReadEntry { id, fields })
}

/// A field or value: a view into the read buffer, not a copy.
fn frame_bytes(f: BytesFrame) -> Bytes {
    match f {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => b,
        BytesFrame::Integer(i) => Bytes::from(i.to_string()),
        _ => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> BytesFrame {
        bulk(s)
    }

    #[test]
    fn parses_entries_in_field_order_and_deleted_ones() {
        let reply = BytesFrame::Array(vec![BytesFrame::Array(vec![
            b("s"),
            BytesFrame::Array(vec![
                BytesFrame::Array(vec![
                    b("1-0"),
                    BytesFrame::Array(vec![b("z"), b("1"), b("a"), b("2")]),
                ]),
                BytesFrame::Array(vec![b("2-0"), BytesFrame::Null]),
            ]),
        ])]);
        let entries = parse_read(reply).expect("parses");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(
            entries[0].fields,
            Some(vec![
                (Bytes::from("z"), Bytes::from("1")),
                (Bytes::from("a"), Bytes::from("2"))
            ])
        );
        assert_eq!(entries[1].fields, None);
        assert!(parse_read(BytesFrame::Null).expect("nil").is_empty());
        assert!(parse_read(BytesFrame::Integer(3)).is_err());
    }
}
