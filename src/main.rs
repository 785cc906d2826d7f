//! The `scoregate` command: CLI parsing, logging, the runtime, signals and exit codes.

use std::process::ExitCode;

use clap::Parser;
use scoregate::cli::args::{Cli, Command};
use scoregate::cli::{self, ConfigPath, UsageError};
use scoregate::config::{Config, LogFormat};

/// The allocator. glibc's keeps the memory a connection frees in the process (it returns heap
/// to the kernel only from its top), so after a burst of connections, parked or closed, the RSS
/// stays at the burst's peak; jemalloc returns freed pages to the kernel, with its background
/// thread, about a second after they were freed (`dirty_decay_ms`, set in `.cargo/config.toml`).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    let ansi = std::io::stderr().is_terminal();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // Without colours, access lines are written by hand, as this subscriber would write them.
    if !ansi {
        scoregate::gateway::access_log::write_directly(format);
    }
    match format {
        LogFormat::Json => b.json().flatten_event(true).init(),
        LogFormat::Text => b.init(),
    }
}

/// The main runtime: single-threaded, whatever `worker_threads` says. With one worker it serves
/// the connections too; with more, each worker is a thread with a runtime of its own
/// (`server::workers`), and this one keeps the admin API, health checks, the store and reloads.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let Cli { global, command } = Cli::parse();
    let result = match command {
        Command::Demo { listen, admin } => {
            if global.any_admin() {
                Err(UsageError(
                    "--admin and --admin-token-file before `demo` are for admin commands; \
                     the demo's admin listen address is `scoregate demo --admin ADDR`"
                        .into(),
                )
                .into())
            } else {
                init_logging(LogFormat::Text, true);
                runtime().map_err(Into::into).and_then(|rt| {
                    rt.block_on(scoregate::demo::run(scoregate::demo::DemoOptions {
                        listen,
                        admin,
                    }))
                })
            }
        }
        Command::Serve { config, pid_file } => serve(&config.with(&global), pid_file),
        Command::Check { config, strict } => {
            let path = config.with(&global);
            path.require_file()
                .and_then(|()| scoregate::check::run(&path.path, strict))
        }
        Command::Bench(args) => scoregate::bench::run(args),
        Command::Store { command, config } => cli::store::run(command, &config.with(&global)),
        Command::Reload { output, admin } => cli::reload::run(&admin.with(&global), output),
        Command::Invoke(args) => cli::invoke::run(args, &global),
        Command::Healthcheck {
            ready,
            timeout,
            admin,
        } => cli::healthcheck::run(&admin.with(&global), ready, timeout),
        Command::Config { command, admin } => cli::reload::config(command, &admin.with(&global)),
        Command::Service { command, admin } => cli::service::run(command, &admin.with(&global)),
        Command::Keys { command, admin } => cli::keys::run(command, &admin.with(&global)),
        Command::Token {
            name,
            value,
            subject,
            admin,
        } => cli::token::run(&admin.with(&global), &name, subject, value),
        Command::Traffic {
            name,
            traffic,
            mirror,
            admin,
        } => cli::traffic::run(&admin.with(&global), &name, &traffic, mirror.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scoregate: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(cli::EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn serve(path: &ConfigPath, pid_file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let config: Config = path.load()?;
    init_logging(config.log.format, config.log.access);
    let rt = runtime()?;
    rt.block_on(scoregate::server::run(
        config,
        scoregate::server::ServeOptions { pid_file },
    ))
}
