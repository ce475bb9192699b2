//! Configuration: `config.yaml` plus `AUTOSCALER__…` environment overrides and `REDIS_URL`.
//!
//! Loading is two steps: the `config` crate merges the sources into one tree, then serde reads it into
//! [`Settings`] while collecting every key it does not know, and [`Settings::problems`] checks the values.
//! All problems are reported together, each naming its field, so one `autoscaler config check` run shows
//! everything that is wrong.
//!
//! - [`schema`]: the structs under `autoscaler:` and their defaults;
//! - [`access`]: the keys of credentials, TLS and webhook headers;
//! - [`serde_helpers`]: durations (seconds or `90s`) and byte quantities (`2Gi`);
//! - [`load`]: reading the file and applying the environment;
//! - [`validate`]: the semantic checks, one function per section.

use std::fmt;

pub mod access;
pub mod load;
pub mod schema;
pub mod serde_helpers;
pub mod validate;

pub use access::{TlsFiles, WebhookHeader};
pub use schema::*;
pub use serde_helpers::{duration, expander, optional_quantity, quantity};

/// One thing wrong with a configuration, named by its dotted path (`autoscaler.limits.max_nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem, one per line, for `config check`.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Read { path, reason } => vec![Problem {
                field: path.clone(),
                message: reason.clone(),
            }],
            ConfigError::Invalid(p) => p.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
