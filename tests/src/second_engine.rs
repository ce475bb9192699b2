//! A second Docker engine on this machine, for pools on another host: a real `dockerd` in a network
//! namespace of its own, joined to the machine by a veth pair, with the lab image copied in.
//!
//! Why a namespace: a second engine in the machine's own namespace shares its bridges and
//! iptables; one started with `--bridge none --iptables=false` and stopped again was measured to
//! leave the machine's engine without `docker0`. In its own namespace it makes its own `docker0`
//! there. `nsenter --net` is used rather than `ip netns exec`, which remounts `/sys` and leaves
//! `dockerd` without its cgroups ("Devices cgroup isn't mounted"). Its storage driver is `vfs`:
//! the machine's driver (fuse-overlayfs) is configured for its own engine only.
//!
//! The autoscaler reaches it the way [`Reach`] says: its Unix socket, TCP with TLS on the veth
//! (`--tlsverify`, certificates made here), or SSH to an `sshd` in the namespace that runs
//! `docker system dial-stdio` against that socket.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the autoscaler reaches a [`SecondEngine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// `unix://…/docker.sock`.
    Unix,
    /// `tcp://<namespace address>:2376`, `--tlsverify`: a client certificate of the engine's CA.
    Tls,
    /// `ssh://root@<namespace address>` (port 22), with a key made for the test.
    Ssh,
}

const TLS_PORT: u16 = 2376;

/// A second engine; stopped and cleaned up (containers, mounts, namespace, files) on drop.
pub struct SecondEngine {
    namespace: String,
    dir: PathBuf,
    subnet: u8,
    reach: Reach,
    certs: Option<bus::testing::TestCerts>,
    daemon: Option<Child>,
    sshd: Option<Child>,
    /// Holds the subnet (a lock on its file) while the engine lives.
    _claim: std::fs::File,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| {
        format!("{cmd:?}: {e} (the second-engine tests need root, iproute2, nsenter and dockerd)")
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(cmd: &mut Command) -> String {
    run(cmd).unwrap_or_else(|e| panic!("second engine: {e}"))
}

impl SecondEngine {
    /// Starts the engine and copies `image` into it from the machine's engine; panics with
    /// `dockerd`'s log if it does not answer within 30 s.
    pub fn start(image: &str) -> Self {
        Self::start_with(image, Reach::Unix)
    }

    /// As [`SecondEngine::start`], reached as `reach` says ([`SecondEngine::url`]).
    pub fn start_with(image: &str, reach: Reach) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let namespace = format!("k3sa-{id}");
        // 10.213.<n>.0/30: a subnet no other running test uses. Claimed with a lock on a file of
        // its own (tests start engines at once; the lock goes with the process, however it ends),
        // and not on any interface (one a crashed run left behind).
        let taken = run(Command::new("ip").args(["-4", "-o", "addr", "show"])).unwrap_or_default();
        let (subnet, claim) = (1..=250u8)
            .filter(|n| !taken.contains(&format!("10.213.{n}.")))
            .find_map(|n| {
                let file = std::fs::File::create(format!("/tmp/k3sa-subnet-{n}.lock")).ok()?;
                file.try_lock().ok()?;
                Some((n, file))
            })
            .expect("a free 10.213.x.0/30");
        // Short: a unix socket's path has at most 108 bytes.
        let dir = PathBuf::from(format!("/tmp/k3sa-d2-{id}"));
        std::fs::create_dir_all(&dir).expect("second engine dir");
        let mut engine = Self {
            namespace,
            dir,
            subnet,
            reach,
            certs: None,
            daemon: None,
            sshd: None,
            _claim: claim,
        };
        engine.network();
        if reach == Reach::Tls {
            let address = engine.address().to_string();
            engine.certs = Some(bus::testing::TestCerts::make_for(
                &engine.dir,
                &[address.as_str()],
            ));
        }
        engine.daemon = Some(engine.spawn_daemon());
        engine.wait_answering();
        if reach == Reach::Ssh {
            engine.sshd = Some(engine.spawn_sshd());
        }
        engine.load(image);
        engine
    }

    fn network(&self) {
        let ns = &self.namespace;
        let (host_if, peer_if) = self.links();
        must(Command::new("ip").args(["netns", "add", ns]));
        must(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        must(Command::new("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", ns,
        ]));
        must(Command::new("ip").args([
            "addr",
            "add",
            &format!("{}/30", self.gateway()),
            "dev",
            &host_if,
        ]));
        must(Command::new("ip").args(["link", "set", &host_if, "up"]));
        must(Command::new("ip").args([
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/30", self.address()),
            "dev",
            &peer_if,
        ]));
        must(Command::new("ip").args(["-n", ns, "link", "set", &peer_if, "up"]));
    }

    /// The veth pair's ends: (machine side, namespace side).
    fn links(&self) -> (String, String) {
        let id = &self.namespace[5..];
        (format!("k3sa{id}h"), format!("k3sa{id}n"))
    }

    fn spawn_daemon(&self) -> Child {
        let config = self.dir.join("daemon.json");
        // An explicit empty config: the machine's daemon.json pins its own data root.
        std::fs::write(&config, "{}").expect("daemon.json");
        let log = std::fs::File::create(self.dir.join("dockerd.log")).expect("dockerd.log");
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.namespace))
            .arg("dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--host")
            .arg(self.host())
            .args(self.tls_args())
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .args(["--storage-driver", "vfs"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("second engine: nsenter dockerd: {e}"))
    }

    /// `dockerd`'s TCP listener with `--tlsverify`, when reached over TLS.
    fn tls_args(&self) -> Vec<String> {
        let Some(c) = &self.certs else {
            return Vec::new();
        };
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            "--host".into(),
            format!("tcp://{}:{TLS_PORT}", self.address()),
            "--tlsverify".into(),
            "--tlscacert".into(),
            path(&c.ca),
            "--tlscert".into(),
            path(&c.server_cert),
            "--tlskey".into(),
            path(&c.server_key),
        ]
    }

    /// An `sshd` on the namespace's address, root let in with [`SecondEngine::ssh_key`] only, its
    /// sessions pointed at this engine's socket (`SetEnv DOCKER_HOST`). Waits until it listens.
    fn spawn_sshd(&self) -> Child {
        let sshd = "/usr/sbin/sshd";
        assert!(
            std::path::Path::new(sshd).exists(),
            "second engine over ssh: {sshd} is missing (scripts/ensure-deps installs openssh-server)"
        );
        let key = |name: &str| {
            let path = self.dir.join(name);
            must(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(&path),
            );
            path
        };
        let host_key = key("ssh_host_key");
        let client_key = key("ssh_client_key");
        let authorized = self.dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).expect("authorized_keys");
        // Privilege separation wants this directory; Debian's service makes it, a bare sshd does not.
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let config = self.dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {addr}:22\nHostKey {host_key}\nAuthorizedKeysFile {authorized}\n\
                 PidFile {pid}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 SetEnv DOCKER_HOST={docker}\n",
                addr = self.address(),
                host_key = host_key.display(),
                authorized = authorized.display(),
                pid = self.dir.join("sshd.pid").display(),
                docker = self.host(),
            ),
        )
        .expect("sshd_config");
        self.forget_host_key();
        let log = std::fs::File::create(self.dir.join("sshd.log")).expect("sshd.log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.namespace))
            .args([sshd, "-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("second engine: nsenter sshd: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((self.address(), 22)).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default();
                panic!("second engine: sshd does not listen within 10 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child
    }

    /// Drops this address's line from root's known_hosts: the namespace's address is reused by
    /// later tests, each with a host key of its own (ssh accepts a new host, never a changed one).
    fn forget_host_key(&self) {
        let _ = run(Command::new("ssh-keygen").args(["-R", &self.address().to_string()]));
    }

    /// What the autoscaler is given in `docker.hosts[].host`.
    pub fn url(&self) -> String {
        match self.reach {
            Reach::Unix => self.host(),
            Reach::Tls => format!("tcp://{}:{TLS_PORT}", self.address()),
            // bollard's ssh transport passes no port: sshd listens on 22.
            Reach::Ssh => format!("ssh://root@{}", self.address()),
        }
    }

    /// The CA and client certificate, when reached over TLS.
    pub fn certs(&self) -> Option<&bus::testing::TestCerts> {
        self.certs.as_ref()
    }

    /// The private key root logs in with, when reached over SSH.
    pub fn ssh_key(&self) -> Option<PathBuf> {
        (self.reach == Reach::Ssh).then(|| self.dir.join("ssh_client_key"))
    }

    fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.args(["-H", &self.host()]);
        c
    }

    fn wait_answering(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while run(self
            .docker()
            .args(["version", "--format", "{{.Server.Version}}"]))
        .is_err()
        {
            let exited = self
                .daemon
                .as_mut()
                .is_some_and(|d| d.try_wait().ok().flatten().is_some());
            if exited || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "second engine did not answer (exited: {exited}); dockerd.log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn load(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let out = self
            .docker()
            .arg("load")
            .stdin(save.stdout.take().expect("docker save's output"))
            .output()
            .expect("docker load");
        let saved = save.wait().expect("docker save");
        assert!(
            saved.success() && out.status.success(),
            "second engine: docker save | load {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The engine's Unix socket (`unix://…`): how the test itself talks to it.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// The machine's end of the veth: what containers on the namespace's own network reach the
    /// machine at.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 1)
    }

    /// The namespace's end of the veth.
    pub fn address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 2)
    }

    /// Whether `dockerd` still runs.
    pub fn is_running(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|d| d.try_wait().ok().flatten().is_none())
    }

    /// Stops `dockerd` (SIGTERM, then SIGKILL after 20 s), as a host that goes away: its
    /// containers stop with it.
    pub fn stop(&mut self) {
        let Some(mut d) = self.daemon.take() else {
            return;
        };
        let _ = run(Command::new("kill").args(["-TERM", &d.id().to_string()]));
        let deadline = Instant::now() + Duration::from_secs(20);
        while d.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = d.kill();
                let _ = d.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills every process of the namespace at once (dockerd, containerd, the shims and the
    /// containers on the namespace's own network), as a host that loses power: nothing is stopped
    /// in order, nothing reports.
    pub fn power_off(&mut self) {
        let pids =
            run(Command::new("ip").args(["netns", "pids", &self.namespace])).unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = run(Command::new("kill").args(["-KILL", pid]));
        }
        for mut child in [self.daemon.take(), self.sshd.take()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Unmounts what the engine left mounted under its directory (vfs layers, netns files).
    fn unmount_leftovers(&self) {
        let prefix = self.dir.display().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        // Deepest first.
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            if let Err(e) = run(Command::new("umount").args(["-l", p])) {
                eprintln!("second engine: {e}");
            }
        }
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if self.is_running() {
            if let Ok(ids) = run(self.docker().args(["ps", "-aq"])) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let _ = run(self.docker().args(["rm", "-f"]).args(&ids));
                }
            }
        }
        self.stop();
        if let Some(mut sshd) = self.sshd.take() {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        if self.reach == Reach::Ssh {
            self.forget_host_key();
        }
        self.unmount_leftovers();
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.namespace])) {
            eprintln!("second engine: {e}");
        }
        // The veth goes with the namespace; its machine end too, unless the peer was moved out.
        let (host_if, _) = self.links();
        let _ = run(Command::new("ip").args(["link", "del", &host_if]));
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("second engine: removing {}: {e}", self.dir.display());
        }
    }
}

/// Whether the machine's own `docker0` bridge is still there.
pub fn docker0_intact() -> Result<(), String> {
    run(Command::new("ip").args(["link", "show", "docker0"])).map(|_| ())
}

/// A TCP forwarder: connections to `local_addr` are joined to `to`. Stops on drop.
pub struct Forward {
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Forward {
    pub async fn start(listen: SocketAddr, to: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("forward: bind {listen}: {e}"));
        let local = listener.local_addr().expect("forward: local address");
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { local, task }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}
