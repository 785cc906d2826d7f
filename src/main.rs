//! The `scoregate` command: CLI parsing, logging, the runtime, signals and exit codes.

use std::process::ExitCode;

use clap::Parser;
use http::Method;
use scoregate::cli::args::{
    Cli, Command, ConfigCommand, KeysCommand, ServiceCommand, StoreCommand,
};
use scoregate::cli::output::Output;
use scoregate::cli::{self, ConfigPath, UsageError, admin, path_segment};
use scoregate::config::{Config, LogFormat};

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
                runtime(0).map_err(Into::into).and_then(|rt| {
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
        Command::Store { command, config } => store_command(command, &config.with(&global)),
        Command::Reload { output, admin } => admin::reload(&admin.with(&global), output),
        Command::Invoke(args) => cli::invoke::run(args, &global),
        Command::Healthcheck {
            ready,
            timeout,
            admin,
        } => admin::healthcheck(&admin.with(&global), ready, timeout),
        Command::Config { command, admin } => match command {
            ConfigCommand::Show => admin::admin_call(
                &admin.with(&global),
                Method::GET,
                "/v1/config",
                None,
                Output::Json,
            ),
        },
        Command::Service { command, admin } => {
            let opts = admin.with(&global);
            match command {
                ServiceCommand::List { output } => admin::service_list(&opts, output),
                ServiceCommand::Show { name } => admin::admin_call(
                    &opts,
                    Method::GET,
                    &format!("/v1/services/{}", path_segment(&name)),
                    None,
                    Output::Json,
                ),
            }
        }
        Command::Keys { command, admin } => {
            let opts = admin.with(&global);
            match command {
                KeysCommand::List {
                    name,
                    value,
                    output,
                } => admin::keys_list(&opts, &name, value, output),
                KeysCommand::Regen {
                    name,
                    key,
                    new_value,
                    print_value,
                } => admin::regen(&opts, &name, &key, new_value.as_deref(), print_value),
            }
        }
        Command::Token {
            name,
            value,
            subject,
            admin,
        } => admin::admin_call(
            &admin.with(&global),
            Method::POST,
            &format!("/v1/services/{}/token", path_segment(&name)),
            subject.map(|s| serde_json::json!({ "subject": s })),
            if value {
                Output::Field("accessToken")
            } else {
                Output::Json
            },
        ),
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

fn store_command(command: StoreCommand, path: &ConfigPath) -> anyhow::Result<()> {
    let config = path.load()?;
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

fn serve(path: &ConfigPath, pid_file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let config: Config = path.load()?;
    init_logging(config.log.format, config.log.access);
    let rt = runtime(config.worker_threads)?;
    rt.block_on(scoregate::server::run(
        config,
        scoregate::server::ServeOptions { pid_file },
    ))
}
