//! The `autoscaler` binary: parses the command line and hands over to the library. `anyhow` lives here.

use std::process::ExitCode;

use clap::Parser;

use autoscaler::cli::{Cli, Command};

// glibc malloc/free was ~30 % of the bus client's CPU per event (`cargo bench -p bus`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Lab(args) => autoscaler::cli::lab_up::run(args, &cli.config).await,
        Command::Agent(args) => lab::cli::run_agent(args).await,
        Command::Pause { .. } => autoscaler::cli::pause().await,
        Command::Run { dry_run } => {
            let mut settings = match autoscaler::cli::load_settings(&cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            settings.autoscaler.dry_run |= dry_run;
            autoscaler::runtime::run(settings, autoscaler::shutdown::signal(), None).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { event_id } => match autoscaler::cli::load_settings(&cli.config) {
            Ok(s) => autoscaler::cli::explain::run(&s, &event_id).await,
            Err(code) => Ok(code),
        },
        Command::Scale { to, reason } => match autoscaler::cli::load_settings(&cli.config) {
            Ok(s) => autoscaler::cli::scale::run(&s, to, reason).await,
            Err(code) => Ok(code),
        },
        Command::Status { json } => match autoscaler::cli::load_settings(&cli.config) {
            Ok(s) => autoscaler::cli::status(&s, json).await,
            Err(code) => Ok(code),
        },
    }
}
