//! The lab's images, built offline: `FROM scratch` plus host binaries and the libraries they link.
//! The worker image carries the `autoscaler` binary; the Redis image of the offline compose lab
//! (`docker-compose.lab.yml`) carries Debian's `redis-server`, `redis-cli` and `/bin/sh`.
//!
//! No registry can be reached, so nothing can be pulled. The binary is dynamically linked; rather than a
//! second `+crt-static` build (a full extra compile), the image carries the binary at `/bin/autoscaler`
//! plus the shared libraries `ldd` lists and the loader, at the same paths as on the host. The build
//! context is a tar made in memory. Debug info is stripped (`objcopy --strip-debug`, when present) to
//! keep the context small. The image is labelled with the binary's size and mtime, and the build is
//! skipped when the tag already holds the same binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::BuildImageOptions;
use bollard::Docker;
use futures::StreamExt;
use tracing::{debug, info};

use super::{DockerError, Result, LABEL_MANAGED_BY, MANAGED_BY_VALUE};

/// Image label holding the fingerprint of the binary inside.
pub const LABEL_BINARY: &str = "k3s-autoscaler/binary";

/// How long a build may take (a ~20 MB context on a busy 2-core machine).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// The host's CA bundle (Debian's path), copied into the image.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The Dockerfile of the worker image's context.
const DOCKERFILE: &str = "FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/bin/autoscaler\"]\n";

/// The Dockerfile of the Redis image: the compose file's own `sh -c 'exec redis-server …'` command
/// and `redis-cli` health check run in it unchanged, with the data in `/data` as in the `redis` image.
const REDIS_DOCKERFILE: &str = "FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin:/usr/bin:/bin\nWORKDIR /data\nCMD [\"redis-server\"]\n";

/// What the Redis image holds: (host path, path in the image). The shell is there so the compose
/// file's command can take the password from the environment rather than from its command line.
const REDIS_FILES: [(&str, &str); 3] = [
    ("/usr/bin/redis-server", "/usr/bin/redis-server"),
    ("/usr/bin/redis-cli", "/usr/bin/redis-cli"),
    ("/bin/sh", "/bin/sh"),
];

/// The Redis image tag `autoscaler lab images` builds by default (what `docker-compose.lab.yml` uses).
pub const REDIS_IMAGE: &str = "k3s-autoscaler-redis:local";

/// What [`ensure_lab_image`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageStatus {
    /// The tag already held this binary.
    UpToDate,
    /// The image was built.
    Built,
}

/// Builds `tag` from `binary` unless it already holds the same binary.
pub async fn ensure_lab_image(docker: &Docker, binary: &Path, tag: &str) -> Result<ImageStatus> {
    let fp = fingerprint(binary).map_err(|e| DockerError::ImageContext {
        tag: tag.to_string(),
        message: format!("{}: {e}", binary.display()),
    })?;
    let binary = binary.to_path_buf();
    ensure_image(docker, tag, fp, move || build_context(&binary)).await
}

/// Builds the offline compose lab's Redis image `tag` from this machine's `redis-server`,
/// `redis-cli` and `/bin/sh` (`scripts/ensure-deps` installs redis-server), unless it already holds
/// the same files.
pub async fn ensure_redis_image(docker: &Docker, tag: &str) -> Result<ImageStatus> {
    let ctx_err = |message: String| DockerError::ImageContext {
        tag: tag.to_string(),
        message,
    };
    let mut fp = String::from("redis-v1");
    for (host, _) in REDIS_FILES {
        let one = fingerprint(Path::new(host)).map_err(|e| {
            ctx_err(format!(
                "{host}: {e} (install redis-server: apt-get install -y redis-server)"
            ))
        })?;
        fp.push('-');
        fp.push_str(&one);
    }
    ensure_image(docker, tag, fp, || {
        let files: Vec<(PathBuf, String, u32)> = REDIS_FILES
            .iter()
            .map(|(host, path)| (PathBuf::from(host), path.to_string(), 0o755))
            .collect();
        image_context(REDIS_DOCKERFILE, &files)
    })
    .await
}

/// Builds `tag` from the context `make_context` returns unless the tag's label already holds `fp`.
async fn ensure_image<F>(
    docker: &Docker,
    tag: &str,
    fp: String,
    make_context: F,
) -> Result<ImageStatus>
where
    F: FnOnce() -> std::result::Result<Vec<u8>, String> + Send + 'static,
{
    let ctx_err = |message: String| DockerError::ImageContext {
        tag: tag.to_string(),
        message,
    };
    let mut previous: Option<String> = None;
    match docker.inspect_image(tag).await {
        Ok(image) => {
            previous = image.id.clone();
            let current = image
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(LABEL_BINARY));
            if current == Some(&fp) {
                debug!(%tag, "image is up to date");
                return Ok(ImageStatus::UpToDate);
            }
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(source) => {
            return Err(DockerError::Engine {
                operation: "inspect_image",
                source,
            })
        }
    }

    let tag_owned = tag.to_string();
    let context = tokio::task::spawn_blocking(make_context)
        .await
        .map_err(|e| ctx_err(format!("context task failed: {e}")))?
        .map_err(|e| DockerError::ImageContext {
            tag: tag_owned,
            message: e,
        })?;
    info!(%tag, context_bytes = context.len(), "building an image offline");

    let options = BuildImageOptions {
        t: Some(tag.to_string()),
        rm: true,
        forcerm: true,
        labels: Some(HashMap::from([
            (LABEL_BINARY.to_string(), fp),
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        ])),
        ..Default::default()
    };
    let build = async {
        let mut stream =
            docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        return Err(detail.message.unwrap_or_else(|| "unknown error".into()));
                    }
                    if let Some(line) = info
                        .stream
                        .as_deref()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                    {
                        debug!(%line, "image build");
                    }
                }
                Err(e) => return Err(super::describe(&e)),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BUILD_TIMEOUT, build).await {
        Ok(Ok(())) => {
            remove_replaced(docker, tag, previous).await;
            Ok(ImageStatus::Built)
        }
        Ok(Err(message)) => Err(DockerError::ImageBuild {
            tag: tag.to_string(),
            message,
        }),
        Err(_) => Err(DockerError::Timeout {
            operation: "build_image",
            timeout: BUILD_TIMEOUT,
        }),
    }
}

/// Removes the image `tag` pointed to before a rebuild, so rebuilds leave no dangling images. Only
/// when nothing else uses it: an image still tagged elsewhere stays, and one used by a container
/// stays too (the engine answers 409 and that is fine).
async fn remove_replaced(docker: &Docker, tag: &str, previous: Option<String>) {
    let Some(old) = previous else { return };
    // Only a now-untagged image: deleting by id would also untag every other tag of it (e.g. the
    // lab's own tag of the same build).
    let still_tagged = match docker.inspect_image(&old).await {
        Ok(image) => image.repo_tags.is_some_and(|t| !t.is_empty()),
        Err(_) => return,
    };
    if still_tagged {
        return;
    }
    match docker
        .remove_image(
            &old,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await
    {
        Ok(_) => debug!(%tag, image = %old, "removed the replaced lab image"),
        Err(e) => debug!(%tag, image = %old, error = %e, "kept the replaced lab image"),
    }
}

/// `<size>-<mtime in ns>`: cheap, and changes whenever cargo rewrites the binary.
pub fn fingerprint(binary: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(binary)?;
    let mtime = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Ok(format!("{}-{mtime}", meta.len()))
}

/// The shared objects `ldd` lists for `binary` (libraries and the loader), as absolute host paths.
/// A static binary has none.
pub fn shared_libraries(binary: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("running ldd: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd exits non-zero for static binaries ("not a dynamic executable").
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("statically linked") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(format!("ldd failed: {}", err.trim()));
    }
    parse_ldd(&text)
}

/// Parses `ldd` output: `libc.so.6 => /lib/…/libc.so.6 (0x…)` and `/lib64/ld-linux-x86-64.so.2 (0x…)`;
/// the vDSO has no file and is skipped.
pub fn parse_ldd(text: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.contains("statically linked") {
            continue;
        }
        if line.contains("not found") {
            return Err(format!("missing shared library: {line}"));
        }
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// The binary with debug info stripped into a temporary file when `objcopy` is there, else as is.
fn binary_bytes(binary: &Path) -> std::result::Result<Vec<u8>, String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let tmp = std::env::temp_dir().join(format!(
        "k3s-autoscaler-strip-{}-{nanos}",
        std::process::id()
    ));
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(binary)
        .arg(&tmp)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let bytes = if stripped {
        std::fs::read(&tmp)
    } else {
        std::fs::read(binary)
    };
    let _ = std::fs::remove_file(&tmp);
    bytes.map_err(|e| format!("reading {}: {e}", binary.display()))
}

/// The worker image's build context: `Dockerfile` and `rootfs/` with the binary (debug info
/// stripped), its libraries, the loader, the CA bundle and `/tmp`.
pub fn build_context(binary: &Path) -> std::result::Result<Vec<u8>, String> {
    let bin = binary_bytes(binary)?;
    let mut extra = Vec::new();
    // rustls (the kube client of the node agent) refuses to start without a root store, even for
    // plain-HTTP servers: ship the host's CA bundle when it has one.
    if Path::new(CA_BUNDLE).exists() {
        extra.push((PathBuf::from(CA_BUNDLE), CA_BUNDLE.to_string(), 0o644));
    }
    let libs = shared_libraries(binary)?;
    context_with(
        DOCKERFILE,
        &[(bin, "/bin/autoscaler".into())],
        &libs,
        &extra,
    )
}

/// A build context of host files (host path, path in the image, mode) and the libraries they link.
pub fn image_context(
    dockerfile: &str,
    files: &[(PathBuf, String, u32)],
) -> std::result::Result<Vec<u8>, String> {
    let mut libs: Vec<PathBuf> = Vec::new();
    for (host, _, _) in files {
        for lib in shared_libraries(host)? {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    context_with(dockerfile, &[], &libs, files)
}

/// The tar: `Dockerfile`, then under `rootfs/` the given contents, the libraries at their host paths,
/// the files, and `/tmp`.
fn context_with(
    dockerfile: &str,
    contents: &[(Vec<u8>, String)],
    libs: &[PathBuf],
    files: &[(PathBuf, String, u32)],
) -> std::result::Result<Vec<u8>, String> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32| -> std::result::Result<(), String> {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data)
            .map_err(|e| format!("adding {path} to the context: {e}"))
    };
    add("Dockerfile", dockerfile.as_bytes(), 0o644)?;
    for (data, path) in contents {
        add(&format!("rootfs{path}"), data, 0o755)?;
    }
    // fs::read follows symlinks: the image gets the real file under the name asked for (the loader's,
    // or Debian's `redis-server`, a link to `redis-check-rdb` that picks its mode by its name).
    for lib in libs {
        let data = std::fs::read(lib).map_err(|e| format!("reading {}: {e}", lib.display()))?;
        add(&format!("rootfs{}", lib.to_string_lossy()), &data, 0o755)?;
    }
    for (host, path, mode) in files {
        let data = std::fs::read(host).map_err(|e| format!("reading {}: {e}", host.display()))?;
        add(&format!("rootfs{path}"), &data, *mode)?;
    }
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o1777);
    dir.set_size(0);
    dir.set_mtime(0);
    tar.append_data(&mut dir, "rootfs/tmp/", std::io::empty())
        .map_err(|e| format!("adding /tmp to the context: {e}"))?;
    tar.into_inner()
        .map_err(|e| format!("finishing the context: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_image_ldd_output_lists_libraries_and_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f42)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f41)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f43)\n";
        let libs = parse_ldd(out).unwrap();
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }
}
