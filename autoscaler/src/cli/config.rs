//! `autoscaler config check [PATH]`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration: one line per problem, naming the field; exit 2 when any.
    Check {
        /// The file to check (default: --config).
        path: Option<PathBuf>,
    },
}

pub fn run(cmd: ConfigCommand, default_path: &Path) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Check { path } => {
            let path = path.as_deref().unwrap_or(default_path);
            match Settings::load(path) {
                Ok(s) => {
                    let a = &s.autoscaler;
                    // Only a configuration with pools says more than before.
                    let pools: Vec<String> = a
                        .pools
                        .iter()
                        .map(|p| format!("{} {}..={}", p.name, p.min_nodes, p.max_nodes(&a.limits)))
                        .collect();
                    let pools = if pools.is_empty() {
                        String::new()
                    } else {
                        format!(", pools {}", pools.join(","))
                    };
                    println!(
                        "{}: ok (workers {}..={}, stream {}, handlers {}{pools})",
                        path.display(),
                        a.limits.min_nodes,
                        a.limits.max_nodes,
                        a.events.event_bus.stream_name,
                        a.events.handlers.join(",")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    for p in e.problems() {
                        println!("{p}");
                    }
                    Ok(ExitCode::from(super::EXIT_BAD_CONFIG))
                }
            }
        }
    }
}
