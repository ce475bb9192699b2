//! `autoscaler lab`: the whole lab on this machine — Redis (the configured one, or a local
//! `redis-server`), the lab cluster's API server as a container on its own Docker network, the lab
//! worker image built offline from this binary, and the autoscaler itself, creating workers as
//! containers that run the lab's node agent. Ctrl-C stops the autoscaler and removes the lab's
//! containers (`--keep` leaves them).
//!
//! What the lab changes in the configuration is written to `$LAB_DIR/lab.env` (owner-only: the Redis
//! URL may hold a password) as `KEY=VALUE` lines, and the lab itself runs with exactly those values.
//! `status`, `events`, `explain` and `scale` run with no `--config` from the same directory read
//! that file ([`adopt_lab_env`]), so they see the lab, not `./config.yaml`'s cluster.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::labenv::{LabEnv, LabEnvOptions};

/// The file `autoscaler lab` leaves in `$LAB_DIR` for the other commands.
pub const LAB_ENV_FILE: &str = "lab.env";

/// The lab's log file in `$LAB_DIR` (without `-v`).
pub const LAB_LOG_FILE: &str = "lab.log";

/// The key of `lab.env` naming the configuration file the lab started from.
const CONFIG_KEY: &str = "AUTOSCALER_CONFIG";

/// The key of `lab.env` holding the lab's process id (a file whose process is gone is ignored).
const PID_KEY: &str = "AUTOSCALER_LAB_PID";

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: Option<LabSubcommand>,
    /// Where the lab keeps its files (kubeconfig, token, lab.env, lab.log, Redis data).
    #[arg(long, env = "LAB_DIR", default_value = ".lab")]
    pub lab_dir: PathBuf,
    /// Leave the lab's containers running after Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Publish decisions marked dry_run and create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Log to the terminal instead of `$LAB_DIR/lab.log`.
    #[arg(short, long)]
    pub verbose: bool,
    /// The lab image's tag (built offline from this binary when it does not hold it).
    #[arg(long, env = "LAB_IMAGE")]
    pub image: Option<String>,
}

/// `autoscaler lab <subcommand>`
#[derive(Debug, clap::Subcommand)]
pub enum LabSubcommand {
    /// Build the offline compose lab's images (`docker-compose.lab.yml`): the lab image from this
    /// binary and a Redis image from this machine's redis-server, both FROM scratch, no registry.
    Images(ImagesArgs),
    #[command(flatten)]
    Cluster(Box<lab::cli::LabCommand>),
}

/// `autoscaler lab images`
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// The lab image's tag (API server, autoscaler and workers).
    #[arg(long, env = "LAB_IMAGE", default_value = "k3s-autoscaler-lab:local")]
    pub lab_image: String,
    /// The Redis image's tag.
    #[arg(long, env = "LAB_REDIS_IMAGE", default_value = crate::docker::image::REDIS_IMAGE)]
    pub redis_image: String,
}

impl LabArgs {
    /// Whether this is the whole lab (not a subcommand) logging to `$LAB_DIR/lab.log`.
    pub fn logs_to_file(&self) -> Option<PathBuf> {
        (self.command.is_none() && !self.verbose).then(|| self.lab_dir.join(LAB_LOG_FILE))
    }
}

pub async fn run(args: LabArgs, config: &Path) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(LabSubcommand::Cluster(cmd)) => return lab::cli::run_lab(*cmd).await,
        Some(LabSubcommand::Images(images)) => return build_images(images, config).await,
        None => {}
    }
    let settings = match super::load_settings(config) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let lab_dir = std::path::absolute(&args.lab_dir).unwrap_or(args.lab_dir.clone());
    let redis =
        crate::redis_local::ensure(&crate::runtime::bus_config(&settings), &lab_dir).await?;
    let docker = crate::docker::connect(
        &settings.autoscaler.docker.host,
        settings.autoscaler.docker.timeout,
    )
    .await?;
    let binary = std::env::current_exe().context("locating this binary for the lab image")?;
    let mut options = LabEnvOptions::new(settings.autoscaler.cluster_id.clone(), &lab_dir, binary);
    if let Some(image) = args.image.clone().filter(|i| !i.is_empty()) {
        options.image = image;
    }
    // The lab API server requires a bearer token: K3S_TOKEN when set, else one made for this lab.
    // Workers present it as their k3s token (`workers.token_file`), the kubeconfig carries it.
    let token = crate::runtime::k3s_token(&settings)
        .context("reading the k3s token file")?
        .map(|t| t.expose().to_string())
        .unwrap_or_else(|| {
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            )
        });
    let token_file = lab_dir.join("token");
    write_private(&token_file, token.as_bytes())?;
    options.token = Some(token);
    println!("lab: building the worker image if needed and starting the lab API server…");
    let env = LabEnv::up(docker, options).await?;

    let config_abs = std::path::absolute(config).unwrap_or(config.to_path_buf());
    let overrides = lab_overrides(&LabFacts {
        config: &config_abs,
        redis_url: &redis.url,
        redis_started_here: redis.started_here(),
        env: &env,
        token_file: &token_file,
        dry_run: args.dry_run,
    });
    let env_file = lab_dir.join(LAB_ENV_FILE);
    write_private(&env_file, render_env(&overrides).as_bytes())?;
    // The lab runs with exactly what it left for the other commands.
    let mut settings = match crate::config::Settings::load_with_env(
        config,
        std::env::vars().chain(overrides.iter().cloned()),
    ) {
        Ok(s) => s,
        Err(e) => {
            env.down().await;
            let _ = std::fs::remove_file(&env_file);
            anyhow::bail!("the lab's configuration: {e}");
        }
    };
    // Every pool's workers run the lab's node agent too.
    for pool in &mut settings.autoscaler.pools {
        pool.image = None;
    }
    print!(
        "{}",
        banner(&Banner {
            redis_url: &redis.url,
            redis_started_here: redis.started_here(),
            api: &env.host_url,
            server_container: &env.server_container,
            kubeconfig: &env.kubeconfig,
            http_listen: &settings.autoscaler.http.listen,
            log: args.logs_to_file().as_deref(),
            command: &command_name(),
            keep: args.keep,
        })
    );
    let _ = std::io::stdout().flush();
    let result = crate::runtime::run(settings, crate::shutdown::signal(), None).await;
    let _ = std::fs::remove_file(&env_file);
    if !args.keep {
        println!("lab: removing the lab's containers…");
        env.down().await;
    }
    drop(redis);
    result.map(|()| ExitCode::SUCCESS)
}

/// `autoscaler lab images`
async fn build_images(args: ImagesArgs, config: &Path) -> anyhow::Result<ExitCode> {
    // Only the Docker engine's address and timeout come from the configuration; a missing file is fine.
    let (host, timeout) = match crate::config::Settings::load(config) {
        Ok(s) => (s.autoscaler.docker.host, s.autoscaler.docker.timeout),
        Err(_) => (String::new(), std::time::Duration::from_secs(30)),
    };
    let docker = crate::docker::connect(&host, timeout).await?;
    let binary = std::env::current_exe().context("locating this binary for the lab image")?;
    let lab = crate::docker::image::ensure_lab_image(&docker, &binary, &args.lab_image).await?;
    println!("{}  {lab:?}", args.lab_image);
    let redis = crate::docker::image::ensure_redis_image(&docker, &args.redis_image).await?;
    println!("{}  {redis:?}", args.redis_image);
    Ok(ExitCode::SUCCESS)
}

/// What the lab found and made, from which its overrides follow.
struct LabFacts<'a> {
    config: &'a Path,
    redis_url: &'a str,
    redis_started_here: bool,
    env: &'a LabEnv,
    token_file: &'a Path,
    dry_run: bool,
}

/// The environment the lab runs the autoscaler with (and leaves in `lab.env`): its Redis, its
/// cluster, its image and network.
fn lab_overrides(f: &LabFacts<'_>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, val: &str| v.push((k.to_string(), val.to_string()));
    set(CONFIG_KEY, &f.config.display().to_string());
    set(PID_KEY, &std::process::id().to_string());
    set("REDIS_URL", f.redis_url);
    if f.redis_started_here {
        // The server started here has no password and no TLS.
        for key in [
            "USERNAME",
            "PASSWORD_FILE",
            "TLS__CA_FILE",
            "TLS__CERT_FILE",
            "TLS__KEY_FILE",
        ] {
            set(&format!("AUTOSCALER__EVENTS__EVENT_BUS__{key}"), "");
        }
    }
    if f.dry_run {
        set("AUTOSCALER__DRY_RUN", "true");
    }
    set("AUTOSCALER__WORKERS__IMAGE", &f.env.options.image);
    set("AUTOSCALER__WORKERS__NETWORK", &f.env.network);
    set("AUTOSCALER__WORKERS__K3S_URL", &f.env.network_url);
    set(
        "AUTOSCALER__WORKERS__TOKEN_FILE",
        &f.token_file.display().to_string(),
    );
    // The lab's node agent needs no privileges, and a killed worker should stay dead (like a lost
    // machine) so the autoscaler replaces it.
    set("AUTOSCALER__WORKERS__PRIVILEGED", "false");
    set("AUTOSCALER__WORKERS__RESTART_POLICY", "no");
    set(
        "AUTOSCALER__KUBERNETES__KUBECONFIG",
        &f.env.kubeconfig.display().to_string(),
    );
    set("AUTOSCALER__KUBERNETES__SERVER", "");
    v
}

fn render_env(pairs: &[(String, String)]) -> String {
    let mut out = String::from(
        "# Written by `autoscaler lab` for `status`, `events`, `explain` and `scale` run from this\n\
         # directory with no --config; removed when the lab stops. Owner-only: REDIS_URL may hold a password.\n",
    );
    for (k, v) in pairs {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

/// `KEY=VALUE` lines; `#` comments and blank lines skipped.
pub fn parse_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

/// A lab's `lab.env` as read by the other commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptedLab {
    /// The file read.
    pub file: PathBuf,
    /// The configuration file the lab started from.
    pub config: PathBuf,
    /// The pairs, the configuration path and pid aside.
    pub vars: Vec<(String, String)>,
}

/// Reads `$LAB_DIR/lab.env` (`LAB_DIR` or `.lab`) when a running lab left it: `None` when there is
/// none, or when its process is gone (a lab killed before it could remove the file).
pub fn find_lab_env() -> Option<AdoptedLab> {
    let dir = std::env::var_os("LAB_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".lab"));
    let file = dir.join(LAB_ENV_FILE);
    let text = std::fs::read_to_string(&file).ok()?;
    let pairs = parse_env(&text);
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let alive = get(PID_KEY).is_some_and(|pid| Path::new("/proc").join(pid.trim()).exists());
    if !alive {
        return None;
    }
    let config = PathBuf::from(get(CONFIG_KEY)?);
    let vars = pairs
        .into_iter()
        .filter(|(k, _)| k != CONFIG_KEY && k != PID_KEY)
        .collect();
    Some(AdoptedLab { file, config, vars })
}

/// For a command that reads a running lab, run with no `--config`: applies the lab's `lab.env` to
/// this process's environment where it has no value of its own (what the user set wins), and returns
/// the lab's configuration path. Call it before any thread starts (it sets environment variables).
pub fn adopt_lab_env() -> Option<AdoptedLab> {
    let lab = find_lab_env()?;
    for (k, v) in &lab.vars {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
    Some(lab)
}

/// Writes `data` to `path`, readable by the owner only from the moment it exists.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // A file that existed before keeps its mode through open(): restrict it too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    file.write_all(data)
        .with_context(|| format!("writing {}", path.display()))
}

/// How the user runs this binary from here: `autoscaler` when it is the one on `PATH`, else its
/// path (relative to this directory when under it, e.g. `target/release/autoscaler`).
fn command_name() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "autoscaler".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let candidate = d.join("autoscaler");
            candidate.canonicalize().ok() == exe.canonicalize().ok() && candidate.exists()
        })
    });
    if on_path {
        "autoscaler".into()
    } else {
        shown(&exe)
    }
}

/// `path` relative to the current directory when under it, else as is.
fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

struct Banner<'a> {
    redis_url: &'a str,
    redis_started_here: bool,
    api: &'a str,
    server_container: &'a str,
    kubeconfig: &'a Path,
    http_listen: &'a str,
    log: Option<&'a Path>,
    command: &'a str,
    keep: bool,
}

/// What `autoscaler lab` prints once it is up: short, and the lines under "watch it" are what the
/// user types in another terminal from the same directory. The Redis URL is shown redacted.
fn banner(b: &Banner<'_>) -> String {
    let kubeconfig = shown(b.kubeconfig);
    let log = match b.log {
        Some(path) => format!("  log         {} (-v: here instead)\n", shown(path)),
        None => String::new(),
    };
    format!(
        "\nlab is up:\n  redis       {redis}{note}\n  api server  {api} (container {server})\n  http        http://{http}/status  /metrics\n{log}\nwatch it, from this directory:\n  {cmd} status\n  {cmd} events tail -f\n  kubectl --kubeconfig {kc} get nodes -w\n  kubectl --kubeconfig {kc} create -f examples/web.yaml   # pending pods -> scale-up\n\nCtrl-C stops the autoscaler{keep}.\n",
        redis = bus::redact_url(b.redis_url),
        note = if b.redis_started_here { " (started here)" } else { "" },
        api = b.api,
        server = b.server_container,
        http = b.http_listen,
        cmd = b.command,
        kc = kubeconfig,
        keep = if b.keep { "" } else { " and removes the lab's containers" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_env_lines_round_trip_and_comments_are_skipped() {
        let pairs = vec![
            (
                "REDIS_URL".to_string(),
                "redis://:p=w@127.0.0.1:1".to_string(),
            ),
            ("AUTOSCALER__KUBERNETES__SERVER".to_string(), String::new()),
        ];
        assert_eq!(parse_env(&render_env(&pairs)), pairs);
        assert!(parse_env("# x=y\n\n").is_empty());
    }

    #[test]
    fn the_banner_never_prints_the_redis_password_and_has_no_colour_codes() {
        let cwd = std::env::current_dir().unwrap();
        let text = banner(&Banner {
            redis_url: "redis://autoscaler:hunter2@127.0.0.1:6379",
            redis_started_here: false,
            api: "http://127.0.0.1:40000",
            server_container: "k3s-lab-server",
            kubeconfig: &cwd.join(".lab/kubeconfig"),
            http_listen: "127.0.0.1:9090",
            log: Some(&cwd.join(".lab/lab.log")),
            command: "target/release/autoscaler",
            keep: false,
        });
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("redis://autoscaler:***@127.0.0.1:6379"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "{text}");
        // The lines a user types from the same directory, as the README shows them.
        for line in [
            "  target/release/autoscaler status\n",
            "  target/release/autoscaler events tail -f\n",
            "  kubectl --kubeconfig .lab/kubeconfig get nodes -w\n",
            "  log         .lab/lab.log (-v: here instead)\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }
}
