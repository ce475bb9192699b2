//! The command line (DESIGN.md, "CLI"). Each command group has its own module; this one holds the tree.

use std::path::PathBuf;
use std::process::ExitCode;

pub mod config;
pub mod events;

/// Exit code for bad configuration or usage (DESIGN.md: 0 success, 1 runtime failure, 2 bad config/usage).
pub const EXIT_BAD_CONFIG: u8 = 2;

#[derive(Debug, clap::Parser)]
#[command(
    name = "autoscaler",
    version,
    about = "Event-driven autoscaler for k3s clusters whose workers are Docker containers"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        default_value = "config.yaml",
        env = "AUTOSCALER_CONFIG"
    )]
    pub config: PathBuf,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
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
    /// The lab cluster.
    #[command(subcommand)]
    Lab(lab::cli::LabCommand),
    /// The lab's node agent (what a lab worker container runs, in place of `k3s agent`).
    Agent(lab::cli::AgentArgs),
    /// Wait for SIGTERM or SIGINT and exit 0, like Kubernetes' pause container (test workers run this).
    #[command(hide = true)]
    Pause,
}

/// `autoscaler pause`
pub async fn pause() -> anyhow::Result<ExitCode> {
    crate::shutdown::signal().await;
    Ok(ExitCode::SUCCESS)
}
