//! Reload (SIGHUP, `POST /v1/reload`, watch mode): build the whole new state off to the side —
//! config, certificates, keys, snapshot — and swap it in only if every step succeeded. On any
//! error the old state stays in force entirely.
//!
//! What carries over: backend runtime state (keyed by URL, see `state`), pooled connections
//! (keyed by address), and the TLS config itself (session tickets, resumption cache): certificates
//! change through the SNI resolver, so clients holding a ticket resume across a reload (a resumed
//! session keeps the certificate it was first made with; new full handshakes get the new one).
//! Established connections keep going untouched. Settings that only take effect at start are
//! reported under `restartRequired` and keep their old values: listen addresses, PROXY protocol,
//! the admin address and token file, the state dir, worker threads, watch mode, logging, and every
//! `[limits]` value but `max_in_flight`.

use std::path::Path;

use tokio::sync::Mutex;

use crate::config::Config;
use crate::state::{Gateway, publish_cert_metrics};

#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    pub changed: Vec<String>,
    pub restart_required: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config or a certificate is invalid (admin API: 400 `InvalidConfig`).
    #[error("{0}")]
    Invalid(String),
    /// The new state could not be applied (admin API: 500 `ReloadFailed`).
    #[error("{0}")]
    Failed(String),
}

/// Serialises reloads: two at once would race on the key store and the snapshot.
static RELOAD_LOCK: Mutex<()> = Mutex::const_new(());

/// Reloads from the config file the gateway was started with.
pub async fn reload(gw: &Gateway) -> Result<ReloadReport, ReloadError> {
    let _guard = RELOAD_LOCK.lock().await;
    let result = match &gw.config_path {
        Some(path) => apply(gw, path),
        None => Err(ReloadError::Invalid(
            "this gateway was started without a config file; nothing to reload".into(),
        )),
    };
    match &result {
        Ok(r) => {
            gw.metrics.reloads.with_label_values(&["ok"]).inc();
            tracing::info!(changed = ?r.changed, restart_required = ?r.restart_required, "reloaded");
        }
        Err(e) => {
            gw.metrics.reloads.with_label_values(&["error"]).inc();
            tracing::error!(error = %e, "reload failed; the previous state stays in force");
        }
    }
    result
}

fn apply(gw: &Gateway, path: &Path) -> Result<ReloadReport, ReloadError> {
    let mut new = Config::load(path).map_err(|e| ReloadError::Invalid(e.to_string()))?;
    let certs = crate::tls::load_all(&new.tls)
        .map_err(|e| ReloadError::Invalid(format!("{}: {e}", path.display())))?;
    let old_snap = gw.snapshot();
    let old = &old_snap.config;
    let mut report = ReloadReport::default();

    // Start-time settings keep their running values.
    macro_rules! fixed {
        ($name:literal, $($field:tt)+) => {
            if format!("{:?}", new.$($field)+) != format!("{:?}", old.$($field)+) {
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
    {
        let mut fixed_part = new.limits.clone();
        fixed_part.max_in_flight = old.limits.max_in_flight;
        if format!("{fixed_part:?}") != format!("{:?}", old.limits) {
            report.restart_required.push("limits".into());
            let live = new.limits.max_in_flight;
            new.limits = old.limits.clone();
            new.limits.max_in_flight = live;
        }
        if new.limits.max_in_flight != old.limits.max_in_flight {
            report.changed.push("limits.max_in_flight".into());
        }
    }

    // What changed, for the answer and the log.
    let old_certs = gw.certs.current();
    let cert_ids = |s: &crate::tls::CertStore| -> Vec<(String, String)> {
        s.certs
            .iter()
            .map(|c| (c.cname.clone(), c.serial.clone()))
            .collect()
    };
    if cert_ids(&old_certs) != cert_ids(&certs)
        || format!("{:?}", old.tls) != format!("{:?}", new.tls)
    {
        report.changed.push("tls.certificates".into());
    }
    for s in &new.services {
        match old.service(&s.name) {
            None => report.changed.push(format!("service.{}: added", s.name)),
            Some(o) if format!("{o:?}") != format!("{s:?}") => {
                report.changed.push(format!("service.{}", s.name))
            }
            Some(_) => {}
        }
    }
    for s in &old.services {
        if new.service(&s.name).is_none() {
            report.changed.push(format!("service.{}: removed", s.name));
        }
    }
    for (name, a, b) in [
        (
            "listen.allow",
            format!("{:?}", old.listen.allow),
            format!("{:?}", new.listen.allow),
        ),
        (
            "listen.deny",
            format!("{:?}", old.listen.deny),
            format!("{:?}", new.listen.deny),
        ),
        (
            "listen.trusted_proxies",
            format!("{:?}", old.listen.trusted_proxies),
            format!("{:?}", new.listen.trusted_proxies),
        ),
        (
            "listen.public_url",
            format!("{:?}", old.listen.public_url),
            format!("{:?}", new.listen.public_url),
        ),
        (
            "tokens",
            format!("{:?}", old.tokens),
            format!("{:?}", new.tokens),
        ),
        (
            "server.drain_timeout",
            format!("{:?}", old.server.drain_timeout),
            format!("{:?}", new.server.drain_timeout),
        ),
    ] {
        if a != b {
            report.changed.push(name.into());
        }
    }

    // What can still fail in building the snapshot is checked before the key store is touched,
    // so a bad JWKS file does not leave new keys or records behind a failed reload.
    for ti in &new.tokens.trusted_issuers {
        if let crate::config::JwksSource::File(_) = &ti.jwks {
            crate::auth::tokens::TrustedIssuer::load(ti).map_err(|e| {
                ReloadError::Invalid(format!("{}: tokens.trusted_issuers: {e}", path.display()))
            })?;
        }
    }

    // Keys (writes the store only if something changed), then the snapshot, then publish.
    let keys = gw
        .keystore
        .reconcile(&new)
        .map_err(|e| ReloadError::Failed(e.to_string()))?;
    let removed: Vec<String> = old
        .services
        .iter()
        .filter(|s| new.service(&s.name).is_none())
        .map(|s| s.name.clone())
        .collect();
    let snap = gw.build_snapshot(new, &keys).map_err(|e| match e {
        crate::state::BuildError::State(why) => ReloadError::Failed(why),
        other => ReloadError::Invalid(other.to_string()),
    })?;
    publish_cert_metrics(&gw.metrics, &certs);
    gw.certs.publish(certs);
    gw.publish(snap);
    for name in removed {
        gw.metrics.forget_service(&name);
    }
    Ok(report)
}
