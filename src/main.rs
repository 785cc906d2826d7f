//! The `scoregate` command: CLI parsing, logging, the runtime, signals and exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use scoregate::cli;
use scoregate::config::{Config, DEFAULT_CONFIG_PATH, LogFormat};

#[derive(Parser)]
#[command(
    name = "scoregate",
    version,
    about = "HTTPS scoring gateway for model backends"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a complete local setup: throwaway certificate, sample model, gateway on 127.0.0.1:8443.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Admin API address (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:0")]
        admin: SocketAddr,
    },
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate config, certificates, JWKS files, the state store and the admin token file, as
    /// `serve` would at start (like `nginx -t`).
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Fail on warnings too (an expired or soon expiring certificate), for CI gates.
        #[arg(long)]
        strict: bool,
    },
    /// Services, via the admin API.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Service keys, via the admin API.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Get a token for a token-mode service, via the admin API.
    Token {
        name: String,
        /// Print only the JWT.
        #[arg(long)]
        value: bool,
        /// The token's subject (`sub`), whose tokens share a `by = "credential"` rate-limit
        /// bucket: 1 to 128 of A-Z a-z 0-9 - _ . : @ (default: a random UUID).
        #[arg(long, value_name = "S")]
        subject: Option<String>,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// The shared store: move a file store into it, or re-seal it with a new key.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
        /// The config naming the store ([state] store = "redis" and [state.redis]).
        #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Load harness: drive a built-in (or a running) gateway; req/s, latency, CPU and memory.
    Bench(scoregate::bench::BenchArgs),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Write this replica's file store (state.dir/state.json) into a shared store that does not
    /// know its services yet (refuses otherwise).
    Import,
    /// Re-seal every record with secret_key_file, once every replica holds it (with the old key
    /// as previous_secret_key_file), and name it in the store.
    Reseal,
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// All services.
    List,
    /// One service.
    Show { name: String },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// The primary and secondary key of a service.
    List {
        name: String,
        /// Print only the two keys, primary first, one per line.
        #[arg(long)]
        value: bool,
    },
    /// Replace one key (random, or the given value; `--value -` reads it from stdin).
    Regen {
        name: String,
        #[arg(long, value_parser = ["primary", "secondary"])]
        key: String,
        #[arg(long = "value", value_name = "V")]
        new_value: Option<String>,
        #[command(flatten)]
        out: ValueFlag,
    },
}

#[derive(Args)]
struct ValueFlag {
    /// Print only the new key, for scripts.
    #[arg(long = "print-value")]
    print_value: bool,
}

fn init_logging(format: LogFormat, access: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let mut filter =
        EnvFilter::try_from_env("SCOREGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if !access {
        filter = filter.add_directive("access=off".parse().unwrap());
    }
    // Colours only for a terminal: escape codes in a log file are noise, and colouring every
    // field name costs a third of an access-log line's formatting.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().flatten_event(true).init(),
        LogFormat::Text => b.init(),
    }
}

/// `workers` = 1 gets tokio's current-thread scheduler: the same single thread of work without
/// the multi-thread scheduler's cross-thread bookkeeping (work stealing, atomics, wake-ups).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        b.worker_threads(workers);
    }
    b.enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { listen, admin } => {
            init_logging(LogFormat::Text, true);
            runtime(0).map_err(Into::into).and_then(|rt| {
                rt.block_on(scoregate::demo::run(scoregate::demo::DemoOptions {
                    listen,
                    admin,
                }))
            })
        }
        Command::Serve { config } => serve(config),
        Command::Check { config, strict } => scoregate::check::run(&config, strict),
        Command::Bench(args) => scoregate::bench::run(args),
        Command::Store { command, config } => store_command(command, &config),
        Command::Service { command, admin } => match command {
            ServiceCommand::List => {
                cli::admin_call(&admin, "GET", "/v1/services", None, cli::Output::Json)
            }
            ServiceCommand::Show { name } => cli::admin_call(
                &admin,
                "GET",
                &format!("/v1/services/{}", cli::path_segment(&name)),
                None,
                cli::Output::Json,
            ),
        },
        Command::Keys { command, admin } => match command {
            KeysCommand::List { name, value } => cli::admin_call(
                &admin,
                "POST",
                &format!("/v1/services/{}/listKeys", cli::path_segment(&name)),
                None,
                if value {
                    cli::Output::Keys
                } else {
                    cli::Output::Json
                },
            ),
            KeysCommand::Regen {
                name,
                key,
                new_value,
                out,
            } => cli::regen(&admin, &name, &key, new_value.as_deref(), out.print_value),
        },
        Command::Token {
            name,
            value,
            subject,
            admin,
        } => cli::admin_call(
            &admin,
            "POST",
            &format!("/v1/services/{}/token", cli::path_segment(&name)),
            subject.map(|s| serde_json::json!({ "subject": s })),
            if value {
                cli::Output::Field("accessToken")
            } else {
                cli::Output::Json
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scoregate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn store_command(command: StoreCommand, path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = rt.block_on(async {
        match command {
            StoreCommand::Import => scoregate::store::admin::import(&config).await,
            StoreCommand::Reseal => scoregate::store::admin::reseal(&config).await,
        }
    })?;
    println!("{done}");
    Ok(())
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    init_logging(config.log.format, config.log.access);
    let rt = runtime(config.worker_threads)?;
    rt.block_on(scoregate::server::run(config))
}
