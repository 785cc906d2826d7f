//! The admin API commands: `service`, `keys`, `token`, `reload`, `config show`, `healthcheck`,
//! through [`crate::admin_client`].
//!
//! The admin address comes from `--admin URL`, else the config's `admin.address`; the admin token
//! from `--admin-token-file`, `SCOREGATE_ADMIN_TOKEN`, or the config's `admin.token_file`, in that
//! order — never from a plain argument, where `ps` would show it.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use http::Method;
use serde_json::Value;

use super::args::{AdminOptions, Format};
use super::output::{self, Output};
use super::{path_segment, print_out, runtime};
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

/// `service list`.
pub fn service_list(opts: &AdminOptions, format: Format) -> anyhow::Result<()> {
    admin_call(
        opts,
        Method::GET,
        "/v1/services",
        None,
        match format {
            Format::Json => Output::Json,
            Format::Table => Output::Table(output::Table::Services),
        },
    )
}

/// `keys list`.
pub fn keys_list(
    opts: &AdminOptions,
    name: &str,
    value: bool,
    format: Format,
) -> anyhow::Result<()> {
    admin_call(
        opts,
        Method::POST,
        &format!("/v1/services/{}/listKeys", path_segment(name)),
        None,
        match (value, format) {
            (true, _) => Output::Keys,
            (false, Format::Json) => Output::Json,
            (false, Format::Table) => Output::Table(output::Table::Keys),
        },
    )
}

/// `keys regen`: `value` of `-` reads the new key from stdin (so it stays out of argv).
pub fn regen(
    opts: &AdminOptions,
    name: &str,
    key: &str,
    value: Option<&str>,
    print_value: bool,
) -> anyhow::Result<()> {
    let key_type = if key == "primary" {
        "Primary"
    } else {
        "Secondary"
    };
    let value = match value {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            Some(s.trim().to_string())
        }
        v => v.map(str::to_string),
    };
    let mut body = serde_json::json!({ "keyType": key_type });
    if let Some(v) = value {
        body["keyValue"] = Value::String(v);
    }
    let field = if key == "primary" {
        "primaryKey"
    } else {
        "secondaryKey"
    };
    admin_call(
        opts,
        Method::POST,
        &format!("/v1/services/{}/regenerateKeys", path_segment(name)),
        Some(body),
        if print_value {
            Output::Field(field)
        } else {
            Output::Json
        },
    )
}

/// `reload`: `POST /v1/reload`; what changed, and on stderr the settings that wait for a restart.
pub fn reload(opts: &AdminOptions, format: Format) -> anyhow::Result<()> {
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
        Format::Table => Output::Table(output::Table::Reload),
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

/// `healthcheck`: `GET /healthz` (or `/readyz`), no token; exit 0 only on 200.
pub fn healthcheck(opts: &AdminOptions, ready: bool, timeout: Duration) -> anyhow::Result<()> {
    let config = opts.config(false, false)?;
    let client = opts.client(config.as_ref(), false)?.with_timeout(timeout);
    let path = if ready { "/readyz" } else { "/healthz" };
    let r = runtime()?.block_on(client.send(Method::GET, path, bytes::Bytes::new()))?;
    let text = String::from_utf8_lossy(&r.body);
    if !r.status.is_success() {
        bail!("{path}: {} {}", r.status.as_u16(), text.trim());
    }
    print_out(text.trim());
    Ok(())
}
