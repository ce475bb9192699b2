//! Loading: the file, then `AUTOSCALER__…` overrides and `REDIS_URL` from the environment, merged by the
//! `config` crate; serde reads the tree while collecting unknown keys, then [`Settings::problems`] checks it.

use std::path::Path;

use super::{ConfigError, Problem, Settings};

impl Settings {
    /// Loads `path`, applies `AUTOSCALER__…` and `REDIS_URL` from the process environment, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given (tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_yaml_with_env(&text, env)
    }

    /// Parses YAML text with the given environment.
    pub fn from_yaml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let merged = merge(text, env)?;
        let (parsed, mut problems) = deserialize(merged);
        match parsed {
            Ok(settings) => {
                problems.extend(settings.problems());
                if problems.is_empty() {
                    Ok(settings)
                } else {
                    Err(ConfigError::Invalid(problems))
                }
            }
            Err(e) => {
                let field = match e.path().to_string() {
                    p if p == "." => "autoscaler".to_string(),
                    p => p,
                };
                problems.push(Problem {
                    field,
                    message: e.into_inner().to_string(),
                });
                Err(ConfigError::Invalid(problems))
            }
        }
    }
}

/// The file's tree with the `AUTOSCALER__…` overrides applied and `REDIS_URL` (if set) as the bus URL.
fn merge(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<::config::Config, ConfigError> {
    let mut overrides = ::config::Map::new();
    let mut redis_url = None;
    for (key, value) in env {
        if key == "REDIS_URL" {
            redis_url = Some(value);
        } else if key.starts_with("AUTOSCALER__") {
            overrides.insert(key, value);
        }
    }
    let problem = |field: &str, message: String| {
        ConfigError::Invalid(vec![Problem {
            field: field.to_string(),
            message,
        }])
    };
    ::config::Config::builder()
        .add_source(::config::File::from_str(text, ::config::FileFormat::Yaml))
        .add_source(
            ::config::Environment::default()
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("autoscaler.events.handlers")
                .with_list_parse_key("autoscaler.workers.args")
                .with_list_parse_key("autoscaler.workers.protected")
                .source(Some(overrides)),
        )
        .set_override_option("autoscaler.events.event_bus.url", redis_url)
        .map_err(|e| problem("REDIS_URL", e.to_string()))?
        .build()
        .map_err(|e| problem("config", e.to_string()))
}

type Parsed = Result<Settings, serde_path_to_error::Error<::config::ConfigError>>;

/// Reads the merged tree into [`Settings`], with one problem per key it does not know.
fn deserialize(merged: ::config::Config) -> (Parsed, Vec<Problem>) {
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(dotted(&path));
    let de = serde_ignored::Deserializer::new(merged, &mut on_unknown);
    let parsed: Parsed = serde_path_to_error::deserialize(de);
    let problems = unknown
        .into_iter()
        .map(|field| Problem {
            field,
            message: "unknown key".into(),
        })
        .collect();
    (parsed, problems)
}

/// A key's path as the problems name fields: `autoscaler.pools[0].gpus` (serde_ignored writes
/// `pools.0.gpus`).
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", dotted(parent)),
        Path::Map { parent, key } => match dotted(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => dotted(parent),
    }
}
