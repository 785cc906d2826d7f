//! `scoregate reload` (`POST /v1/reload`, like `nginx -s reload`) and `scoregate config show`
//! (`GET /v1/config`, like `nginx -T`): putting a config in force, and reading back the one in
//! force.

use anyhow::Context;
use http::Method;

use super::admin::{admin_call, call};
use super::args::{AdminOptions, ConfigCommand, Format};
use super::output::{self, Output, Table};
use super::{print_out, runtime};

/// `reload`: what changed, and on stderr the settings that wait for a restart; exit 1 when the
/// gateway refused the config (it keeps the one it had).
pub fn run(opts: &AdminOptions, format: Format) -> anyhow::Result<()> {
    // The config names the admin API; one that does not load would be refused by the gateway
    // too, so say that rather than only why it does not load.
    let config = opts.config(true, false).map_err(|e| {
        if e.is::<crate::config::ConfigError>() {
            e.context(
                "reload not sent: the config does not load, so the gateway would refuse it too",
            )
        } else {
            e
        }
    })?;
    let client = opts.client(config.as_ref(), true)?;
    let v = runtime()?
        .block_on(call(&client, Method::POST, "/v1/reload", None))
        .context("reload failed; the gateway keeps the config it had")?;
    let out = match format {
        Format::Json => Output::Json,
        Format::Table => Output::Table(Table::Reload),
    };
    print_out(&out.render(&v)?);
    let restart = output::strings(&v["restartRequired"]);
    if !restart.is_empty() {
        eprintln!(
            "scoregate: warning: {} take effect only at a restart; the gateway keeps their running values",
            restart.join(", ")
        );
    }
    Ok(())
}

/// `config show`: the effective config, secrets redacted.
pub fn config(command: ConfigCommand, opts: &AdminOptions) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Show => admin_call(opts, Method::GET, "/v1/config", None, Output::Json),
    }
}
