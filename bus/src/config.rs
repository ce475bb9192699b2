//! The bus's settings: one plain struct, filled from `autoscaler.events.event_bus` by the binary.

use std::path::PathBuf;
use std::time::Duration;

/// How the bus talks to Redis and how its consumer groups behave.
///
/// `Debug` redacts the URL's password; show a URL with [`redact_url`].
#[derive(Clone, PartialEq)]
pub struct BusConfig {
    /// `redis://[user:password@]host:port/db` (or `rediss://` for TLS, `unix://`). With
    /// [`Topology::Sentinel`] only its scheme, credentials and database count (the sentinels name the
    /// master's address); with [`Topology::Cluster`] it is the first seed node.
    pub url: String,
    /// One Redis, a master followed through Sentinel, or a Redis Cluster (`docs/TOPOLOGY.md`).
    pub topology: Topology,
    /// Who to authenticate as (an ACL user), and how: see [`RedisAccess`].
    pub access: RedisAccess,
    /// The stream every event goes to (`autoscaler_events`).
    pub stream: String,
    /// Where dead letters go: `<stream>:dlq` by contract (tools and `events dlq` look there).
    pub dlq: String,
    /// `XADD … MAXLEN ~ max_len`: the stream (and the DLQ) are trimmed near this length.
    pub max_len: usize,
    /// An entry pending longer than this is claimed by any live consumer of its group (a dead consumer's
    /// work, or an entry whose scheduled retry was lost with its consumer). Must exceed the slowest
    /// handler's run time. A handler error is retried sooner, by the consumer itself (see
    /// `bus::HandlerError`).
    pub claim_idle: Duration,
    /// After this many failed deliveries an entry moves to the DLQ.
    pub max_deliveries: u32,
    /// `XREADGROUP … BLOCK`: how long one blocking read waits for new entries.
    pub block: Duration,
    /// Entries per read and per batched XACK.
    pub batch_size: usize,
    /// Deliveries handled at once by one consumer.
    pub concurrency: usize,
    /// `publish_idempotent`: a key yields at most one entry within this time.
    pub idempotency_ttl: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self::new("redis://127.0.0.1:6379", "autoscaler_events")
    }
}

impl BusConfig {
    /// The defaults of `config.yaml` for `url` and `stream`; the DLQ is `<stream>:dlq`.
    pub fn new(url: impl Into<String>, stream: impl Into<String>) -> Self {
        let stream = stream.into();
        Self {
            url: url.into(),
            topology: Topology::Single,
            access: RedisAccess::default(),
            dlq: dlq_name(&stream),
            stream,
            max_len: 10_000,
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            block: Duration::from_secs(2),
            batch_size: 64,
            concurrency: 16,
            idempotency_ttl: Duration::from_secs(600),
        }
    }
}

impl BusConfig {
    /// What makes these settings unusable before anything connects: a sentinel topology without
    /// sentinels or master name, a cluster stream without a hash tag (its keys would spread over slots).
    pub fn validate(&self) -> Result<(), String> {
        let addresses = |what: &str, list: &[String]| -> Result<(), String> {
            for a in list {
                parse_host_port(a).map_err(|e| format!("{what} `{a}`: {e}"))?;
            }
            Ok(())
        };
        match &self.topology {
            Topology::Single => Ok(()),
            Topology::Sentinel { sentinels, master } => {
                if sentinels.is_empty() {
                    return Err("the sentinel topology needs at least one sentinel address".into());
                }
                if master.trim().is_empty() {
                    return Err("the sentinel topology needs the master's name".into());
                }
                addresses("sentinel", sentinels)
            }
            Topology::Cluster { seeds } => {
                let Some(tag) = hash_tag(&self.stream) else {
                    return Err(format!(
                        "on a Redis Cluster the stream name must carry a hash tag, e.g. `{{{0}}}` or \
                         `{{lab-a}}:{0}`: its companion keys (idempotency, leader, heartbeats, DLQ) must \
                         share its slot",
                        self.stream
                    ));
                };
                if hash_tag(&self.dlq) != Some(tag) {
                    return Err(format!(
                        "the DLQ `{}` does not share the stream's hash tag `{{{tag}}}`",
                        self.dlq
                    ));
                }
                addresses("cluster seed", seeds)
            }
        }
    }
}

/// Which Redis deployment the bus talks to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Topology {
    /// One Redis at `url` (or a proxy in front of several).
    #[default]
    Single,
    /// The master `master` as the sentinels (`host:port` each) report it, followed across failovers.
    /// Sentinels are asked with [`RedisAccess::sentinel_password_file`] (if any), over TLS when the
    /// URL is `rediss://` (with the same files); the data nodes get the URL's credentials (or the
    /// access settings').
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
    /// A Redis Cluster, discovered from `url` and these further seed nodes (`host:port` each). The
    /// stream name must carry a hash tag (see [`hash_tag`]).
    Cluster { seeds: Vec<String> },
}

/// `host:port` split; a port that is not a number is an error.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .trim()
        .rsplit_once(':')
        .ok_or_else(|| "not host:port".to_string())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("port `{port}` is not a number"))?;
    Ok((host.to_string(), port))
}

/// The part of `key` Redis Cluster hashes: between the first `{` and the first `}` after it, when
/// that is not empty. Every key derived as `<stream>:…` shares the stream's tag, hence its slot.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    let tag = &key[open + 1..open + 1 + close];
    (!tag.is_empty()).then_some(tag)
}

impl std::fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusConfig")
            .field("url", &redact_url(&self.url))
            .field("topology", &self.topology)
            .field("access", &self.access)
            .field("stream", &self.stream)
            .field("dlq", &self.dlq)
            .field("max_len", &self.max_len)
            .field("claim_idle", &self.claim_idle)
            .field("max_deliveries", &self.max_deliveries)
            .field("block", &self.block)
            .field("batch_size", &self.batch_size)
            .field("concurrency", &self.concurrency)
            .field("idempotency_ttl", &self.idempotency_ttl)
            .finish()
    }
}

/// Credentials and TLS beyond what the URL says. A username or password set here replaces the URL's;
/// the files are read when the bus connects (so a rotated password or certificate takes effect on the
/// next start), and their contents are never logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisAccess {
    /// The ACL user (`AUTH user password`); else the URL's, else `default`.
    pub username: Option<String>,
    /// A file holding the password (surrounding whitespace trimmed).
    pub password_file: Option<PathBuf>,
    /// `rediss://` only: the CA certificate(s) (PEM) the server's certificate must chain to; without
    /// it, the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// `rediss://` only: a client certificate (PEM) for servers that require one (`tls-auth-clients`).
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// [`Topology::Sentinel`]: the ACL user the sentinels are asked as (their own `user` rules), else
    /// `default`.
    pub sentinel_username: Option<String>,
    /// [`Topology::Sentinel`]: a file holding the sentinels' password (their `requirepass`); without
    /// it the sentinels are asked without credentials. The data nodes' password is not used for them.
    pub sentinel_password_file: Option<PathBuf>,
}

/// `url` with its password replaced by `***`, for logs, banners and error messages
/// (`redis://auditor:***@host:6379/`). A URL without a password comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_string();
    };
    format!(
        "{}{}:***{}",
        &url[..rest_start],
        &userinfo[..colon],
        &url[rest_start + at..]
    )
}

/// The dead-letter stream of `stream`.
pub fn dlq_name(stream: &str) -> String {
    format!("{stream}:dlq")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_the_password_only() {
        assert_eq!(
            redact_url("redis://auditor:s3cr3t@10.0.0.1:6379/0"),
            "redis://auditor:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("rediss://:p%40ss@redis:6380"),
            "rediss://:***@redis:6380"
        );
        // An '@' in the password, and a path that has one too.
        assert_eq!(redact_url("redis://u:a@b@h:1/x@y"), "redis://u:***@h:1/x@y");
        for plain in [
            "redis://127.0.0.1:6379",
            "redis://user@h:1",
            "unix:///run/redis.sock",
            "not a url",
        ] {
            assert_eq!(redact_url(plain), plain);
        }
    }

    #[test]
    fn hash_tags_as_redis_cluster_reads_them() {
        assert_eq!(hash_tag("{lab-a}:events"), Some("lab-a"));
        assert_eq!(hash_tag("x{a}{b}"), Some("a"));
        assert_eq!(
            hash_tag("{}x{a}"),
            None,
            "an empty first tag hashes the whole key"
        );
        assert_eq!(hash_tag("autoscaler_events"), None);
        assert_eq!(hash_tag("a{b"), None);
        // Every companion key keeps the stream's tag.
        let s = "{lab-a}autoscaler_events";
        for k in [
            format!("{s}:idem:x{{y}}"),
            format!("{s}:leader"),
            dlq_name(s),
        ] {
            assert_eq!(hash_tag(&k), Some("lab-a"), "{k}");
        }
    }

    #[test]
    fn cluster_needs_a_hash_tag_and_sentinel_its_addresses() {
        let mut c = BusConfig::new("redis://127.0.0.1:7000", "autoscaler_events");
        c.topology = Topology::Cluster { seeds: vec![] };
        let e = c.validate().expect_err("no hash tag");
        assert!(e.contains("hash tag"), "{e}");
        c = BusConfig::new("redis://127.0.0.1:7000", "{lab-a}:events");
        c.topology = Topology::Cluster {
            seeds: vec!["127.0.0.1:7001".into()],
        };
        c.validate().expect("tagged");
        c.dlq = "elsewhere".into();
        assert!(c.validate().is_err());
        c = BusConfig::new("redis://", "s");
        c.topology = Topology::Sentinel {
            sentinels: vec!["127.0.0.1:26379".into(), "h:x".into()],
            master: "m".into(),
        };
        assert!(c.validate().expect_err("bad port").contains("h:x"));
        c.topology = Topology::Sentinel {
            sentinels: vec!["127.0.0.1:26379".into()],
            master: " ".into(),
        };
        assert!(c.validate().is_err());
        assert_eq!(parse_host_port("[::1]:5"), Ok(("::1".into(), 5)));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = BusConfig::new("redis://autoscaler:hunter2@h:6379/", "s");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://autoscaler:***@h:6379/"), "{shown}");
    }
}
