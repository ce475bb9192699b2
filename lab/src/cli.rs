//! The `autoscaler lab …` and `autoscaler agent` commands: flags and environment, then the library.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::agent::{self, AgentOptions};
use crate::controllers::ControllerConfig;
use crate::kubeconfig;
use crate::server::{LabServer, ServeOptions};

/// `autoscaler lab …`
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Serve the lab cluster's API (plain HTTP; HTTPS with a token) with its controllers; writes
    /// `$LAB_DIR/kubeconfig`.
    Serve(ServeArgs),
    /// Run a node agent against a lab (or any) cluster given by a kubeconfig.
    Node(NodeArgs),
}

/// `autoscaler lab serve`
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (`0.0.0.0:6443` in a container; port 0 picks a free one).
    #[arg(long, env = "LAB_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Server URL written into the kubeconfig (e.g. the port published on the host);
    /// default `http://127.0.0.1:<bound port>`.
    #[arg(long, env = "LAB_ADVERTISE")]
    pub advertise: Option<String>,
    /// How long a node may miss heartbeats before it is marked NotReady.
    #[arg(long, env = "LAB_NODE_MONITOR_GRACE", default_value = "40s", value_parser = humantime::parse_duration)]
    pub node_monitor_grace: Duration,
    /// How long pods stay on an unreachable node before they are evicted.
    #[arg(long, env = "LAB_POD_EVICTION_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub pod_eviction_timeout: Duration,
    /// Directory for the kubeconfig.
    #[arg(long, env = "LAB_DIR", default_value = ".lab")]
    pub lab_dir: PathBuf,
    /// Bearer token clients must present (optional).
    #[arg(long, env = "K3S_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// More names for the server's certificate (it serves HTTPS when it has a token), e.g. the
    /// name other containers reach it by.
    #[arg(long = "tls-san", env = "LAB_TLS_SAN", value_delimiter = ',')]
    pub tls_sans: Vec<String>,
    /// The server's certificate and key and their CA, PEM, instead of ones made at start (set by
    /// `autoscaler lab`, which writes the host's kubeconfig with the CA).
    #[arg(long, env = "LAB_TLS_CERT", hide_env_values = true, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<String>,
    #[arg(long, env = "LAB_TLS_KEY", hide_env_values = true)]
    pub tls_key: Option<String>,
    #[arg(long, env = "LAB_TLS_CA", hide_env_values = true)]
    pub tls_ca: Option<String>,
    /// Also write the kubeconfig here (k3s's flag and variable, so the compose file's k3s server
    /// environment serves the lab server unchanged).
    #[arg(long, env = "K3S_KUBECONFIG_OUTPUT")]
    pub write_kubeconfig: Option<PathBuf>,
}

/// What a node agent registers, common to `autoscaler agent` and `autoscaler lab node`.
#[derive(Debug, clap::Args)]
pub struct NodeSpecArgs {
    /// CPU capacity of the node (`2`, `1500m`).
    #[arg(long, env = "LAB_NODE_CPU", default_value = "2")]
    pub cpu: String,
    /// Memory capacity of the node (`2Gi`).
    #[arg(long, env = "LAB_NODE_MEMORY", default_value = "2Gi")]
    pub memory: String,
    /// A node label `key=value` (repeatable).
    #[arg(long = "node-label", env = "K3S_NODE_LABEL", value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// A node taint `key=value:Effect` (repeatable).
    #[arg(long = "node-taint", env = "K3S_NODE_TAINT", value_delimiter = ',')]
    pub node_taints: Vec<String>,
    /// A kubelet argument `key=value` (repeatable), as k3s takes it: `max-pods=N` sets the Node's pod
    /// capacity; the others mean nothing to the lab's agent and are ignored.
    #[arg(long = "kubelet-arg")]
    pub kubelet_args: Vec<String>,
    /// Heartbeat period (Lease and Ready condition); keep the server's `--node-monitor-grace` at
    /// least twice this, or live nodes flap NotReady between beats.
    #[arg(long, env = "LAB_HEARTBEAT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// Do not burn the CPU and memory of Running pods.
    #[arg(long, env = "LAB_NO_LOAD")]
    pub no_load: bool,
}

impl NodeSpecArgs {
    /// The agent's options for node `name`: k3s's `--node-label k=v` and `--node-taint k=v:Effect`
    /// become the Node's labels and taints.
    pub fn agent_options(&self, name: &str) -> anyhow::Result<AgentOptions> {
        let mut opts = AgentOptions::new(name, &self.cpu, &self.memory);
        opts.heartbeat = self.heartbeat;
        opts.simulate_load = !self.no_load;
        opts.labels = self
            .node_labels
            .iter()
            .map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .with_context(|| format!("node label {l:?} is not key=value"))
            })
            .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
        opts.taints = self
            .node_taints
            .iter()
            .map(|t| agent::parse_taint(t))
            .collect::<Result<_, _>>()?;
        for a in &self.kubelet_args {
            if let Some(n) = a.strip_prefix("max-pods=") {
                opts.max_pods = n
                    .parse()
                    .with_context(|| format!("kubelet arg {a:?}: max-pods is not a number"))?;
            }
        }
        Ok(opts)
    }
}

/// `autoscaler agent`: the lab's node agent, with a k3s agent's flags and environment.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The lab server's URL.
    #[arg(long, env = "K3S_URL")]
    pub server: String,
    /// The bearer token (never logged).
    #[arg(long, env = "K3S_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The node's name; default the hostname.
    #[arg(long, env = "K3S_NODE_NAME")]
    pub node_name: Option<String>,
    /// What the node offers.
    #[command(flatten)]
    pub node: NodeSpecArgs,
}

/// `autoscaler lab node`
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The kubeconfig of the cluster.
    #[arg(long, env = "KUBECONFIG", default_value = ".lab/kubeconfig")]
    pub kubeconfig: PathBuf,
    /// The node's name; default the hostname.
    #[arg(long, env = "K3S_NODE_NAME")]
    pub name: Option<String>,
    /// What the node offers.
    #[command(flatten)]
    pub node: NodeSpecArgs,
}

/// Runs `autoscaler lab …`.
pub async fn run_lab(cmd: LabCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCommand::Serve(args) => serve(args).await,
        LabCommand::Node(args) => {
            let kc = Kubeconfig::read_from(&args.kubeconfig)
                .with_context(|| format!("reading kubeconfig {}", args.kubeconfig.display()))?;
            let client = client_from(kc).await?;
            run_node(client, args.name, args.node).await
        }
    }
}

/// Runs `autoscaler agent`.
pub async fn run_agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let kc = Kubeconfig::from_yaml(&kubeconfig::render(
        &args.server,
        args.token.as_deref(),
        None,
    ))
    .context("building the client configuration")?;
    let client = client_from(kc).await?;
    run_node(client, args.node_name, args.node).await
}

async fn client_from(kc: Kubeconfig) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("reading the cluster configuration")?;
    // The agent retries on its own schedule (the next heartbeat).
    config.default_retry = false;
    kube::Client::try_from(config).context("building the Kubernetes client")
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let defaults = ServeOptions::default();
    let opts = ServeOptions {
        listen: args.listen,
        advertise: args.advertise,
        lab_dir: args.lab_dir,
        token: args.token.filter(|t| !t.is_empty()),
        tls_sans: args.tls_sans,
        certs: match (args.tls_cert, args.tls_key, args.tls_ca) {
            (Some(cert_pem), Some(key_pem), Some(ca_pem)) => Some(crate::tls::LabCerts {
                ca_pem,
                cert_pem,
                key_pem,
            }),
            _ => None,
        },
        controllers: ControllerConfig {
            node_monitor_grace: args.node_monitor_grace,
            pod_eviction_timeout: args.pod_eviction_timeout,
            ..defaults.controllers.clone()
        },
        ..defaults
    };
    let token = opts.token.clone();
    let server = LabServer::start(opts).await?;
    if let Some(path) = args.write_kubeconfig.filter(|p| !p.as_os_str().is_empty()) {
        kubeconfig::write(&path, server.url(), token.as_deref(), server.ca_pem())
            .with_context(|| format!("writing the kubeconfig {}", path.display()))?;
    }
    println!(
        "lab cluster serving on {} (kubeconfig: {})",
        server.url(),
        server.kubeconfig_path().display()
    );
    tokio::select! {
        _ = terminated() => {}
        _ = server.stopped() => {}
    }
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn run_node(
    client: kube::Client,
    name: Option<String>,
    spec: NodeSpecArgs,
) -> anyhow::Result<ExitCode> {
    let name = match name.filter(|n| !n.is_empty()) {
        Some(n) => n,
        None => hostname()?,
    };
    let opts = spec.agent_options(&name)?;
    agent::run(client, opts, terminated()).await?;
    Ok(ExitCode::SUCCESS)
}

fn hostname() -> anyhow::Result<String> {
    if let Ok(h) = std::env::var("HOSTNAME") {
        if !h.is_empty() {
            return Ok(h);
        }
    }
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the hostname")?;
    Ok(h.trim().to_lowercase())
}

/// Resolves on SIGTERM or Ctrl-C (a container's `docker stop` sends SIGTERM to PID 1, which has no
/// default handler: without this the process would wait for SIGKILL).
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    enum Cli {
        #[command(subcommand)]
        Lab(LabCommand),
        Agent(AgentArgs),
    }

    #[test]
    fn the_commands_are_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn agent_flags_parse_like_a_k3s_agent() {
        let cli = Cli::try_parse_from([
            "x",
            "agent",
            "--server",
            "http://lab:6443",
            "--node-name",
            "w1",
            "--cpu",
            "1500m",
            "--memory",
            "1Gi",
            "--node-label",
            "pool=a",
            "--node-label",
            "tier=b",
            "--node-taint",
            "k=v:NoSchedule",
            "--heartbeat",
            "2s",
            "--no-load",
            "--kubelet-arg",
            "max-pods=30",
            "--kubelet-arg=eviction-hard=memory.available<100Mi",
        ])
        .unwrap();
        let Cli::Agent(a) = cli else {
            panic!("not agent")
        };
        assert_eq!(a.server, "http://lab:6443");
        assert_eq!(a.node_name.as_deref(), Some("w1"));
        assert_eq!(a.node.node_labels, ["pool=a", "tier=b"]);
        assert_eq!(a.node.node_taints, ["k=v:NoSchedule"]);
        assert_eq!(a.node.heartbeat, Duration::from_secs(2));
        assert!(a.node.no_load);
        let opts = a.node.agent_options("w1").unwrap();
        assert_eq!(
            opts.labels,
            BTreeMap::from([("pool".into(), "a".into()), ("tier".into(), "b".into())])
        );
        assert_eq!(opts.taints, [("k".into(), "v".into(), "NoSchedule".into())]);
        assert!(!opts.simulate_load);
        // k3s's kubelet arguments: max-pods is the Node's pod capacity, the rest is ignored.
        assert_eq!(opts.max_pods, 30);
    }

    #[test]
    fn malformed_node_labels_and_taints_are_refused() {
        let spec = |label: &str, taint: &str| {
            let mut args = vec!["x", "agent", "--server", "http://lab:6443"];
            if !label.is_empty() {
                args.extend(["--node-label", label]);
            }
            if !taint.is_empty() {
                args.extend(["--node-taint", taint]);
            }
            match Cli::try_parse_from(args).unwrap() {
                Cli::Agent(a) => a.node.agent_options("w1"),
                Cli::Lab(_) => panic!("not agent"),
            }
        };
        let pods = |arg: &str| match Cli::try_parse_from([
            "x",
            "agent",
            "--server",
            "s",
            "--kubelet-arg",
            arg,
        ])
        .unwrap()
        {
            Cli::Agent(a) => a.node.agent_options("w1").map(|o| o.max_pods),
            Cli::Lab(_) => panic!("not agent"),
        };
        assert!(pods("max-pods=many").is_err());
        assert_eq!(pods("serialize-image-pulls=false").unwrap(), 110);
        assert!(spec("pool", "").is_err());
        assert!(spec("", "k=v").is_err());
        assert!(spec("pool=a", "k=v:NoExecute").is_ok());
    }

    #[test]
    fn serve_flags_parse_durations_and_addresses() {
        let cli = Cli::try_parse_from([
            "x",
            "lab",
            "serve",
            "--listen",
            "0.0.0.0:6443",
            "--advertise",
            "http://127.0.0.1:16443",
            "--node-monitor-grace",
            "2s",
            "--pod-eviction-timeout",
            "1m",
        ])
        .unwrap();
        let Cli::Lab(LabCommand::Serve(s)) = cli else {
            panic!("not serve")
        };
        assert_eq!(s.listen.port(), 6443);
        assert_eq!(s.node_monitor_grace, Duration::from_secs(2));
        assert_eq!(s.pod_eviction_timeout, Duration::from_secs(60));
        assert_eq!(s.advertise.as_deref(), Some("http://127.0.0.1:16443"));
    }
}
