//! CLI commands other than `serve` and `demo`: `check`, and `service`, `keys` and `token`, which
//! call the admin API through [`crate::admin_client`].
//!
//! The admin address comes from `--admin URL`, else the config's `admin.address`; the admin token
//! from `--admin-token-file`, `SCOREGATE_ADMIN_TOKEN`, or the config's `admin.token_file`, in that
//! order — never from a plain argument, where `ps` would show it.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use crate::admin_client::AdminClient;
use crate::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// Admin API base URL, e.g. http://127.0.0.1:9090 (default: from the config).
    #[arg(long, global = true)]
    pub admin: Option<String>,
    /// Config file to find the admin address and token file in.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// File holding the admin token (else $SCOREGATE_ADMIN_TOKEN, else the config's token_file).
    #[arg(long, global = true)]
    pub admin_token_file: Option<PathBuf>,
}

/// What to print from an admin answer.
pub enum Output {
    Json,
    /// One string field of the answer, bare.
    Field(&'static str),
    /// `primaryKey` and `secondaryKey`, one per line.
    Keys,
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

fn load_config(args: &AdminArgs) -> anyhow::Result<Option<Config>> {
    match &args.config {
        Some(p) => Ok(Some(Config::load(p)?)),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Ok(Some(Config::load(Path::new(DEFAULT_CONFIG_PATH))?))
        }
        None => Ok(None),
    }
}

fn resolve(args: &AdminArgs) -> anyhow::Result<(String, String)> {
    let config = if args.admin.is_none()
        || (args.admin_token_file.is_none() && std::env::var_os("SCOREGATE_ADMIN_TOKEN").is_none())
    {
        load_config(args)?
    } else {
        None
    };
    let base = match (&args.admin, &config) {
        (Some(a), _) => a.trim_end_matches('/').to_string(),
        (None, Some(c)) => {
            let mut a = c.admin.address;
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{a}")
        }
        (None, None) => bail!("no admin address: pass --admin URL or --config PATH"),
    };
    let token = if let Some(f) = &args.admin_token_file {
        read_token(f)?
    } else if let Ok(t) = std::env::var("SCOREGATE_ADMIN_TOKEN") {
        t.trim().to_string()
    } else if let Some(c) = &config {
        read_token(&c.admin.token_file)?
    } else {
        bail!(
            "no admin token: pass --admin-token-file, set SCOREGATE_ADMIN_TOKEN, or pass --config"
        )
    };
    Ok((base, token))
}

fn read_token(p: &Path) -> anyhow::Result<String> {
    let t = crate::files::read_text_capped(p, crate::files::MAX_SMALL_FILE)
        .with_context(|| format!("cannot read admin token file {}", p.display()))?;
    Ok(t.trim().to_string())
}

/// Calls the admin API and prints the answer; a non-2xx answer is an error with its message.
pub fn admin_call(
    args: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
    out: Output,
) -> anyhow::Result<()> {
    let (base, token) = resolve(args)?;
    // Bounded by the client's default timeout (`admin_client::DEFAULT_TIMEOUT`, 30 s).
    let client = AdminClient::new(&base, Some(token))?;
    let method = http::Method::from_bytes(method.as_bytes()).context("bad HTTP method")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, v) = rt.block_on(client.call(method, path, body))?;
    if !status.is_success() {
        let msg = v["error"]["message"].as_str().unwrap_or("(no message)");
        let code = v["error"]["code"].as_str().unwrap_or("Error");
        bail!("{} {code}: {msg}", status.as_u16());
    }
    let text = match out {
        Output::Json => serde_json::to_string_pretty(&v)?,
        Output::Field(f) => v[f].as_str().context("answer lacks the field")?.to_string(),
        Output::Keys => format!(
            "{}\n{}",
            v["primaryKey"].as_str().unwrap_or_default(),
            v["secondaryKey"].as_str().unwrap_or_default()
        ),
    };
    print_out(&text);
    Ok(())
}

/// Prints a line to stdout; a closed pipe (`| head -1`) is not an error worth a panic.
fn print_out(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// `keys regen`: `value` of `-` reads the new key from stdin (so it stays out of argv).
pub fn regen(
    args: &AdminArgs,
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
        args,
        "POST",
        &format!("/v1/services/{}/regenerateKeys", path_segment(name)),
        Some(body),
        if print_value {
            Output::Field(field)
        } else {
            Output::Json
        },
    )
}
