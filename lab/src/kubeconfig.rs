//! The kubeconfig `lab serve` writes for kubectl and the autoscaler.

use std::path::Path;

/// A kubeconfig for `server` (e.g. `https://127.0.0.1:6443`), with a bearer token when one is set.
/// An `https` server is verified against `ca_pem`; without one (a node agent, which gets only the
/// URL and the token) it is not verified.
pub fn render(server: &str, token: Option<&str>, ca_pem: Option<&str>) -> String {
    let user = match token {
        Some(t) => format!("    token: {t}\n"),
        None => "    {}\n".to_string(),
    };
    let user = if token.is_some() {
        format!("  user:\n{user}")
    } else {
        "  user: {}\n".to_string()
    };
    let tls = match ca_pem {
        Some(ca) => format!(
            "    certificate-authority-data: {}\n",
            base64(ca.as_bytes())
        ),
        None if server.starts_with("https://") => "    insecure-skip-tls-verify: true\n".into(),
        None => String::new(),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n{tls}contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n    namespace: default\ncurrent-context: lab\nusers:\n- name: lab\n{user}preferences: {{}}\n"
    )
}

/// Writes the kubeconfig to `path` (creating its directory), readable by the owner only when it holds
/// a token.
pub fn write(
    path: &Path,
    server: &str,
    token: Option<&str>,
    ca_pem: Option<&str>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, render(server, token, ca_pem))?;
    #[cfg(unix)]
    if token.is_some() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Standard base64 with padding (`certificate-authority-data`).
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn the_kubeconfig_parses_as_yaml_with_and_without_a_token() {
        for token in [None, Some("s3cret")] {
            let text = render("http://127.0.0.1:1234", token, None);
            let v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
            assert_eq!(
                v["clusters"][0]["cluster"]["server"],
                "http://127.0.0.1:1234"
            );
            assert_eq!(v["current-context"], "lab");
            assert_eq!(v["users"][0]["user"]["token"].as_str(), token);
        }
    }
}
