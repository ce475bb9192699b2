//! The lab's commands without the `autoscaler` binary, for development:
//! `cargo run -p lab --example lab-dev -- lab serve`, `… -- agent --server URL`.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
enum Cli {
    /// `autoscaler lab …`
    #[command(subcommand)]
    Lab(lab::cli::LabCommand),
    /// `autoscaler agent`
    Agent(lab::cli::AgentArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber_init();
    match Cli::parse() {
        Cli::Lab(cmd) => lab::cli::run_lab(cmd).await,
        Cli::Agent(args) => lab::cli::run_agent(args).await,
    }
}

fn tracing_subscriber_init() {
    // Logs go nowhere unless the binary installs a subscriber; the example keeps stderr quiet.
}
