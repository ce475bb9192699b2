//! The kubeconfig `lab serve` writes for kubectl and the autoscaler.

use std::path::Path;

/// A kubeconfig for `server` (e.g. `http://127.0.0.1:6443`), with a bearer token when one is set.
pub fn render(server: &str, token: Option<&str>) -> String {
    let user = match token {
        Some(t) => format!("    token: {t}\n"),
        None => "    {}\n".to_string(),
    };
    let user = if token.is_some() {
        format!("  user:\n{user}")
    } else {
        "  user: {}\n".to_string()
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n    namespace: default\ncurrent-context: lab\nusers:\n- name: lab\n{user}preferences: {{}}\n"
    )
}

/// Writes the kubeconfig to `path` (creating its directory), readable by the owner only when it holds
/// a token.
pub fn write(path: &Path, server: &str, token: Option<&str>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, render(server, token))?;
    #[cfg(unix)]
    if token.is_some() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_parses_as_yaml_with_and_without_a_token() {
        for token in [None, Some("s3cret")] {
            let text = render("http://127.0.0.1:1234", token);
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
