//! The offline compose lab brought up the way a user does it (README, "The compose lab"): the images
//! built by `autoscaler lab images`, an `.env` with the token and the Redis password, then
//! `docker-compose -f docker-compose.yml -f docker-compose.lab.yml up -d`. The lab file only swaps
//! images (and the API server's URL scheme), so this checks `docker-compose.yml`'s own wiring too:
//! the autoscaler reaches the password-protected Redis, the API server with the token, the Docker
//! engine through the socket, and creates workers on the compose network; the health checks and
//! `depends_on` order the start. Then `examples/web.yaml` needs more workers: they come and the
//! pods run. Then the README's take-down, after which no container, network or volume of the project
//! is left. A unique project, network, cluster id and worker prefix, and ports picked by Docker, so it
//! runs beside other tests and beside a user's own lab.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tests::{autoscaler_binary, lab_image_of_this_build};

const REDIS_IMAGE: &str = "k3s-autoscaler-redis:local";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, panicking with its output when it fails (or cannot start: Docker or docker-compose
/// missing is a failure, not a skip).
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run it ({e}); this test needs it installed"));
    assert!(out.status.success(), "{what} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker(args: &[&str]) -> String {
    run(
        Command::new("docker").args(args),
        &format!("docker {args:?}"),
    )
}

/// One compose project of the offline lab; dropping it takes everything down, also on failure.
struct ComposeLab {
    project: String,
    lab_name: String,
    dir: PathBuf,
}

impl ComposeLab {
    fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let dir = std::env::temp_dir().join(format!("k3s-autoscaler-compose-{id}"));
        std::fs::create_dir_all(&dir).expect("test dir");
        let lab = ComposeLab {
            project: format!("k3sascompose{id}"),
            lab_name: format!("compose-{id}"),
            dir,
        };
        // What a user writes into .env (README), plus the names that keep this lab apart; empty
        // ports: Docker picks free ones.
        let secret = || uuid::Uuid::new_v4().simple().to_string();
        std::fs::write(
            lab.env_file(),
            format!(
                "K3S_TOKEN={}\nREDIS_PASSWORD={}\nLAB_NAME={}\nWORKER_PREFIX=compose{id}-w-\n\
                 AUTOSCALER_HTTP_PORT=\nK3S_API_PORT=\nLAB_IMAGE={}\nLAB_REDIS_IMAGE={REDIS_IMAGE}\n",
                secret(),
                secret(),
                lab.lab_name,
                lab_image_of_this_build(),
            ),
        )
        .expect("write .env");
        lab
    }

    fn env_file(&self) -> PathBuf {
        self.dir.join(".env")
    }

    /// `docker-compose -p <project> --env-file <.env> -f docker-compose.yml -f docker-compose.lab.yml …`
    /// from the repository root, with none of the file's variables inherited from this process.
    fn compose(&self) -> Command {
        let root = repo_root();
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(&root)
            .arg("-p")
            .arg(&self.project)
            .arg("--env-file")
            .arg(self.env_file())
            .arg("-f")
            .arg(root.join("docker-compose.yml"))
            .arg("-f")
            .arg(root.join("docker-compose.lab.yml"));
        for var in [
            "K3S_TOKEN",
            "REDIS_PASSWORD",
            "LAB_NAME",
            "WORKER_PREFIX",
            "AUTOSCALER_HTTP_PORT",
            "K3S_API_PORT",
            "LAB_IMAGE",
            "LAB_REDIS_IMAGE",
            "AUTOSCALER_IMAGE",
            "COMPOSE_FILE",
            "COMPOSE_PROJECT_NAME",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        run(
            self.compose().args(args),
            &format!("docker-compose {args:?}"),
        )
    }

    /// The container of `service`.
    fn container(&self, service: &str) -> String {
        self.run(&["ps", "-q", service]).trim().to_string()
    }

    fn health(&self, service: &str) -> String {
        let id = self.container(service);
        docker(&["inspect", "-f", "{{.State.Health.Status}}", &id])
            .trim()
            .to_string()
    }

    /// `kubectl` with the kubeconfig the API server wrote (HTTPS, its CA, the token), for its port
    /// published on the host.
    fn kubectl(&self, server: &str, args: &[&str]) -> String {
        run(
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(self.dir.join("kubeconfig.yaml"))
                .arg("--server")
                .arg(server)
                .args(args),
            &format!("kubectl {args:?}"),
        )
    }

    fn label(&self) -> String {
        format!("label=k3s-autoscaler/cluster-id={}", self.lab_name)
    }

    /// The README's take-down: stop the autoscaler (it would replace the workers), remove its
    /// workers and their volumes, then `down -v`.
    fn take_down(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let mut step = |cmd: &mut Command, what: &str| match cmd.output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => failures.push(format!("{what}: {}", text(&out))),
            Err(e) => failures.push(format!("{what}: {e}")),
        };
        step(
            self.compose().args(["stop", "autoscaler"]),
            "stop autoscaler",
        );
        let workers = docker_list(&["ps", "-aq", "--filter", &self.label()]);
        if !workers.is_empty() {
            step(
                Command::new("docker").args(["rm", "-fv"]).args(&workers),
                "docker rm workers",
            );
        }
        let volumes = docker_list(&["volume", "ls", "-q", "--filter", &self.label()]);
        if !volumes.is_empty() {
            step(
                Command::new("docker").args(["volume", "rm"]).args(&volumes),
                "docker volume rm",
            );
        }
        step(self.compose().args(["down", "-v"]), "down -v");
        failures
    }

    /// What is left of the project: containers, networks and volumes.
    fn leftovers(&self) -> Vec<String> {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let mut left = Vec::new();
        for (what, args) in [
            ("container", vec!["ps", "-aq", "--filter", &project]),
            ("worker", vec!["ps", "-aq", "--filter", &self.label()]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &project]),
            (
                "worker volume",
                vec!["volume", "ls", "-q", "--filter", &self.label()],
            ),
        ] {
            left.extend(
                docker_list(&args)
                    .into_iter()
                    .map(|id| format!("{what} {id}")),
            );
        }
        let name_filter = format!("name=^{}$", self.lab_name);
        left.extend(
            docker_list(&["network", "ls", "-q", "--filter", &name_filter])
                .into_iter()
                .map(|id| format!("network {id}")),
        );
        left
    }
}

fn docker_list(args: &[&str]) -> Vec<String> {
    docker(args)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

impl Drop for ComposeLab {
    fn drop(&mut self) {
        if !self.leftovers().is_empty() {
            let _ = self.take_down();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `check` every 500 ms until it returns `Some`, or panics after `within` with `state()`.
fn wait_for<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
    state: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}\n{}",
            state()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_offline_compose_lab_comes_up_scales_for_web_and_goes_away_without_a_trace() {
    let started = Instant::now();
    // The images, as the README builds them.
    let images = run(
        Command::new(autoscaler_binary())
            .current_dir(repo_root())
            .args(["lab", "images", "--lab-image", &lab_image_of_this_build()])
            .args(["--redis-image", REDIS_IMAGE]),
        "autoscaler lab images",
    );
    eprintln!("{images}images ready after {:?}", started.elapsed());

    let lab = ComposeLab::new();
    let logs = || {
        let out = lab.compose().args(["logs", "--tail", "40"]).output();
        out.map(|o| text(&o)).unwrap_or_default()
    };
    // `up -d` returns once the health checks that `depends_on` waits for have passed.
    lab.run(&["up", "-d"]);
    eprintln!("up after {:?}", started.elapsed());
    wait_for(
        "the autoscaler's health check (/readyz)",
        Duration::from_secs(60),
        || (lab.health("autoscaler") == "healthy").then_some(()),
        logs,
    );
    assert_eq!(lab.health("redis"), "healthy");
    assert_eq!(lab.health("k3s-server"), "healthy");

    // The compose Redis requires the password from .env: without it, no answer but NOAUTH.
    let anonymous = lab
        .compose()
        .args([
            "exec",
            "-T",
            "redis",
            "sh",
            "-c",
            "unset REDISCLI_AUTH; redis-cli ping",
        ])
        .output()
        .expect("docker-compose exec");
    assert!(
        text(&anonymous).contains("NOAUTH"),
        "Redis answered without the password: {}",
        text(&anonymous)
    );

    // The kubeconfig the API server wrote where k3s writes it, as the README copies it out.
    let server = lab.container("k3s-server");
    docker(&[
        "cp",
        &format!("{server}:/output/kubeconfig.yaml"),
        lab.dir
            .join("kubeconfig.yaml")
            .to_str()
            .expect("utf-8 path"),
    ]);
    let port = lab.run(&["port", "k3s-server", "6443"]);
    let api = format!("https://{}", port.trim());
    let web = repo_root().join("examples/web.yaml");
    lab.kubectl(&api, &["create", "-f", web.to_str().expect("utf-8 path")]);

    // Four pods of 1500m on 2-CPU workers: four workers, every pod Running.
    let running_workers = || {
        docker_list(&[
            "ps",
            "-q",
            "--filter",
            &lab.label(),
            "--filter",
            "status=running",
        ])
        .len()
    };
    let phases = || {
        lab.kubectl(
            &api,
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ],
        )
    };
    wait_for(
        "4 workers and the 4 web pods Running",
        Duration::from_secs(90),
        || {
            let running = phases()
                .split_whitespace()
                .filter(|s| *s == "Running")
                .count();
            (running == 4 && running_workers() >= 4).then_some(())
        },
        || {
            format!(
                "workers running: {}\npods: {}\n{}",
                running_workers(),
                phases(),
                logs()
            )
        },
    );
    eprintln!(
        "scaled: {} workers, pods Running after {:?}",
        running_workers(),
        started.elapsed()
    );

    // `autoscaler status` inside the autoscaler's container sees the same world (Redis with the
    // password, the API server with the token, Docker through the socket).
    let status: serde_json::Value = serde_json::from_str(&lab.run(&[
        "exec",
        "-T",
        "autoscaler",
        "autoscaler",
        "status",
        "--json",
    ]))
    .expect("status --json is JSON");
    assert_eq!(status["errors"], serde_json::json!([]), "{status:#}");

    let failures = lab.take_down();
    assert!(failures.is_empty(), "take-down failed: {failures:#?}");
    let left = lab.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    eprintln!("down after {:?}", started.elapsed());
}
