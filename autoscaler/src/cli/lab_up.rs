//! `autoscaler lab`: the whole lab on this machine — Redis (the configured one, or a local
//! `redis-server`), the lab cluster's API server as a container on its own Docker network, the lab
//! worker image built offline from this binary, and the autoscaler itself, creating workers as
//! containers that run the lab's node agent. Ctrl-C stops the autoscaler and removes the lab's
//! containers (`--keep` leaves them).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::labenv::{LabEnv, LabEnvOptions};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: Option<lab::cli::LabCommand>,
    /// Where the lab keeps its files (kubeconfig, Redis data).
    #[arg(long, env = "LAB_DIR", default_value = ".lab")]
    pub lab_dir: PathBuf,
    /// Leave the lab's containers running after Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Publish decisions marked dry_run and create nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(args: LabArgs, config: &Path) -> anyhow::Result<ExitCode> {
    if let Some(cmd) = args.command {
        return lab::cli::run_lab(cmd).await;
    }
    let mut settings = match super::load_settings(config) {
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
    let token_file = write_token(&lab_dir, &token)?;
    options.token = Some(token);
    println!("lab: building the worker image if needed and starting the lab API server…");
    let env = LabEnv::up(docker, options).await?;

    {
        let a = &mut settings.autoscaler;
        if redis.started_here() {
            // The server started here has no password and no TLS.
            let b = &mut a.events.event_bus;
            b.url = redis.url.clone();
            b.username.clear();
            b.password_file.clear();
            b.tls = Default::default();
        }
        a.dry_run |= args.dry_run;
        a.workers.image = env.options.image.clone();
        // Every pool's workers run the lab's node agent too.
        for pool in &mut a.pools {
            pool.image = None;
        }
        a.workers.network = env.network.clone();
        a.workers.k3s_url = env.network_url.clone();
        // The lab's node agent needs no privileges, and a killed worker should stay dead (like a lost
        // machine) so the autoscaler replaces it.
        a.workers.privileged = false;
        a.workers.restart_policy = "no".into();
        a.kubernetes.kubeconfig = env.kubeconfig.display().to_string();
        a.workers.token_file = token_file.display().to_string();
        a.kubernetes.server = String::new();
    }
    let redis_note = if redis.started_here() {
        " (started here)"
    } else {
        ""
    };
    let (shown_url, tail) = redis_lines(&redis.url);
    println!(
        "\nlab is up:\n  redis       {}{redis_note}\n  api server  {} (container {})\n  kubeconfig  {}\n  http        http://{}/status  /metrics\n\nwatch it:\n  {}\n  kubectl --kubeconfig {} get nodes -w\n  kubectl --kubeconfig {} create deployment web --image=nginx --replicas=6   # pending pods -> scale-up\n\nCtrl-C stops the autoscaler{}.\n",
        shown_url,
        env.host_url,
        env.server_container,
        env.kubeconfig.display(),
        settings.autoscaler.http.listen,
        tail,
        env.kubeconfig.display(),
        env.kubeconfig.display(),
        if args.keep { "" } else { " and removes the lab's containers" },
    );
    let result = crate::runtime::run(settings, crate::shutdown::signal(), None).await;
    if !args.keep {
        println!("lab: removing the lab's containers…");
        env.down().await;
    }
    drop(redis);
    result.map(|()| ExitCode::SUCCESS)
}

/// Writes the lab's token to `$LAB_DIR/token`, readable by the owner only.
fn write_token(lab_dir: &Path, token: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(lab_dir).with_context(|| format!("creating {}", lab_dir.display()))?;
    let path = lab_dir.join("token");
    std::fs::write(&path, token).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(path)
}

/// The banner's Redis URL and its tail command. The URL may hold a password: it is shown redacted,
/// and the tail command then relies on the REDIS_URL (or config) the lab was started with.
fn redis_lines(url: &str) -> (String, String) {
    let shown = bus::redact_url(url);
    let tail = if shown == url {
        format!("REDIS_URL={url} autoscaler events tail -f")
    } else {
        "autoscaler events tail -f   # with the REDIS_URL (or config) this lab uses".to_string()
    };
    (shown, tail)
}

#[cfg(test)]
mod tests {
    use super::redis_lines;

    #[test]
    fn the_banner_never_prints_the_redis_password() {
        let (shown, tail) = redis_lines("redis://autoscaler:hunter2@127.0.0.1:6379");
        assert_eq!(shown, "redis://autoscaler:***@127.0.0.1:6379");
        assert!(!tail.contains("hunter2"), "{tail}");
        let (shown, tail) = redis_lines("redis://127.0.0.1:6379");
        assert_eq!(shown, "redis://127.0.0.1:6379");
        assert_eq!(
            tail,
            "REDIS_URL=redis://127.0.0.1:6379 autoscaler events tail -f"
        );
    }
}
