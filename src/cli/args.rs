//! The command line: every command, argument and environment variable, with its help text
//! (`main` parses it and runs the command).
//!
//! `--config`, `--admin` and `--admin-token-file` may come before the subcommand
//! (`scoregate --config X keys list iris`) or after it; after it wins. They are not clap
//! `global` arguments because `demo` has an `--admin` of its own (the address to listen on), so
//! the two places are merged here (`GlobalArgs`, `AdminArgs::with`, `ConfigArg::with`).
//! `SCOREGATE_CONFIG` stands in for a `--config` given in neither place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::ConfigPath;

/// The environment variables and exit codes, at the end of `--help`.
pub const ENVIRONMENT_HELP: &str = "\
Environment:
  SCOREGATE_CONFIG       config file for commands that take --config, when it is not given
                         [default: config/scoregate.toml]
  SCOREGATE_ADMIN_TOKEN  admin token for admin commands, when --admin-token-file is not given
                         [default: the config's admin.token_file]
  SCOREGATE_LOG          log filter of serve and demo, tracing EnvFilter syntax [default: info]

Exit status: 0 success, 1 failure, 2 usage error (a bad argument, or no config file).";

#[derive(Parser, Debug)]
#[command(
    name = "scoregate",
    version,
    about = "HTTPS scoring gateway for model backends",
    after_help = ENVIRONMENT_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The options that may come before the subcommand.
#[derive(Args, Debug, Clone, Default)]
pub struct GlobalArgs {
    /// Config file [default: config/scoregate.toml].
    #[arg(long, value_name = "PATH", env = "SCOREGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Admin API base URL for admin commands, e.g. http://127.0.0.1:9090 [default: the
    /// config's admin.address].
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// File holding the admin token [default: $SCOREGATE_ADMIN_TOKEN, else the config's
    /// admin.token_file].
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl GlobalArgs {
    /// Whether any was given before a subcommand that takes none of them.
    pub fn any_admin(&self) -> bool {
        self.admin.is_some() || self.admin_token_file.is_some()
    }
}

/// `--config` after the subcommand.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArg {
    /// Config file [default: $SCOREGATE_CONFIG, else config/scoregate.toml].
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// This `--config`, else the one before the subcommand, else `SCOREGATE_CONFIG`, else the
    /// default path.
    pub fn with(self, global: &GlobalArgs) -> ConfigPath {
        ConfigPath::choose(self.config, global.config.clone())
    }
}

/// How admin commands find the admin API and its token.
#[derive(Args, Debug, Clone, Default)]
pub struct AdminArgs {
    /// Admin API base URL, e.g. http://127.0.0.1:9090 [default: the config's admin.address].
    #[arg(long, value_name = "URL", global = true)]
    pub admin: Option<String>,
    /// Config file, where the admin API and its token file are found [default:
    /// $SCOREGATE_CONFIG, else config/scoregate.toml when it exists].
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// File holding the admin token [default: $SCOREGATE_ADMIN_TOKEN, else the config's
    /// admin.token_file].
    #[arg(long, value_name = "FILE", global = true)]
    pub admin_token_file: Option<PathBuf>,
}

/// `AdminArgs` merged with the options given before the subcommand.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    pub admin: Option<String>,
    pub config: ConfigPath,
    pub admin_token_file: Option<PathBuf>,
}

impl AdminArgs {
    pub fn with(self, global: &GlobalArgs) -> AdminOptions {
        AdminOptions {
            admin: self.admin.or_else(|| global.admin.clone()),
            config: ConfigPath::choose(self.config, global.config.clone()),
            admin_token_file: self
                .admin_token_file
                .or_else(|| global.admin_token_file.clone()),
        }
    }
}

/// `-o`: how list commands print.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The admin API's JSON answer, indented.
    Json,
    /// Aligned columns, for people.
    Table,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a complete local setup: throwaway certificate, sample model, gateway on
    /// 127.0.0.1:8443.
    Demo {
        /// Scoring listener address (port 0: any free port, printed at start).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Admin API listen address (port 0: any free port, printed at start).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        admin: SocketAddr,
    },
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Write the process id to this file once the listeners are bound (removed on a clean
        /// exit), for `kill -HUP $(cat PATH)`.
        #[arg(long, value_name = "PATH")]
        pid_file: Option<PathBuf>,
    },
    /// Validate config, certificates, JWKS files, the state store and the admin token file, as
    /// `serve` would at start (like `nginx -t`).
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Fail on warnings too (an expired or soon expiring certificate), for CI gates.
        #[arg(long)]
        strict: bool,
    },
    /// Reload the running gateway's config and certificates (POST /v1/reload, as SIGHUP), like
    /// `nginx -s reload`; prints what changed and what needs a restart.
    #[command(after_help = ENVIRONMENT_HELP)]
    Reload {
        /// table: what changed, one line each; json: the admin API's answer.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Score a sample through the gateway, as a client would (like `az ml online-endpoint
    /// invoke`): prints the status and x-ms-request-id (stderr) and the answer (stdout).
    #[command(after_help = ENVIRONMENT_HELP)]
    Invoke(InvokeArgs),
    /// Services, via the admin API.
    #[command(after_help = ENVIRONMENT_HELP)]
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Service keys, via the admin API.
    #[command(after_help = ENVIRONMENT_HELP)]
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Get a token for a token-mode service, via the admin API.
    #[command(after_help = ENVIRONMENT_HELP)]
    Token {
        /// Service name.
        name: String,
        /// Print only the JWT.
        #[arg(long)]
        value: bool,
        /// The token's subject (`sub`), whose tokens share a `by = "credential"` rate-limit
        /// bucket: 1 to 128 of A-Z a-z 0-9 - _ . : @ (default: a random UUID).
        #[arg(long, value_name = "S")]
        subject: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show or set a service's traffic split and mirror, via the admin API: `traffic iris`
    /// shows them, `traffic iris blue=90 green=10` sets the live split (deployments left out
    /// get 0), `--mirror green=10` (or `--mirror none`) the mirror.
    #[command(after_help = ENVIRONMENT_HELP)]
    Traffic {
        /// Service name.
        name: String,
        /// The live split: DEPLOYMENT=PERCENT ..., whole percentages summing to 100 (or all 0).
        #[arg(value_name = "DEPLOYMENT=PERCENT")]
        traffic: Vec<String>,
        /// The mirror: DEPLOYMENT=PERCENT (at most 50, a deployment with live weight 0), or
        /// `none` to stop mirroring.
        #[arg(long, value_name = "DEPLOYMENT=PERCENT|none")]
        mirror: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The running gateway's config, via the admin API.
    #[command(after_help = ENVIRONMENT_HELP)]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Exit 0 when the gateway's admin API answers /healthz (or /readyz with --ready), else 1:
    /// a container HEALTHCHECK. Needs no admin token.
    Healthcheck {
        /// Ask /readyz (certificates, config and state loaded, not draining) instead of
        /// /healthz (the process answers).
        #[arg(long)]
        ready: bool,
        /// How long to wait for the answer.
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The shared store: move a file store into it, or re-seal it with a new key.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
        /// The config naming the store ([state] store = "redis" and [state.redis]).
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Load harness: drive a built-in (or a running) gateway; req/s, latency, CPU and memory.
    Bench(crate::bench::BenchArgs),
}

/// `scoregate invoke` (`cli::invoke`).
#[derive(Args, Debug)]
pub struct InvokeArgs {
    /// Service name.
    pub name: String,
    /// The request body, JSON, e.g. '{"data": [[5.1, 3.5, 1.4, 0.2]]}'.
    #[arg(
        long,
        value_name = "JSON",
        required_unless_present = "request_file",
        conflicts_with = "request_file"
    )]
    pub data: Option<String>,
    /// File holding the request body, sent as it is (`-`: stdin).
    #[arg(long, value_name = "FILE")]
    pub request_file: Option<PathBuf>,
    /// Deployment to score with, sent as `azureml-model-deployment` [default: the service's
    /// traffic split decides].
    #[arg(long, value_name = "NAME")]
    pub deployment: Option<String>,
    /// Key or token to send (it shows in `ps`) [default: from the admin API: the primary key,
    /// or a new token for a token-mode service].
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// CA certificate (PEM) to trust [default: the system's roots and the CA certificates in
    /// the config's first certificate file].
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Scoring URI to call [default: the config's listen address, named as the first
    /// certificate's cname; without a config, the scoringUri the admin API reports].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// How long the whole call may take.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Write this replica's file store (state.dir/state.json) into a shared store that does not
    /// know its services yet (refuses otherwise).
    Import,
    /// Re-seal every record with secret_key_file, once every replica holds it (with the old key
    /// as previous_secret_key_file), and name it in the store.
    Reseal,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// All services.
    List {
        /// json: the admin API's answer; table: name, state, auth mode, scoring URI.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Json)]
        output: Format,
    },
    /// One service.
    Show {
        /// Service name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// The primary and secondary key of a service, and how much each was used: requests
    /// authenticated with it and when it was last used, on the replica that answers.
    List {
        /// Service name.
        name: String,
        /// Print only the two keys, primary first, one per line.
        #[arg(long, conflicts_with = "output")]
        value: bool,
        /// json: the admin API's answer (listKeys?usage=true); table: one line per key with its
        /// requests, last use and since when it is counted (on the replica that answers).
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Json)]
        output: Format,
    },
    /// Replace one key (random, or the given value; `--value -` reads it from stdin).
    Regen {
        /// Service name.
        name: String,
        /// Which key to replace.
        #[arg(long, value_parser = ["primary", "secondary"])]
        key: String,
        /// The new key (32 to 128 characters of A-Z a-z 0-9 - _), or `-` to read it from stdin
        /// [default: 32 random bytes].
        #[arg(long = "value", value_name = "V")]
        new_value: Option<String>,
        /// Print only the new key, for scripts.
        #[arg(long = "print-value")]
        print_value: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// The effective config as JSON, secrets redacted (GET /v1/config, like `nginx -T`).
    Show,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument of every command says what it is for (`--help`).
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = vec![];
        walk(&cmd, "scoregate", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
        cmd.debug_assert();
    }

    #[test]
    fn options_before_the_subcommand_apply_and_after_it_win() {
        let cli = Cli::try_parse_from([
            "scoregate",
            "--config",
            "a.toml",
            "--admin",
            "http://127.0.0.1:1",
            "keys",
            "list",
            "iris",
            "--admin",
            "http://127.0.0.1:2",
        ])
        .unwrap();
        let Command::Keys { admin, .. } = cli.command else {
            panic!("keys")
        };
        let o = admin.with(&cli.global);
        assert_eq!(o.admin.as_deref(), Some("http://127.0.0.1:2"));
        assert_eq!(o.config.path, PathBuf::from("a.toml"));
        assert!(o.config.explicit);
    }
}
