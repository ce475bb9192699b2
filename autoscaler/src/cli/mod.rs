//! The command line (the README's "CLI" table): this module holds the clap tree and dispatches; each
//! command group has its own module:
//! - [`config`]: `config check`;
//! - [`events`]: `events tail`, `publish`, `replay` (rewind or what-if), `dlq list|retry|purge`;
//! - [`explain`]: `explain EVENT_ID`, an event's causation chain;
//! - [`scale`]: `scale --to N`, a manual, audited request;
//! - [`lab_up`]: `autoscaler lab`, the whole lab on this machine (`lab serve`/`lab node` come from the
//!   `lab` crate's own commands).

use std::path::PathBuf;
use std::process::ExitCode;

pub mod config;
pub mod events;
pub mod explain;
pub mod healthcheck;
pub mod lab_up;
pub mod plot;
pub mod scale;

/// Exit code for bad configuration or usage (0 success, 1 runtime failure, 2 bad config/usage: `docs/ARCHITECTURE.md`, "Contracts").
pub const EXIT_BAD_CONFIG: u8 = 2;

#[derive(Debug, clap::Parser)]
#[command(
    name = "autoscaler",
    version,
    about = "Event-driven autoscaler for k3s clusters whose workers are Docker containers"
)]
pub struct Cli {
    /// Configuration file [default: config.yaml; for `status`, `events`, `explain` and `scale`, a
    /// running `autoscaler lab`'s settings in `$LAB_DIR/lab.env` when there is one].
    #[arg(long, global = true, env = "AUTOSCALER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The configuration file given, else `config.yaml`.
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from("config.yaml"))
    }
}

impl Command {
    /// The commands that look at a running autoscaler's world, and so at a running `autoscaler lab`'s
    /// when they are run with no `--config` from its directory.
    pub fn reads_the_lab(&self) -> bool {
        matches!(
            self,
            Command::Status { .. }
                | Command::Events(_)
                | Command::Explain { .. }
                | Command::Scale { .. }
        )
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the pollers, watchers and the handlers listed in `events.handlers`.
    Run {
        /// Publish decisions marked dry_run and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Configuration.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// The event stream: tail, publish, dead letters, replay.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// The causation chain of an event, root first.
    Explain {
        /// The event's `event_id` (or its stream id).
        event_id: String,
    },
    /// Workers as Kubernetes, Docker and the record see them; limits; leader; per-group pending and lag.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Ask for an absolute number of workers, carried out through the same limits as any decision.
    Scale {
        #[arg(long)]
        to: u32,
        #[arg(long, default_value = "manual request")]
        reason: String,
    },
    /// The lab: with no subcommand, Redis + the lab cluster + Docker workers + the autoscaler, all here.
    Lab(lab_up::LabArgs),
    /// Exit 0 when this autoscaler's /readyz (or --url, or --kubeconfig's API server) answers: a
    /// container health check for images with no curl.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// The lab's node agent (what a lab worker container runs, in place of `k3s agent`).
    Agent(lab::cli::AgentArgs),
    /// Wait for SIGTERM or SIGINT and exit 0, like Kubernetes' pause container (test workers run this).
    /// Arguments after it are ignored, so a test worker takes a pool's k3s flags as an agent would.
    #[command(hide = true)]
    Pause {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        ignored: Vec<String>,
    },
}

/// `autoscaler pause`
pub async fn pause() -> anyhow::Result<ExitCode> {
    crate::shutdown::signal().await;
    Ok(ExitCode::SUCCESS)
}

/// Loads the configuration, or prints every problem and returns exit code 2.
pub fn load_settings(path: &std::path::Path) -> Result<crate::config::Settings, ExitCode> {
    crate::config::Settings::load(path).map_err(|e| {
        for p in e.problems() {
            eprintln!("{p}");
        }
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

/// `autoscaler status [--json]`: reads Redis, Docker and Kubernetes directly (no running autoscaler
/// needed); a source that cannot be reached is reported, not fatal.
pub async fn status(settings: &crate::config::Settings, json: bool) -> anyhow::Result<ExitCode> {
    let a = &settings.autoscaler;
    let bus = bus::connect(crate::runtime::bus_config(settings))
        .await
        .ok();
    let pool = match crate::runtime::host_configs(settings) {
        Ok(cfgs) => {
            let prefix = a.workers.name_prefix.clone();
            let hosts: Vec<crate::docker::Host> = cfgs
                .into_iter()
                .map(|(name, pools, cfg)| crate::docker::Host::new(name, pools, cfg))
                .collect();
            let hosts = crate::docker::DockerHosts::new(hosts, prefix);
            // Docker is "unavailable" when the default engine does not answer; another host that
            // does not is named under `errors`.
            hosts.default_host().pool().await.ok().map(|_| hosts)
        }
        Err(_) => None,
    };
    let kube = crate::kube::connect(&a.kubernetes).await.ok();
    let mut doc = crate::status::collect(crate::status::Sources {
        settings,
        bus: bus.as_ref(),
        pool: pool.as_ref(),
        kube: kube.as_ref(),
    })
    .await;
    for (missing, what) in [
        (bus.is_none(), "redis"),
        (pool.is_none(), "docker"),
        (kube.is_none(), "kubernetes"),
    ] {
        if missing {
            if let Some(errors) = doc["errors"].as_array_mut() {
                errors.push(serde_json::json!(format!("{what}: cannot connect")));
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", crate::status::render(&doc));
    }
    Ok(ExitCode::SUCCESS)
}
