//! `autoscaler lab` as a user meets it: run from a directory, its terminal shows a short banner (no
//! colour codes when it is not a terminal; the log goes to `$LAB_DIR/lab.log`), and `status`,
//! `events tail` and `explain` run from the same directory with no flag see the lab, through the
//! owner-only `$LAB_DIR/lab.env` it leaves (and removes when it stops).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tests::{autoscaler_binary, lab_image_of_this_build};

/// Kills the lab (if still running) and removes what it made, also when the test fails.
struct LabProcess {
    child: Child,
    dir: PathBuf,
    cluster_id: String,
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let label = format!("label=k3s-autoscaler/cluster-id={}", self.cluster_id);
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-fv"])
                .args(&ids)
                .output();
        }
        let vols = Command::new("docker")
            .args(["volume", "ls", "-q", "--filter", &label])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let vols: Vec<&str> = vols.split_whitespace().collect();
        if !vols.is_empty() {
            let _ = Command::new("docker")
                .args(["volume", "rm"])
                .args(&vols)
                .output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.cluster_id])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `autoscaler <args>` run from `dir` as a user would: none of the variables that would point it
/// elsewhere.
fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(autoscaler_binary())
        .current_dir(dir)
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("KUBECONFIG")
        .env_remove("AUTOSCALER_CONFIG")
        .env_remove("LAB_DIR")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run autoscaler")
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_lab_leaves_what_status_tail_and_explain_need_and_its_terminal_shows_only_the_banner() {
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let cluster_id = format!("labcmd-{id}");
    let dir = std::env::temp_dir().join(format!("k3s-autoscaler-{cluster_id}"));
    std::fs::create_dir_all(&dir).expect("test dir");
    // The repository's config with this lab's names; nothing answers at its Redis URL, so the lab
    // starts its own redis-server.
    let config =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.yaml"))
            .expect("config.yaml");
    let config = config
        .replace(
            "cluster_id: \"k3s-lab\"",
            &format!("cluster_id: \"{cluster_id}\""),
        )
        .replace(
            "name_prefix: \"k3s-worker-\"",
            &format!("name_prefix: \"lc{id}-w-\""),
        )
        .replace("min_nodes: 2", "min_nodes: 1")
        .replace("listen: \"127.0.0.1:9090\"", "listen: \"127.0.0.1:0\"")
        .replace(
            "url: \"redis://127.0.0.1:6379\"",
            "url: \"redis://127.0.0.1:1\"",
        );
    assert!(config.contains(&cluster_id) && config.contains("127.0.0.1:1\""));
    std::fs::write(dir.join("config.yaml"), config).expect("write config");

    let child = Command::new(autoscaler_binary())
        .current_dir(&dir)
        .arg("lab")
        .env("LAB_IMAGE", lab_image_of_this_build())
        .env_remove("REDIS_URL")
        .env_remove("KUBECONFIG")
        .env_remove("AUTOSCALER_CONFIG")
        .env_remove("LAB_DIR")
        .env_remove("K3S_TOKEN")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn autoscaler lab");
    let mut lab = LabProcess {
        child,
        dir: dir.clone(),
        cluster_id: cluster_id.clone(),
    };
    // Everything the terminal gets, stdout and stderr, line by line.
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = lab.child.stdout.take().expect("stdout");
    let stderr = lab.child.stderr.take().expect("stderr");
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut terminal = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !terminal
        .iter()
        .any(|l: &String| l.starts_with("Ctrl-C stops"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => terminal.push(line),
            Err(_) => panic!(
                "no banner within 120 s; the terminal so far:\n{}",
                terminal.join("\n")
            ),
        }
    }
    let banner = terminal.join("\n");
    eprintln!("{banner}");
    assert!(
        !banner.contains('\x1b'),
        "colour codes on a pipe:\n{banner}"
    );
    assert!(
        banner.contains("  log         .lab/lab.log"),
        "the banner names the log:\n{banner}"
    );
    assert!(
        banner.contains("  kubectl --kubeconfig .lab/kubeconfig get nodes -w"),
        "{banner}"
    );
    let exe = autoscaler_binary().display().to_string();
    assert!(banner.contains(&format!("  {exe} status")), "{banner}");
    assert!(
        banner.contains(&format!("  {exe} events tail -f")),
        "{banner}"
    );
    // Only the banner: the INFO lines went to the log file.
    assert!(
        terminal.len() < 20,
        "more than the banner on the terminal:\n{banner}"
    );

    let lab_dir = dir.join(".lab");
    #[cfg(unix)]
    {
        assert_eq!(mode(&lab_dir.join("lab.env")), 0o600);
        assert_eq!(mode(&lab_dir.join("token")), 0o600);
    }

    // From the same directory, no flags: the lab's Redis, cluster and Docker workers. The minimum
    // of one worker is there once the lab has settled.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let out = cli(&dir, &["status", "--json"]);
        let status: serde_json::Value =
            serde_json::from_str(&ok(&out, "status --json")).expect("status --json is JSON");
        let note = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            note.contains("lab.env"),
            "status did not say it used the lab: {note}"
        );
        let workers = status.to_string().matches(&format!("lc{id}-w-")).count();
        if status["errors"] == serde_json::json!([]) && workers > 0 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "status never saw the lab with a worker: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("status: {status}");

    let tail = ok(
        &cli(&dir, &["events", "tail", "--json", "-n", "5"]),
        "events tail",
    );
    let first: serde_json::Value =
        serde_json::from_str(tail.lines().next().expect("an event")).expect("a JSON line");
    let event_id = first["event_id"].as_str().expect("event_id").to_string();
    let explained = ok(&cli(&dir, &["explain", &event_id]), "explain");
    assert!(explained.contains(&event_id[..8]), "{explained}");

    let log = std::fs::read_to_string(lab_dir.join("lab.log")).expect("lab.log");
    assert!(log.contains("INFO"), "the log has the INFO lines");
    assert!(!log.contains('\x1b'), "colour codes in the log file");

    // Stopping the lab removes lab.env: the commands then use ./config.yaml again.
    let pid = lab.child.id().to_string();
    ok(
        &Command::new("kill")
            .args(["-TERM", &pid])
            .output()
            .expect("kill"),
        "kill -TERM",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while lab.child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "the lab did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!lab_dir.join("lab.env").exists(), "lab.env left behind");
    let after = cli(&dir, &["status", "--json"]);
    assert!(
        !String::from_utf8_lossy(&after.stderr).contains("lab.env"),
        "a stopped lab's settings were used"
    );
    let left = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=k3s-autoscaler/cluster-id={cluster_id}"))
        .output()
        .expect("docker ps");
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "the lab's containers were not removed"
    );
}
