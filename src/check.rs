//! `scoregate check`: everything `serve` would refuse at start, found without starting — the
//! config, every certificate entry, the JWKS files, the state store, the admin token file — and
//! what is served, printed with absolute paths (like `nginx -t`). Problems fail the check; a
//! certificate that has expired, is not valid yet or expires within `EXPIRY_WARNING` is a
//! warning (counted in the summary line; `--strict` fails on warnings too).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::{Config, JwksSource, StoreConfig};

/// A certificate that expires sooner than this is a warning: time enough to renew.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Runs the check; `Err` carries the summary of what failed.
pub fn run(path: &Path, strict: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let mut problems: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    println!("config   {}", config.source.display());
    for a in &config.listen.addresses {
        println!("listen   {a}");
    }
    println!(
        "admin    {} (token file {})",
        config.admin.address,
        abs(&config.admin.token_file).display()
    );
    let shared_store = matches!(config.store, StoreConfig::Redis(_));
    match crate::admin::load_token(&config.admin.token_file, false) {
        Ok(_) => {}
        Err(crate::admin::TokenError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && !shared_store =>
        {
            println!("           (the token file does not exist yet: made at start)");
        }
        Err(e) if shared_store => problems.push(format!(
            "admin.token_file: {e} (with a shared store it must exist, e.g. from a Secret: it is never generated)"
        )),
        Err(e) => problems.push(format!("admin.token_file: {e}")),
    }
    if shared_store {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        match rt.block_on(crate::store::admin::inspect(&config)) {
            Ok((lines, w)) => {
                for l in lines {
                    println!("{l}");
                }
                warnings.extend(w);
            }
            Err(e) => problems.push(format!("state.redis: {e}")),
        }
        println!("state    cache {}", abs(&config.state_dir).display());
    } else {
        match crate::store::Store::inspect(&config) {
            Ok(what) => println!("state    {what}"),
            Err(e) => problems.push(format!("state.dir: {e}")),
        }
    }
    let now = SystemTime::now();
    for (entry, result) in config
        .tls
        .certificates
        .iter()
        .zip(crate::tls::check_each(&config.tls))
    {
        let c = match result {
            Ok(c) => c,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let left = c
            .not_after
            .duration_since(now)
            .map(|d| format!("{} days left", d.as_secs() / 86_400))
            .unwrap_or_else(|_| "EXPIRED".into());
        if now > c.not_after {
            warnings.push(format!(
                "certificate for {} has expired (an error with [tls] strict = true)",
                c.cname
            ));
        } else if now < c.not_before {
            warnings.push(format!(
                "certificate for {} is not valid yet (an error with [tls] strict = true)",
                c.cname
            ));
        } else if c.not_after.duration_since(now).unwrap_or_default() < EXPIRY_WARNING {
            let days = c
                .not_after
                .duration_since(now)
                .unwrap_or_default()
                .as_secs()
                / 86_400;
            warnings.push(format!(
                "certificate for {} expires in {days} days: renew it (README, \"Using a real certificate\")",
                c.cname
            ));
        }
        println!(
            "cert     {}  SANs {:?}  expires {} ({left})  chain of {}\n           cert {}\n           key  {}",
            c.cname,
            c.names,
            humantime::format_rfc3339_seconds(c.not_after),
            c.chain_len,
            abs(&entry.cert).display(),
            abs(&entry.key).display()
        );
    }
    for (i, ti) in config.tokens.trusted_issuers.iter().enumerate() {
        match &ti.jwks {
            JwksSource::File(p) => match crate::auth::issuers::TrustedIssuer::load(ti) {
                Ok(_) => println!("issuer   {}  JWKS {}", ti.issuer, abs(p).display()),
                Err(e) => problems.push(format!("tokens.trusted_issuers[{i}].jwks: {e}")),
            },
            JwksSource::Url(u) => println!("issuer   {}  JWKS {u} (fetched at start)", ti.issuer),
        }
    }
    for s in &config.services {
        println!(
            "service  {}  auth={}  backends={}",
            s.name,
            s.auth.as_str(),
            s.backends_summary()
        );
        for rl in &s.rate_limits {
            println!("           rate_limit {rl}");
        }
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if !problems.is_empty() {
        let mut msg = format!(
            "{}: {} problem{}:",
            config.source.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for p in &problems {
            msg.push_str("\n  - ");
            msg.push_str(p);
        }
        anyhow::bail!(msg);
    }
    match warnings.len() {
        0 => println!("ok"),
        n => {
            println!("ok, {n} warning{}", if n == 1 { "" } else { "s" });
            if strict {
                anyhow::bail!(
                    "--strict: {n} warning{} count as failures",
                    if n == 1 { "" } else { "s" }
                );
            }
        }
    }
    Ok(())
}

fn abs(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
