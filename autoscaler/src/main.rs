//! The `autoscaler` binary: parses the command line and hands over to the library. `anyhow` lives here.

use std::process::ExitCode;

use clap::Parser;

use autoscaler::cli::{Cli, Command};

// glibc malloc/free was ~30 % of the bus client's CPU per event (`cargo bench -p bus`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // `autoscaler lab` keeps its terminal for the banner: its log goes to $LAB_DIR/lab.log unless -v.
    match &cli.command {
        Command::Lab(args) => match args.logs_to_file() {
            Some(path) => {
                if let Err(e) = autoscaler::telemetry::init_file(cli.log_json, &path) {
                    eprintln!("error: cannot open the lab's log {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            None => autoscaler::telemetry::init(cli.log_json),
        },
        _ => autoscaler::telemetry::init(cli.log_json),
    }
    // Before any thread exists: adopting a running lab's settings sets environment variables.
    if cli.config.is_none() && cli.command.reads_the_lab() {
        if let Some(lab) = autoscaler::cli::lab_up::adopt_lab_env() {
            eprintln!(
                "(the running lab's settings: {}; --config to use another)",
                lab.file.display()
            );
            cli.config = Some(lab.config);
        }
    }
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
    let config = cli.config_path();
    match cli.command {
        Command::Config(cmd) => autoscaler::cli::config::run(cmd, &config),
        Command::Events(cmd) => autoscaler::cli::events::run(cmd, &config).await,
        Command::Lab(args) => autoscaler::cli::lab_up::run(args, &config).await,
        Command::Healthcheck(args) => autoscaler::cli::healthcheck::run(args, &config).await,
        Command::Agent(args) => lab::cli::run_agent(args).await,
        Command::Pause { .. } => autoscaler::cli::pause().await,
        Command::Run { dry_run } => {
            let mut settings = match autoscaler::cli::load_settings(&config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            settings.autoscaler.dry_run |= dry_run;
            autoscaler::runtime::run(settings, autoscaler::shutdown::signal(), None).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { event_id } => match autoscaler::cli::load_settings(&config) {
            Ok(s) => autoscaler::cli::explain::run(&s, &event_id).await,
            Err(code) => Ok(code),
        },
        Command::Scale { to, reason } => match autoscaler::cli::load_settings(&config) {
            Ok(s) => autoscaler::cli::scale::run(&s, to, reason).await,
            Err(code) => Ok(code),
        },
        Command::Status { json } => match autoscaler::cli::load_settings(&config) {
            Ok(s) => autoscaler::cli::status(&s, json).await,
            Err(code) => Ok(code),
        },
    }
}
