//! `autoscaler healthcheck`: a container health check with no curl in the image (the lab image is
//! `FROM scratch`). Exit 0 when the autoscaler's `/readyz` answers 200 (or `--url`, or the API
//! server of `--kubeconfig` answers `GET /version` with the kubeconfig's token); 1 otherwise.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one check may take (the compose file's `timeout` is longer).
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// A plain-HTTP URL to GET; default `http://127.0.0.1:<port of http.listen>/readyz`.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub url: Option<String>,
    /// Check the API server of this kubeconfig instead (`GET /version`, with its token).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

pub async fn run(args: HealthcheckArgs, config: &Path) -> anyhow::Result<ExitCode> {
    let outcome = match (&args.kubeconfig, &args.url) {
        (Some(kc), _) => kube_answers(kc).await,
        (None, Some(url)) => http_ok(url).await,
        (None, None) => match super::load_settings(config) {
            Ok(s) => http_ok(&readyz_url(&s.autoscaler.http.listen)).await,
            Err(code) => return Ok(code),
        },
    };
    match outcome {
        Ok(()) => {
            println!("ok");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("unhealthy: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `/readyz` on the loopback side of `listen` (`0.0.0.0:9090` -> `http://127.0.0.1:9090/readyz`).
pub fn readyz_url(listen: &str) -> String {
    let port = listen.rsplit_once(':').map(|(_, p)| p).unwrap_or("9090");
    let host = match listen.rsplit_once(':').map(|(h, _)| h) {
        Some("0.0.0.0") | Some("[::]") | Some("") | None => "127.0.0.1",
        Some(h) => h,
    };
    format!("http://{host}:{port}/readyz")
}

async fn kube_answers(kubeconfig: &Path) -> anyhow::Result<()> {
    let client = crate::kube::connect_kubeconfig(kubeconfig)
        .await
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    tokio::time::timeout(TIMEOUT, client.apiserver_version())
        .await
        .context("no answer in time")?
        .context("GET /version")?;
    Ok(())
}

/// A bare HTTP/1.0 GET: status 2xx or an error naming what came back.
async fn http_ok(url: &str) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url).with_context(|| format!("bad URL {url:?}"))?;
    anyhow::ensure!(parsed.scheme() == "http", "only http:// URLs: {url}");
    let host = parsed.host_str().context("no host")?.to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut head = vec![0u8; 256];
        let n = stream.read(&mut head).await?;
        head.truncate(n);
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .context("no answer in time")?
        .with_context(|| format!("GET {url}"))?;
    let status_line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    anyhow::ensure!(code.starts_with('2'), "GET {url}: {status_line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::readyz_url;

    #[test]
    fn the_default_url_is_readyz_on_the_loopback_side_of_the_listen_address() {
        assert_eq!(readyz_url("0.0.0.0:9090"), "http://127.0.0.1:9090/readyz");
        assert_eq!(readyz_url("127.0.0.1:9191"), "http://127.0.0.1:9191/readyz");
    }
}
