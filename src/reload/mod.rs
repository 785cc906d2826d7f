//! Reload (SIGHUP, `POST /v1/reload`, watch mode) in four steps, so that a reload that fails
//! anywhere leaves *nothing* changed — keys, signing keys, probe settings, files:
//!
//! 1. **plan**: read the config, certificates and JWKS files off the runtime, compare the
//!    configs (`changes`) to report what changed and keep start-time settings, and compute the
//!    store state the new config asks for (new records, presets, a signing key for a new
//!    algorithm) on the store's current content;
//! 2. **build**: the new snapshot, key cells and signing set, off to the side (`Shared::build`);
//! 3. **persist**: write the planned store state (one atomic file write; for a shared store one
//!    compare-and-set per changed record, re-planned when another replica won a race, and refused
//!    whole with 503 `StoreUnavailable` while the store is unreachable);
//! 4. **publish**: put the built state and the certificates in force (cannot fail).
//!
//! What carries over: backend runtime state (keyed by URL, see `state`), pooled connections
//! (keyed by address), and the TLS config itself (session tickets, resumption cache): certificates
//! change through the SNI resolver, so clients holding a ticket resume across a reload (a resumed
//! session keeps the certificate it was first made with; new full handshakes get the new one).
//! Established connections keep going untouched. Settings that only take effect at start are
//! reported under `restartRequired` and keep their old values: listen addresses, PROXY protocol,
//! the admin address and token file, the state dir, worker threads, watch mode, logging, and every
//! `[limits]` value but `max_in_flight`.

pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::state::{BuildError, Shared, publish_cert_metrics};
use crate::tls::CertStore;

#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    pub changed: Vec<String>,
    pub restart_required: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this gateway was started without a config file; nothing to reload")]
    NoConfigFile,
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl ReloadError {
    /// The operator's input is at fault (admin API: 400 `InvalidConfig`, else 500
    /// `ReloadFailed`).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ReloadError::NoConfigFile => true,
            ReloadError::Build(b) => b.is_invalid_input(),
        }
    }
}

/// Reloads from the config file the gateway was started with.
pub async fn reload(shared: &Arc<Shared>) -> Result<ReloadReport, ReloadError> {
    let _writes = shared.writes.lock().await;
    let result = match &shared.config_path {
        Some(path) => apply(shared, path.clone()).await,
        None => Err(ReloadError::NoConfigFile),
    };
    match &result {
        Ok(r) => {
            shared.metrics.reloads.with_label_values(&["ok"]).inc();
            tracing::info!(changed = ?r.changed, restart_required = ?r.restart_required, "reloaded");
            if !r.restart_required.is_empty() {
                tracing::warn!(
                    restart_required = ?r.restart_required,
                    "reloaded, but these settings take effect only at start: their running values stay until a restart"
                );
            }
        }
        Err(e) => {
            shared.metrics.reloads.with_label_values(&["error"]).inc();
            tracing::error!(error = %e, "reload failed; the previous state stays in force");
        }
    }
    result
}

/// What step 1 reads off the runtime.
struct Loaded {
    config: Config,
    certs: CertStore,
    issuers: Vec<Arc<crate::auth::issuers::TrustedIssuer>>,
}

async fn apply(shared: &Arc<Shared>, path: PathBuf) -> Result<ReloadReport, ReloadError> {
    let old = shared.snapshot();
    // 1. plan: the files, off the runtime; the store plan is made in `apply_config`.
    let old_snap = old.clone();
    let Loaded {
        mut config,
        certs,
        issuers,
    } = tokio::task::spawn_blocking(move || -> Result<Loaded, BuildError> {
        let config = Config::load(&path)?;
        let certs = crate::tls::load_all(&config.tls)?;
        let issuers = crate::state::load_issuers(&old_snap.issuers, &config)?;
        Ok(Loaded {
            config,
            certs,
            issuers,
        })
    })
    .await
    .expect("loading a reload does not panic")?;
    let certs_changed = cert_ids(&shared.certs.current()) != cert_ids(&certs);
    let report = changes(&old.config, &mut config, certs_changed);
    // Series of services, and of deployments, that the new config no longer has.
    let removed: Vec<(String, Vec<String>)> = old
        .config
        .services
        .iter()
        .filter_map(|s| {
            let kept = config.service(&s.name);
            let gone: Vec<String> = s
                .deployment_names()
                .into_iter()
                .filter(|d| kept.is_none_or(|k| !k.deployment_names().contains(d)))
                .map(str::to_string)
                .collect();
            match kept {
                None => Some((s.name.clone(), gone)),
                Some(_) if !gone.is_empty() => Some((s.name.clone(), gone)),
                Some(_) => None,
            }
        })
        .collect();
    // 2.-4. the store plan, build, persist, publish (see `Shared::apply_config`); then the
    // certificates, which nothing after can fail.
    shared.apply_config(config, issuers, false).await?;
    publish_cert_metrics(&shared.metrics, &certs);
    if certs_changed {
        crate::tls::log_certificates(&certs, "certificate reloaded");
    }
    shared.certs.publish(certs);
    for (name, deployments) in removed {
        let d: Vec<&str> = deployments.iter().map(String::as_str).collect();
        if shared.snapshot().service(&name).is_some() {
            shared.metrics.forget_deployments(&name, &d);
        } else {
            shared.metrics.forget_service(&name, &d);
        }
    }
    Ok(report)
}

fn cert_ids(s: &CertStore) -> Vec<(String, String)> {
    s.certs
        .iter()
        .map(|c| (c.cname.clone(), c.serial.clone()))
        .collect()
}

/// What changed between two configs, for the answer and the log. Start-time settings that
/// changed are listed under `restartRequired` and set back in `new` to their running values.
pub fn changes(old: &Config, new: &mut Config, certs_changed: bool) -> ReloadReport {
    let mut report = ReloadReport::default();
    macro_rules! fixed {
        ($name:literal, $($field:tt)+) => {
            if new.$($field)+ != old.$($field)+ {
                report.restart_required.push($name.into());
                new.$($field)+ = old.$($field)+.clone();
            }
        };
    }
    fixed!("listen.address", listen.addresses);
    fixed!("listen.proxy_protocol", listen.proxy_protocol);
    fixed!("admin.address", admin.address);
    fixed!("admin.token_file", admin.token_file);
    fixed!("state.dir", state_dir);
    fixed!("runtime.worker_threads", worker_threads);
    fixed!("server.watch", server.watch);
    fixed!("log", log);
    // The limits shape listeners and connections when they start; `max_in_flight` is read per
    // request, so it alone changes live.
    let live = new.limits.max_in_flight;
    let mut fixed_part = new.limits.clone();
    fixed_part.max_in_flight = old.limits.max_in_flight;
    if fixed_part != old.limits {
        report.restart_required.push("limits".into());
        new.limits = old.limits.clone();
        new.limits.max_in_flight = live;
    }
    if live != old.limits.max_in_flight {
        report.changed.push("limits.max_in_flight".into());
    }
    if certs_changed || old.tls != new.tls {
        report.changed.push("tls.certificates".into());
    }
    for s in &new.services {
        match old.service(&s.name) {
            None => report.changed.push(format!("service.{}: added", s.name)),
            Some(o) if o != s => report.changed.push(format!("service.{}", s.name)),
            Some(_) => {}
        }
    }
    for s in &old.services {
        if new.service(&s.name).is_none() {
            report.changed.push(format!("service.{}: removed", s.name));
        }
    }
    for (name, changed) in [
        ("listen.allow", old.listen.allow != new.listen.allow),
        ("listen.deny", old.listen.deny != new.listen.deny),
        (
            "listen.trusted_proxies",
            old.listen.trusted_proxies != new.listen.trusted_proxies,
        ),
        (
            "listen.public_url",
            old.listen.public_url != new.listen.public_url,
        ),
        ("tokens", old.tokens != new.tokens),
        (
            "server.drain_timeout",
            old.server.drain_timeout != new.server.drain_timeout,
        ),
    ] {
        if changed {
            report.changed.push(name.into());
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthMode, ServiceConfig};

    fn base() -> Config {
        let mut c = Config::new_in_code(
            "t",
            "127.0.0.1:1".parse().unwrap(),
            vec![],
            "/nonexistent".into(),
        );
        c.services.push(ServiceConfig::new(
            "iris",
            AuthMode::Key,
            vec!["http://127.0.0.1:2".parse().unwrap()],
        ));
        c
    }

    #[test]
    fn start_time_settings_keep_their_values_and_are_reported() {
        let old = base();
        let mut new = base();
        new.listen.addresses = vec!["127.0.0.1:9".parse().unwrap()];
        new.limits.idle_timeout *= 2;
        new.limits.max_in_flight += 1;
        new.services[0].scoring_timeout *= 2;
        let r = changes(&old, &mut new, false);
        assert_eq!(r.restart_required, vec!["listen.address", "limits"]);
        assert_eq!(r.changed, vec!["limits.max_in_flight", "service.iris"]);
        assert_eq!(new.listen.addresses, old.listen.addresses);
        assert_eq!(new.limits.idle_timeout, old.limits.idle_timeout);
        assert_eq!(new.limits.max_in_flight, old.limits.max_in_flight + 1);
    }

    #[test]
    fn a_preset_change_is_a_service_change_and_never_printed() {
        let old = base();
        let mut new = base();
        new.services[0].primary_key = Some(crate::crypto::Secret::new("k".repeat(40)));
        let r = changes(&old, &mut new, false);
        assert_eq!(r.changed, vec!["service.iris"]);
        assert!(!format!("{new:?}").contains(&"k".repeat(40)));
    }
}
