//! The `autoscaler` binary: parses the command line and hands over to the library. `anyhow` lives here.

use std::process::ExitCode;

use clap::Parser;

use autoscaler::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    autoscaler::telemetry::init(cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Config(cmd) => autoscaler::cli::config::run(cmd, &cli.config),
        Command::Events(cmd) => autoscaler::cli::events::run(cmd, &cli.config).await,
        Command::Lab(cmd) => lab::cli::run_lab(cmd).await,
        Command::Agent(args) => lab::cli::run_agent(args).await,
        Command::Pause => autoscaler::cli::pause().await,
        other => anyhow::bail!("not implemented yet: {other:?}"),
    }
}
