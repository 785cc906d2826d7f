//! The command line (`args`) and the commands other than `serve`, `demo`, `check` and `bench`,
//! one module per command group: `service`, `keys`, `token`, `reload` (with `config show`),
//! `healthcheck`, `invoke` (a scoring call through the gateway), `store` and `traffic` (the
//! traffic split and mirror). `admin` is how they
//! reach the admin API, `output` how they print (JSON, tables). A new command adds its arguments
//! to `args::Command`, a module here with a `run`, and one line to `main`'s dispatch.
//!
//! Exit status: 0 success, 1 failure, 2 usage error — clap's own for a bad argument, and
//! `UsageError` for ours (no config file).

pub mod admin;
pub mod args;
pub mod healthcheck;
pub mod invoke;
pub mod keys;
pub mod output;
pub mod reload;
pub mod service;
pub mod store;
pub mod token;
pub mod traffic;

use std::path::{Path, PathBuf};

use crate::config::{Config, DEFAULT_CONFIG_PATH};

/// Exit status of a usage error (clap's, and `UsageError`'s).
pub const EXIT_USAGE: u8 = 2;

/// A mistake in how the command was called rather than a failure of what it did: exit status
/// `EXIT_USAGE`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Which config file a command reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    pub path: PathBuf,
    /// Named by `--config` or `SCOREGATE_CONFIG`, not the default: it must exist.
    pub explicit: bool,
}

impl ConfigPath {
    /// `--config` after the subcommand, else before it (or `SCOREGATE_CONFIG`), else the default.
    pub fn choose(after: Option<PathBuf>, before: Option<PathBuf>) -> ConfigPath {
        match after.or(before) {
            Some(path) => ConfigPath {
                path,
                explicit: true,
            },
            None => ConfigPath {
                path: PathBuf::from(DEFAULT_CONFIG_PATH),
                explicit: false,
            },
        }
    }

    /// A missing file is a usage error that says what to do.
    pub fn require_file(&self) -> anyhow::Result<()> {
        match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(UsageError(no_config(&self.path, self.explicit)).into())
            }
            _ => Ok(()),
        }
    }

    /// The config, which must exist.
    pub fn load(&self) -> anyhow::Result<Config> {
        self.require_file()?;
        Ok(Config::load(&self.path)?)
    }

    /// The config when one was named, or when the default file exists.
    pub fn load_if_present(&self) -> anyhow::Result<Option<Config>> {
        if self.explicit || Path::new(&self.path).exists() {
            self.load().map(Some)
        } else {
            Ok(None)
        }
    }
}

fn no_config(path: &Path, explicit: bool) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let which = if explicit {
        "cannot read the config file"
    } else {
        "cannot read the default config file"
    };
    format!(
        "{which} {}: it does not exist.\n\
         \x20 Name one with --config PATH, or set SCOREGATE_CONFIG=PATH (README: \"Running with your own config\").\n\
         \x20 To try scoregate without any file: scoregate demo",
        abs.display()
    )
}

/// Percent-encodes anything but the service-name alphabet, so a name cannot change the path.
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Prints a line to stdout; a closed pipe (`| head -1`) is not an error worth a panic.
pub fn print_out(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// The small runtime a CLI command runs its calls on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
