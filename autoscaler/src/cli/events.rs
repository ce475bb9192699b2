//! `autoscaler events …`: tail, publish, dead letters, replay.

use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Print the audit trail.
    Tail,
}

pub async fn run(cmd: EventsCommand, _config: &Path) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet: {cmd:?}")
}
