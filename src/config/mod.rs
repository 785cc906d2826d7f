//! Configuration in two layers: the TOML as written (`raw`, serde structs that deny unknown keys,
//! read by `parse`, which reports every unknown key at once) and the checked, typed values the
//! gateway runs on (`types`, a service's in `types::service`), built by `validate`. Every
//! default is a named constant with its reason (`defaults`). `view` shows the typed config as
//! JSON, secrets redacted, for operators.
//!
//! Loading never half-succeeds: `Config::load` returns a complete, validated config or an error
//! listing every problem found, each naming the file, the key and what is wrong.

pub mod defaults;
pub mod deployment;
mod parse;
pub mod rate_limit;
pub mod raw;
pub mod service;
pub mod store;
#[cfg(test)]
mod tests;
pub mod types;
pub mod validate;
pub mod view;

use std::fmt;
use std::path::{Path, PathBuf};

pub use defaults::*;
pub use deployment::{TrafficError, check_traffic};
pub use rate_limit::{RateLimitBy, RateLimitConfig};
pub use service::parse_backend;
pub use types::*;
pub use validate::{MAX_KEY_LEN, MIN_KEY_LEN, validate_key_value};

/// Everything wrong with a config file, one line per problem.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.len() == 1 {
            write!(f, "{}: {}", self.file.display(), self.problems[0])
        } else {
            write!(
                f,
                "{}: {} problems:",
                self.file.display(),
                self.problems.len()
            )?;
            for p in &self.problems {
                write!(f, "\n  - {p}")?;
            }
            Ok(())
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file (a regular file of at most `files::MAX_SMALL_FILE`).
    /// Blocking: callers on the runtime use `spawn_blocking`. Certificates are checked
    /// separately (`tls::load_all`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let err = |p: String| ConfigError {
            file: abs.clone(),
            problems: vec![p],
        };
        let text = crate::files::read_text_capped(path, crate::files::MAX_SMALL_FILE)
            .map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(&text, &abs)
    }

    /// Validates config text as if read from `file` (relative paths resolve against its folder).
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw = parse::raw_config(text).map_err(|problems| ConfigError {
            file: file.to_path_buf(),
            problems,
        })?;
        let base = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut v = validate::Validator {
            base,
            problems: vec![],
        };
        let config = v.config(raw, file);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: file.to_path_buf(),
                problems: v.problems,
            })
        }
    }

    /// The effective config as JSON, every secret redacted (`view`): `GET /v1/config`.
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("the config serializes")
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}
