//! Errors of the Redis transport.

/// What went wrong talking to Redis, named after the operation.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The URL is not a Redis URL, or the first connection failed.
    #[error("cannot connect to Redis: {0}")]
    Connect(#[source] redis::RedisError),
    /// The credentials or TLS files could not be used (a file missing, a PEM that does not parse).
    /// Names the file, never its contents.
    #[error("Redis access settings: {0}")]
    Access(String),
    /// No sentinel named a reachable master (all down, or a failover under way).
    #[error("no master `{master}` from the sentinels: {detail}")]
    Sentinel { master: String, detail: String },
    /// A command failed (connection lost, server error, …).
    #[error("{op} failed: {source}")]
    Redis {
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
    /// Redis answered an error (on the consumer's own reader connection).
    #[error("{op} failed: {message}")]
    Server { op: &'static str, message: String },
    /// The consumer's reader connection failed (connect, write, read, timeout).
    #[error("{op} failed: {detail}")]
    Io { op: &'static str, detail: String },
    /// Redis answered something this crate does not expect.
    #[error("unexpected reply to {op}: {detail}")]
    Reply { op: &'static str, detail: String },
    /// A dead letter or an entry that does not exist.
    #[error("no entry {id} in {stream}")]
    NoSuchEntry { stream: String, id: String },
    /// The consumer group does not exist.
    #[error("no consumer group `{group}` on {stream}")]
    NoSuchGroup { stream: String, group: String },
}

impl BusError {
    /// Wraps a Redis error of operation `op`.
    pub(crate) fn redis(op: &'static str) -> impl FnOnce(redis::RedisError) -> Self {
        move |source| BusError::Redis { op, source }
    }

    /// The Redis error code (`NOGROUP`, `BUSYGROUP`, …), if the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            BusError::Redis { source, .. } | BusError::Connect(source) => source.code(),
            // `NOGROUP No such key …`: the code is the first word, as Redis sends it.
            BusError::Server { message, .. } => message.split_whitespace().next(),
            _ => None,
        }
    }

    /// A short stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BusError::Connect(_) | BusError::Access(_) | BusError::Sentinel { .. } => "connect",
            BusError::Redis { op, .. } | BusError::Server { op, .. } | BusError::Io { op, .. } => {
                op
            }
            BusError::Reply { .. } => "reply",
            BusError::NoSuchEntry { .. } => "no_such_entry",
            BusError::NoSuchGroup { .. } => "no_such_group",
        }
    }
}

/// `Result` with [`BusError`].
pub type Result<T, E = BusError> = std::result::Result<T, E>;
