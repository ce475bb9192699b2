//! Test support: a throwaway `redis-server` on a free loopback port, plain or TLS-only with
//! certificates made for it, with or without a password for the default user; and (`topology`) a
//! primary with a replica and three sentinels, and a Redis Cluster of three primaries.

mod topology;
pub use topology::{RedisCluster, RedisSentinels, SentinelSecurity, MASTER as SENTINEL_MASTER};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::BusConfig;

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Serve TLS only (`--tls-port`, the plain port off), with a CA, a server certificate for
    /// 127.0.0.1 and a client certificate made by [`TestCerts`].
    pub tls: bool,
    /// With `tls`: refuse clients without a certificate signed by the CA (`tls-auth-clients yes`).
    pub tls_client_certs: bool,
    /// With `tls`: these certificates rather than new ones (servers that must trust each other).
    pub certs: Option<TestCerts>,
    /// `requirepass`: the default user's password (the admin of ACL tests).
    pub password: Option<String>,
    /// Further `redis-server` arguments (`--cluster-enabled yes`, `--replicaof host port`, …).
    pub args: Vec<String>,
}

/// The PEM files a TLS server was started with: a CA, the server's certificate and key, and a client
/// certificate and key signed by the same CA.
#[derive(Debug, Clone)]
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCerts {
    /// Makes a fresh CA and the certificates it signs (the server's for `127.0.0.1` and `localhost`),
    /// written into `dir`.
    pub fn make(dir: &Path) -> Self {
        Self::make_for(dir, &["127.0.0.1", "localhost"])
    }

    /// As [`TestCerts::make`], the server's certificate for `names` (IP addresses or DNS names).
    pub fn make_for(dir: &Path, names: &[&str]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let fail = |e: rcgen::Error| -> ! { panic!("making test certificates: {e}") };
        let write = |name: &str, pem: String| -> PathBuf {
            let path = dir.join(name);
            if let Err(e) = std::fs::write(&path, pem) {
                panic!("cannot write {}: {e}", path.display());
            }
            path
        };
        let ca_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "k3s-autoscaler test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap_or_else(|e| fail(e));
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().unwrap_or_else(|e| fail(e));
            let mut params = CertificateParams::new(names).unwrap_or_else(|e| fail(e));
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &issuer).unwrap_or_else(|e| fail(e));
            (cert.pem(), key.serialize_pem())
        };
        let names = names.iter().map(|n| n.to_string()).collect();
        let (server_cert, server_key) = leaf(names, "server");
        let (client_cert, client_key) = leaf(Vec::new(), "autoscaler");
        Self {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server-key.pem", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
        }
    }
}

/// A `redis-server` started for one test, killed on drop.
pub struct RedisServer {
    port: u16,
    /// Holds `port` against the other test processes while this server lives.
    _claim: PortClaim,
    dir: PathBuf,
    child: Option<Child>,
    options: RedisOptions,
    certs: Option<TestCerts>,
    /// Where this start's lines begin in the log.
    ready_from: u64,
}

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1, without persistence, and waits until it answers
    /// PING. Panics (with how to install it) if redis-server is missing.
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// As [`RedisServer::start`], with TLS and a password as `options` say.
    pub fn start_with(options: RedisOptions) -> Self {
        // A cluster node also listens on its port + 10000 (the cluster bus).
        let cluster = options.args.iter().any(|a| a == "--cluster-enabled");
        let claim = if cluster {
            claim_cluster_port()
        } else {
            claim_port()
        };
        let port = claim.port;
        let dir = fresh_dir(&format!("bus-redis-{port}"));
        let certs = options.tls.then(|| {
            options
                .certs
                .clone()
                .unwrap_or_else(|| TestCerts::make(&dir))
        });
        let mut server = Self {
            port,
            _claim: claim,
            dir,
            child: None,
            options,
            certs,
            ready_from: 0,
        };
        server.spawn();
        server
    }

    /// The directory of its files (log, `nodes.conf`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log_path());
        match &self.certs {
            Some(c) => {
                let auth_clients = if self.options.tls_client_certs {
                    "yes"
                } else {
                    "no"
                };
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&c.server_cert)
                    .arg("--tls-key-file")
                    .arg(&c.server_key)
                    .arg("--tls-ca-cert-file")
                    .arg(&c.ca)
                    .args(["--tls-auth-clients", auth_clients]);
            }
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
        }
        if let Some(p) = &self.options.password {
            cmd.args(["--requirepass", p]);
        }
        cmd.args(&self.options.args);
        self.ready_from = std::fs::metadata(self.log_path()).map_or(0, |m| m.len());
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        match child {
            Ok(c) => self.child = Some(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server not found: apt-get install -y redis-server")
            }
            Err(e) => panic!("cannot start redis-server: {e}"),
        }
        self.wait_ready();
    }

    /// Whether the server is up: a plain one without a password answers PING; the others (TLS, or
    /// PING refused with NOAUTH) have logged that they accept connections since this start.
    fn answers(&self) -> bool {
        if self.certs.is_none() && self.options.password.is_none() {
            return ping(self.port);
        }
        let Ok(log) = std::fs::read(self.log_path()) else {
            return false;
        };
        let start = usize::try_from(self.ready_from).unwrap_or(0).min(log.len());
        String::from_utf8_lossy(&log[start..]).contains("Ready to accept connections")
            && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.answers() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "redis-server on port {} exited at start: {status}",
                        self.port
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "redis-server on port {} did not answer PING within 10 s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/` (`rediss://` with TLS), as the default user with its password if it
    /// has one.
    pub fn url(&self) -> String {
        match &self.options.password {
            Some(p) => self.url_as("", p),
            None => format!("{}://127.0.0.1:{}/", self.scheme(), self.port),
        }
    }

    /// The URL that authenticates as `user` (empty: the default user) with `password`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!(
            "{}://{user}:{password}@127.0.0.1:{}/",
            self.scheme(),
            self.port
        )
    }

    fn scheme(&self) -> &'static str {
        if self.certs.is_some() {
            "rediss"
        } else {
            "redis"
        }
    }

    /// The certificates of a TLS server.
    pub fn certs(&self) -> Option<&TestCerts> {
        self.certs.as_ref()
    }

    /// Bus settings for `stream` on this server (TLS with the test CA and client certificate when the
    /// server has them), with short timings for tests.
    pub fn config(&self, stream: &str) -> BusConfig {
        self.config_for(&self.url(), stream)
    }

    /// As [`RedisServer::config`], connecting with `url` (e.g. [`RedisServer::url_as`] an ACL user).
    pub fn config_for(&self, url: &str, stream: &str) -> BusConfig {
        let mut c = BusConfig::new(url, stream);
        c.block = Duration::from_millis(200);
        c.claim_idle = Duration::from_millis(500);
        if let Some(certs) = &self.certs {
            c.access.tls_ca_file = Some(certs.ca.clone());
            c.access.tls_cert_file = Some(certs.client_cert.clone());
            c.access.tls_key_file = Some(certs.client_key.clone());
        }
        c
    }

    /// Kills the server (SIGKILL): its data is gone, like a crash without persistence.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts a new, empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new directory `<temp>/<kind>-<pid>-<uuid>` for one process's files; panics if it cannot be made.
pub(crate) fn fresh_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "{kind}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    dir
}

fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("no free port on 127.0.0.1: {e}"),
    }
}

/// A loopback port held for one server: free when it was chosen, and claimed with a lock on a file
/// of its own until this drops. Tests run in many processes at once (nextest), and between a
/// port found free and `redis-server` binding it another process may pick the same one; the lock
/// goes with the process, however it ends. The (empty) files stay: removing one could let two
/// processes lock two different files of the same name.
pub(crate) struct PortClaim {
    pub(crate) port: u16,
    _lock: std::fs::File,
}

fn lock_port(port: u16) -> Option<PortClaim> {
    let path = std::env::temp_dir().join(format!("bus-test-port-{port}.lock"));
    let file = std::fs::File::create(path).ok()?;
    file.try_lock().ok()?;
    Some(PortClaim { port, _lock: file })
}

/// A free ephemeral port, claimed.
pub(crate) fn claim_port() -> PortClaim {
    (0..200)
        .find_map(|_| lock_port(free_port()))
        .unwrap_or_else(|| panic!("no loopback port could be claimed in 200 tries"))
}

/// A port for a cluster node, claimed: it and its cluster bus port (+ 10000) both free, from
/// 10000..20000, below the ephemeral range, so that no port the system hands out for `:0` (another
/// test's server, a client's connection) can be either.
pub(crate) fn claim_cluster_port() -> PortClaim {
    let start = (uuid::Uuid::new_v4().as_u128() % 10_000) as u16;
    (0..10_000u16)
        .map(|i| 10_000 + (start + i) % 10_000)
        .find_map(|port| {
            let claim = lock_port(port)?;
            let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
            (free(port) && free(port + 10_000)).then_some(claim)
        })
        .unwrap_or_else(|| panic!("no cluster port pair free in 10000..20000"))
}

pub(crate) fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}
