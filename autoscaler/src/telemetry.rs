//! Logging through `tracing`: text by default, JSON lines with `--log-json`; `RUST_LOG` filters.
//! Colour codes only when the log goes to a terminal (and `NO_COLOR` is unset), so a log piped to a
//! file or CI stays plain text.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Logs to stderr.
pub fn init(json: bool) {
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    install(json, ansi, std::io::stderr);
}

/// Logs to `path` (appended, created when missing), never with colour codes: `autoscaler lab` keeps
/// its terminal for the banner.
pub fn init_file(json: bool, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    install(json, false, Mutex::new(file));
    Ok(())
}

fn install<W>(json: bool, ansi: bool, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
