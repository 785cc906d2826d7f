//! How the admin API commands (`service`, `keys`, `token`, `reload`, `config show`,
//! `healthcheck`, each in its own module) reach the admin API, through [`crate::admin_client`].
//!
//! The admin address comes from `--admin URL`, else the config's `admin.address`; the admin token
//! from `--admin-token-file`, `SCOREGATE_ADMIN_TOKEN`, or the config's `admin.token_file`, in that
//! order — never from a plain argument, where `ps` would show it.

use std::path::Path;

use anyhow::{Context, bail};
use http::Method;
use serde_json::Value;

use super::args::AdminOptions;
use super::output::Output;
use super::{print_out, runtime};
use crate::admin_client::AdminClient;
use crate::config::Config;

/// The environment variable that may hold the admin token.
pub const TOKEN_ENV: &str = "SCOREGATE_ADMIN_TOKEN";

impl AdminOptions {
    /// Whether the config is needed: for the address, or for the token file.
    fn needs_config(&self, token: bool) -> bool {
        self.admin.is_none()
            || (token && self.admin_token_file.is_none() && std::env::var_os(TOKEN_ENV).is_none())
    }

    /// The config, when one is needed (or `always`) and present.
    pub fn config(&self, token: bool, always: bool) -> anyhow::Result<Option<Config>> {
        if always || self.needs_config(token) {
            self.config.load_if_present()
        } else {
            Ok(None)
        }
    }

    /// The admin API base URL: `--admin`, else the config's `admin.address` (an unspecified
    /// address such as `0.0.0.0` is reached via loopback).
    pub fn base_url(&self, config: Option<&Config>) -> anyhow::Result<String> {
        match (&self.admin, config) {
            (Some(a), _) => Ok(a.trim_end_matches('/').to_string()),
            (None, Some(c)) => {
                let mut a = c.admin.address;
                if a.ip().is_unspecified() {
                    a.set_ip(if a.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                Ok(format!("http://{a}"))
            }
            (None, None) => Err(super::UsageError(format!(
                "no admin API address: pass --admin URL, or --config PATH (there is no {})",
                self.config.path.display()
            ))
            .into()),
        }
    }

    /// The admin token.
    pub fn token(&self, config: Option<&Config>) -> anyhow::Result<String> {
        if let Some(f) = &self.admin_token_file {
            read_token(f)
        } else if let Ok(t) = std::env::var(TOKEN_ENV) {
            Ok(t.trim().to_string())
        } else if let Some(c) = config {
            read_token(&c.admin.token_file)
        } else {
            Err(super::UsageError(format!(
                "no admin token: pass --admin-token-file FILE, set {TOKEN_ENV}, or pass --config PATH"
            ))
            .into())
        }
    }

    /// A client for the admin API, with the token when `token`.
    pub fn client(&self, config: Option<&Config>, token: bool) -> anyhow::Result<AdminClient> {
        let base = self.base_url(config)?;
        let token = if token {
            Some(self.token(config)?)
        } else {
            None
        };
        AdminClient::new(&base, token)
    }
}

fn read_token(p: &Path) -> anyhow::Result<String> {
    let t = crate::files::read_text_capped(p, crate::files::MAX_SMALL_FILE)
        .with_context(|| format!("cannot read admin token file {}", p.display()))?;
    Ok(t.trim().to_string())
}

/// One admin call; a non-2xx answer is an error with its status, code and message.
pub async fn call(
    client: &AdminClient,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let (status, v) = client.call(method, path, body).await?;
    if !status.is_success() {
        let msg = v["error"]["message"].as_str().unwrap_or("(no message)");
        let code = v["error"]["code"].as_str().unwrap_or("Error");
        bail!("{} {code}: {msg}", status.as_u16());
    }
    Ok(v)
}

/// Calls the admin API (with the token) and prints the answer.
pub fn admin_call(
    opts: &AdminOptions,
    method: Method,
    path: &str,
    body: Option<Value>,
    out: Output,
) -> anyhow::Result<()> {
    let config = opts.config(true, false)?;
    // Bounded by the client's default timeout (`admin_client::DEFAULT_TIMEOUT`, 30 s).
    let client = opts.client(config.as_ref(), true)?;
    let v = runtime()?.block_on(call(&client, method, path, body))?;
    print_out(&out.render(&v)?);
    Ok(())
}
